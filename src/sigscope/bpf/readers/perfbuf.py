"""Consumer of a perf buffer: one PERF_COUNT_SW_BPF_OUTPUT event per CPU, each with its own mmap.

For kernels without the BPF ring buffer. A BPF program calls bpf_perf_event_output(ctx, map,
BPF_F_CURRENT_CPU, data, size); the kernel writes a PERF_RECORD_SAMPLE carrying the data as
PERF_SAMPLE_RAW into the ring of the event stored at the current CPU's index of the
PerfEventArrayMap. When a ring is full, the sample is dropped and the kernel later writes a
PERF_RECORD_LOST saying how many were; we add those to `.lost`.

Each mmap is one metadata page (struct perf_event_mmap_page) followed by a power-of-two number of
data pages. The kernel advances `data_head` after writing records; we advance `data_tail` after
reading them (which is what makes the ring non-overwriting). Unlike the BPF ring buffer, the data
area is mapped once, so a record may wrap its end: the pending span is then copied into one
contiguous buffer before walking it.

Record walking is the pure function `walk_perf`, testable on a fake data area; fixed-size samples
take the same bulk path as ringbuf.py (strided header checks and payload gathers).
"""

from __future__ import annotations

import errno
import mmap
import select
import struct
from typing import TYPE_CHECKING, NamedTuple

from sigscope.bpf import arch, uapi
from sigscope.bpf.readers.fence import load_fence
from sigscope.bpf.readers.ringbuf import (
    PAGE_SIZE,
    ReaderError,
    Records,
    column,
    gather,
    matching_prefix,
    round_up8,
)
from sigscope.bpf.syscall import BPFError, PerfEventAttr, close_fd, ioctl, perf_event_open

if TYPE_CHECKING:
    from sigscope.bpf.maps import PerfEventArrayMap

PERF_RECORD_LOST = uapi.PERF_RECORD_LOST
PERF_RECORD_SAMPLE = uapi.PERF_RECORD_SAMPLE
# enum perf_event_type in include/uapi/linux/perf_event.h: { u64 lost; } (Linux >= 4.2).
PERF_RECORD_LOST_SAMPLES = 13

# Offsets in struct perf_event_mmap_page (include/uapi/linux/perf_event.h): the u64 fields after
# the 1 KiB of reserved/self-monitoring space.
_DATA_HEAD_OFFSET = 1024
_DATA_TAIL_OFFSET = 1032
_DATA_OFFSET_OFFSET = 1040  # where the data area starts in the mmap (Linux >= 4.1; else 0)
_DATA_SIZE_OFFSET = 1048

_ONLINE_CPUS_PATH = "/sys/devices/system/cpu/online"

# struct perf_event_header { u32 type; u16 misc; u16 size; }
_HEADER = struct.Struct("<IHH")
_HEADER_SIZE = _HEADER.size
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# A PERF_SAMPLE_RAW sample is the header, u32 raw size, then the raw bytes.
_RAW_DATA_OFFSET = _HEADER_SIZE + 4


def sample_stride(record_size: int) -> int:
    """Bytes a PERF_SAMPLE_RAW sample of `record_size` bytes takes in the ring.

    The kernel pads the raw part so that the u32 size plus the data is a multiple of 8.
    """
    return _HEADER_SIZE + round_up8(4 + record_size)


class PerfWalk(NamedTuple):
    records: Records  # list of raw payloads, or the concatenated fixed-size records
    tail: int  # the new data_tail
    lost: int  # samples reported lost by PERF_RECORD_LOST / PERF_RECORD_LOST_SAMPLES
    malformed: int  # samples of an unexpected size (skipped), or a corrupt header (rest skipped)


_BULK_WINDOW = 32
_BULK_MIN = 8  # below this a batch is cheaper record by record (bench/README.md)


