#!/usr/bin/env python3
"""Benchmark sigscope against an untraced run and bpftrace.

Benchmark tooling, not part of the installed package. Run as root from the repository root:

    python3 bench/run.py                       # 3 paired rounds, tgkill, 1,000,000 signals
    python3 bench/run.py --quick               # smoke test: 100,000 signals, 1 round
    python3 bench/run.py --via kill --rounds 5 --configs untraced,sigscope-trace
    python3 bench/run.py --paced               # highest zero-loss rate of `sigscope trace --json`
    python3 bench/run.py --with-paced          # the paired rounds, then the --paced search
    python3 bench/run.py --configs untraced,sigscope-trace,sigscope-trace-cgroup
                                               # the cost of --cgroup (the workload's cgroup)

The workload is bench/loadgen.c, compiled here with the system C compiler. Every round runs
every configuration once (in a rotated order), so drift on the machine affects all alike and
slowdowns and costs per signal (traced ns per signal - untraced ns per signal) are computed
against the untraced run of the same round. Prints a markdown table of medians over the rounds,
then issue 11's targets as read from the run, and writes every run's raw numbers to
bench/out/results.json. The bpftrace configurations are skipped, with a note, when bpftrace is
not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import queue
import re
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"

# The vocabulary (send paths, signal numbers) of this checkout: pure standard library, so it
# imports even where sigscope is not installed.
sys.path.insert(0, str(REPO_DIR / "src"))
from sigscope.model.record import SYSCALL_VIAS  # noqa: E402
from sigscope.model.signals import SIGNALS  # noqa: E402

del sys.path[0]

LOADGEN_COMM = "loadgen"  # the binary is named so; tracers filter on this sender comm
BENCH_SIGNAL = SIGNALS["SIGUSR1"]  # loadgen's default
VIAS = SYSCALL_VIAS
CONFIGS = ("untraced", "sigscope-trace", "sigscope-trace-3probe", "sigscope-top",
           "bpftrace-stream", "bpftrace-count", "bpftrace-oneliner", "bpftrace-3tp",
           "sigscope-trace-cgroup")
# Asked for by name only: it makes a cgroup and runs the whole bench (every configuration's
# workload alike, so that the rounds stay paired) inside it.
CGROUP_CONFIG = "sigscope-trace-cgroup"
DEFAULT_CONFIGS = tuple(c for c in CONFIGS if c != CGROUP_CONFIG)
STREAMING_CONFIGS = ("sigscope-trace", "sigscope-trace-3probe", "bpftrace-stream")
# sigscope-trace-3probe: `sigscope trace` forced onto its sys_enter probes (three programs per
# signal) where the kernel would let it run two (programs/entry_regs.py), for the difference.
# main() without arguments: as a program, so that it installs its SIGINT handler (the bench
# stops tracers with SIGINT, and a tracer must drain and count before it exits).
THREE_PROBE_MAIN = ("import sys; from sigscope.session import ProbeSession; "
                    "ProbeSession.entry_probes = True; from sigscope.cli.main import main; "
                    "sys.exit(main())")
BPFTRACE_CONFIGS = tuple(c for c in CONFIGS if c.startswith("bpftrace-"))
BPFTRACE_INSTALL = "apt-get install -y bpftrace (Debian/Ubuntu), dnf install bpftrace (Fedora)"

READY_TIMEOUT_S = 60.0  # bpftrace compiles with LLVM at start-up; allow for a slow machine
STOP_TIMEOUT_S = 60.0  # a tracer drains its buffers after SIGINT
PROBE_TIMEOUT_S = 30.0


class BenchError(Exception):
    """A run that could not be completed; the message is one line."""


# ----------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """One configuration run once in one round."""

    config: str
    round: int
    via: str
    count: int
    available: bool = True
    error: str | None = None
    sent: int | None = None
    failed: int | None = None
    elapsed_s: float | None = None
    rate: float | None = None
    slowdown: float | None = None  # untraced rate of the same round / this run's rate
    # (this run's time per signal - the untraced run's of the same round), in ns
    cost_ns: float | None = None
    captured: int | None = None
    lost: int | None = None
    exact: bool | None = None  # captured + lost == sent
    tracer_cpu_s: float | None = None
    tracer_maxrss_mib: float | None = None
    ready_s: float | None = None


@dataclass
class TracerSpec:
    """How to start one tracer, recognise that it is ready, and count what it saw."""

    argv: list[str]
    ready_prefix: str
    ready_on_stdout: bool  # bpftrace's ready line is on stdout, sigscope's on stderr
    # (stdout lines, stderr, via) -> (captured, lost); stdout is streamed: it can be 100s of MB
    count: Callable[[Iterable[str], str, str], tuple[int, int]]
    env: dict | None = None


@dataclass
class LoadgenResult:
    via: str
    sent: int
    failed: int
    elapsed_s: float
    rate: float


@dataclass
class ChildRegistry:
    """Every process we start, so that all of them are killed at the end, whatever happens."""

    processes: list[subprocess.Popen] = field(default_factory=list)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kwargs)
        self.processes.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.processes:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass


# ----------------------------------------------------------------------------- pure helpers


def median_or_none(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def round_order(configs: list[str], round_index: int) -> list[str]:
    """Rotate the configuration order each round so no configuration always runs first."""
    if not configs:
        return []
    shift = round_index % len(configs)
    return configs[shift:] + configs[:shift]


def pair_by_round(results: Iterable[RunResult]) -> dict[int, dict[str, RunResult]]:
    """Group runs as {round: {config: result}}."""
    rounds: dict[int, dict[str, RunResult]] = {}
    for result in results:
        rounds.setdefault(result.round, {})[result.config] = result
    return rounds


def ns_per_signal(result: RunResult) -> float | None:
    """Wall time per signal sent, in ns; None without a completed workload."""
    if result.elapsed_s is None or not result.sent:
        return None
    return result.elapsed_s * 1e9 / result.sent


def pair_cost_ns(traced: RunResult, baseline: RunResult) -> float | None:
    """Cost per signal of tracing, in ns: the traced run's time per signal minus the untraced
    run's (of the same round). With equal counts this is (traced_time - untraced_time) /
    signals. Negative when noise made the traced run faster; None when either run is missing."""
    traced_ns, baseline_ns = ns_per_signal(traced), ns_per_signal(baseline)
    if traced_ns is None or baseline_ns is None:
        return None
    return traced_ns - baseline_ns


def apply_slowdowns(results: list[RunResult]) -> None:
    """Set each run's slowdown and cost per signal against the untraced run of the same round."""
    for runs in pair_by_round(results).values():
        baseline = runs.get("untraced")
        for result in runs.values():
            if baseline is None or not baseline.rate or not result.rate:
                result.slowdown = None
                result.cost_ns = None
            else:
                result.slowdown = baseline.rate / result.rate
                result.cost_ns = pair_cost_ns(result, baseline)


