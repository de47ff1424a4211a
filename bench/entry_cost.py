"""Cost per signal of the two entry paths (programs/entry_regs.py): two programs (signal_generate
and sys_exit read the call from the saved user registers) against three (sys_enter probes).

Run as root from the repository root:  PYTHONPATH=src python3 bench/entry_cost.py [-n N] [-r R]

Each round runs an untraced pass, then `sigscope.trace` filtered to this process on both paths
(alternating order from round to round, so machine noise hits both alike): N ignored SIGUSR1 to
itself by kill(2), with a buffer large enough that nothing is read or lost while it runs. It
reports BPF_ENABLE_STATS run time of all the signal programs (bpf_prog_info run_time_ns) per
signal, and the wall time per kill(2) over the untraced pass of the same round (which also
counts what run_time_ns leaves out: the perf-event tracepoint's own dispatch). Medians.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

from sigscope.bpf.program import RunTimeStats
from sigscope.tracer import Tracer, make_filters

PATHS = ("registers", "sys_enter")


def untraced(count: int) -> float:
    """Wall ns per kill(2) with nothing attached."""
    me = os.getpid()
    start = time.perf_counter_ns()
    for _ in range(count):
        os.kill(me, signal.SIGUSR1)
    return (time.perf_counter_ns() - start) / count


def one_run(path: str, count: int) -> tuple[float, float, int]:
    """(all programs ns per signal, wall ns per kill, programs attached) for one run."""
    me = os.getpid()
    tracer = Tracer(make_filters(signals={signal.SIGUSR1}, pids=[me], vias=["kill"]),
                    buffer_size=64 << 20, entry_probes=path == "sys_enter")
    with tracer:
        tracer.start()
        before = {p.name: p.info() for p in tracer._programs}
        start = time.perf_counter_ns()
        for _ in range(count):
            os.kill(me, signal.SIGUSR1)
        wall = (time.perf_counter_ns() - start) / count
        after = {p.name: p.info() for p in tracer._programs}
        while tracer.poll(0):
            pass
    spent = sum(after[n].run_time_ns - before[n].run_time_ns for n in after)
    return spent / count, wall, len(after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=200_000)
    parser.add_argument("-r", "--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    results: dict[str, list[tuple[float, float, int]]] = {path: [] for path in PATHS}
    base: list[float] = []
    with RunTimeStats():
        for index in range(args.rounds):
            base.append(untraced(args.count))
            for path in PATHS if index % 2 == 0 else tuple(reversed(PATHS)):
                results[path].append(one_run(path, args.count))
    print(f"trace, kill(2) to self, {args.count} signals x {args.rounds} rounds, "
          f"{os.uname().release} {os.uname().machine}; untraced median "
          f"{statistics.median(base):.1f} ns/kill")
    for path, values in results.items():
        total = statistics.median(v[0] for v in values)
        over = statistics.median(v[1] - b for v, b in zip(values, base, strict=True))
        print(f"  {path:9} ({values[0][2]} programs attached) programs {total:6.1f} ns/signal, "
              f"wall +{over:6.1f} ns/kill over untraced (paired)")
    diff = statistics.median(s[1] - r[1] for r, s in zip(results["registers"],
                                                         results["sys_enter"], strict=True))
    print(f"  sys_enter - registers, wall, paired per round: median {diff:+.1f} ns/kill")
    return 0


if __name__ == "__main__":
    sys.exit(main())
