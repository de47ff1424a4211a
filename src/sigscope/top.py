"""``sigscope top``: signals counted in the kernel, read every interval.

    import time
    import sigscope.top
    with sigscope.top.count(signals="USR1") as counter:
        time.sleep(1)
        snapshot = counter.read()          # cumulative since start: rows {RowKey: count}
    for key, n in snapshot.rows.items():
        print(key.sender_comm, key.target_pid, key.signal, n)

The kernel side (programs/count.py) counts into a hash map keyed by sender, target, signal, via,
result and outcome; nothing per signal crosses to user space. Here we read the whole map (one
BPF_MAP_LOOKUP_BATCH walk where the kernel has it), turn raw keys into rows (thread ids mapped
to their process, names of targets filled in from /proc, each key resolved once, when first
seen, so a row keeps its identity when its process exits), and diff successive cumulative
snapshots into intervals. Keys are never deleted while the programs run: a delete would race
with increments on other CPUs and lose counts. The map therefore holds at most ``max_keys``
keys; further new keys are counted in the "other" bucket.

A counter that needs only some fields (the exporter needs only its labels: ``key_fields()``)
says so with ``keep``: the programs then store 0 in every other field of the key, so keys that
differ only there are one key in the kernel. The default labels leave out every pid, and a node's
churn of short-lived processes (each one a new sender of SIGCHLD) adds no key: the map's size is
bounded by the distinct label sets, and the counts stay exact for as long as the exporter runs.

A target's command name is the one the kernel reported when the signal was generated; for a
send that generated nothing (EPERM, ESRCH, EINVAL) the kernel names no target task, and the
name is unknown (None): a /proc lookup at read time, up to an interval later, could name
whatever process holds the pid by then.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from sigscope.bpf.arch import possible_cpus
from sigscope.bpf.maps import HashMap, Map, PerCPUArrayMap, PerCPUHashMap
from sigscope.decode import ProcResolver
from sigscope.errors import SigscopeError, UsageError
from sigscope.model import record as rec
from sigscope.model.counts import CountRow, Health
from sigscope.model.escape import printable, printable_for
from sigscope.model.event import outcome_name
from sigscope.model.filters import Filters, make_filters
from sigscope.model.signals import errno_name, signal_name
from sigscope.programs import count as top_probes
from sigscope.programs import signal as probes
from sigscope.programs.common import COUNTER_INFLIGHT_FULL
from sigscope.programs.task import task_layout
from sigscope.session import ProbeSession
from sigscope.top_settings import (  # noqa: F401 (re-exported: the API's names)
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_KEYS,
    MAP_KINDS,
    MAX_MAX_KEYS,
    PERCPU_MAX_CPUS,
    SORT_KEYS,
)

if TYPE_CHECKING:
    from sigscope.containers import ContainerLookup


class TopError(SigscopeError, RuntimeError):
    """Counting could not start; str() is one line for the user."""


# The exported labels -> the key fields each one needs (programs/count.py KEY_FIELDS). A target
# pid is resolved from the key's via, outcome and, for a pidfd, its sender.
_LABEL_FIELDS: dict[str, tuple[str, ...]] = {
    "signal": ("sig",),
    "via": ("via",),
    "outcome": ("outcome",),
    "error": ("result",),
    "sender_comm": ("sender_comm",),
    "target_comm": ("target_comm", "outcome"),
    "sender_pid": ("sender_tgid",),
    "target_pid": ("target_pid", "via", "outcome", "sender_tgid"),
    # The cgroup ids (programs/count.py CGROUP_KEY_FIELDS): a key of 80 bytes, only then.
    "sender_container": ("sender_cgroup",),
    "target_container": ("target_cgroup", "outcome"),
    "pod_uid": ("target_cgroup", "outcome"),
}
CGROUP_FIELDS = frozenset(top_probes.CGROUP_FIELD_NAMES)


def key_fields(labels: Iterable[str]) -> frozenset[str]:
    """The count-key fields that the given exporter labels need (the rest can be zeroed)."""
    try:
        return frozenset(field for label in labels for field in _LABEL_FIELDS[label])
    except KeyError as err:
        raise UsageError(f"labels= has unknown {err.args[0]!r}: choose from "
                         f"{', '.join(_LABEL_FIELDS)}") from None


class RowKey(NamedTuple):
    """What a row is about, after thread ids were mapped to processes."""

    sender_pid: int
    sender_comm: str
    target_pid: int | None
    target_comm: str | None
    sig: int
    via: str
    result: int | None     # syscall return (0 or -errno); None for kernel-generated
    outcome: str | None    # what the kernel did; None when nothing was generated
    # cgroup v2 ids the kernel read at the event (a counter with cgroups only; None: not
    # counted by it, not read, or, for the target, nothing generated)
    sender_cgroup: int | None = None
    target_cgroup: int | None = None

    @property
    def signal(self) -> str:
        return signal_name(self.sig)

    @property
    def error(self) -> str | None:
        return errno_name(self.result) if self.result is not None and self.result < 0 else None


class Snapshot(NamedTuple):
    """Cumulative counts since start."""

    rows: dict[RowKey, int]
    other: int          # signals whose key did not fit the map
    lost: int           # matched, not counted: in-flight map full, calls still in flight
    keys: int           # keys held in the kernel map
    monotonic: float    # when it was read
    skipped: int = 0    # probe runs the kernel skipped (recursion_misses): match unknown

    @property
    def total(self) -> int:
        return sum(self.rows.values()) + self.other


class Interval(NamedTuple):
    """Counts between two snapshots; ``rows`` holds only keys seen in the interval."""

    time: float                                  # wall clock at the end of the interval
    interval_s: float
    rows: list[tuple[RowKey, int]] = []  # noqa: RUF012 (never mutated)
    other: int = 0
    lost: int = 0
    keys: int = 0
    final: bool = False
    skipped: int = 0

    @property
    def total(self) -> int:
        return sum(count for _, count in self.rows) + self.other

    def rate(self, count: int) -> float:
        return count / self.interval_s if self.interval_s > 0 else 0.0


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class KeyResolver:
    """Raw count keys -> RowKeys, like the decoder reads records, memoised per raw key.

    ``keep``: the key fields the programs fill (None: all); the others read as unknown. A
    key of 80 bytes (programs/count.py ``key_layout(True)``) has the cgroup ids too."""

    def __init__(self, resolver: ProcResolver | None = None,
                 keep: frozenset[str] | None = None) -> None:
        self.proc = resolver or ProcResolver()
        self.keep = keep
        self._cache: dict[bytes, RowKey] = {}

    def _cgroups(self, raw: bytes, key: RowKey) -> RowKey:
        """``key`` with the cgroup ids of an 80-byte ``raw`` key (0 reads as None)."""
        sender, target = top_probes.CGROUP_KEY_STRUCT.unpack_from(raw, top_probes.KEY_SIZE)
        generated = key.outcome is not None or (
            self.keep is not None and "outcome" not in self.keep)
        return key._replace(sender_cgroup=sender or None,
                            target_cgroup=target if target and generated else None)

    def __call__(self, raw: bytes) -> RowKey:
        hit = self._cache.get(raw)
        if hit is None:
            if len(self._cache) > 1 << 20:  # never more than a few map sizes of keys
                self._cache.clear()
            hit = self._resolve(raw[:top_probes.KEY_SIZE])
            if len(raw) > top_probes.KEY_SIZE:
                hit = self._cgroups(raw, hit)
            self._cache[raw] = hit
        return hit

    def _resolve(self, raw: bytes) -> RowKey:
        (sender, target, sig, via_code, result, outcome_code, _reserved, sender_comm,
         target_comm) = top_probes.KEY_STRUCT.unpack(raw)
        keep = self.keep
        if keep is not None:
            return self._resolve_kept(keep, sender, target, sig, via_code, result, outcome_code,
                                      sender_comm, target_comm)
        now = time.monotonic()
        via = rec.VIA_NAMES[via_code] if via_code < len(rec.VIA_NAMES) else str(via_code)
        generated = outcome_code != rec.GEN_NONE
        t_pid: int | None = target
        # The kernel names the target task only when it generated a signal (module docstring).
        t_comm: str | None = _comm(target_comm) if generated else None
        if generated:
            if via not in rec.TGID_VIAS:
                # signal_generate names a task: its process, when it still exists.
                t_pid = self.proc.tgid(target, now) or target
        elif via == "pidfd_send_signal":
            t_pid = self.proc.pidfd_pid(sender, target)
        elif target <= 0:
            t_pid = None  # kill(0), kill(-pgid), kill(-1) that reached nobody
        elif via == "tkill":
            t_pid = self.proc.tgid(target, now) or target
        return RowKey(
            sender_pid=sender, sender_comm=_comm(sender_comm), target_pid=t_pid,
            target_comm=t_comm, sig=sig, via=via,
            result=None if via == "kernel" else result,
            outcome=outcome_name(outcome_code) if generated else None,
        )

    def _resolve_kept(self, keep: frozenset[str], sender: int, target: int, sig: int,
                      via_code: int, result: int, outcome_code: int, sender_comm: bytes,
                      target_comm: bytes) -> RowKey:
        """A key of which only the `keep` fields are filled: the others are unknown (or 0)."""
        full = self._resolve_full(sender, target, sig, via_code, result, outcome_code,
                                  sender_comm, target_comm)
        known_via = "via" in keep
        return RowKey(
            sender_pid=full.sender_pid if "sender_tgid" in keep else 0,
            sender_comm=full.sender_comm if "sender_comm" in keep else "",
            target_pid=full.target_pid if "target_pid" in keep else None,
            target_comm=(full.target_comm or None) if "target_comm" in keep else None,
            sig=sig if "sig" in keep else 0,
            via=full.via if known_via else "",
            result=(full.result if known_via else result) if "result" in keep else None,
            outcome=full.outcome if "outcome" in keep else None,
        )

    def _resolve_full(self, *fields: object) -> RowKey:
        keep, self.keep = self.keep, None
        try:
            return self._resolve(top_probes.KEY_STRUCT.pack(*fields[:6], 0, *fields[6:]))
        finally:
            self.keep = keep


class Counter(ProbeSession):
    """Loads the counting programs and reads cumulative snapshots of their map."""

    def __init__(
        self,
        filters: Filters | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        map_kind: str = "auto",
        resolver: KeyResolver | None = None,
        keep: Iterable[str] | None = None,
        claim: str | None = None,
        containers: bool = False,
        host_root: str = "/",
    ) -> None:
        """``keep``: the key fields to count by (top_probes.KEY_FIELD_NAMES, e.g. from
        ``key_fields(labels)``); None keeps them all but the cgroup ids; ``claim``: the
        in-flight claim (programs.signal.CLAIMS; None: chosen by the kernel's features);
        ``containers``: count by both sides' cgroup ids too (as does a ``keep`` naming
        ``sender_cgroup`` or ``target_cgroup``), and resolve them to containers
        (``container()``; the exporter's ``sender_container``, ``target_container`` and
        ``pod_uid``). Keys are bounded by ``max_keys`` all the same. ``host_root``: where the
        container names' sources are (containers.LocalNames). Raises UsageError for bad
        values."""
        super().__init__(claim)
        if not isinstance(max_keys, int) or not 1 <= max_keys <= MAX_MAX_KEYS:
            raise UsageError(f"max_keys= must be from 1 to {MAX_MAX_KEYS}, not {max_keys!r}")
        if map_kind not in MAP_KINDS:
            raise UsageError(f"map_kind={map_kind!r} is unknown: choose from "
                             f"{', '.join(MAP_KINDS)}")
        self.keep = frozenset(keep) if keep is not None else None
        if self.keep is not None:
            unknown = self.keep - set(top_probes.KEY_FIELD_NAMES)
            if unknown:
                raise UsageError(f"keep= has unknown {', '.join(sorted(unknown))}: choose from "
                                 f"{', '.join(top_probes.KEY_FIELD_NAMES)}")
        if containers and self.keep is not None:
            self.keep |= CGROUP_FIELDS
        # The 80-byte key only when asked for: otherwise the programs are those without it.
        self.cgroups = containers or bool(self.keep and self.keep & CGROUP_FIELDS)
        self.contexts: ContainerLookup | None = None  # made at start when cgroups
        self.host_root = host_root
        self._contexts_lock = threading.Lock()  # scrapes run in the exporter's threads
        self.filters = filters or Filters()
        self.max_keys = max_keys
        # A per-CPU hash shares no cache line between CPUs counting the same key (a faster
        # counting program), but user space reads one value per CPU per key (a slower read,
        # growing with the CPUs; measured: bench/README.md). Hence per-CPU only up to
        # PERCPU_MAX_CPUS.
        if map_kind == "auto":
            map_kind = "percpu" if possible_cpus() <= PERCPU_MAX_CPUS else "hash"
        self.map_kind = map_kind
        self.percpu = map_kind == "percpu"
        self.resolve = resolver or KeyResolver(keep=self.keep)
        self._counts: Map | None = None
        self._counters: PerCPUArrayMap | None = None
        self._lock = threading.Lock()
        self._final: Snapshot | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def _setup(self) -> None:
        inflight = self._own_inflight_map()
        counters = self._own(PerCPUArrayMap(8, top_probes.NUM_COUNTERS, name="sigscope_count"))
        kind = PerCPUHashMap if self.percpu else HashMap
        layout = top_probes.key_layout(self.cgroups)
        counts = self._own(kind(layout.size, top_probes.VALUE_SIZE, self.max_keys,
                                name="sigscope_top"))
        self._counters, self._counts = counters, counts
        output = top_probes.CountOutput(counts.fd, counters.fd, self.percpu, self.keep,
                                        self.cgroups)
        cfg = probes.ProbeConfig(self.filters, output, probes.MapFds(inflight.fd, counters.fd),
                                 claim=self._started_claim, task=task_layout(),
                                 entry_probes=self.entry_probes)
        self._load_and_attach(probes.signal_probe_plans(cfg, prefix="t"))

    def start(self) -> Counter:
        """Check privileges, build and attach the programs (ProbeSession.start); with cgroups,
        then the container lookup (one line on stderr on a cgroup v1-only host)."""
        if not self.started:
            super().start()
            if self.cgroups and self.contexts is None:
                from sigscope.containers import ContainerLookup

                self.contexts = ContainerLookup(host_root=self.host_root)
                self.contexts.start()
        return self

    def container(self, cgroup_id: int | None) -> dict[str, object] | None:
        """The container context of a row's cgroup id (containers.describe() dict), or None:
        unknown, or a counter without cgroups. Thread-safe."""
        if self.contexts is None or not cgroup_id:
            return None
        with self._contexts_lock:
            return self.contexts(cgroup_id)

    def close(self) -> Snapshot | None:
        """Detach, take the final snapshot, release everything. Returns that snapshot."""
        if self.finished:
            return self._final
        self._detach()
        if self.started:
            self._final = self._read()
        self._teardown()
        self.finished = True
        return self._final

    def __enter__(self) -> Counter:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    def read(self) -> Snapshot:
        """The cumulative counts now (after close(): the final ones). Thread-safe."""
        if self.finished and self._final is not None:
            return self._final
        if not self.started:
            raise TopError("the counter is not started: call start() first")
        return self._read()

    def _read(self) -> Snapshot:
        with self._lock:
            assert self._counts is not None and self._counters is not None
            pairs = self._counts.lookup_batch()
            now = time.monotonic()
            rows: dict[RowKey, int] = {}
            for raw_key, value in pairs:
                count = _sum_value(value)
                key = self.resolve(raw_key)
                rows[key] = rows.get(key, 0) + count
            other = self._counters.sum_u64(struct.pack("<I", top_probes.COUNTER_OTHER))
            lost = self._counters.sum_u64(struct.pack("<I", COUNTER_INFLIGHT_FULL))
            lost += self._unfinished
            skipped = self.skipped_runs or 0
            return Snapshot(rows, other, lost, len(pairs), now, skipped)

    # --- for the Prometheus exporter -------------------------------------------------------

    def _container_labels(self, key: RowKey) -> dict[str, str | None]:
        """The container labels of a row (CountRow): none without cgroups."""
        if not self.cgroups:
            return {}
        from sigscope.containers import container_label

        target = self.container(key.target_cgroup)
        uid = None if target is None else target.get("pod_uid")
        return {"sender_container": container_label(self.container(key.sender_cgroup)),
                "target_container": container_label(target),
                "pod_uid": uid if isinstance(uid, str) else None}

    def exporter_snapshot(self) -> tuple[list[CountRow], Health]:
        """sigscope.outputs.prometheus's Snapshot callable: cumulative rows and health."""
        snap = self.read()
        rows = [
            CountRow(sender_pid=k.sender_pid, sender_comm=k.sender_comm, target_pid=k.target_pid,
                     target_comm=k.target_comm, sig=k.sig, signal=k.signal, via=k.via,
                     result=k.result, error=k.error, outcome=k.outcome, count=count,
                     **self._container_labels(k))
            for k, count in snap.rows.items()
        ]
        return rows, Health(lost_events=snap.lost, map_full=int(snap.keys >= self.max_keys),
                            other=snap.other, records=snap.total, keys=snap.keys,
                            max_keys=self.max_keys, skipped=snap.skipped)


