"""Render cost of the storm path (Decoder.runs -> TextWriter/JsonWriter.render), CPU ns per
record, for a printable comm and for one that needs escaping.

    PYTHONPATH=src python3 bench/render_cost.py .      # from a checkout (uses tests/unit)
"""
import io
import sys
import time

sys.path.insert(0, sys.argv[1] + "/tests/unit")
from records import call, recipient  # noqa: E402

from sigscope.decode import Decoder  # noqa: E402
from sigscope.model import record as rec  # noqa: E402
from sigscope.outputs.trace import JsonWriter, TextWriter  # noqa: E402


def batch(comm: bytes) -> bytes:
    return b"".join(call(call_id=1000 + i, ktime_ns=1000 * i, ret=0, via="tgkill", arg_pid=700,
                         arg_tid=701, sender_comm=comm, **recipient(701, group=0))
                    for i in range(2000))

for label, comm in (("printable comm", b"worker"), ("comm with ESC", b"\x1b[31mRED")):
    data = batch(comm) * 50  # 100k records
    for name, cls in (("text", TextWriter), ("json", JsonWriter)):
        best = float("inf")
        for _ in range(7):
            writer = cls(io.StringIO())
            decoder = Decoder(wall_offset_ns=7)
            start = time.process_time()
            lines = writer.render(decoder.runs(data))
            best = min(best, time.process_time() - start)
        print(f"{label:15} {name}: {best / (len(data) // rec.RECORD_SIZE) * 1e9:6.1f} ns/record "
              f"(first line: {lines[0][:60]!r})")
