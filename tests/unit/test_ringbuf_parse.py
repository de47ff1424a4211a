"""Record walking of the BPF ring buffer and perf buffer readers, on fake rings (no kernel)."""

from __future__ import annotations

import random
import struct
import time

import pytest
from ringbufs import FakeRing, payload

from sigscope.bpf.readers.perfbuf import (
    PERF_RECORD_LOST,
    PERF_RECORD_LOST_SAMPLES,
    PERF_RECORD_SAMPLE,
    sample_stride,
    walk_perf,
)
from sigscope.bpf.readers.ringbuf import (
    BPF_RINGBUF_BUSY_BIT,
    BPF_RINGBUF_DISCARD_BIT,
    gather,
    matching_prefix,
    walk_ring,
)


def test_variable_records_come_back_exactly_and_in_order():
    ring = FakeRing(4096)
    payloads = [payload(i, size) for i, size in enumerate([1, 7, 8, 13, 64, 100])]
    for data in payloads:
        ring.add(data)
    result = ring.walk()
    assert result.records == payloads
    assert result.consumer == ring.producer
    assert result.malformed == 0


def test_padding_rounds_each_record_to_8_bytes():
    ring = FakeRing(4096)
    ring.add(b"x" * 13)  # 8 + 13 = 21 -> 24
    ring.add(b"y" * 16)  # 8 + 16 = 24 -> 24
    ring.add(b"z")  # 9 -> 16
    assert ring.producer == 64
    result = ring.walk()
    assert result.records == [b"x" * 13, b"y" * 16, b"z"]
    assert result.consumer == 64


def test_busy_record_stops_the_walk_and_is_read_once_committed():
    ring = FakeRing(4096)
    ring.add(payload(0, 32))
    busy_at = ring.add(payload(1, 32), flags=BPF_RINGBUF_BUSY_BIT)
    ring.add(payload(2, 32))  # committed, but after a busy one: must wait to keep order
    first = ring.walk()
    assert first.records == [payload(0, 32)]
    assert first.consumer == busy_at
    assert ring.walk().records == []  # still busy: nothing, no progress
    assert ring.consumer == busy_at
    ring.set_flags(busy_at, 0)
    second = ring.walk()
    assert second.records == [payload(1, 32), payload(2, 32)]
    assert second.consumer == ring.producer


def test_busy_record_stops_the_fixed_size_walk_too():
    ring = FakeRing(8192)
    for i in range(40):
        ring.add(payload(i, 32), flags=BPF_RINGBUF_BUSY_BIT if i == 25 else 0)
    first = ring.walk(32)
    assert first.records == b"".join(payload(i, 32) for i in range(25))
    assert first.consumer == ring.positions[25]
    ring.set_flags(ring.positions[25], 0)
    assert ring.walk(32).records == b"".join(payload(i, 32) for i in range(25, 40))


def test_discarded_records_are_skipped():
    ring = FakeRing(4096)
    ring.add(payload(0, 24))
    ring.add(payload(1, 24), flags=BPF_RINGBUF_DISCARD_BIT)
    ring.add(payload(2, 24))
    assert ring.walk().records == [payload(0, 24), payload(2, 24)]
    assert ring.consumer == ring.producer


def test_discarded_records_are_skipped_in_the_fixed_size_walk():
    ring = FakeRing(8192)
    for i in range(50):
        ring.add(payload(i, 24), flags=BPF_RINGBUF_DISCARD_BIT if i % 9 == 4 else 0)
    expected = b"".join(payload(i, 24) for i in range(50) if i % 9 != 4)
    result = ring.walk(24)
    assert result.records == expected
    assert result.malformed == 0
    assert result.consumer == ring.producer


@pytest.mark.parametrize("start", [4096 - 8, 4096 - 16, 4096 - 24, 4096 - 40, 3 * 4096 - 8])
def test_record_wrapping_the_end_is_read_through_the_double_mapping(start):
    ring = FakeRing(4096, start=start)
    payloads = [payload(i, 30) for i in range(5)]
    for data in payloads:
        ring.add(data)
    assert ring.walk().records == payloads
    ring2 = FakeRing(4096, start=start)
    for data in payloads:
        ring2.add(data)
    assert ring2.walk(30).records == b"".join(payloads)


def test_many_wraps_with_interleaved_reads():
    ring = FakeRing(4096, start=123 * 8)
    received: list[bytes] = []
    sent: list[bytes] = []
    for batch in range(60):
        for _ in range(batch % 7 + 20):  # 20..26 records of 48 bytes = up to 1456 bytes
            data = payload(len(sent), 48)
            sent.append(data)
            ring.add(data)
        received.append(ring.walk(48).records)
    assert b"".join(received) == b"".join(sent)
    assert ring.consumer == ring.producer