def exact_summary(results: list[RunResult]) -> str:
    checks = [r.exact for r in results if r.exact is not None]
    if not checks:
        return "n/a"
    if all(checks):
        return "yes"
    return f"no ({checks.count(False)}/{len(checks)} runs)"


def format_number(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def format_cost(value: float | None) -> str:
    """A cost per signal with its sign: "+390", "-12", "n/a"."""
    if value is None:
        return "n/a"
    return f"{value:+,.0f}"


TABLE_HEADER = (
    "config",
    "rate (signals/s)",
    "slowdown",
    "ns/signal over untraced",
    "captured",
    "lost",
    "captured+lost == sent",
    "tracer CPU (s)",
    "tracer max RSS (MiB)",
    "ready (s)",
)


def summary_row(config: str, runs: list[RunResult]) -> list[str]:
    """One table row of medians over the rounds; n/a when the configuration never ran."""
    usable = [r for r in runs if r.available and r.error is None]
    if not usable:
        reason = "n/a"
        if runs and runs[0].available and runs[0].error:
            reason = "error"
        return [config] + [reason] * (len(TABLE_HEADER) - 1)
    traced = config != "untraced"
    return [
        config,
        format_number(median_or_none(r.rate for r in usable)),
        format_number(median_or_none(r.slowdown for r in usable), 2, "x") if traced else "1.00x",
        format_cost(median_or_none(r.cost_ns for r in usable)) if traced else "+0",
        format_number(median_or_none(r.captured for r in usable)),
        format_number(median_or_none(r.lost for r in usable)),
        exact_summary(usable),
        format_number(median_or_none(r.tracer_cpu_s for r in usable), 2),
        format_number(median_or_none(r.tracer_maxrss_mib for r in usable), 1),
        format_number(median_or_none(r.ready_s for r in usable), 2),
    ]


def format_table(results: list[RunResult], configs: list[str]) -> str:
    """A markdown table, one row per configuration, medians over the rounds."""
    rows = [list(TABLE_HEADER), ["---"] * len(TABLE_HEADER)]
    for config in configs:
        rows.append(summary_row(config, [r for r in results if r.config == config]))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


STORM_SLOWDOWN_TARGET = 1.5  # issue 11: `sigscope trace --json > file` at the full-speed storm


def usable_runs(results: Iterable[RunResult], config: str) -> list[RunResult]:
    return [r for r in results if r.config == config and r.available and r.error is None]


def target_lines(results: list[RunResult], paced: dict[str, dict] | None) -> list[str]:
    """The issue-11 targets as read from this run: sigscope-top's cost per signal against the
    bpftrace one-liner's, the trace storm's slowdown and exactness, and the highest zero-loss
    paced rate. A target whose configurations did not run says "not measured"."""
    lines = []
    costs = {config: [r.cost_ns for r in usable_runs(results, config) if r.cost_ns is not None]
             for config in ("sigscope-top", "bpftrace-oneliner", "bpftrace-3tp")}
    top, one, three = (median_or_none(values) for values in costs.values())
    if top is None or one is None:
        verdict = "not measured"
    else:
        verdict = "met" if top <= one else "not met"
    lines.append(f"- top vs bpftrace one-liner: sigscope-top {format_cost(top)} ns/signal, "
                 f"bpftrace-oneliner {format_cost(one)} ns/signal, bpftrace-3tp "
                 f"{format_cost(three)} ns/signal (target: top <= one-liner): {verdict}")
    # The spread tells a difference from the noise of a shared machine.
    lines.append("  per round: " + "; ".join(
        f"{config} {', '.join(format_cost(v) for v in values) or 'n/a'}"
        for config, values in costs.items()))
    for config, label in (("sigscope-trace", "trace --json"),
                          ("sigscope-trace-3probe", "trace --json, three probes")):
        lines += _trace_lines(results, paced, config, label)
    return lines


def _trace_lines(results: list[RunResult], paced: dict[str, dict] | None, config: str,
                 label: str) -> list[str]:
    """The storm and paced-rate lines of one `sigscope trace` configuration."""
    lines = []
    trace = usable_runs(results, config)
    slowdown = median_or_none(r.slowdown for r in trace)
    if slowdown is None:
        verdict = "not measured"
    else:
        verdict = "met" if slowdown <= STORM_SLOWDOWN_TARGET and all(r.exact for r in trace) \
            else "not met"
    per_run = ", ".join(f"{r.captured:,}+{r.lost:,}={r.captured + r.lost:,} of {r.sent:,}"
                        for r in trace
                        if r.captured is not None and r.lost is not None and r.sent is not None)
    trace_cost = median_or_none(r.cost_ns for r in trace)
    lines.append(f"- {label} storm: slowdown {format_number(slowdown, 2, 'x')} "
                 f"(target <= {STORM_SLOWDOWN_TARGET}x), {format_cost(trace_cost)} ns/signal, "
                 f"captured+lost == sent: {exact_summary(trace)} ({per_run or 'no runs'}): "
                 f"{verdict}")
    outcome = (paced or {}).get(config)
    if outcome is None:
        lines.append(f"- highest zero-loss paced rate of {label}: not measured "
                     "(--paced or --with-paced)")
    elif outcome.get("error"):
        lines.append(f"- highest zero-loss paced rate of {label}: error: {outcome['error']}")
    else:
        lines.append(f"- highest zero-loss paced rate of {label}: "
                     f"{format_number(outcome['max_zero_loss_rate'])} signals/s")
    return lines


def missing_notes(configs: Iterable[str], available: set[str], bpftrace_found: bool
                  ) -> list[str]:
    """One line per reason a requested configuration is skipped (reported as n/a)."""
    missing = [c for c in configs if c not in available]
    notes = []
    skipped_bpftrace = [c for c in missing if c in BPFTRACE_CONFIGS]
    if skipped_bpftrace and not bpftrace_found:
        notes.append(f"note: bpftrace is not installed (not on PATH): skipped "
                     f"{', '.join(skipped_bpftrace)} (n/a in the table); install it with "
                     f"{BPFTRACE_INSTALL}")
    for config in missing:
        if config not in skipped_bpftrace or bpftrace_found:
            notes.append(f"note: {config} is not available (its command does not run): n/a")
    return notes


def find_max_zero_loss_rate(
    fails_at: Callable[[int], bool], start: int = 100_000, refine_steps: int = 4,
    max_rate: int = 100_000_000,
) -> int | None:
    """Highest rate at which fails_at(rate) is False: double from start until it fails, then
    bisect refine_steps times between the last clean and the first failing rate.
    None when even the lowest rate tried fails."""
    clean, failing = 0, None
    rate = start
    while rate <= max_rate:
        if fails_at(rate):
            failing = rate
            break
        clean = rate
        rate *= 2
    if failing is None:
        return clean
    for _ in range(refine_steps):
        middle = (clean + failing) // 2
        if middle <= clean:
            break
        if fails_at(middle):
            failing = middle
        else:
            clean = middle
    return clean or None


# ----------------------------------------------------------------------------- output parsing


def json_lines(lines: Iterable[str]) -> Iterable[dict]:
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue  # a record cut short by a kill is not worth crashing over
        if isinstance(value, dict):
            yield value


def sender_comm(record: dict) -> str | None:
    sender = record.get("sender")
    if isinstance(sender, dict):
        return sender.get("comm")
    return record.get("sender_comm")


def count_trace_records(stdout: Iterable[str], stderr: str, via: str) -> tuple[int, int]:
    """`sigscope trace --json`: signal records sent by loadgen via `via`, and reported losses."""
    captured = lost = 0
    for record in json_lines(stdout):
        kind = record.get("type")
        if kind == "signal" and record.get("via") == via and sender_comm(record) == LOADGEN_COMM:
            captured += 1
        elif kind == "lost":
            lost += int(record.get("count", 0))
    return captured, lost


def count_top_intervals(stdout: Iterable[str], stderr: str, via: str) -> tuple[int, int]:
    """`sigscope top --json`: sum of row counts for `via` over all intervals, and their losses."""
    captured = lost = 0
    for interval in json_lines(stdout):
        for row in interval.get("rows", []):
            if isinstance(row, dict) and row.get("via") == via:
                captured += int(row.get("count", 0))
        lost += int(interval.get("lost", 0) or 0)
    return captured, lost


BPFTRACE_LOST = re.compile(r"Lost (\d+) events")


def bpftrace_lost(text: str) -> int:
    return sum(int(n) for n in BPFTRACE_LOST.findall(text))


def count_bpftrace_stream(stdout: Iterable[str], stderr: str, via: str) -> tuple[int, int]:
    captured = lost = 0
    for line in stdout:
        if line.startswith("S "):
            captured += 1
        else:
            lost += bpftrace_lost(line)
    return captured, lost + bpftrace_lost(stderr)


BPFTRACE_MAP_ENTRY = re.compile(rf"@\[{BENCH_SIGNAL}\]: (\d+)")


def count_bpftrace_map(stdout: Iterable[str], stderr: str, via: str) -> tuple[int, int]:
    for line in stdout:
        match = BPFTRACE_MAP_ENTRY.match(line)
        if match:
            return int(match.group(1)), 0
    return 0, 0


# `@[loadgen, 10]: N` (one-liner) or `@[loadgen, 10, 1]: N` (three tracepoints, keyed also by
# signal_generate's result); bpftrace prints a string key bare, so a comm is matched exactly.
BPFTRACE_KEYED_ENTRY = re.compile(
    rf"@\[{LOADGEN_COMM}, {BENCH_SIGNAL}(?:, -?\d+)*\]: (\d+)$")


def count_bpftrace_keyed(stdout: Iterable[str], stderr: str, via: str) -> tuple[int, int]:
    """A count map keyed by (comm, signal[, more]): the sum over loadgen's SIGUSR1 keys. A map
    loses nothing, so lost is 0."""
    captured = 0
    for line in stdout:
        match = BPFTRACE_KEYED_ENTRY.match(line.strip())
        if match:
            captured += int(match.group(1))
    return captured, 0


# ----------------------------------------------------------------------------- tracers


BPFTRACE_FILTER = f'/comm == "{LOADGEN_COMM}" && args->sig == {BENCH_SIGNAL}/'
# bpftrace prints "Attaching N probes..." BEFORE it attaches them (a run started on that line
# misses its first signals); BEGIN fires once every probe is attached, so that is the ready line.
BPFTRACE_READY = "bench: ready"
BPFTRACE_BEGIN = f'BEGIN {{ printf("{BPFTRACE_READY}\\n"); }} '
BPFTRACE_STREAM = (
    f"{BPFTRACE_BEGIN}tracepoint:signal:signal_generate {BPFTRACE_FILTER} "
    '{ printf("S %d %d %d %llu\\n", args->sig, args->pid, args->result, nsecs); }'
)
BPFTRACE_COUNT = (
    f"{BPFTRACE_BEGIN}tracepoint:signal:signal_generate {BPFTRACE_FILTER} "
    "{ @[args->sig] = count(); }"
)
# Issue 11's reference one-liner, verbatim (unfiltered: every generated signal is counted).
BPFTRACE_ONELINER = (
    f"{BPFTRACE_BEGIN}tracepoint:signal:signal_generate {{ @[comm, args->sig] = count(); }}"
)


def bpftrace_three_tracepoints(via: str) -> str:
    """A counting program on the three tracepoints sigscope's programs use per signal
    (syscalls:sys_enter_<via>, signal:signal_generate, syscalls:sys_exit_<via>): the entry keeps
    the signal per thread, generate adds its result, the exit counts (comm, signal, result) and
    forgets the thread. Every send path's entry has a `sig` field (its tracefs format). A send
    of signal 0 is not counted (the entry stores 0, which the predicates read as absent)."""
    return (
        f"{BPFTRACE_BEGIN}"
        f"tracepoint:syscalls:sys_enter_{via} {{ @sig[tid] = args->sig; }} "
        "tracepoint:signal:signal_generate /@sig[tid]/ { @res[tid] = args->result; } "
        f"tracepoint:syscalls:sys_exit_{via} /@sig[tid]/ "
        "{ @[comm, @sig[tid], @res[tid]] = count(); delete(@sig[tid]); delete(@res[tid]); } "
        "END { clear(@sig); clear(@res); }"
    )


def sigscope_command(option: str | None) -> tuple[list[str], dict | None]:
    """The sigscope command line and environment: --sigscope, else `sigscope` on PATH, else
    `python3 -m sigscope` with this checkout's src/ on PYTHONPATH."""
    if option:
        return shlex.split(option), None
    if shutil.which("sigscope"):
        return ["sigscope"], None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR / "src"),
                                                      env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "sigscope"], env


