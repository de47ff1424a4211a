"""The floor of sigscope's cost per signal: what the attach points cost with programs that do
nothing, so that the gap between that floor and the real `sigscope trace` programs is the work
those programs do.

Run as root from the repository root:

    PYTHONPATH=src python3 bench/dispatch_floor.py [-n N] [-r R] [--via tgkill]

Every configuration attaches programs that are only `r0 = 0; exit` (assembled by bpf/asm.py,
loaded by bpf/program.py, attached by bpf/attach.py) to some of the tracepoints sigscope uses:
the BTF-typed raw tracepoint (tp_btf) or the tracefs perf-event tracepoint of signal_generate,
the perf-event syscalls:sys_exit_<via> and sys_enter_<via>, the raw sys_exit; the two-program
floor (what the registers path of programs/entry_regs.py attaches per signal: tp_btf
signal_generate + perf sys_exit_<via>), the same with the raw sys_exit, and the three-program
floor (+ perf sys_enter_<via>). `sigscope-programs` is sigscope.tracer.Tracer itself
(SIGUSR1 sent by the comm loadgen, a 256 MiB ring buffer nothing reads while the workload runs,
drained and closed after it). The workload is bench/loadgen (compiled as bench/run.py does):
N signals through --via as fast as it can. Every round runs every configuration once, in an
order rotated each round (kill_self.rotated_rounds); the table shows medians of the per-round
differences against the untraced run of the same round: ns per signal over untraced, the ratio,
and the share of issue 11's budget (1.5x untraced: run.STORM_SLOWDOWN_TARGET) it takes.

A second table is the tax on an unrelated syscall: `loadgen --via getppid` (N calls, no
signal) under every configuration with a syscall tracepoint (while one has a user, every task's
syscalls take the syscall-work path), as ns per getppid over untraced.

Another tracer's programs on the same tracepoints would add their cost to every configuration
(untraced included), and another loadgen takes a CPU: before each run the bench waits (up to
--quiet-timeout s) until no process named loadgen but its own runs and no tracing BPF program
but its own is loaded, and runs again (up to 3 tries) a run during which one appeared; runs
that never found the machine quiet are named in a note under the tables. BPF_ENABLE_STATS
stays off: its accounting would add to the very cost measured here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import NamedTuple

from kill_self import arguments, rotated_rounds
from run import (
    BENCH_SIGNAL,
    LOADGEN_COMM,
    OUT_DIR,
    STORM_SLOWDOWN_TARGET,
    VIAS,
    BenchError,
    ChildRegistry,
    compile_loadgen,
    format_cost,
    median_or_none,
    run_loadgen,
)

from sigscope.bpf import uapi

UNRELATED_SYSCALL = "getppid"  # loadgen --via getppid: no signal, the syscall path only
UNTRACED = "untraced"
TRACER = "sigscope-programs"
TRACER_BUFFER_SIZE = 256 << 20  # holds 1M records: nothing is lost or read during a run
TP_BTF = "tp_btf"
PERF = "perf"
QUIET_POLL_S = 0.25
RETRIES = 3  # a run during which another tracer or loadgen started is run again, so often
BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE = 24  # uapi/linux/bpf.h (not used by sigscope itself)
# Program types that run on a tracepoint or in a traced function.
TRACING_PROGRAM_TYPES = frozenset((
    uapi.BPF_PROG_TYPE_KPROBE, uapi.BPF_PROG_TYPE_TRACEPOINT, uapi.BPF_PROG_TYPE_PERF_EVENT,
    uapi.BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE,
    uapi.BPF_PROG_TYPE_TRACING))


@dataclass(frozen=True)
class Point:
    """One attach point of an empty program: a tp_btf raw tracepoint (`system` empty) or a
    tracefs tracepoint `system`:`event` (a BPF_PROG_TYPE_TRACEPOINT program on its perf
    event)."""

    kind: str  # TP_BTF or PERF
    event: str
    system: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.event}"

    @property
    def syscall_work(self) -> bool:
        """Whether attaching here sets every task's syscall-tracepoint work flag (the raw
        sys_enter/sys_exit tracepoints and the syscalls:* events built on them;
        kernel/tracepoint.c syscall_regfunc)."""
        return self.system == "syscalls" or (self.kind == TP_BTF
                                             and self.event in ("sys_enter", "sys_exit"))


def configurations(via: str) -> dict[str, tuple[Point, ...] | None]:
    """{name: the empty programs' attach points} in table order; () is untraced, None the real
    programs (the Tracer, which attaches to sys_exit_<call> of every send path)."""
    generate = Point(TP_BTF, "signal_generate")
    sys_exit = Point(PERF, f"sys_exit_{via}", "syscalls")
    sys_enter = Point(PERF, f"sys_enter_{via}", "syscalls")
    raw_exit = Point(TP_BTF, "sys_exit")
    return {
        UNTRACED: (),
        generate.label: (generate,),
        "perf signal_generate": (Point(PERF, "signal_generate", "signal"),),
        sys_exit.label: (sys_exit,),
        raw_exit.label: (raw_exit,),
        sys_enter.label: (sys_enter,),
        "floor-2": (generate, sys_exit),
        "floor-2, tp_btf sys_exit": (generate, raw_exit),
        "floor-3": (generate, sys_exit, sys_enter),
        TRACER: None,
    }


def sets_syscall_work(points: tuple[Point, ...] | None) -> bool:
    """Whether the configuration taxes every syscall (the Tracer attaches sys_exit probes)."""
    return points is None or any(p.syscall_work for p in points)


def describe(points: tuple[Point, ...] | None) -> str:
    if points is None:
        return "sigscope.tracer.Tracer (the real programs)"
    return " + ".join(p.label for p in points) or "nothing"


def missing_reason(points: Iterable[Point], has: Callable[[str], bool],
                   btf_id: Callable[[str], int | None],
                   tracepoint: Callable[[str, str], bool]) -> str | None:
    """Why the configuration cannot run here ("feature tp_btf missing"), or None. `has` is
    bpf.features.has, `btf_id` features.tp_btf_type_id, `tracepoint` tracefs.available."""
    for point in points:
        if point.kind == TP_BTF:
            if not has("tp_btf"):
                return "feature tp_btf missing"
            if btf_id(point.event) is None:
                return f"BTF type btf_trace_{point.event} missing"
        else:
            if not has("bpf_tracepoint"):
                return "feature bpf_tracepoint missing"
            if not tracepoint(point.system, point.event):
                return f"tracepoint {point.system}:{point.event} missing"
    return None


# ----------------------------------------------------------------------------- pairing


class Measure(NamedTuple):
    """One configuration in one round: wall ns per signal, ns per getppid (None where not
    measured), and for the Tracer what it drained: records of this round's storm, records
    lost, records of other processes named loadgen (another benchmark running meanwhile)."""

    signal_ns: float
    syscall_ns: float | None = None
    captured: int | None = None
    lost: int | None = None
    others: int | None = None


class Summary(NamedTuple):
    """Medians of the per-round pairs against untraced: ns over untraced, ratio, share of the
    issue-11 budget ((STORM_SLOWDOWN_TARGET - 1) x untraced); per-round ns over untraced."""

    cost_ns: float | None
    ratio: float | None
    budget_share: float | None
    per_round: list[float]


def summarise(runs: Sequence[float | None], base: Sequence[float | None]) -> Summary:
    """Pair run i with untraced run i (the same round); a round missing either is left out.
    The medians are of the per-round differences and ratios, not of the times."""
    pairs = [(r, b) for r, b in zip(runs, base, strict=True)
             if r is not None and b is not None and b > 0]
    costs = [r - b for r, b in pairs]
    return Summary(
        median_or_none(costs),
        median_or_none(r / b for r, b in pairs),
        median_or_none((r - b) / ((STORM_SLOWDOWN_TARGET - 1) * b) for r, b in pairs),
        costs,
    )


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def markdown(rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def signal_table(configs: Mapping[str, tuple[Point, ...] | None],
                 results: Mapping[str, list[Measure]], skipped: Mapping[str, str]) -> str:
    """The per-signal table: one row per configuration, in `configs`' order; a skipped one
    shows "n/a (<reason>)"."""
    header = ["configuration", "empty programs on", "ns/signal over untraced", "ratio",
              "share of the 1.5x budget", "per round"]
    rows = [header, ["---"] * len(header)]
    base = [m.signal_ns for m in results.get(UNTRACED, [])]
    for name, points in configs.items():
        if name in skipped:
            rows.append([name, describe(points), f"n/a ({skipped[name]})", "n/a", "n/a", ""])
            continue
        summary = summarise([m.signal_ns for m in results[name]], base)
        rows.append([name, describe(points), format_cost(summary.cost_ns),
                     format_ratio(summary.ratio), format_share(summary.budget_share),
                     ", ".join(format_cost(c) for c in summary.per_round)])
    return markdown(rows)


def syscall_table(configs: Mapping[str, tuple[Point, ...] | None],
                  results: Mapping[str, list[Measure]], skipped: Mapping[str, str]) -> str:
    """The unrelated-syscall table: the configurations that set the syscall-work flag."""
    header = ["configuration", f"ns/{UNRELATED_SYSCALL} over untraced", "ratio", "per round"]
    rows = [header, ["---"] * len(header)]
    base = [m.syscall_ns for m in results.get(UNTRACED, [])]
    for name, points in configs.items():
        if name == UNTRACED or not sets_syscall_work(points):
            continue
        if name in skipped:
            rows.append([name, f"n/a ({skipped[name]})", "n/a", ""])
            continue
        summary = summarise([m.syscall_ns for m in results[name]], base)
        rows.append([name, format_cost(summary.cost_ns), format_ratio(summary.ratio),
                     ", ".join(format_cost(c) for c in summary.per_round)])
    return markdown(rows)


# ----------------------------------------------------------------------------- running


class Workload:
    """bench/loadgen, run for a signal storm and, where asked, for the unrelated syscall."""

    def __init__(self, children: ChildRegistry, via: str, count: int) -> None:
        OUT_DIR.mkdir(exist_ok=True)
        self.binary = compile_loadgen(OUT_DIR)
        self.children, self.via, self.count = children, via, count
        self.storm_pid: int | None = None  # the process of the last storm

    def ns_per_call(self, via: str) -> float:
        done = run_loadgen(self.children, self.binary, via, self.count)
        if via == self.via:
            self.storm_pid = self.children.processes[-1].pid
        if done.failed or not done.sent:
            raise BenchError(f"loadgen --via {via}: {done.failed} of {self.count} calls failed")
        return done.elapsed_s * 1e9 / done.sent

    def measure(self, syscall_too: bool) -> Measure:
        signal_ns = self.ns_per_call(self.via)
        return Measure(signal_ns, self.ns_per_call(UNRELATED_SYSCALL) if syscall_too else None)


def run_empty(points: tuple[Point, ...], workload: Workload, syscall_too: bool,
              own: set[int]) -> Measure:
    """Load and attach one empty program per point, run the workload, detach and close. The
    programs' ids are added to `own`."""
    from sigscope.bpf import asm, features
    from sigscope.bpf.attach import attach_tp_btf, attach_tracepoint
    from sigscope.bpf.program import Program

    empty = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
    with ExitStack() as stack:  # closes in reverse: each attachment before its program
        for point in points:
            if point.kind == TP_BTF:
                prog = stack.enter_context(Program.load(
                    empty, prog_type=uapi.BPF_PROG_TYPE_TRACING, name="floor_tp_btf",
                    expected_attach_type=uapi.BPF_TRACE_RAW_TP,
                    attach_btf_id=features.tp_btf_type_id(point.event) or 0))
                stack.enter_context(attach_tp_btf(prog, point.event))
            else:
                prog = stack.enter_context(Program.load(empty, name="floor_perf"))
                stack.enter_context(attach_tracepoint(prog, point.system, point.event))
            own.add(prog.info().id)
        return workload.measure(syscall_too)


def run_tracer(workload: Workload, own: set[int]) -> Measure:
    """The real programs: a started Tracer, not read while the workload runs, then drained
    (counting loadgen's records) and closed. The programs' ids are added to `own`."""
    from sigscope.model.event import Event
    from sigscope.tracer import Tracer, make_filters

    tracer = Tracer(make_filters(signals={BENCH_SIGNAL}, comm=LOADGEN_COMM),
                    buffer_size=TRACER_BUFFER_SIZE)
    with tracer:
        own.update(prog.info().id for prog in tracer._programs)
        measure = workload.measure(True)
        ours = others = 0
        for batch in tracer.drain():
            for item in batch:
                if isinstance(item, Event) and item.sender_pid == workload.storm_pid \
                        and item.via == workload.via:
                    ours += 1
                elif isinstance(item, Event):
                    others += 1
    return measure._replace(captured=ours, lost=tracer.lost, others=others)


def tracer_missing() -> str | None:
    """Why the Tracer cannot start here (its one-line error), or None."""
    from sigscope.errors import SigscopeError
    from sigscope.tracer import Tracer, make_filters

    try:
        with Tracer(make_filters(signals={BENCH_SIGNAL}, comm=LOADGEN_COMM),
                    buffer_size=1 << 20):
            pass
    except (SigscopeError, OSError) as error:
        return f"Tracer: {error}"
    return None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Quiet:
    """Whether someone else is measuring too: a process named loadgen that this bench did
    not start (another benchmark on the same CPUs, and records for the Tracer's comm filter),
    or a tracing BPF program this bench did not load (another tracer: its programs run on our
    workload's tracepoints and add their cost to every configuration, untraced included)."""

    def __init__(self, children: ChildRegistry, timeout_s: float) -> None:
        self.children = children
        self.timeout_s = timeout_s
        self.own_programs: set[int] = set()  # ids of the programs this bench loaded

    def busy(self) -> str | None:
        """What makes the machine not quiet now (one phrase), or None."""
        from sigscope.bpf.program import loaded_program_ids, program_info_by_id

        ours = {proc.pid for proc in self.children.processes}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in ours:
                try:
                    with open(f"/proc/{entry}/comm") as comm:
                        if comm.read().strip() == LOADGEN_COMM:
                            return f"another {LOADGEN_COMM} (pid {entry})"
                except OSError:
                    pass  # exited meanwhile
        for prog_id in loaded_program_ids():
            if prog_id in self.own_programs:
                continue
            info = program_info_by_id(prog_id)
            if info is not None and info.type in TRACING_PROGRAM_TYPES:
                return f"another tracer's BPF program {info.name or prog_id!r}"
        return None

    def wait(self) -> str | None:
        """Wait up to timeout_s for a quiet machine; what still makes it busy, or None."""
        deadline = time.monotonic() + self.timeout_s
        while (reason := self.busy()) is not None and time.monotonic() < deadline:
            time.sleep(QUIET_POLL_S)
        return reason


def bench(count: int, rounds: int, via: str, quiet_timeout_s: float) -> int:
    from sigscope.bpf import features, tracefs

    missing = features.missing_essentials()
    if missing:
        raise BenchError(f"this kernel or user cannot run BPF tracepoints (root?): {missing[0]}")
    configs = configurations(via)
    skipped = {}
    for name, points in configs.items():
        reason = (tracer_missing() if points is None else
                  missing_reason(points, features.has, features.tp_btf_type_id,
                                 tracefs.available))
        if reason is not None:
            skipped[name] = reason
    children = ChildRegistry()
    try:
        workload = Workload(children, via, count)
        workload.measure(True)  # not counted: the first exec of loadgen pays page faults
        quiet = Quiet(children, quiet_timeout_s)
        baseline_fds = open_fds()
        shared: list[str] = []  # the runs that were not alone on the machine, and why

        def one_run(name: str) -> Measure:
            points = configs[name]
            for attempt in range(RETRIES):
                before = quiet.wait()
                if points is None:
                    measure = run_tracer(workload, quiet.own_programs)
                else:
                    # untraced measures the unrelated syscall too: the second table's base
                    measure = run_empty(points, workload, not points or sets_syscall_work(points),
                                        quiet.own_programs)
                if open_fds() != baseline_fds:
                    raise BenchError(f"{name} left {open_fds() - baseline_fds} fds open")
                after = quiet.busy()
                if before is None and after is None:
                    break
                if attempt == RETRIES - 1:
                    shared.append(f"{name}: {before or after}")
            return measure

        results = rotated_rounds([c for c in configs if c not in skipped], rounds, one_run)
    finally:
        children.kill_all()
    base = statistics.median(m.signal_ns for m in results[UNTRACED])
    base_syscall = statistics.median(m.syscall_ns or 0.0 for m in results[UNTRACED])
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {platform.release()} "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}: {via}, {count:,} signals, "
          f"median of {rounds} paired rounds")
    print(f"untraced: {base:.0f} ns/{via} (the {STORM_SLOWDOWN_TARGET}x budget: "
          f"+{(STORM_SLOWDOWN_TARGET - 1) * base:.0f} ns/signal), "
          f"{base_syscall:.0f} ns/{UNRELATED_SYSCALL}\n")
    print(signal_table(configs, results, skipped))
    if TRACER in results:
        print(f"\n{TRACER}: records of the storm + lost, of {count:,} sent, per round: "
              + ", ".join(f"{m.captured:,}+{m.lost:,}" for m in results[TRACER]))
        others = [m.others or 0 for m in results[TRACER]]
        if any(others):
            print(f"  and records of other processes named {LOADGEN_COMM} (another benchmark "
                  f"ran meanwhile: the figures are not from a quiet machine): "
                  + ", ".join(f"{n:,}" for n in others))
    print(f"\ntax on an unrelated syscall ({UNRELATED_SYSCALL}, {count:,} calls, no signal):\n")
    print(syscall_table(configs, results, skipped))
    if shared:
        print(f"\nnote: {len(shared)} of {sum(map(len, results.values()))} runs shared the "
              f"machine with another benchmark or tracer even after {RETRIES} tries and "
              f"{quiet_timeout_s:g} s of waiting each: " + "; ".join(shared))
    return 0


def more_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--via", choices=VIAS, default="tgkill", help="the storm's send path")
    parser.add_argument("--quiet-timeout", type=float, default=30.0, metavar="S",
                        help="before each run, wait up to S seconds for no other loadgen and "
                        "no other tracer's BPF programs (default 30)")


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, more_options)
    if args.count <= 0 or args.rounds <= 0 or args.quiet_timeout < 0:
        print("bench: -n and -r must be positive, --quiet-timeout not negative", file=sys.stderr)
        return 2
    try:
        return bench(args.count, args.rounds, args.via, args.quiet_timeout)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
