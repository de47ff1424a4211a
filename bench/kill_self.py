"""What the kill(2)-to-self cost scripts share (entry_cost, recipient_cost, cgroup_cost,
claim_cost): the untraced pass, one traced pass over a started session, the paired rounds and
their command line. Run time per program is BPF_ENABLE_STATS' run_time_ns (bpf_prog_info), so
callers wrap the rounds in bpf.program.RunTimeStats."""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def arguments(doc: str | None, argv: list[str] | None,
              extra: Callable[[argparse.ArgumentParser], None] | None = None
              ) -> argparse.Namespace:
    """-n/--count (signals per pass) and -r/--rounds, plus what `extra` adds."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=200_000)
    parser.add_argument("-r", "--rounds", type=int, default=5)
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def untraced(count: int) -> float:
    """Wall ns per kill(2) with nothing attached (SIGUSR1 must be ignored)."""
    me = os.getpid()
    start = time.perf_counter_ns()
    for _ in range(count):
        os.kill(me, signal.SIGUSR1)
    return (time.perf_counter_ns() - start) / count


def traced(session: Any, count: int,
           inside: Callable[[Any], T] | None = None) -> tuple[dict[str, int], float, T | None]:
    """Start `session` (a Tracer or a top Counter), send `count` SIGUSR1 to this process by
    kill(2), and return (run_time_ns spent per program name, wall ns per kill, what `inside`
    returned: called with the session before it closes; a Tracer's buffer is drained either
    way)."""
    me = os.getpid()
    with session:
        session.start()
        before = {p.name: p.info() for p in session._programs}
        start = time.perf_counter_ns()
        for _ in range(count):
            os.kill(me, signal.SIGUSR1)
        wall = (time.perf_counter_ns() - start) / count
        after = {p.name: p.info() for p in session._programs}
        extra = inside(session) if inside is not None else None
        if inside is None and hasattr(session, "poll"):
            while session.poll(0):
                pass
    return {n: after[n].run_time_ns - before[n].run_time_ns for n in after}, wall, extra


def rotated_rounds(variants: Sequence[str], rounds: int,
                   one_run: Callable[[str], T]) -> dict[str, list[T]]:
    """one_run(variant) for every variant, `rounds` times, the order rotated each round so
    that machine noise falls on every variant alike."""
    results: dict[str, list[T]] = {v: [] for v in variants}
    for index in range(rounds):
        shift = index % len(variants)
        for variant in (*variants[shift:], *variants[:shift]):
            results[variant].append(one_run(variant))
    return results


def against_untraced(paths: Sequence[str], args: argparse.Namespace,
                     one_run: Callable[[str, int], T]) -> tuple[dict[str, list[T]], list[float]]:
    """The rotated rounds of one_run(path, args.count) for every path and of the untraced
    pass, with SIGUSR1 ignored and run-time statistics on: (results per path, the untraced
    wall ns per kill of each round, in round order)."""
    from sigscope.bpf.program import RunTimeStats

    base: list[float] = []

    def run(path: str) -> Any:
        if path == "untraced":
            base.append(untraced(args.count))
            return None
        return one_run(path, args.count)

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with RunTimeStats():
        results = rotated_rounds(("untraced", *paths), args.rounds, run)
    del results["untraced"]
    return results, base