def _sum_value(value: bytes | list[bytes]) -> int:
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value[:8], "little")
    return sum(int.from_bytes(v[:8], "little") for v in value)


def count(
    signals: Iterable[int] | str | None = None,
    exclude_signals: Iterable[int] | str | None = None,
    pids: Iterable[int] = (),
    target_ids: Iterable[int] = (),
    comm: str | None = None,
    vias: Iterable[str] | str | None = None,
    failed_only: bool = False,
    kill_only: bool = False,
    max_keys: int = DEFAULT_MAX_KEYS,
    map_kind: str = "auto",
    keep: Iterable[str] | None = None,
    containers: bool = False,
    host_root: str = "/",
    cgroups: Iterable[tuple[int, int]] = (),
) -> Counter:
    """A Counter with the same filters as ``sigscope.trace()`` / the command line; ``keep``,
    ``containers`` and ``host_root`` as for Counter."""
    return Counter(make_filters(signals, exclude_signals, pids, target_ids, comm, vias,
                                failed_only, kill_only, cgroups), max_keys=max_keys,
                   map_kind=map_kind, keep=keep, containers=containers, host_root=host_root)


class IntervalTracker:
    """Successive cumulative snapshots -> intervals (each count since the previous one)."""

    def __init__(self, start: Snapshot | None = None, start_monotonic: float | None = None):
        self._previous = start
        if start is not None:
            self._previous_t = start.monotonic
        else:
            self._previous_t = time.monotonic() if start_monotonic is None else start_monotonic

    def next(self, snap: Snapshot, final: bool = False, wall: float | None = None) -> Interval:
        prev_rows = self._previous.rows if self._previous else {}
        rows = [(key, value - prev_rows.get(key, 0)) for key, value in snap.rows.items()
                if value > prev_rows.get(key, 0)]
        interval = Interval(
            time=wall if wall is not None else time.time(),
            interval_s=max(0.0, snap.monotonic - self._previous_t),
            rows=rows,
            other=snap.other - (self._previous.other if self._previous else 0),
            lost=snap.lost - (self._previous.lost if self._previous else 0),
            keys=snap.keys,
            final=final,
            skipped=snap.skipped - (self._previous.skipped if self._previous else 0),
        )
        self._previous, self._previous_t = snap, snap.monotonic
        return interval


