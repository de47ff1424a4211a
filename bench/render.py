#!/usr/bin/env python3
"""User-space cost per record of `sigscope trace --json`: Decoder.runs + JsonWriter.runs.

No kernel needed. Builds 2000-record batches as the BPF programs write them (a storm of equal
tgkill records, and the same with two senders alternating, so no two neighbours are equal) and
times decoding and rendering them to JSON Lines (written to an in-memory file): the best of N
runs, in thread CPU time (a busy machine's preemption does not count).
Also times the Event path (Decoder.decode + JsonWriter.events) that the API and --fate use.

    PYTHONPATH=src python3 bench/render.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable

from sigscope.decode import Decoder
from sigscope.model import record as rec
from sigscope.model.signals import SIGNALS
from sigscope.outputs.trace import JsonWriter

BATCH_RECORDS = 2000


def _record(ktime: int, sender_tid: int) -> bytes:
    """A tgkill to this process that the kernel delivered, as programs/signal.py writes it."""
    me = os.getpid()
    values: dict[str, object] = {name: (b"" if name.endswith("comm") else 0)
                                 for name in rec.FIELD_NAMES}
    values.update(ktime_ns=ktime, call_id=ktime - 500, kind=rec.KIND_CALL,
                  via=rec.VIA_CODES["tgkill"], sender_tgid=me, sender_tid=sender_tid,
                  sender_uid=0, sender_comm=b"loadgen", arg_pid=me, arg_tid=me, arg_pidfd=-1,
                  sig=SIGNALS["SIGUSR1"], target_tid=me, target_comm=b"loadgen", gen_result=0)
    return rec.RECORD_STRUCT.pack(*(values[name] for name in rec.FIELD_NAMES))


def batches() -> dict[str, bytes]:
    start = 10**9
    return {
        "storm": b"".join(_record(start + i * 1000, 501) for i in range(BATCH_RECORDS)),
        "alternating": b"".join(_record(start + i * 1000, 501 + i % 2)
                                for i in range(BATCH_RECORDS)),
    }


def best_ns_per_record(step: Callable[[], None], out: io.StringIO, repeat: int) -> float:
    best = float("inf")
    for _ in range(max(10, repeat // 5)):  # warm-up: the first runs grow the heap
        out.seek(0)
        out.truncate()
        step()
    for _ in range(repeat):
        out.seek(0)
        out.truncate()
        started = time.thread_time()
        step()
        best = min(best, time.thread_time() - started)
    return best / BATCH_RECORDS * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    for name, batch in batches().items():
        decoder = Decoder(wall_offset_ns=0, monotonic=lambda: 1.0)
        out = io.StringIO()
        writer = JsonWriter(out)
        def by_runs(w: JsonWriter = writer, d: Decoder = decoder, b: bytes = batch) -> None:
            w.runs(d.runs(b))

        def by_events(w: JsonWriter = writer, d: Decoder = decoder, b: bytes = batch) -> None:
            w.events(d.decode(b))

        runs = best_ns_per_record(by_runs, out, args.repeat)
        events = best_ns_per_record(by_events, out, max(1, args.repeat // 3))
        print(f"{name:12} runs+JsonWriter.runs {runs:6.0f} ns/record   "
              f"decode+JsonWriter.events {events:6.0f} ns/record")


if __name__ == "__main__":
    main()
