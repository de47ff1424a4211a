"""bench/dispatch_floor.py's pure parts: the configurations, why one is skipped, the pairing
against untraced and the two tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sigscope.model.record import SYSCALL_VIAS as VIAS

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_floor_module():
    # dispatch_floor imports its siblings (run, kill_self) as a script would: by bench/ on
    # sys.path, taken off again once they are in sys.modules.
    sys.path.insert(0, str(BENCH_DIR))
    try:
        spec = importlib.util.spec_from_file_location("bench_dispatch_floor",
                                                      BENCH_DIR / "dispatch_floor.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH_DIR))
    return module


floor = load_floor_module()
Point = floor.Point


@pytest.mark.parametrize("via", VIAS)
def test_the_floors_are_the_attach_points_of_the_send_path(via: str) -> None:
    configs = floor.configurations(via)
    generate = Point("tp_btf", "signal_generate")
    sys_exit = Point("perf", f"sys_exit_{via}", "syscalls")
    assert configs["floor-2"] == (generate, sys_exit)
    assert configs["floor-3"] == (generate, sys_exit, Point("perf", f"sys_enter_{via}",
                                                            "syscalls"))
    assert configs["floor-2, tp_btf sys_exit"] == (generate, Point("tp_btf", "sys_exit"))
    assert configs[f"perf sys_exit_{via}"] == (sys_exit,)
    assert configs["perf signal_generate"] == (Point("perf", "signal_generate", "signal"),)
    names = list(configs)
    assert names[0] == "untraced" and configs["untraced"] == ()
    assert names[-1] == "sigscope-programs" and configs["sigscope-programs"] is None
    # every single attach point of a floor is measured alone too
    singles = {points[0] for points in configs.values() if points and len(points) == 1}
    assert set(configs["floor-3"]) | set(configs["floor-2, tp_btf sys_exit"]) <= singles


def test_only_syscall_tracepoints_set_the_syscall_work_flag() -> None:
    configs = floor.configurations("tgkill")
    taxing = [name for name, points in configs.items() if floor.sets_syscall_work(points)]
    assert taxing == ["perf sys_exit_tgkill", "tp_btf sys_exit", "perf sys_enter_tgkill",
                      "floor-2", "floor-2, tp_btf sys_exit", "floor-3", "sigscope-programs"]
    assert not floor.sets_syscall_work(())


def test_a_missing_feature_names_itself() -> None:
    configs = floor.configurations("tgkill")

    def reason(points, features=("tp_btf", "bpf_tracepoint"), btf=("signal_generate",),
               events=("signal:signal_generate", "syscalls:sys_exit_tgkill")):
        return floor.missing_reason(points, lambda name: name in features,
                                    lambda event: 7 if event in btf else None,
                                    lambda system, event: f"{system}:{event}" in events)

    assert reason(configs["floor-2"]) is None
    assert reason(configs["untraced"]) is None
    assert reason(configs["floor-2"], features=("bpf_tracepoint",)) == "feature tp_btf missing"
    assert reason(configs["perf signal_generate"], features=()) == \
        "feature bpf_tracepoint missing"
    assert reason(configs["tp_btf sys_exit"]) == "BTF type btf_trace_sys_exit missing"
    assert reason(configs["floor-3"]) == "tracepoint syscalls:sys_enter_tgkill missing"


def test_costs_are_medians_of_the_per_round_pairs() -> None:
    base = [1000.0, 2000.0, 1000.0, None]
    runs = [1300.0, 2100.0, 1100.0, 900.0]  # +300, +100 (a slow round), +100; no base: out
    summary = floor.summarise(runs, base)
    assert summary.per_round == pytest.approx([300.0, 100.0, 100.0])
    assert summary.cost_ns == pytest.approx(100.0)  # not median(runs) - median(base) = 300
    assert summary.ratio == pytest.approx(1.1)  # of 1.3, 1.05, 1.1
    # the issue-11 budget is half the untraced time: +300 of 500, +100 of 1000, +100 of 500
    assert summary.budget_share == pytest.approx(0.2)
    assert floor.summarise([None, 5.0], [1.0, None]) == (None, None, None, [])


def measures(*signal_ns: float, syscall_ns: float | None = None) -> list:
    return [floor.Measure(v, syscall_ns) for v in signal_ns]


def rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    assert lines[1].startswith("| --- |")
    cells = [line[2:-2].split(" | ") for line in lines[2:]]  # "| a | b |  |": a, b, ''
    return {row[0]: row[1:] for row in cells}


def test_the_signal_table_shows_pairs_and_skips() -> None:
    configs = {"untraced": (), "tp_btf signal_generate": (Point("tp_btf", "signal_generate"),),
               "floor-2": (Point("tp_btf", "signal_generate"),
                           Point("perf", "sys_exit_tgkill", "syscalls")),
               "sigscope-programs": None}
    results = {"untraced": measures(700.0, 600.0), "tp_btf signal_generate": measures(790.0,
                                                                                     680.0),
               "sigscope-programs": measures(1400.0, 1300.0)}
    table = rows(floor.signal_table(configs, results, {"floor-2": "feature tp_btf missing"}))
    assert list(table) == list(configs)
    assert table["untraced"][1:4] == ["+0", "1.00x", "0%"]
    # +90, +80 -> +85; ratios 1.129, 1.133; shares 90/350, 80/300
    assert table["tp_btf signal_generate"][1:] == ["+85", "1.13x", "26%", "+90, +80"]
    assert table["floor-2"] == ["tp_btf signal_generate + perf sys_exit_tgkill",
                                "n/a (feature tp_btf missing)", "n/a", "n/a", ""]
    assert table["sigscope-programs"][1:4] == ["+700", "2.08x", "217%"]


def test_the_syscall_table_lists_only_configurations_that_tax_every_syscall() -> None:
    configs = floor.configurations("tgkill")
    results = {name: measures(800.0, syscall_ns=300.0) for name in configs}
    results["untraced"] = measures(700.0, syscall_ns=250.0)
    table = rows(floor.syscall_table(configs, results, {"tp_btf sys_exit":
                                                        "feature tp_btf missing"}))
    assert list(table) == ["perf sys_exit_tgkill", "tp_btf sys_exit", "perf sys_enter_tgkill",
                           "floor-2", "floor-2, tp_btf sys_exit", "floor-3",
                           "sigscope-programs"]
    assert table["floor-2"] == ["+50", "1.20x", "+50"]
    assert table["tp_btf sys_exit"] == ["n/a (feature tp_btf missing)", "n/a", ""]