# --- rendering ----------------------------------------------------------------------------

def sort_rows(rows: list[tuple[RowKey, int]], by: str = "count") -> list[tuple[RowKey, int]]:
    """Rows in display order; ties always fall back to count (descending), then the key."""
    def target_key(k: RowKey) -> tuple:
        return (k.target_comm or "", k.target_pid if k.target_pid is not None else -1)

    if by == "count":
        return sorted(rows, key=lambda r: (-r[1], r[0].sig, r[0].sender_pid))
    if by == "signal":
        return sorted(rows, key=lambda r: (r[0].sig, -r[1]))
    if by == "sender":
        return sorted(rows, key=lambda r: (r[0].sender_comm, r[0].sender_pid, -r[1]))
    if by == "target":
        return sorted(rows, key=lambda r: (*target_key(r[0]), -r[1]))
    raise ValueError(f"unknown sort key {by!r}: choose from {', '.join(SORT_KEYS)}")


def iso_time(wall: float) -> str:
    seconds = int(wall)
    micros = int(round((wall - seconds) * 1e6))
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds)) + f"{micros:06d}Z"


Contexts = Callable[[int | None], "dict[str, object] | None"]


def _with_containers(row: dict[str, Any], key: RowKey, contexts: Contexts | None
                     ) -> dict[str, Any]:
    if contexts is not None:
        row["sender"]["container"] = contexts(key.sender_cgroup)
        row["target"]["container"] = contexts(key.target_cgroup)
    return row


