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


def test_loadgen_getppid_mode_calls_getppid_and_keeps_the_output_format(loadgen: Path) -> None:
    done = run_loadgen(loadgen, "--via", "getppid", "--count", "1000")
    assert done.returncode == 0, done.stderr
    parsed = run.parse_loadgen_output(done.stdout)
    assert (parsed.via, parsed.sent, parsed.failed) == ("getppid", 1000, 0)
    assert parsed.elapsed_s > 0 and parsed.rate > 0


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
    assert rows["untraced"][1:4] == ["2,000", "1.00x", "+0"]
    # trace: rates 500/1000 -> median 750; slowdowns 2x and 3x -> 2.50x; no elapsed times,
    # so no cost per signal
    assert rows["trace"][1:] == ["750", "2.50x", "n/a", "945", "50", "no (1/2 runs)", "1.00",
                                 "31.0", "0.30"]
    assert set(rows["top"][1:]) == {"n/a"}
    assert set(rows["bpf"][1:]) == {"error"}


def timed(config: str, round_index: int, elapsed_s: float, sent: int = 1000, **fields) -> object:
    return run.RunResult(config, round_index, "tgkill", sent, sent=sent, elapsed_s=elapsed_s,
                         rate=sent / elapsed_s, **fields)


def test_cost_per_signal_is_the_paired_time_difference_over_the_signals() -> None:
    # 1000 signals: untraced 1 ms (1000 ns each), traced 1.39 ms -> +390 ns per signal
    assert run.pair_cost_ns(timed("top", 0, 0.00139), timed("untraced", 0, 0.001)) == \
        pytest.approx(390.0)
    # per signal, so unequal counts compare too: 2000 traced signals in 3 ms = 1500 ns each
    assert run.pair_cost_ns(timed("top", 0, 0.003, sent=2000), timed("untraced", 0, 0.001)) \
        == pytest.approx(500.0)
    # noise can make the traced run faster: the sign is kept, not clamped
    assert run.pair_cost_ns(timed("top", 0, 0.0009), timed("untraced", 0, 0.001)) == \
        pytest.approx(-100.0)
    unfinished = run.RunResult("top", 0, "tgkill", 1000)
    assert run.pair_cost_ns(unfinished, timed("untraced", 0, 0.001)) is None
    nothing_sent = run.RunResult("untraced", 0, "tgkill", 1000, sent=0, elapsed_s=0.1)
    assert run.pair_cost_ns(timed("top", 0, 0.001), nothing_sent) is None


def test_cost_is_paired_by_round_and_the_table_shows_the_median_over_pairs() -> None:
    results = [
        timed("untraced", 0, 0.001), timed("top", 0, 0.0012),   # +200
        timed("untraced", 1, 0.002), timed("top", 1, 0.0025),   # +500 (a slow round)
        timed("untraced", 2, 0.001), timed("top", 2, 0.0013),   # +300
        timed("top", 3, 0.0001),  # no baseline in round 3: no pair, not in the median
    ]
    run.apply_slowdowns(results)
    assert [r.cost_ns for r in results[1::2]] == pytest.approx([200.0, 500.0, 300.0])
    assert results[0].cost_ns == pytest.approx(0.0)
    assert results[6].cost_ns is None
    # the median of the pairs (300), not the difference of the medians of times
    row = run.summary_row("top", [r for r in results if r.config == "top"])
    assert row[2:4] == ["1.25x", "+300"]
    assert run.format_cost(-12.4) == "-12" and run.format_cost(None) == "n/a"
    assert run.format_cost(1234.0) == "+1,234"


def storm(round_index: int, elapsed_s: float, captured: int, lost: int) -> object:
    return timed("sigscope-trace", round_index, elapsed_s, captured=captured, lost=lost,
                 exact=captured + lost == 1000)