def command_works(argv: list[str], env: dict | None) -> bool:
    try:
        probe = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def three_probe_command() -> tuple[list[str], dict]:
    """`sigscope` with ProbeSession.entry_probes set (this checkout's src/ first on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR / "src"),
                                                      env.get("PYTHONPATH")]))
    return [sys.executable, "-c", THREE_PROBE_MAIN], env


def tracer_specs(sigscope: list[str], env: dict | None, system_wide: bool = False,
                 via: str = "tgkill", cgroup: str | None = None) -> dict[str, TracerSpec]:
    """Every tracer configuration; system_wide drops sigscope's sender filter (paced mode);
    via names the syscall tracepoints of bpftrace-3tp; cgroup (a cgroup v2 path holding the
    workload) adds sigscope-trace-cgroup, sigscope-trace with --cgroup."""
    # The loadgen's comm and signal: its own exit's SIGCHLD is then not traced either, so that
    # captured + lost counts exactly the workload's sends.
    comm_filter = [] if system_wide else ["-c", LOADGEN_COMM, "-s", "USR1"]
    three, three_env = three_probe_command()
    return {
        "sigscope-trace": TracerSpec(sigscope + ["trace", "--json"] + comm_filter, "Tracing",
                                     False, count_trace_records, env),
        "sigscope-trace-3probe": TracerSpec(three + ["trace", "--json"] + comm_filter,
                                            "Tracing", False, count_trace_records, three_env),
        **({CGROUP_CONFIG: TracerSpec(sigscope + ["trace", "--json", *comm_filter, "--cgroup",
                                                 cgroup], "Tracing", False,
                                      count_trace_records, env)} if cgroup else {}),
        "sigscope-top": TracerSpec(sigscope + ["top", "--json", "-c", LOADGEN_COMM, "-s", "USR1",
                                                "-i", "1"],
                                   "Tracing", False, count_top_intervals, env),
        "bpftrace-stream": TracerSpec(["bpftrace", "-e", BPFTRACE_STREAM], BPFTRACE_READY, True,
                                      count_bpftrace_stream),
        "bpftrace-count": TracerSpec(["bpftrace", "-e", BPFTRACE_COUNT], BPFTRACE_READY, True,
                                     count_bpftrace_map),
        "bpftrace-oneliner": TracerSpec(["bpftrace", "-e", BPFTRACE_ONELINER], BPFTRACE_READY,
                                        True, count_bpftrace_keyed),
        "bpftrace-3tp": TracerSpec(["bpftrace", "-e", bpftrace_three_tracepoints(via)],
                                   BPFTRACE_READY, True, count_bpftrace_keyed),
    }


def available_configs(specs: dict[str, TracerSpec], sigscope: list[str],
                      env: dict | None) -> set[str]:
    available = {"untraced"}
    if shutil.which("bpftrace"):
        available |= set(BPFTRACE_CONFIGS)
    for sub, config in (("trace", "sigscope-trace"), ("top", "sigscope-top"),
                        ("trace", CGROUP_CONFIG)):
        if command_works(sigscope + [sub, "--help"], env):
            available.add(config)
    three, three_env = three_probe_command()
    if command_works(three + ["trace", "--help"], three_env):
        available.add("sigscope-trace-3probe")
    return available & (set(specs) | {"untraced"})


# ----------------------------------------------------------------------------- processes


def compile_loadgen(out_dir: Path) -> Path:
    compiler = os.environ.get("CC", "cc")
    binary = out_dir / LOADGEN_COMM
    argv = [compiler, "-O2", "-Wall", "-pthread", "-o", str(binary), str(BENCH_DIR / "loadgen.c")]
    try:
        build = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"cannot compile loadgen with {compiler}: {error}") from None
    if build.returncode != 0:
        raise BenchError(f"loadgen does not compile: {build.stderr.strip().splitlines()[:1]}")
    return binary


def parse_loadgen_output(stdout: str) -> LoadgenResult:
    for value in json_lines(stdout.splitlines()):
        return LoadgenResult(value["via"], int(value["sent"]), int(value["failed"]),
                             float(value["elapsed_s"]), float(value["rate"]))
    raise BenchError(f"loadgen printed no result: {stdout.strip()[:200]!r}")


def loadgen_timeout(count: int) -> float:
    return max(60.0, count / 5_000)  # even a heavily slowed run sends 5k signals/s


def run_loadgen(children: ChildRegistry, loadgen: Path, via: str, count: int,
                rate: int | None = None) -> LoadgenResult:
    argv = [str(loadgen), "--via", via, "--count", str(count)]
    if rate:
        argv += ["--rate", str(rate)]
    proc = children.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=loadgen_timeout(count))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BenchError(f"loadgen timed out after {loadgen_timeout(count):.0f} s") from None
    if proc.returncode not in (0, 1):  # 1: some sends failed, still a result worth reporting
        raise BenchError(f"loadgen exited with status {proc.returncode}: {stderr.strip()[:200]}")
    return parse_loadgen_output(stdout)


def wait_with_rusage(proc: subprocess.Popen, timeout: float) -> tuple[int, resource.struct_rusage]:
    """Reap proc with wait4 to get its own rusage; raises TimeoutError after timeout."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise TimeoutError
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def collect_lines(stream, lines: list[str], arrivals: queue.Queue) -> None:
    for line in stream:
        lines.append(line)
        arrivals.put(line)
    arrivals.put(None)  # end of stream