def walk_perf(
    data: memoryview, mask: int, tail: int, head: int, record_size: int | None = None
) -> PerfWalk:
    """Walk the records in [tail, head) of one perf ring's data area (`mask` = size - 1).

    Everything up to data_head is complete, so the whole span is consumed. Without `record_size`
    each sample's raw data is returned as it sits in the ring, including the kernel's up to 7
    bytes of trailing padding; with it, exactly `record_size` bytes of each sample are kept.
    """
    span = head - tail
    if span <= 0:
        return PerfWalk([] if record_size is None else b"", tail, 0, 0)
    size = mask + 1
    offset = tail & mask
    if offset + span <= size:
        region = data[offset : offset + span]
    else:
        # The span wraps the end of the data area: join its two pieces once.
        first = size - offset
        region = memoryview(data[offset:size].tobytes() + data[: span - first].tobytes())
    if record_size is None:
        return _walk_each(region, span, head)
    if record_size <= 0:
        raise ValueError(f"record_size must be positive, not {record_size}")
    return _walk_fixed(region, span, head, record_size)


def _walk_each(region: memoryview, span: int, head: int) -> PerfWalk:
    records: list[bytes] = []
    lost = malformed = 0
    position = 0
    while position < span:
        kind, _misc, record_len = _HEADER.unpack_from(region, position)
        if record_len < _HEADER_SIZE or position + record_len > span:
            malformed += 1  # corrupt: nothing after it can be trusted
            break
        if kind == PERF_RECORD_SAMPLE:
            (raw_size,) = _U32.unpack_from(region, position + _HEADER_SIZE)
            start = position + _RAW_DATA_OFFSET
            if _RAW_DATA_OFFSET + raw_size <= record_len:
                records.append(region[start : start + raw_size].tobytes())
            else:
                malformed += 1
        else:
            lost += _lost_in(region, position, kind)
        position += record_len
    return PerfWalk(records, head, lost, malformed)


def _lost_in(region: memoryview, position: int, kind: int) -> int:
    if kind == PERF_RECORD_LOST:  # { header; u64 id; u64 lost; }
        return _U64.unpack_from(region, position + _HEADER_SIZE + 8)[0]
    if kind == PERF_RECORD_LOST_SAMPLES:  # { header; u64 lost; }
        return _U64.unpack_from(region, position + _HEADER_SIZE)[0]
    return 0  # other record types (throttling, ...) carry no samples