def test_other_lengths_are_counted_as_malformed_and_skipped():
    ring = FakeRing(8192)
    expected = []
    for i in range(60):
        if i in (3, 40, 41):
            ring.add(payload(i, 20))
        else:
            ring.add(payload(i, 32))
            expected.append(payload(i, 32))
    result = ring.walk(32)
    assert result.records == b"".join(expected)
    assert result.malformed == 3
    assert result.consumer == ring.producer


def test_empty_ring():
    ring = FakeRing(4096, start=800)
    assert ring.walk().records == []
    assert ring.walk(16).records == b""
    assert ring.consumer == 800


@pytest.mark.parametrize("record_size", [1, 2, 3, 4, 6, 8, 12, 30, 32, 64, 100])
def test_fixed_size_walk_matches_the_per_record_walk_on_random_rings(record_size):
    rng = random.Random(record_size)
    for _trial in range(30):
        ring = FakeRing(16384, start=rng.randrange(0, 4096) * 8)
        while ring.producer - ring.consumer < 12000:
            roll = rng.random()
            size = record_size if roll < 0.9 else rng.randrange(1, 120)
            flags = BPF_RINGBUF_DISCARD_BIT if rng.random() < 0.03 else 0
            ring.add(payload(len(ring.positions), size), flags)
        if rng.random() < 0.5:
            ring.set_flags(rng.choice(ring.positions), BPF_RINGBUF_BUSY_BIT)
        view = ring.view()
        each = walk_ring(view, ring.mask, ring.consumer, ring.producer)
        fixed = walk_ring(view, ring.mask, ring.consumer, ring.producer, record_size)
        assert fixed.consumer == each.consumer
        assert fixed.records == b"".join(r for r in each.records if len(r) == record_size)
        assert fixed.malformed == sum(1 for r in each.records if len(r) != record_size)


def test_fixed_size_walk_is_cheap_per_record():
    ring = FakeRing(1 << 20)
    record = bytes(range(64))
    for _ in range(10000):
        ring.add(record)
    view = ring.view()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        result = walk_ring(view, ring.mask, 0, ring.producer, 64)
        best = min(best, time.perf_counter() - started)
    assert result.records == record * 10000
    assert best / 10000 < 1e-6, f"{best / 10000 * 1e9:.0f} ns per record"


def test_matching_prefix_and_gather_helpers():
    assert matching_prefix(b"\x01\x00" * 5, b"\x01\x00") == 5
    assert matching_prefix(b"\x01\x00" * 3 + b"\x01\x01" + b"\x01\x00", b"\x01\x00") == 3
    assert matching_prefix(b"\x02\x00" * 4, b"\x01\x00") == 0
    region = memoryview(b"".join(b"HDRHDRHD" + bytes([i]) * 5 + b"pad" for i in range(4)))
    assert gather(region, 4, 16, 8, 5) == b"".join(bytes([i]) * 5 for i in range(4))


# --- a fake perf ring ---------------------------------------------------------------------


class FakePerfRing:
    """The data area of one CPU's perf ring (mapped once: records wrap at its end)."""

    def __init__(self, size: int, start: int = 0) -> None:
        self.size = size
        self.mask = size - 1
        self.data = bytearray(size)
        self.tail = start
        self.head = start

    def _append(self, raw: bytes) -> None:
        assert len(raw) % 8 == 0
        for i, byte in enumerate(raw):
            self.data[(self.head + i) & self.mask] = byte
        self.head += len(raw)
        assert self.head - self.tail <= self.size, "fake perf ring overflow"

    def sample(self, data: bytes) -> None:
        raw_size = ((4 + len(data) + 7) & ~7) - 4  # the kernel pads raw data to 8 with the u32
        padded = data + b"\0" * (raw_size - len(data))
        self._append(struct.pack("<IHHI", PERF_RECORD_SAMPLE, 1, 12 + raw_size, raw_size) + padded)

    def lost(self, count: int) -> None:
        self._append(struct.pack("<IHHQQ", PERF_RECORD_LOST, 0, 24, 0x1234, count))

    def other(self) -> None:  # e.g. PERF_RECORD_THROTTLE: { header; u64 time, id, stream_id }
        self._append(struct.pack("<IHHQQQ", 5, 0, 32, 1, 2, 3))

    def walk(self, record_size: int | None = None):
        data = memoryview(bytes(self.data))
        result = walk_perf(data, self.mask, self.tail, self.head, record_size)
        self.tail = result.tail
        return result


