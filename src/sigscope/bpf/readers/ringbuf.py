"""Consumer of a BPF ring buffer map (BPF_MAP_TYPE_RINGBUF) through mmap.

Layout of the map's memory, as the kernel exposes it to user space:

    mmap offset 0          consumer page: u64 consumer_pos (ours; mapped read-write)
    mmap offset page_size  producer page: u64 producer_pos (kernel's; read-only)
    mmap offset 2*pages    data area of `size` bytes, mapped twice back to back

Each record starts with an 8-byte header, `u32 len` (with BPF_RINGBUF_BUSY_BIT while the producer
has reserved but not yet committed it, BPF_RINGBUF_DISCARD_BIT when it was discarded) and `u32
pg_off`, and occupies round_up(len + 8, 8) bytes. Because the data area is mapped twice, every
pending span [consumer, producer) - never longer than `size` - is contiguous in our mapping, so a
record that wraps the end of the ring is read without copying its two pieces together.

The record-walking logic is a pure function (`walk_ring`) over a memoryview, so it can be tested
with a fake ring. Fixed-size records take a bulk path: the headers of a run of records are checked
with one strided copy, and their payloads are gathered with one strided copy per payload word, so
the per-record cost is a few nanoseconds of C rather than a Python loop iteration.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, Union

from sigscope.bpf.readers.fence import load_fence
from sigscope.bpf.uapi import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ
from sigscope.errors import KernelError

if TYPE_CHECKING:
    from sigscope.bpf.maps import RingBufMap

PAGE_SIZE = mmap.PAGESIZE

_U32 = struct.Struct("<I")

# What a walk over a ring collects: a list (one bytes per record) or, with a record size, the
# fixed-size records concatenated. The readers' methods each return one of the two.
Records = Union["list[bytes]", bytes]


class ReaderError(KernelError, OSError):
    """A ring or perf buffer could not be set up (mmap, epoll); one-line message."""


class Reader(Protocol):
    """What RingBufReader and PerfBufReader both offer to the layers above."""

    lost: int  # records the kernel reported dropped (perf buffer; always 0 for a ring buffer)
    malformed: int  # records skipped because their length was not the expected record size

    def fileno(self) -> int: ...

    def poll(self, timeout_ms: int) -> bool: ...

    def read(self, record_size: int, max_bytes: int | None = None) -> bytes: ...

    def read_each(self) -> list[bytes]: ...

    def close(self) -> None: ...


def round_up8(n: int) -> int:
    return (n + 7) & ~7


# --------------------------------------------------------------------------------------------
# Bulk helpers shared with perfbuf.py: check a field across a run of equally spaced records and
# gather equally placed payloads, all with strided memoryview copies (C loops, no per-record
# Python objects).

_FORMAT_OF_WIDTH: dict[int, Literal["Q", "I", "H", "B"]] = {8: "Q", 4: "I", 2: "H", 1: "B"}


def column(region: memoryview, stride: int, offset: int, width: int) -> bytes:
    """The `width`-byte field at `offset` of every `stride`-byte record in `region`, concatenated.

    `region` must hold a whole number of records; `offset` must be a multiple of `width`.
    """
    fmt = _FORMAT_OF_WIDTH[width]
    return region.cast(fmt)[offset // width :: stride // width].tobytes()


def matching_prefix(actual: bytes, expected_unit: bytes) -> int:
    """How many leading units of `actual` equal `expected_unit` (compared in C, not per unit)."""
    width = len(expected_unit)
    count = len(actual) // width
    expected = expected_unit * count
    if actual == expected:
        return count
    # The lowest set bit of the XOR is in the first differing byte (little-endian integers).
    diff = int.from_bytes(actual, "little") ^ int.from_bytes(expected, "little")
    first_byte = ((diff & -diff).bit_length() - 1) // 8
    return first_byte // width


def gather(region: memoryview, count: int, stride: int, data_offset: int, size: int) -> bytearray:
    """The `size`-byte payloads at `data_offset` of `count` records spaced `stride` apart.

    Copies one payload word column at a time: for 64-byte payloads that is 8 strided copies
    for the whole run, whatever its length.
    """
    width = 8
    while width > 1 and (stride % width or data_offset % width or size % width):
        width //= 2
    fmt = _FORMAT_OF_WIDTH[width]
    out = bytearray(count * size)
    if count == 0:
        return out
    src = region[: count * stride].cast(fmt)
    dst = memoryview(out).cast(fmt)
    src_step, dst_step, first = stride // width, size // width, data_offset // width
    try:
        for word in range(dst_step):
            dst[word::dst_step] = src[first + word :: src_step]
    finally:
        dst.release()
        src.release()
    return out


# --------------------------------------------------------------------------------------------
# Record walking (pure: no kernel, no mmap).


class RingWalk(NamedTuple):
    records: Records  # list of bytes, or the concatenated fixed-size records
    consumer: int  # the new consumer position
    malformed: int  # committed records whose length differed from record_size (skipped)


# Bulk runs are attempted over a window that doubles while runs stay uniform and drops back to
# this after a mismatch, so a ring full of odd records costs O(n) and not O(n^2).
_BULK_WINDOW = 32
_BULK_MIN = 8  # below this a batch is cheaper record by record (bench/README.md)


def walk_ring(
    data: memoryview, mask: int, consumer: int, producer: int, record_size: int | None = None
) -> RingWalk:
    """Walk the committed records in [consumer, producer) of a ring buffer data area.

    `data` is the data area as mapped (2 * size bytes, the second half mirroring the first);
    `mask` is size - 1. Stops at the first record still BUSY (its producer has not committed it;
    records after it wait for the next read, so order is kept). Discarded records are skipped.
    Returns the records and the position to store as the new consumer position.
    """
    if record_size is None:
        return _walk_ring_each(data, mask, consumer, producer)
    if record_size <= 0:
        raise ValueError(f"record_size must be positive, not {record_size}")

    stride = round_up8(record_size + BPF_RINGBUF_HDR_SZ)
    header_unit = _U32.pack(record_size)  # committed, not discarded, of the right length
    chunks: list[bytes | bytearray | memoryview] = []
    malformed = 0
    window = 1 << 62
    while consumer < producer:
        offset = consumer & mask
        run = min((producer - consumer) // stride, window)
        if run >= _BULK_MIN:
            region = data[offset : offset + run * stride]
            uniform = matching_prefix(column(region, stride, 0, 4), header_unit)
            if uniform:
                chunks.append(gather(region, uniform, stride, BPF_RINGBUF_HDR_SZ, record_size))
                consumer += uniform * stride
            region.release()
            if uniform == run:
                window = run * 2
                continue
            window = _BULK_WINDOW
            offset = consumer & mask
        # One record the slow way: the one that broke the run, or a short tail.
        (length_word,) = _U32.unpack_from(data, offset)
        if length_word & BPF_RINGBUF_BUSY_BIT:
            break
        length = length_word & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
        if not length_word & BPF_RINGBUF_DISCARD_BIT:
            if length == record_size:
                start = offset + BPF_RINGBUF_HDR_SZ
                chunks.append(data[start : start + length])
            else:
                malformed += 1
        consumer += round_up8(length + BPF_RINGBUF_HDR_SZ)
    if len(chunks) == 1 and isinstance(chunks[0], bytearray):
        return RingWalk(bytes(chunks[0]), consumer, malformed)
    return RingWalk(b"".join(chunks), consumer, malformed)


def committed_end(
    data: memoryview, mask: int, consumer: int, producer: int, record_size: int | None = None
) -> int:
    """The end of the committed records from `consumer` (at most `producer`): the position of
    the first record still BUSY, or `producer`. Reads headers only (a weakly ordered CPU's
    reader fences between this pass and the payload copies of walk_ring: fence.py)."""
    if record_size is not None:
        stride = round_up8(record_size + BPF_RINGBUF_HDR_SZ)
        header_unit = _U32.pack(record_size)
    unpack_from = _U32.unpack_from
    while consumer < producer:
        offset = consumer & mask
        if record_size is not None:
            run = (producer - consumer) // stride
            if run >= _BULK_MIN:
                region = data[offset : offset + run * stride]
                uniform = matching_prefix(column(region, stride, 0, 4), header_unit)
                region.release()
                consumer += uniform * stride
                if uniform == run:
                    continue
                offset = consumer & mask
                if consumer >= producer:
                    break
        (length_word,) = unpack_from(data, offset)
        if length_word & BPF_RINGBUF_BUSY_BIT:
            break
        length = length_word & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
        consumer += round_up8(length + BPF_RINGBUF_HDR_SZ)
    return consumer


def _walk_ring_each(data: memoryview, mask: int, consumer: int, producer: int) -> RingWalk:
    records: list[bytes] = []
    unpack_from = _U32.unpack_from
    while consumer < producer:
        offset = consumer & mask
        (length_word,) = unpack_from(data, offset)
        if length_word & BPF_RINGBUF_BUSY_BIT:
            break
        length = length_word & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
        if not length_word & BPF_RINGBUF_DISCARD_BIT:
            start = offset + BPF_RINGBUF_HDR_SZ
            records.append(data[start : start + length].tobytes())
        consumer += round_up8(length + BPF_RINGBUF_HDR_SZ)
    return RingWalk(records, consumer, 0)


# --------------------------------------------------------------------------------------------
# The reader.

# Memory ordering. The kernel producer advances producer_pos (smp_store_release) when it reserves
# a record, writes the payload, and commits it by clearing BUSY in the header with an xchg (a full
# barrier). A reader must therefore load producer_pos before the headers, and a header (seen
# committed) before its payload; and store the new consumer_pos only after the payloads were
# copied out (the kernel reads it with smp_load_acquire before reusing the space). Our loads
# and stores are single aligned machine accesses issued in program order; whether the CPU keeps
# that order is the architecture's: on x86-64 (TSO) loads are not reordered with earlier loads
# and stores not with earlier loads, so program order is enough. On a weakly ordered CPU
# (aarch64) `_walk` fences (fence.py, `dmb ishld`) after loading producer_pos and again after a
# header-only pass (committed_end) and before the payload copies; `dmb ishld` also orders those
# copies before the consumer_pos store.


def _unmap(memory: mmap.mmap | None) -> None:
    if memory is not None and not memory.closed:
        memory.close()


class RingBufReader:
    """Reads the records a BPF program submits to a RingBufMap."""

    def __init__(self, ring_map: RingBufMap) -> None:
        self._map = ring_map
        # A full ring buffer makes the BPF program's reserve/output fail; the kernel reports no
        # loss to the reader, so programs count their failures themselves.
        self.lost = 0
        self.malformed = 0
        self.size: int = ring_map.max_entries
        if self.size <= 0 or self.size & (self.size - 1) or self.size % PAGE_SIZE:
            raise ReaderError(
                f"ring buffer size {self.size} is not a power-of-two multiple of the page size"
            )
        self._mask = self.size - 1
        self._consumer_mem: mmap.mmap | None = None
        self._producer_mem: mmap.mmap | None = None
        self._views: list[memoryview] = []
        self._epoll: select.epoll | None = None
        self._fence = load_fence()  # None on x86_64; raises FenceError where none can be had
        fd = ring_map.fd
        try:
            self._consumer_mem = mmap.mmap(
                fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
            )
            self._producer_mem = mmap.mmap(
                fd, PAGE_SIZE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE
            )
        except OSError as err:
            self.close()
            raise ReaderError(
                f"cannot mmap ring buffer map {ring_map.name or fd}: {err.strerror}"
            ) from err
        consumer_view = memoryview(self._consumer_mem)
        producer_view = memoryview(self._producer_mem)
        self._consumer_pos = consumer_view[:8].cast("Q")
        self._producer_pos = producer_view[:8].cast("Q")
        self._data = producer_view[PAGE_SIZE:]
        self._views = [self._consumer_pos, self._producer_pos, self._data]
        consumer_view.release()
        producer_view.release()
        try:
            self._epoll = select.epoll()
            self._epoll.register(fd, select.EPOLLIN)
        except OSError as err:
            self.close()
            reason = os.strerror(err.errno or 0)
            raise ReaderError(f"cannot epoll ring buffer map: {reason}") from err

    # positions -------------------------------------------------------------------------------

    @property
    def consumer_pos(self) -> int:
        return self._consumer_pos[0]

    @property
    def producer_pos(self) -> int:
        return self._producer_pos[0]

    def available_bytes(self) -> int:
        """Bytes between the consumer and producer positions (committed or not yet)."""
        return self._producer_pos[0] - self._consumer_pos[0]

    # the Reader interface ----------------------------------------------------------------------

    def fileno(self) -> int:
        return self._map.fd

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` (negative: forever) for data; True when some is pending.

        Returns at once when data is already there: programs submit with BPF_RB_NO_WAKEUP, so
        the kernel may never wake us for records that are waiting.
        """
        if self.available_bytes():
            return True
        if self._epoll is None:
            raise ReaderError("ring buffer reader is closed")
        self._epoll.poll(timeout_ms / 1000.0 if timeout_ms >= 0 else -1)
        return self.available_bytes() > 0

    def read(self, record_size: int, max_bytes: int | None = None) -> bytes:
        """The committed records now in the ring, oldest first, each exactly `record_size`
        bytes, concatenated into one bytes for struct.iter_unpack; frees their space. Records of
        another length are skipped and counted in `.malformed`. With `max_bytes`, at most about
        that many bytes of the ring are consumed; the rest waits for the next read."""
        records = self._walk(record_size, max_bytes)
        assert isinstance(records, bytes)
        return records

    def read_each(self) -> list[bytes]:
        """Every committed record now in the ring, oldest first, as one bytes each (any
        length); frees their space."""
        records = self._walk(None, None)
        assert isinstance(records, list)
        return records

    def _walk(self, record_size: int | None, max_bytes: int | None) -> Records:
        if not self._views:
            raise ReaderError("ring buffer reader is closed")
        consumer = self._consumer_pos[0]
        producer = self._producer_pos[0]
        if max_bytes is not None and producer - consumer > max_bytes:
            # Walks start only at record boundaries, so stopping early is always safe: the
            # rest stays for the next read. Bounds the memory a batch takes in a storm.
            producer = consumer + max_bytes
        if consumer == producer:
            return [] if record_size is None else b""
        fence = self._fence
        if fence is not None:  # weakly ordered CPU: see "Memory ordering" above
            fence()
            producer = committed_end(self._data, self._mask, consumer, producer, record_size)
            fence()
        walk = walk_ring(self._data, self._mask, consumer, producer, record_size)
        if fence is not None:
            fence()  # the payload copies before the consumer_pos store
        self.malformed += walk.malformed
        if walk.consumer != consumer:
            # One aligned 8-byte store, after every payload was copied out (see above).
            self._consumer_pos[0] = walk.consumer
        return walk.records

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for view in self._views:
            view.release()
        self._views = []
        _unmap(self._consumer_mem)
        _unmap(self._producer_mem)
        self._consumer_mem = self._producer_mem = None

    def __enter__(self) -> RingBufReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