@dataclass
class RunningTracer:
    proc: subprocess.Popen
    stdout_path: Path
    stderr_lines: list[str]
    stderr_reader: threading.Thread
    ready_s: float


def file_has_line(path: Path, prefix: str) -> bool:
    with open(path, errors="replace") as out:
        return any(line.startswith(prefix) for line in out)


def wait_ready(proc: subprocess.Popen, spec: TracerSpec, stdout_path: Path,
               arrivals: queue.Queue, started: float) -> float:
    """Seconds from exec to the tracer's ready line; BenchError if it exits or times out."""
    deadline = started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if spec.ready_on_stdout:
            # A file has no ready notification; a 5 ms poll bounds the measurement error.
            if file_has_line(stdout_path, spec.ready_prefix):
                return time.monotonic() - started
            if proc.poll() is not None:
                break
            time.sleep(0.005)
            continue
        try:
            line = arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        if line.startswith(spec.ready_prefix):
            return time.monotonic() - started
    status = proc.poll()
    if status is None:
        raise BenchError(f"tracer not ready after {READY_TIMEOUT_S:.0f} s")
    raise BenchError(f"tracer exited with status {status} before its ready line")


def start_tracer(children: ChildRegistry, spec: TracerSpec, stdout_path: Path) -> RunningTracer:
    started = time.monotonic()
    with open(stdout_path, "w") as stdout_file:
        try:
            # A session of its own: a Ctrl-C at the terminal reaches only us; we stop it.
            proc = children.popen(spec.argv, stdout=stdout_file, stderr=subprocess.PIPE,
                                  text=True, env=spec.env, start_new_session=True)
        except OSError as error:
            raise BenchError(f"cannot start {spec.argv[0]}: {error.strerror}") from None
    stderr_lines: list[str] = []
    arrivals: queue.Queue = queue.Queue()
    stderr_reader = threading.Thread(target=collect_lines,
                                     args=(proc.stderr, stderr_lines, arrivals), daemon=True)
    stderr_reader.start()
    try:
        ready_s = wait_ready(proc, spec, stdout_path, arrivals, started)
    except BenchError as error:
        tail = "".join(stderr_lines[-3:]).strip().replace("\n", " | ")
        raise BenchError(f"{error}: {tail}" if tail else str(error)) from None
    return RunningTracer(proc, stdout_path, stderr_lines, stderr_reader, ready_s)


