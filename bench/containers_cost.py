"""Cost of the container context in `sigscope trace --json` (and --containers), CPU ns per
record: Decoder.runs + JsonWriter/TextWriter.render with the cgroup ids of real cgroups of this
host resolved (containers.ContainerLookup over the real hierarchy, primed: cached lookups) and
without (no lookup), for a storm (2000 equal records) and 2000 distinct shapes (every record a
new target: each one pays its lookups once); and one cached ContainerLookup call.

    PYTHONPATH=src python3 bench/containers_cost.py .     # from a checkout (uses tests/unit)
"""
import io
import os
import sys
import time

sys.path.insert(0, sys.argv[1] + "/tests/unit")
from records import call, recipient  # noqa: E402

from sigscope.containers import (  # noqa: E402
    ContainerLookup,
    cgroup2_mount,
    proc_cgroup_fallback,
)
from sigscope.decode import Decoder  # noqa: E402
from sigscope.model import record as rec  # noqa: E402
from sigscope.outputs.trace import JsonWriter, TextWriter  # noqa: E402

mount = cgroup2_mount()
if mount is None:
    sys.exit("no cgroup v2 hierarchy: nothing to measure")
lookup = ContainerLookup()
lookup.start()
own = proc_cgroup_fallback(os.getpid()) or "/"
# a sender's and a target's cgroup: this process's own and the root
ids = [os.stat(mount.mount_point + own.rstrip("/")).st_ino, os.stat(mount.mount_point).st_ino]
assert all(lookup(i) is not None for i in ids)


def batch(distinct: bool) -> bytes:
    return b"".join(call(call_id=1000 + i, ktime_ns=1000 * i, ret=0, via="tgkill", arg_pid=700,
                         arg_tid=701, sender_cgroup=ids[0], target_cgroup=ids[1],
                         **recipient(10_000 + i if distinct else 701, group=0))
                    for i in range(2000))


def cost(data: bytes, cls, contexts, **options) -> float:
    best = float("inf")
    for _ in range(7):
        writer = cls(io.StringIO(), **options)
        decoder = Decoder(wall_offset_ns=7)
        decoder.contexts = contexts
        start = time.process_time()
        writer.render(decoder.runs(data))
        best = min(best, time.process_time() - start)
    return best / (len(data) // rec.RECORD_SIZE) * 1e9


for label, distinct in (("storm", False), ("distinct shapes", True)):
    data = batch(distinct) * (50 if not distinct else 1)
    for name, cls, options in (("json", JsonWriter, {}),
                               ("text --containers", TextWriter, {"containers": True})):
        without = cost(data, cls, None, **options)
        with_ = cost(data, cls, lookup, **options)
        print(f"{label:15} {name:17}: {without:7.1f} ns/record without context, "
              f"{with_:7.1f} with ({with_ - without:+.1f})")

lookup(ids[1])
start, n = time.process_time(), 200_000
for _ in range(n):
    lookup(ids[1])
print(f"one cached ContainerLookup call: {(time.process_time() - start) / n * 1e9:.0f} ns")
