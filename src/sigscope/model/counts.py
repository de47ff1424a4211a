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
    # With a counter that counts by cgroup ids (containers.container_label of each side's
    # context; the recipient's pod UID), else None.
    sender_container: str | None = None
    target_container: str | None = None
    pod_uid: str | None = None


class Health(NamedTuple):
    """Health of the counting side; counters are cumulative since start.

    lost_events: signals that matched the filters but could not be counted (the in-flight map
                 was full, a call was still in flight when the programs were detached).
    map_full:    1 while the kernel map holds max_keys keys (new label sets then go to the
                 "other" bucket), else 0.
    other:       signals counted in the "other" bucket (their key did not fit the map).
    records:     signals counted in total, keyed and "other" alike.
    keys:        keys held in the kernel map now.
    max_keys:    keys the kernel map can hold (0: not known).
    skipped:     probe runs the kernel skipped (another BPF program was running on that CPU,
                 bpf_prog_info.recursion_misses): unknown whether they matched the filters.
    """

    lost_events: int
    map_full: int
    other: int
    records: int
    keys: int = 0
    max_keys: int = 0
    skipped: int = 0