def stop_tracer(tracer: RunningTracer) -> tuple[str, resource.struct_rusage]:
    """SIGINT, wait for the tracer to drain and exit; returns its stderr and rusage."""
    tracer.proc.send_signal(signal.SIGINT)
    try:
        _, usage = wait_with_rusage(tracer.proc, STOP_TIMEOUT_S)
    except TimeoutError:
        tracer.proc.kill()
        raise BenchError(f"tracer did not exit {STOP_TIMEOUT_S:.0f} s after SIGINT") from None
    tracer.stderr_reader.join(timeout=5)  # the pipe hits EOF now that the tracer is gone
    return "".join(tracer.stderr_lines), usage


# ----------------------------------------------------------------------------- one run


def fill_workload(result: RunResult, workload: LoadgenResult) -> None:
    result.sent, result.failed = workload.sent, workload.failed
    result.elapsed_s, result.rate = workload.elapsed_s, workload.rate


def run_untraced(children: ChildRegistry, loadgen: Path, result: RunResult) -> None:
    fill_workload(result, run_loadgen(children, loadgen, result.via, result.count))


def run_traced(children: ChildRegistry, loadgen: Path, spec: TracerSpec, result: RunResult,
               out_dir: Path, rate: int | None = None, keep_output: bool = False) -> None:
    stdout_path = out_dir / f"{result.config}-round{result.round}.out"
    tracer = start_tracer(children, spec, stdout_path)
    result.ready_s = tracer.ready_s
    try:
        workload = run_loadgen(children, loadgen, result.via, result.count, rate)
    except BenchError:
        tracer.proc.kill()  # never leave a tracer attached while the next configuration runs
        tracer.proc.wait(timeout=10)
        raise
    fill_workload(result, workload)
    stderr, usage = stop_tracer(tracer)
    result.tracer_cpu_s = usage.ru_utime + usage.ru_stime
    result.tracer_maxrss_mib = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    with open(stdout_path, errors="replace") as stdout:
        result.captured, result.lost = spec.count(stdout, stderr, result.via)
    result.exact = result.captured + result.lost == result.sent
    if not keep_output:
        stdout_path.unlink()  # a million JSON records is hundreds of MB


