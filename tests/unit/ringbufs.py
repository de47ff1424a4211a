"""A fake BPF ring buffer data area for the reader tests (no kernel)."""

from __future__ import annotations

import struct

from sigscope.bpf.readers.ringbuf import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, walk_ring


class FakeRing:
    """A ring buffer data area of `size` bytes; `view()` simulates the kernel's double mapping."""

    def __init__(self, size: int, start: int = 0) -> None:
        self.size = size
        self.mask = size - 1
        self.ring = bytearray(size)
        self.consumer = start
        self.producer = start
        self.positions: list[int] = []  # where each record's header is

    def _write(self, position: int, raw: bytes) -> None:
        for i, byte in enumerate(raw):
            self.ring[(position + i) & self.mask] = byte

    def add(self, payload: bytes, flags: int = 0) -> int:
        position = self.producer
        self._write(position, struct.pack("<II", len(payload) | flags, 0) + payload)
        self.producer += (len(payload) + 8 + 7) & ~7
        assert self.producer - self.consumer <= self.size, "fake ring overflow"
        self.positions.append(position)
        return position

    def set_flags(self, position: int, flags: int) -> None:
        (word,) = struct.unpack_from("<I", self.ring, position & self.mask)
        length = word & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
        self._write(position, struct.pack("<I", length | flags))

    def view(self) -> memoryview:
        return memoryview(bytes(self.ring) * 2)

    def walk(self, record_size: int | None = None):
        result = walk_ring(self.view(), self.mask, self.consumer, self.producer, record_size)
        self.consumer = result.consumer
        return result


def payload(index: int, size: int) -> bytes:
    return bytes((index * 7 + i) & 0xFF for i in range(size))