def interval_to_dict(interval: Interval, sort: str = "count", limit: int | None = None,
                     contexts: Contexts | None = None) -> dict[str, Any]:
    """The --json object for one interval (documented; keys may be added, never renamed).
    ``contexts`` (top --containers: Counter.container) adds ``container`` to each row's
    sender and target (containers.describe() dicts, or null)."""
    rows = sort_rows(interval.rows, sort)
    if limit is not None:
        rows = rows[:limit]
    return {
        "type": "interval",
        "time": iso_time(interval.time),
        "interval_s": round(interval.interval_s, 6),
        "final": interval.final,
        "rows": [
            _with_containers({
                "sender": {"pid": k.sender_pid, "comm": k.sender_comm},
                "target": {"pid": k.target_pid, "comm": k.target_comm},
                "sig": k.sig,
                "signal": k.signal,
                "via": k.via,
                "result": k.result,
                "error": k.error,
                "outcome": k.outcome,
                "count": n,
                "rate": round(interval.rate(n), 3),
            }, k, contexts)
            for k, n in rows
        ],
        "total": interval.total,
        "other": interval.other,
        "lost": interval.lost,
        "skipped": interval.skipped,
        "keys": interval.keys,
    }


_HEADER = (f"{'COUNT':>8} {'RATE/s':>9} {'SIGNAL':<11} {'VIA':<17} {'PID':>7} {'COMM':<15} "
           f"{'TPID':>7} {'TCOMM':<15} {'RESULT':<8} OUTCOME")