def run_one(children: ChildRegistry, loadgen: Path, specs: dict[str, TracerSpec],
            result: RunResult, out_dir: Path, keep_output: bool = False) -> RunResult:
    try:
        if result.config == "untraced":
            run_untraced(children, loadgen, result)
        else:
            run_traced(children, loadgen, specs[result.config], result, out_dir,
                       keep_output=keep_output)
    except BenchError as error:
        result.error = str(error)
    return result


def run_rounds(children: ChildRegistry, loadgen: Path, specs: dict[str, TracerSpec],
               configs: list[str], available: set[str], args: argparse.Namespace
               ) -> list[RunResult]:
    results = []
    for round_index in range(args.rounds):
        for config in round_order(configs, round_index):
            result = RunResult(config, round_index, args.via, args.count,
                               available=config in available)
            if result.available:
                run_one(children, loadgen, specs, result, OUT_DIR, args.keep_output)
                print(f"round {round_index} {config}: {describe(result)}", file=sys.stderr)
            results.append(result)
    apply_slowdowns(results)
    return results


def describe(result: RunResult) -> str:
    if result.error:
        return f"error: {result.error}"
    text = f"{format_number(result.rate)} signals/s"
    if result.captured is not None:
        text += f", captured {result.captured}, lost {result.lost}, sent {result.sent}"
    return text


