"""Kernel-side cost per signal of the two signal_generate programs (programs/signal.py): the
tp_btf one reading the recipient from its task_struct, and the tracefs tracepoint.

Run as root from the repository root:  PYTHONPATH=src python3 bench/recipient_cost.py [-n N] [-r R]

Each round starts `sigscope.trace` filtered to this process twice (the two paths alternate
within a round so machine noise hits both alike), sends N ignored SIGUSR1 to itself by kill(2),
and reads BPF_ENABLE_STATS run time (bpf_prog_info run_time_ns): the generate program alone
and all three programs together, divided by N. The table shows medians.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys

from kill_self import against_untraced, arguments, traced

from sigscope.tracer import Tracer, make_filters

PATHS = ("tp_btf", "tracepoint")


def one_run(path: str, count: int) -> tuple[float, float, float]:
    """(generate ns per signal, all probes ns per signal, wall ns per kill) for one run. The
    wall time includes what run_time_ns leaves out: the tracefs tracepoint fills its perf
    entry before its program runs, a tp_btf program has no such step."""
    me = os.getpid()
    tracer = Tracer(make_filters(signals={signal.SIGUSR1}, pids=[me], vias=["kill"]),
                    buffer_size=64 << 20)
    tracer.recipient_task = path == "tp_btf"
    spent, wall, _ = traced(tracer, count)
    generate = sum(v for n, v in spent.items() if "generate" in n)
    return generate / count, sum(spent.values()) / count, wall


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    results, base = against_untraced(PATHS, args, one_run)
    print(f"trace, kill(2) to self, {args.count} signals x {args.rounds} rounds, "
          f"{os.uname().release}")
    for path, values in results.items():
        gen = statistics.median(v[0] for v in values)
        total = statistics.median(v[1] for v in values)
        over = statistics.median(v[2] - b for v, b in zip(values, base, strict=True))
        print(f"  {path:10} generate median {gen:6.1f} ns/signal, all probes {total:6.1f}, "
              f"wall +{over:6.1f} ns/kill over untraced (paired)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