def _walk_fixed(region: memoryview, span: int, head: int, record_size: int) -> PerfWalk:
    stride = sample_stride(record_size)
    raw_size = stride - _RAW_DATA_OFFSET
    type_unit = _U32.pack(PERF_RECORD_SAMPLE)
    size_unit = struct.pack("<H", stride)
    raw_unit = _U32.pack(raw_size)
    chunks: list[bytes | bytearray | memoryview] = []
    lost = malformed = 0
    position = 0
    window = 1 << 62
    while position < span:
        run = min((span - position) // stride, window)
        if run >= _BULK_MIN:
            run_region = region[position : position + run * stride]
            uniform = min(
                matching_prefix(column(run_region, stride, 0, 4), type_unit),
                matching_prefix(column(run_region, stride, 6, 2), size_unit),
                matching_prefix(column(run_region, stride, 8, 4), raw_unit),
            )
            if uniform:
                chunks.append(gather(run_region, uniform, stride, _RAW_DATA_OFFSET, record_size))
                position += uniform * stride
            run_region.release()
            if uniform == run:
                window = run * 2
                continue
            window = _BULK_WINDOW
        if position >= span:
            break
        # One record the slow way: a LOST record, an odd sample, or a short tail.
        kind, _misc, record_len = _HEADER.unpack_from(region, position)
        if record_len < _HEADER_SIZE or position + record_len > span:
            malformed += 1
            break
        if kind == PERF_RECORD_SAMPLE:
            (sample_raw_size,) = _U32.unpack_from(region, position + _HEADER_SIZE)
            fits = _RAW_DATA_OFFSET + sample_raw_size <= record_len
            if fits and record_size <= sample_raw_size < record_size + 8:
                start = position + _RAW_DATA_OFFSET
                chunks.append(region[start : start + record_size])
            else:
                malformed += 1
        else:
            lost += _lost_in(region, position, kind)
        position += record_len
    if len(chunks) == 1 and isinstance(chunks[0], bytearray):
        return PerfWalk(bytes(chunks[0]), head, lost, malformed)
    return PerfWalk(b"".join(chunks), head, lost, malformed)


def online_cpu_ids() -> list[int]:
    try:
        with open(_ONLINE_CPUS_PATH) as online:
            return arch.parse_cpu_list(online.read())
    except OSError:
        return list(arch.possible_cpu_ids())


class _CpuRing:
    """The perf event of one CPU and its mmap."""

    def __init__(self, cpu: int, fd: int, memory: mmap.mmap) -> None:
        self.cpu = cpu
        self.fd = fd
        self.memory = memory
        whole = memoryview(memory)
        self.head = whole[_DATA_HEAD_OFFSET : _DATA_HEAD_OFFSET + 8].cast("Q")
        self.tail = whole[_DATA_TAIL_OFFSET : _DATA_TAIL_OFFSET + 8].cast("Q")
        data_offset = _U64.unpack_from(whole, _DATA_OFFSET_OFFSET)[0] or PAGE_SIZE
        data_size = _U64.unpack_from(whole, _DATA_SIZE_OFFSET)[0] or len(memory) - PAGE_SIZE
        self.data = whole[data_offset : data_offset + data_size]
        self.mask = data_size - 1
        whole.release()

    def pending(self) -> bool:
        return self.head[0] != self.tail[0]

    def close(self) -> None:
        for view in (self.head, self.tail, self.data):
            view.release()
        if not self.memory.closed:
            self.memory.close()
        close_fd(self.fd)


class PerfBufReader:
    """Reads what BPF programs send with bpf_perf_event_output to a PerfEventArrayMap.

    `pages_per_cpu` (a power of two) sizes each CPU's ring. The kernel wakes poll() once
    `wakeup_bytes` are pending in a ring (default: a quarter of it) or, if `wakeup_events` is
    given, every that many samples, never per sample; poll() also returns at once when any ring
    already has data, so callers poll with a bounded timeout and read what is there.
    """

    def __init__(
        self,
        perf_map: PerfEventArrayMap,
        pages_per_cpu: int = 64,
        wakeup_events: int | None = None,
        wakeup_bytes: int | None = None,
    ) -> None:
        if pages_per_cpu <= 0 or pages_per_cpu & (pages_per_cpu - 1):
            raise ReaderError(f"pages_per_cpu must be a power of two, not {pages_per_cpu}")
        self._map = perf_map
        self.lost = 0
        self.malformed = 0
        self.pages_per_cpu = pages_per_cpu
        data_size = pages_per_cpu * PAGE_SIZE
        if wakeup_bytes is None:
            wakeup_bytes = max(1, data_size // 4)
        self._rings: list[_CpuRing] = []
        self._epoll: select.epoll | None = select.epoll()
        try:
            for cpu in online_cpu_ids():
                if cpu >= perf_map.max_entries:
                    continue
                ring = self._open_cpu(cpu, data_size, wakeup_events, wakeup_bytes)
                if ring is not None:
                    self._rings.append(ring)
        except BaseException:
            self.close()
            raise
        if not self._rings:
            self.close()
            raise ReaderError("perf buffer: could not open a BPF output event on any CPU")

    def _open_cpu(
        self, cpu: int, data_size: int, wakeup_events: int | None, wakeup_bytes: int
    ) -> _CpuRing | None:
        attr = PerfEventAttr(
            type=uapi.PERF_TYPE_SOFTWARE,
            config=uapi.PERF_COUNT_SW_BPF_OUTPUT,
            sample_period=1,
            sample_type=uapi.PERF_SAMPLE_RAW,
        )
        flags = uapi.PERF_ATTR_FLAG_DISABLED
        if wakeup_events is not None:
            attr.wakeup_events = max(1, wakeup_events)
        else:
            flags |= uapi.PERF_ATTR_FLAG_WATERMARK
            attr.wakeup_events = wakeup_bytes  # the union's wakeup_watermark
        attr.flags = flags
        try:
            fd = perf_event_open(attr, -1, cpu, -1, uapi.PERF_FLAG_FD_CLOEXEC)
        except BPFError as err:
            if err.errno == errno.ENODEV:  # the CPU went offline since we listed them
                return None
            raise
        try:
            memory = mmap.mmap(
                fd, PAGE_SIZE + data_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as err:
            close_fd(fd)
            raise ReaderError(
                f"cannot mmap the perf buffer of CPU {cpu} ({data_size} bytes): {err.strerror}"
                " (raise the limit with `ulimit -l` or use fewer pages)"
            ) from err
        ring = _CpuRing(cpu, fd, memory)
        try:
            self._map.update(_U32.pack(cpu), _U32.pack(fd))
            ioctl(fd, uapi.PERF_EVENT_IOC_ENABLE, 0)
            assert self._epoll is not None
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            ring.close()
            raise
        return ring

    @property
    def cpus(self) -> list[int]:
        """The CPUs whose events are open (the online ones)."""
        return [ring.cpu for ring in self._rings]

    def available_bytes(self) -> int:
        return sum(ring.head[0] - ring.tail[0] for ring in self._rings)

    def fileno(self) -> int:
        """An epoll fd that becomes readable when any CPU's ring passes its wake-up mark."""
        if self._epoll is None:
            raise ReaderError("perf buffer reader is closed")
        return self._epoll.fileno()

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` (negative: forever) for data; True when some is pending."""
        if any(ring.pending() for ring in self._rings):
            return True
        if self._epoll is None:
            raise ReaderError("perf buffer reader is closed")
        self._epoll.poll(timeout_ms / 1000.0 if timeout_ms >= 0 else -1)
        return any(ring.pending() for ring in self._rings)

    def read(self, record_size: int, max_bytes: int | None = None) -> bytes:
        """All samples now in the rings, CPU by CPU (each CPU's in order), each exactly
        `record_size` bytes, concatenated; frees their space. Samples of another length are
        skipped and counted in `.malformed`.

        `max_bytes` is accepted for the Reader interface and ignored: perf records vary in size,
        so a ring is always consumed up to data_head (each CPU's ring bounds the batch).
        Order across CPUs is not defined: a task that migrates may have later samples in a
        lower-numbered CPU's ring.
        """
        records = self._walk(record_size)
        assert isinstance(records, bytes)
        return records

    def read_each(self) -> list[bytes]:
        """Every sample now in the rings, CPU by CPU, as its raw data (with the kernel's
        padding: up to 7 bytes); frees their space."""
        records = self._walk(None)
        assert isinstance(records, list)
        return records

    def _walk(self, record_size: int | None) -> Records:
        fence = load_fence()  # None on x86_64 (cached: made once per process)
        listed: list[bytes] = []
        joined: list[bytes] = []
        for ring in self._rings:
            head = ring.head[0]
            tail = ring.tail[0]
            if head == tail:
                continue
            # The kernel writes records, then smp_wmb(), then data_head: the perf ABI asks readers
            # to load data_head before the records (an acquire) and to store data_tail only after
            # the records were read. Program order gives both on x86-64 (TSO); a weakly ordered
            # CPU gets a load fence for each (fence.py; the "Memory ordering" note in ringbuf.py).
            if fence is not None:
                fence()
            walk = walk_perf(ring.data, ring.mask, tail, head, record_size)
            if fence is not None:
                fence()
            # The samples are copied out; only now may the kernel reuse their space.
            ring.tail[0] = walk.tail
            self.lost += walk.lost
            self.malformed += walk.malformed
            if isinstance(walk.records, list):
                listed.extend(walk.records)
            else:
                joined.append(walk.records)
        if record_size is None:
            return listed
        return joined[0] if len(joined) == 1 else b"".join(joined)

    def close(self) -> None:
        for ring in self._rings:
            # The map holds its own reference to each event; drop it so the event is freed.
            try:
                if not self._map.closed:
                    self._map.delete(_U32.pack(ring.cpu))
            except (OSError, ValueError):
                pass
            ring.close()
        self._rings = []
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self) -> PerfBufReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
