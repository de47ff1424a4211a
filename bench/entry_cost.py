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

import os
import signal
import statistics
import sys

from kill_self import against_untraced, arguments, traced

from sigscope.tracer import Tracer, make_filters

PATHS = ("registers", "sys_enter")


def one_run(path: str, count: int) -> tuple[float, float, int]:
    """(all programs ns per signal, wall ns per kill, programs attached) for one run."""
    me = os.getpid()
    tracer = Tracer(make_filters(signals={signal.SIGUSR1}, pids=[me], vias=["kill"]),
                    buffer_size=64 << 20, entry_probes=path == "sys_enter")
    spent, wall, _ = traced(tracer, count)
    return sum(spent.values()) / count, wall, len(spent)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    results, base = against_untraced(PATHS, args, one_run)
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
