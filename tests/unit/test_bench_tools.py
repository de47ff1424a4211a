"""The benchmark tooling in bench/: loadgen.c really sends, and run.py's pure helpers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sigscope.model.record import SYSCALL_VIAS as VIAS

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


run = load_run_module()


# ----------------------------------------------------------------------------- loadgen


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory) -> Path:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler: loadgen is benchmark tooling, not part of the product")
    # Not named "loadgen": the comm benchmarks filter on, so a benchmark running meanwhile
    # does not count this test's signals.
    binary = tmp_path_factory.mktemp("bench") / "bench-lg-test"
    build = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(binary),
         str(BENCH_DIR / "loadgen.c")],
        capture_output=True, text=True, timeout=60,
    )
    assert build.returncode == 0, build.stderr
    return binary


def run_loadgen(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("via", VIAS)
def test_loadgen_sends_every_signal(loadgen: Path, via: str) -> None:
    done = run_loadgen(loadgen, "--via", via, "--count", "1000")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["via"] == via
    assert result["sent"] == 1000
    assert result["failed"] == 0
    assert result["elapsed_s"] > 0 and result["rate"] > 0


def test_loadgen_paces_to_the_asked_rate(loadgen: Path) -> None:
    # 200 signals at 2000/s: the last batch is due 0.1 s after the start.
    result = json.loads(run_loadgen(loadgen, "--via", "tgkill", "--count", "200",
                                    "--rate", "2000").stdout)
    assert result["sent"] == 200
    assert 0.09 <= result["elapsed_s"] < 1.0


@pytest.mark.parametrize("args", [("--via", "nope", "--count", "1"), ("--via", "kill"),
                                  ("--via", "kill", "--count", "1", "--signal", "9"),
                                  ("--via", "kill", "--count")])
def test_loadgen_rejects_bad_arguments(loadgen: Path, args: tuple) -> None:
    done = run_loadgen(loadgen, *args)
    assert done.returncode == 2
    assert "usage:" in done.stderr


# ----------------------------------------------------------------------------- run.py helpers


def result(config: str, round_index: int, rate: float | None, **fields) -> object:
    return run.RunResult(config, round_index, "tgkill", 1000, rate=rate, **fields)


def test_median_or_none_ignores_missing_values() -> None:
    assert run.median_or_none([3.0, None, 1.0, 2.0]) == 2.0
    assert run.median_or_none([None, None]) is None
    assert run.median_or_none([]) is None


def test_round_order_rotates_so_every_config_runs_once_per_round() -> None:
    configs = ["a", "b", "c"]
    orders = [run.round_order(configs, i) for i in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert run.round_order([], 5) == []


def test_slowdown_is_paired_with_the_untraced_run_of_the_same_round() -> None:
    results = [
        result("untraced", 0, 1000.0), result("trace", 0, 500.0),
        result("untraced", 1, 2000.0), result("trace", 1, 500.0),
        result("trace", 2, 100.0),  # no baseline in round 2
    ]
    assert set(run.pair_by_round(results)) == {0, 1, 2}
    assert run.pair_by_round(results)[1]["trace"] is results[3]
    run.apply_slowdowns(results)
    assert results[1].slowdown == pytest.approx(2.0)
    assert results[3].slowdown == pytest.approx(4.0)
    assert results[0].slowdown == pytest.approx(1.0)
    assert results[4].slowdown is None


def test_format_table_reports_medians_and_na() -> None:
    results = [
        result("untraced", 0, 1000.0), result("untraced", 1, 3000.0),
        result("trace", 0, 500.0, captured=900, lost=100, exact=True, sent=1000,
               tracer_cpu_s=0.5, tracer_maxrss_mib=30.0, ready_s=0.2),
        result("trace", 1, 1000.0, captured=990, lost=0, exact=False, sent=1000,
               tracer_cpu_s=1.5, tracer_maxrss_mib=32.0, ready_s=0.4),
        result("top", 0, None, available=False),
        result("bpf", 0, None, error="tracer exited"),
    ]
    run.apply_slowdowns(results)
    lines = run.format_table(results, ["untraced", "trace", "top", "bpf"]).splitlines()
    assert lines[0].startswith("| config | rate")
    assert lines[1].startswith("| --- |")
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in lines[2:]}
    assert rows["untraced"][1:3] == ["2,000", "1.00x"]
    # trace: rates 500/1000 -> median 750; slowdowns 2x and 3x -> 2.50x
    assert rows["trace"][1:] == ["750", "2.50x", "945", "50", "no (1/2 runs)", "1.00",
                                 "31.0", "0.30"]
    assert set(rows["top"][1:]) == {"n/a"}
    assert set(rows["bpf"][1:]) == {"error"}


def test_search_finds_the_highest_clean_rate() -> None:
    tried = []

    def fails_at(rate: int) -> bool:
        tried.append(rate)
        return rate > 300_000

    assert run.find_max_zero_loss_rate(fails_at, start=100_000, refine_steps=4) == 300_000
    assert tried[:3] == [100_000, 200_000, 400_000]
    assert run.find_max_zero_loss_rate(lambda rate: True, start=1000) is None
    assert run.find_max_zero_loss_rate(lambda rate: False, start=1000, max_rate=8000) == 8000


def test_paced_outcome_tells_loss_from_shortfall() -> None:
    ok = result("trace", 0, 99_000.0, lost=0, exact=True)
    short = result("trace", 0, 50_000.0, lost=0, exact=True)
    lossy = result("trace", 0, 100_000.0, lost=3, exact=True)
    assert run.paced_outcome(ok, 100_000) == "ok"
    assert run.paced_outcome(short, 100_000) == "not sustained"
    assert run.paced_outcome(lossy, 100_000) == "lost"


def test_trace_records_count_only_loadgen_sends_by_the_via() -> None:
    lines = [
        '{"type": "signal", "via": "tgkill", "sender": {"comm": "loadgen"}}',
        '{"type": "signal", "via": "tgkill", "sender": {"comm": "loadgen"}}',
        '{"type": "signal", "via": "kill", "sender": {"comm": "loadgen"}}',
        '{"type": "signal", "via": "tgkill", "sender": {"comm": "bash"}}',
        '{"type": "signal", "via": "tgkill", "sender_comm": "loadgen"}',
        '{"type": "lost", "count": 7}',
        '{"type": "lost", "count": 3}',
        '{"type": "signal", "via": "tgk',  # cut short by a kill
    ]
    assert run.count_trace_records(lines, "", "tgkill") == (3, 10)


def test_top_intervals_sum_rows_of_the_via_and_their_losses() -> None:
    lines = [
        json.dumps({"rows": [{"via": "tgkill", "count": 5}, {"via": "kill", "count": 9}],
                    "lost": 1}),
        json.dumps({"rows": [{"via": "tgkill", "count": 6}], "lost": 0}),
        json.dumps({"rows": []}),
    ]
    assert run.count_top_intervals(lines, "", "tgkill") == (11, 1)


def test_bpftrace_outputs_are_counted() -> None:
    stream = ["Attaching 1 probe...\n", "S 10 1 1\n", "S 10 1 1\n", "Lost 4 events\n", "\n"]
    assert run.count_bpftrace_stream(stream, "Lost 2 events\n", "tgkill") == (2, 6)
    counted = ["Attaching 1 probe...\n", "\n", "\n", "@[10]: 123456\n"]
    assert run.count_bpftrace_map(counted, "", "tgkill") == (123456, 0)
    assert run.count_bpftrace_map(["Attaching 1 probe...\n"], "", "tgkill") == (0, 0)


def test_loadgen_output_is_parsed() -> None:
    parsed = run.parse_loadgen_output(
        '{"via": "kill", "sent": 10, "failed": 0, "elapsed_s": 0.5, "rate": 20.0}\n')
    assert parsed == run.LoadgenResult("kill", 10, 0, 0.5, 20.0)
    with pytest.raises(run.BenchError):
        run.parse_loadgen_output("")


def test_parse_args_quick_and_config_subset() -> None:
    args = run.parse_args(["--quick", "--configs", "untraced,bpftrace-count"])
    assert (args.count, args.rounds) == (100_000, 1)
    assert args.config_list == ["untraced", "bpftrace-count"]
    with pytest.raises(SystemExit):
        run.parse_args(["--configs", "untraced,nonsense"])
