"""The rows and health counters of in-kernel counting (`sigscope top`), as the counting side
(top.py) hands them to an exporter (outputs/prometheus.py): plain values, no I/O."""

from __future__ import annotations

from typing import NamedTuple


class CountRow(NamedTuple):
    """One aggregated key of the kernel count map and its cumulative count since start.

    ``target_pid``/``target_comm`` are None when the signal had no single resolved target (e.g. a
    process-group kill or a failed send to a pid that does not exist); ``result``/``error`` are
    None when no sending syscall was involved (kernel-generated signals); ``outcome`` is None when
    the fate of the signal is not known (yet).
    """

    sender_pid: int
    sender_comm: str
    target_pid: int | None
    target_comm: str | None
    sig: int
    signal: str
    via: str
    result: int | None
    error: str | None
    outcome: str | None
    count: int  # type: ignore[assignment]  # a field named like tuple.count, by design


class Health(NamedTuple):
    """Cumulative health counters of the counting side, all since start.

    lost_events: signal events seen by the kernel but not counted (e.g. program recursion misses).
    map_full:    times a new key did not fit the kernel map and was counted in the "other" bucket.
    other:       signals counted in the "other" bucket (their key was not kept).
    records:     signals counted in total, keyed and "other" alike.
    """

    lost_events: int
    map_full: int
    other: int
    records: int