def test_perf_sample_and_lost_records():
    ring = FakePerfRing(4096)
    ring.sample(payload(0, 32))
    ring.lost(7)
    ring.other()
    ring.sample(payload(1, 32))
    result = ring.walk()
    # Without a record size the raw data comes back as stored: 32 bytes of data + 4 of padding.
    assert result.records == [payload(0, 32) + b"\0" * 4, payload(1, 32) + b"\0" * 4]
    assert result.lost == 7
    assert result.tail == ring.head
    ring.sample(payload(2, 32))
    ring.lost(3)
    fixed = ring.walk(32)
    assert fixed.records == payload(2, 32)
    assert fixed.lost == 3


def test_perf_lost_samples_record_is_counted():
    ring = FakePerfRing(4096)
    ring._append(struct.pack("<IHHQ", PERF_RECORD_LOST_SAMPLES, 0, 16, 11))
    assert ring.walk(32).lost == 11


def test_sample_stride_matches_the_kernel_padding():
    assert sample_stride(32) == 8 + 40  # u32 + 32 bytes = 36 -> 40
    assert sample_stride(28) == 8 + 32  # u32 + 28 = 32, no padding
    assert sample_stride(1) == 8 + 8


@pytest.mark.parametrize("start", [4096 - 8, 4096 - 16, 4096 - 24, 4096 - 48, 2 * 4096 - 4])
def test_perf_record_wrapping_the_end_is_joined(start):
    start &= ~7
    ring = FakePerfRing(4096, start=start)
    ring.sample(payload(0, 40))
    ring.lost(2)
    ring.sample(payload(1, 40))
    ring.sample(payload(2, 40))
    result = ring.walk(40)
    assert result.records == payload(0, 40) + payload(1, 40) + payload(2, 40)
    assert result.lost == 2
    ring2 = FakePerfRing(4096, start=start)
    ring2.sample(payload(5, 13))
    assert ring2.walk().records == [payload(5, 13) + b"\0" * 7]  # 4 + 13 -> 24


def test_perf_many_wraps_with_interleaved_reads():
    ring = FakePerfRing(4096, start=4096 * 5 - 200)
    sent: list[bytes] = []
    received: list[bytes] = []
    total_lost = 0
    for batch in range(50):
        for _ in range(batch % 5 + 30):  # up to 34 * 48 = 1632 bytes
            sent.append(payload(len(sent), 32))
            ring.sample(sent[-1])
        if batch % 4 == 0:
            ring.lost(batch + 1)
        result = ring.walk(32)
        received.append(result.records)
        total_lost += result.lost
    assert b"".join(received) == b"".join(sent)
    assert total_lost == sum(b + 1 for b in range(50) if b % 4 == 0)


def test_perf_odd_samples_are_malformed_in_the_fixed_size_walk():
    ring = FakePerfRing(8192)
    expected = []
    for i in range(40):
        if i == 17:
            ring.sample(payload(i, 100))
        else:
            ring.sample(payload(i, 32))
            expected.append(payload(i, 32))
    result = ring.walk(32)
    assert result.records == b"".join(expected)
    assert result.malformed == 1
    assert result.tail == ring.head


def test_perf_corrupt_header_does_not_loop_forever():
    ring = FakePerfRing(4096)
    ring.sample(payload(0, 32))
    ring._append(struct.pack("<IHH", PERF_RECORD_SAMPLE, 0, 0) + b"\0" * 8)  # size 0
    for record_size in (None, 32):
        ring.tail = 0
        result = ring.walk(record_size)
        assert result.malformed == 1
        assert result.tail == ring.head  # the span is given up, not retried
    assert ring.walk(32).records == b""


@pytest.mark.parametrize("record_size", [4, 8, 12, 28, 32, 36, 64])
def test_perf_fixed_size_walk_matches_the_per_record_walk_on_random_rings(record_size):
    rng = random.Random(1000 + record_size)
    for _trial in range(30):
        ring = FakePerfRing(16384, start=rng.randrange(0, 4096) * 8)
        while ring.head - ring.tail < 12000:
            roll = rng.random()
            if roll < 0.9:
                ring.sample(payload(rng.randrange(256), record_size))
            elif roll < 0.95:
                ring.sample(payload(rng.randrange(256), rng.randrange(1, 100)))
            else:
                ring.lost(rng.randrange(1, 50))
        view = memoryview(bytes(ring.data))
        each = walk_perf(view, ring.mask, ring.tail, ring.head)
        fixed = walk_perf(view, ring.mask, ring.tail, ring.head, record_size)
        stride_raw = sample_stride(record_size) - 12
        wanted = [r[:record_size] for r in each.records if len(r) == stride_raw]
        assert fixed.records == b"".join(wanted)
        assert fixed.lost == each.lost
        assert fixed.malformed == len(each.records) - len(wanted)
        assert fixed.tail == each.tail == ring.head