# Where OUTCOME ends (already_pending is the longest outcome): the container columns follow.
_OUTCOME_END = len(_HEADER) - len("OUTCOME") + len("already_pending")


def _result_text(key: RowKey) -> str:
    if key.result is None:
        return "-"
    return key.error or str(key.result)


def render_table(interval: Interval, sort: str = "count", limit: int | None = 20,
                 max_keys: int | None = None,
                 escape: Callable[[str], str] = printable,
                 contexts: Contexts | None = None) -> str:
    """The text table of one interval, ending with a totals line. ``escape`` makes the names
    other processes chose safe to print (escape.printable_for the output's encoding).
    ``contexts`` (top --containers: Counter.container) adds the CONTAINER and TCONTAINER
    columns (containers.container_label, escaped)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(interval.time))
    final = " (final, partial)" if interval.final else ""
    header = _HEADER
    label: Callable[[int | None], str] | None = None
    if contexts is not None:
        from sigscope.containers import container_label

        header = f"{_HEADER:<{_OUTCOME_END}} {'CONTAINER':<24} TCONTAINER"

        def label(cgroup_id: int | None) -> str:
            return escape(container_label(contexts(cgroup_id)) or "-")
    lines = [f"{stamp}  interval {interval.interval_s:.2f}s{final}", header]
    rows = sort_rows(interval.rows, sort)
    shown = rows if limit is None else rows[:limit]
    for key, n in shown:
        tpid = "-" if key.target_pid is None else str(key.target_pid)
        line = (
            f"{n:>8} {interval.rate(n):>9.1f} {key.signal:<11} {key.via:<17} "
            f"{key.sender_pid:>7} {escape(key.sender_comm):<15} {tpid:>7} "
            f"{escape(key.target_comm or '-'):<15} {_result_text(key):<8} "
            f"{key.outcome or '-'}"
        )
        if label is not None:
            line = (f"{line:<{_OUTCOME_END}} {label(key.sender_cgroup):<24} "
                    f"{label(key.target_cgroup)}")
        lines.append(line)
    if len(rows) > len(shown):
        hidden = sum(n for _, n in rows[len(shown):])
        lines.append(f"{hidden:>8} {interval.rate(hidden):>9.1f} ({len(rows) - len(shown)} "
                     "more rows)")
    keys = f"{interval.keys}/{max_keys}" if max_keys else str(interval.keys)
    skipped = f", skipped {interval.skipped}" if interval.skipped else ""
    lines.append(f"total {interval.total} ({interval.rate(interval.total):.1f}/s), "
                 f"other {interval.other}, lost {interval.lost}{skipped}, keys {keys}")
    return "\n".join(lines) + "\n"


CLEAR_SCREEN = "\x1b[H\x1b[2J"


class IntervalWriter:
    """Prints intervals as a table (redrawn on a terminal unless `append`) or as JSON."""

    def __init__(self, out: IO[str], json_output: bool = False, sort: str = "count",
                 limit: int | None = None, append: bool = False,
                 max_keys: int | None = None, contexts: Contexts | None = None) -> None:
        self.out = out
        self.contexts = contexts  # top --containers: Counter.container
        self.json = json_output
        self.sort = sort
        self.limit = limit
        self.max_keys = max_keys
        isatty = getattr(out, "isatty", lambda: False)()
        self.clear = not json_output and not append and isatty
        self._escape = printable_for(getattr(out, "encoding", None))

    def write(self, interval: Interval) -> None:
        if self.json:
            self.out.write(json.dumps(interval_to_dict(interval, self.sort, self.limit,
                                                       self.contexts)) + "\n")
        else:
            limit = self.limit if self.limit is not None else 20
            text = render_table(interval, self.sort, limit, self.max_keys, self._escape,
                                self.contexts)
            # The last, partial interval goes below the last full table, which stays on screen.
            clear = self.clear and not interval.final
            self.out.write((CLEAR_SCREEN + text) if clear else (text + "\n"))
        self.out.flush()
