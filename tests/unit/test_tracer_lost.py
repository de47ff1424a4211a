"""Tracer.lost adds up every way a matched record can go missing; Tracer.skipped, apart, the
probe runs the kernel skipped (bpf_prog_info.recursion_misses), which may not have matched
the filters. Fakes stand in for the kernel objects."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from sigscope.errors import UsageError
from sigscope.programs import common
from sigscope.tracer import Tracer, make_filters


class FakeProgram:
    def __init__(self, misses: int) -> None:
        self.misses = misses

    def info(self) -> SimpleNamespace:
        return SimpleNamespace(recursion_misses=self.misses)


class GoneProgram:
    def info(self) -> SimpleNamespace:
        raise OSError(9, "Bad file descriptor")


class FakeCounters:
    closed = False

    def __init__(self, values: dict[int, int]) -> None:
        self.values = values

    def sum_u64(self, key: bytes) -> int:
        return self.values.get(struct.unpack("<I", key)[0], 0)


def test_lost_counts_buffer_and_inflight_skipped_counts_recursion_misses() -> None:
    tracer = Tracer()
    first, second = FakeProgram(3), FakeProgram(0)
    tracer._programs = [first, second, GoneProgram()]  # type: ignore[list-item]
    tracer._recursion_at_start = tracer._recursion_misses()
    assert tracer._recursion_at_start == 3  # what happened before we started is not ours
    tracer._counters = FakeCounters({common.COUNTER_LOST: 5,  # type: ignore[assignment]
                                     common.COUNTER_INFLIGHT_FULL: 7})
    # A perf buffer's own PERF_RECORD_LOST count is the same failed writes the programs
    # count in COUNTER_LOST: not added twice.
    tracer._reader = SimpleNamespace(lost=5)  # type: ignore[assignment]
    assert (tracer.lost, tracer.skipped) == (5 + 7, 0)
    first.misses, second.misses = 4, 2  # a timer signal fired while another program ran
    assert (tracer.lost, tracer.skipped) == (5 + 7, 3)
    tracer._reader = None
    tracer._counters = None
    assert (tracer.lost, tracer.skipped) == (0, 3)


def test_lost_after_close_is_the_count_taken_at_close() -> None:
    tracer = Tracer()
    counters = FakeCounters({common.COUNTER_LOST: 40, common.COUNTER_INFLIGHT_FULL: 2})
    tracer._counters = counters  # type: ignore[assignment]
    tracer._reader = SimpleNamespace(read=lambda *_args: b"", close=lambda: None)  # type: ignore
    tracer.started = True
    assert tracer.close() == []
    assert tracer.finished and tracer.lost == 42
    counters.values[common.COUNTER_LOST] = 1000  # the counters are gone after close
    assert tracer.lost == 42


def test_bad_buffer_arguments() -> None:
    with pytest.raises(UsageError, match="buffer='pipe' is unknown: choose from"):
        Tracer(buffer="pipe")
    with pytest.raises(UsageError, match="smaller than a page"):
        Tracer(buffer_size=100)
    with pytest.raises(UsageError, match="above 1G"):
        Tracer(buffer_size=64 << 30)
    for duration in (float("nan"), float("inf"), -1, 0, 1e12):
        with pytest.raises(UsageError, match="duration="):
            Tracer(duration=duration)


def test_make_filters() -> None:
    f = make_filters(signals="USR1,USR2", exclude_signals=[12], pids=[3], target_ids=[4],
                     comm="x", vias=["kill", "kernel"], kill_only=True)
    assert (f.signals, f.sender_pids, f.target_ids, f.comm, f.vias) == (
        frozenset({10}), frozenset({3}), frozenset({4}), "x", frozenset({"kill"}))
    excluding = make_filters(exclude_signals="CHLD")
    assert (excluding.signals, excluding.excluded_signals) == (None, frozenset({17}))
    # An exclusion excludes: numbers no signal has (65, -1) still pass.
    assert [excluding.wants_signal(n) for n in (17, 10, 0, 65, -1)] == [
        False, True, True, True, True]
    assert not make_filters(signals="USR1", exclude_signals="CHLD").wants_signal(65)


def test_trace_passes_host_root_and_entry_probes_to_its_tracer() -> None:
    from sigscope.tracer import trace

    built = trace(signals="USR1", host_root="/srv/host", entry_probes=True)
    try:
        assert (built.host_root, built.entry_probes) == ("/srv/host", True)
    finally:
        built.close()
    default = trace()
    try:
        assert (default.host_root, default.entry_probes) == ("/", False)
    finally:
        default.close()
