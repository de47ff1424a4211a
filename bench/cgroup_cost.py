"""Kernel-side cost per signal of the --cgroup filter (programs/context.py): the signal
programs without it and with it, where the sender's own cgroup is the filter's, where its
parent is (an ancestor read through the ancestor array), and where neither side matches (every
check runs, nothing is written).

Run as root from the repository root:  PYTHONPATH=src python3 bench/cgroup_cost.py [-n N] [-r R]

Makes /sigscope-bench-<pid>/inner (and a sibling) below the cgroup v2 root, moves this process
into inner, then per round starts `sigscope.trace` filtered to this process once per variant
(rotated within a round), sends N ignored SIGUSR1 to itself by kill(2) and reads BPF_ENABLE_STATS
run time (bpf_prog_info run_time_ns) of all the signal programs together, divided by N. The
table shows medians; the process goes back to its cgroup and the cgroups are removed at the end.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
from pathlib import Path

from kill_self import arguments, rotated_rounds, traced

from sigscope import cgroup_filter
from sigscope.bpf.program import RunTimeStats
from sigscope.containers import cgroup2_mount
from sigscope.tracer import Tracer, make_filters

VARIANTS = ("none", "own cgroup", "parent cgroup", "no match")


def one_run(cgroups: list[tuple[int, int]], count: int) -> float:
    """ns per signal spent in all the signal programs, for one run."""
    me = os.getpid()
    tracer = Tracer(make_filters(signals={signal.SIGUSR1}, pids=[me], vias=["kill"],
                                 cgroups=cgroups), buffer_size=64 << 20)
    spent, _, _ = traced(tracer, count)
    return sum(spent.values()) / count


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    mount = cgroup2_mount()
    if mount is None:
        print("no cgroup v2 hierarchy mounted", file=sys.stderr)
        return 1
    point = Path(mount.mount_point)
    (home,) = [line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.startswith("0::")]
    top = f"/sigscope-bench-{os.getpid()}"
    made = [point / top.lstrip("/"), point / top.lstrip("/") / "inner",
            point / top.lstrip("/") / "sibling"]
    for directory in made:
        directory.mkdir()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        (made[1] / "cgroup.procs").write_text(str(os.getpid()))
        filters = {"none": [], "own cgroup": [cgroup_filter.of_path(f"{top}/inner")],
                   "parent cgroup": [cgroup_filter.of_path(top)],
                   "no match": [cgroup_filter.of_path(f"{top}/sibling")]}
        with RunTimeStats():
            results = rotated_rounds(VARIANTS, args.rounds,
                                     lambda variant: one_run(filters[variant], args.count))
    finally:
        (point / home.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
        for directory in reversed(made):
            directory.rmdir()
    print(f"trace, kill(2) to self, {args.count} signals x {args.rounds} rounds, "
          f"{os.uname().release}")
    base = statistics.median(results["none"])
    for variant, values in results.items():
        median = statistics.median(values)
        print(f"  {variant:14} all probes {median:6.1f} ns/signal ({median - base:+6.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
