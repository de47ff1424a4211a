"""Kernel-side cost per signal of the two in-flight claims (programs/signal.py CLAIM_*).

Run as root from the repository root:  PYTHONPATH=src python3 bench/claim_cost.py [-n N] [-r R]

For each round and claim it starts `sigscope.trace` (or `top` with --top) filtered to this
process, sends N ignored SIGUSR1 to itself by kill(2), and reads the kernel's own accounting of
the probes (BPF_ENABLE_STATS run time, bpf_prog_info run_time_ns/run_cnt): the time spent in
sys_enter_kill, signal_generate and sys_exit_kill programs together, divided by N. The claims
alternate within each round, so machine noise hits both alike; the table shows the median.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys

from kill_self import arguments, traced

from sigscope.bpf.program import RunTimeStats
from sigscope.programs import signal as probes
from sigscope.top import Counter
from sigscope.tracer import Tracer, make_filters


def one_run(claim: str, count: int, top: bool) -> tuple[float, int]:
    """(ns per signal in the kernel probes, signals seen) for one run."""
    me = os.getpid()
    filters = make_filters(signals={signal.SIGUSR1}, pids=[me], vias=["kill"])
    session = (Counter(filters, claim=claim) if top
               else Tracer(filters, buffer_size=64 << 20, claim=claim))

    def seen(session: Counter | Tracer) -> int:
        if isinstance(session, Counter):
            return session.read().total
        count = 0
        while batch := session.poll(0):
            count += len(batch)
        return count

    spent, _, got = traced(session, count, seen)
    return sum(spent.values()) / count, got or 0


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, lambda parser: parser.add_argument(
        "--top", action="store_true", help="measure the counting programs"))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    results: dict[str, list[float]] = {claim: [] for claim in probes.CLAIMS}
    with RunTimeStats():
        for index in range(args.rounds):
            order = probes.CLAIMS if index % 2 == 0 else tuple(reversed(probes.CLAIMS))
            for claim in order:
                ns, seen = one_run(claim, args.count, args.top)
                results[claim].append(ns)
                print(f"round {index + 1} {claim:9} {ns:7.1f} ns/signal (seen {seen})",
                      file=sys.stderr)
    what = "top (counting)" if args.top else "trace (ring buffer)"
    print(f"{what}, kill(2) to self, {args.count} signals x {args.rounds} rounds, "
          f"{os.uname().release}")
    for claim, values in results.items():
        print(f"  {claim:9} median {statistics.median(values):6.1f} ns/signal  "
              f"(min {min(values):.1f}, max {max(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