# ----------------------------------------------------------------------------- paced mode


PACED_SHORTFALL = 0.95  # a run reaching less than this share of the asked rate did not sustain it


def paced_outcome(result: RunResult, asked_rate: int) -> str:
    """"ok", "lost" (records lost or missing) or "not sustained" (the sender fell short of
    the asked rate, e.g. because the tracer slows every send down)."""
    if result.lost or not result.exact:
        return "lost"
    if (result.rate or 0) < PACED_SHORTFALL * asked_rate:
        return "not sustained"
    return "ok"


def paced_trial(children: ChildRegistry, loadgen: Path, spec: TracerSpec, config: str,
                via: str, seconds: float, rate: int, trials: list[dict]) -> bool:
    """One paced run; True when it failed (lost something or did not sustain the rate)."""
    result = RunResult(config, len(trials), via, int(rate * seconds))
    run_traced(children, loadgen, spec, result, OUT_DIR, rate=rate)
    outcome = paced_outcome(result, rate)
    trials.append({"asked_rate": rate, "outcome": outcome, **dataclasses.asdict(result)})
    print(f"paced {config} {rate:,}/s: {outcome} (achieved {format_number(result.rate)}/s, "
          f"captured {result.captured}, lost {result.lost}, sent {result.sent})", file=sys.stderr)
    return outcome != "ok"


def run_paced(children: ChildRegistry, loadgen: Path, specs: dict[str, TracerSpec],
              configs: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """{config: {"max_zero_loss_rate": rate or None, "trials": [...], "error": ...}}"""
    report: dict[str, dict] = {}
    for config in configs:
        trials: list[dict] = []
        report[config] = {"max_zero_loss_rate": None, "trials": trials, "error": None}

        def fails_at(rate: int, config: str = config, trials: list[dict] = trials) -> bool:
            return paced_trial(children, loadgen, specs[config], config, args.via,
                               args.paced_seconds, rate, trials)
        try:
            best = find_max_zero_loss_rate(fails_at, start=args.paced_start)
        except BenchError as error:
            print(f"paced {config}: error: {error}", file=sys.stderr)
            report[config]["error"] = str(error)
            continue
        report[config]["max_zero_loss_rate"] = best
    return report


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", choices=VIAS, default="tgkill")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--sigscope", help="sigscope command (default: sigscope on PATH, "
                        "else python3 -m sigscope)")
    parser.add_argument("--quick", action="store_true", help="100,000 signals, 1 round")
    parser.add_argument("--paced", action="store_true",
                        help="only find the highest zero-loss sustained rate of streaming tracers")
    parser.add_argument("--with-paced", action="store_true",
                        help="the paired rounds, then the --paced search, in one run")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--paced-start", type=int, default=100_000)
    parser.add_argument("--keep-output", action="store_true",
                        help="keep each tracer's output under bench/out/ (can be large)")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.rounds = 100_000, 1
    args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.config_list) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs: {', '.join(sorted(unknown))}")
    return args


