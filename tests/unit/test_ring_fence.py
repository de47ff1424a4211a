"""The weakly ordered CPU path of the ring buffer reader: the header-only pass that precedes the
payload copies (committed_end), and the load fence made without a compiler (fence.py)."""

from __future__ import annotations

import random

import pytest
from ringbufs import FakeRing, payload

from sigscope.bpf import arch
from sigscope.bpf.readers import fence
from sigscope.bpf.readers.ringbuf import (
    BPF_RINGBUF_BUSY_BIT,
    BPF_RINGBUF_DISCARD_BIT,
    committed_end,
    walk_ring,
)


@pytest.mark.parametrize("record_size", [None, 1, 8, 30, 64])
def test_committed_end_stops_where_the_walk_stops(record_size: int | None) -> None:
    rng = random.Random(record_size or 0)
    for _trial in range(40):
        ring = FakeRing(16384, start=rng.randrange(0, 4096) * 8)
        while ring.producer - ring.consumer < 12000:
            size = (record_size or 64) if rng.random() < 0.9 else rng.randrange(1, 120)
            flags = BPF_RINGBUF_DISCARD_BIT if rng.random() < 0.03 else 0
            ring.add(payload(len(ring.positions), size), flags)
        busy = None
        if rng.random() < 0.6:
            busy = rng.choice(ring.positions)
            ring.set_flags(busy, BPF_RINGBUF_BUSY_BIT)
        view = ring.view()
        end = committed_end(view, ring.mask, ring.consumer, ring.producer, record_size)
        assert end == (busy if busy is not None else ring.producer)
        walked = walk_ring(view, ring.mask, ring.consumer, ring.producer, record_size)
        assert walked.consumer == end
        # The payload pass over [consumer, end) gives the same records as the one-pass walk.
        assert walk_ring(view, ring.mask, ring.consumer, end, record_size) == walked


def test_no_fence_where_loads_are_ordered() -> None:
    assert fence.load_fence("x86_64") is None


def test_an_unknown_architecture_has_no_fence() -> None:
    with pytest.raises(arch.UnsupportedArchError):
        fence.load_fence("riscv64")


def test_the_aarch64_fence_is_dmb_ishld_then_ret() -> None:
    # Arm ARM C6.2: DMB with CRm=0b1001 (ISHLD) and RET x30, little-endian.
    assert fence._AARCH64_LOAD_FENCE == bytes.fromhex("bf3903d5c0035fd6")


@pytest.mark.skipif(arch.normalized_machine() != "x86_64", reason="runs x86_64 machine code")
def test_machine_code_is_made_executable_and_called() -> None:
    # The mechanism the aarch64 fence uses, with x86_64 code: lfence; ret.
    function = fence._code_function(bytes.fromhex("0faee8c3"))
    for _ in range(3):
        assert function() is None