def test_targets_compare_top_with_the_one_liner_and_check_the_storm() -> None:
    results = [
        timed("untraced", 0, 0.001), timed("sigscope-top", 0, 0.0013),
        timed("bpftrace-oneliner", 0, 0.00125), timed("bpftrace-3tp", 0, 0.0017),
        storm(0, 0.0014, 600, 400),
    ]
    run.apply_slowdowns(results)
    top, spread, trace, paced, trace3, paced3 = run.target_lines(results, None)
    assert spread.strip() == ("per round: sigscope-top +300; bpftrace-oneliner +250; "
                              "bpftrace-3tp +700")
    assert "sigscope-top +300 ns/signal" in top
    assert "bpftrace-oneliner +250 ns/signal" in top and "bpftrace-3tp +700" in top
    assert top.endswith(": not met")
    assert "slowdown 1.40x" in trace and "+400 ns/signal" in trace
    assert "captured+lost == sent: yes (600+400=1,000 of 1,000)" in trace
    assert trace.endswith(": met")
    assert paced.endswith("not measured (--paced or --with-paced)")
    assert trace3.startswith("- trace --json, three probes storm: slowdown n/a")
    assert trace3.endswith(": not measured") and paced3.endswith("not measured (--paced or "
                                                                 "--with-paced)")
    found = {"sigscope-trace": {"max_zero_loss_rate": 531_250, "trials": [], "error": None},
             "sigscope-trace-3probe": {"max_zero_loss_rate": 400_000, "trials": [],
                                       "error": None}}
    lines = run.target_lines(results, found)
    assert lines[3].endswith(": 531,250 signals/s")
    assert "three probes" in lines[5] and lines[5].endswith(": 400,000 signals/s")


def test_targets_fail_on_a_lossy_uncounted_storm_and_say_what_did_not_run() -> None:
    results = [timed("untraced", 0, 0.001), storm(0, 0.0011, 600, 300),  # 100 unaccounted
               timed("sigscope-top", 0, 0.0012)]
    run.apply_slowdowns(results)
    top, spread, trace, *_ = run.target_lines(results, None)
    assert "bpftrace-oneliner n/a ns/signal" in top and top.endswith(": not measured")
    assert "bpftrace-oneliner n/a;" in spread
    assert "no (1/1 runs)" in trace and trace.endswith(": not met")
    slow = [timed("untraced", 0, 0.001), storm(0, 0.0016, 1000, 0)]
    run.apply_slowdowns(slow)
    assert run.target_lines(slow, None)[2].endswith(": not met")  # 1.6x > 1.5x
    assert run.target_lines([], None)[2].endswith(": not measured")


def test_missing_bpftrace_is_one_clear_note_naming_the_install() -> None:
    configs = ["untraced", "sigscope-top", "bpftrace-oneliner", "bpftrace-3tp"]
    notes = run.missing_notes(configs, {"untraced", "sigscope-top"}, bpftrace_found=False)
    assert len(notes) == 1
    assert "bpftrace is not installed" in notes[0]
    assert "bpftrace-oneliner, bpftrace-3tp" in notes[0] and "apt-get install" in notes[0]
    assert run.missing_notes(configs, set(configs), bpftrace_found=False) == []
    # found but not runnable, or sigscope not runnable: named one by one
    notes = run.missing_notes(configs, {"untraced"}, bpftrace_found=True)
    assert len(notes) == 3 and all("not available" in n for n in notes)


def test_bpftrace_keyed_maps_count_loadgen_sigusr1_only() -> None:
    oneliner = ["Attaching 2 probes...\n", "bench: ready\n", "\n", "@[bash, 17]: 4\n",
                "@[loadgen, 17]: 1\n", "@[loadgenx, 10]: 9\n", "@[loadgen, 10]: 999999\n"]
    assert run.count_bpftrace_keyed(oneliner, "", "tgkill") == (999_999, 0)
    three = ["@[loadgen, 10, 1]: 700\n", "@[loadgen, 10, -3]: 5\n", "@[loadgen, 12, 1]: 2\n"]
    assert run.count_bpftrace_keyed(three, "", "tgkill") == (705, 0)
    assert run.count_bpftrace_keyed([], "", "tgkill") == (0, 0)


@pytest.mark.parametrize("via", VIAS)
def test_three_tracepoint_program_uses_the_send_paths_tracepoints(via: str) -> None:
    program = run.bpftrace_three_tracepoints(via)
    assert f"tracepoint:syscalls:sys_enter_{via} " in program
    assert "tracepoint:signal:signal_generate " in program
    assert f"tracepoint:syscalls:sys_exit_{via} " in program
    assert program.count("tracepoint:") == 3 and "count()" in program
    assert run.BPFTRACE_READY in program
    specs = run.tracer_specs(["sigscope"], None, via=via)
    assert specs["bpftrace-3tp"].argv == ["bpftrace", "-e", program]
    assert "@[comm, args->sig] = count();" in specs["bpftrace-oneliner"].argv[2]


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
    assert run.parse_args(["--with-paced"]).with_paced
    assert set(run.BPFTRACE_CONFIGS) <= set(run.parse_args([]).config_list)