def write_results(path: Path, args: argparse.Namespace, results: list[RunResult],
                  paced: dict[str, dict] | None, summary: list[str] | None = None) -> None:
    document = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "via": args.via,
        "count": args.count,
        "rounds": args.rounds,
        "runs": [dataclasses.asdict(r) for r in results],
        "paced": paced,
        "paced_seconds": args.paced_seconds if paced is not None else None,
        "targets": summary or [],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def machine_line(argv: list[str] | None) -> str:
    """Where and how the figures were taken: date, kernel release, CPU count, command line."""
    command = shlex.join(["python3", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel "
            f"{platform.release()} {platform.machine()}, {os.cpu_count()} CPUs: `{command}`")


def bench(args: argparse.Namespace, children: ChildRegistry,
          argv: list[str] | None = None) -> int:
    OUT_DIR.mkdir(exist_ok=True)
    loadgen = compile_loadgen(OUT_DIR)
    sigscope, env = sigscope_command(args.sigscope)
    cgroup = None
    if CGROUP_CONFIG in args.config_list:
        cgroup = enter_bench_cgroup()
    specs = tracer_specs(sigscope, env, via=args.via, cgroup=cgroup)
    available = available_configs(specs, sigscope, env)
    notes = missing_notes(args.config_list, available, shutil.which("bpftrace") is not None)
    for note in notes:
        print(note, file=sys.stderr)
    print(machine_line(argv))
    results: list[RunResult] = []
    if not args.paced:
        results = run_rounds(children, loadgen, specs, args.config_list, available, args)
        print(f"{args.via}, {args.count:,} signals, median of {args.rounds} paired rounds:\n")
        print(format_table(results, args.config_list))
        for note in notes:
            print(f"\n{note}")
    paced = None
    if args.paced or args.with_paced:
        paced_specs = tracer_specs(sigscope, env, system_wide=True, via=args.via)
        configs = [c for c in args.config_list if c in STREAMING_CONFIGS and c in available]
        paced = run_paced(children, loadgen, paced_specs, configs, args)
        print()
        for config, outcome in paced.items():
            print(f"{config}: highest sustained zero-loss rate over {args.paced_seconds:g} s: "
                  f"{format_number(outcome['max_zero_loss_rate'])} signals/s")
    summary = target_lines(results, paced)
    print("\nissue 11 targets:")
    print("\n".join(summary))
    write_results(OUT_DIR / "results.json", args, results, paced, summary)
    print(f"\nraw results: {OUT_DIR / 'results.json'}", file=sys.stderr)
    return 0


# The cgroup the bench moves itself into for sigscope-trace-cgroup, and the one it came from.
_CGROUPS: dict[str, Path] = {}


def _cgroup2_point() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        sep = fields.index("-", 6) if "-" in fields[6:] else -1
        if sep > 0 and fields[sep + 1] == "cgroup2" and fields[3] == "/":
            return Path(fields[4])
    raise BenchError("no cgroup v2 hierarchy mounted: sigscope-trace-cgroup needs one")


def enter_bench_cgroup() -> str:
    """Make /sigscope-bench-<pid> below the cgroup v2 root and move this process (so every
    workload it starts) into it; returns the cgroup's path. leave_bench_cgroup() undoes it."""
    point = _cgroup2_point()
    (own,) = [line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
              if line.startswith("0::")]
    group = point / f"sigscope-bench-{os.getpid()}"
    group.mkdir()
    _CGROUPS.update(made=group, home=point / own.lstrip("/"))
    (group / "cgroup.procs").write_text(str(os.getpid()))
    return str(group)


def leave_bench_cgroup() -> None:
    if "made" in _CGROUPS:
        (_CGROUPS["home"] / "cgroup.procs").write_text(str(os.getpid()))
        _CGROUPS.pop("made").rmdir()


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    children = ChildRegistry()
    # SIGTERM, and SIGINT even when started in the background with it ignored, unwind through
    # the finally below so that no tracer is left running.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return bench(args, children, argv)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        children.kill_all()
        leave_bench_cgroup()


if __name__ == "__main__":
    sys.exit(main())
