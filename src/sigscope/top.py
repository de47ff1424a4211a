"""``sigscope top``: signals counted in the kernel, read every interval.

    import sigscope.top
    with sigscope.top.count(signals="USR1") as counter:
        ...
        snapshot = counter.read()          # cumulative since start
    for row in snapshot.rows: print(row.sender_comm, row.target_pid, row.count)

The kernel side (programs/count.py) counts into a hash map keyed by sender, target, signal, via,
result and outcome; nothing per signal crosses to user space. Here we read the whole map (one
BPF_MAP_LOOKUP_BATCH walk where the kernel has it), turn raw keys into rows (thread ids mapped
to their process, names of targets filled in from /proc, each key resolved once, when first
seen, so a row keeps its identity when its process exits), and diff successive cumulative
snapshots into intervals. Keys are never deleted while the programs run: a delete would race
with increments on other CPUs and lose counts. The map therefore holds at most ``max_keys``
keys; further new keys are counted in the "other" bucket.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterable
from typing import IO, Any, NamedTuple

from sigscope.bpf.arch import possible_cpus
from sigscope.bpf.maps import HashMap, Map, PerCPUArrayMap, PerCPUHashMap
from sigscope.decode import ProcResolver
from sigscope.model import record as rec
from sigscope.model.event import outcome_name
from sigscope.model.filters import Filters
from sigscope.model.signals import errno_name, signal_name
from sigscope.outputs.prometheus import CountRow, Health
from sigscope.programs import count as top_probes
from sigscope.programs import signal as probes
from sigscope.programs.signal import COUNTER_INFLIGHT_FULL
from sigscope.session import ProbeSession
from sigscope.top_settings import (  # noqa: F401 (re-exported: the API's names)
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_KEYS,
    MAP_KINDS,
    MAX_MAX_KEYS,
    PERCPU_MAX_CPUS,
    SORT_KEYS,
)
from sigscope.tracer import make_filters


class TopError(RuntimeError):
    """Counting could not start; str() is one line for the user."""


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
    lost: int           # in-flight map full + probe runs skipped (recursion_misses)
    keys: int           # keys held in the kernel map
    monotonic: float    # when it was read

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

    @property
    def total(self) -> int:
        return sum(count for _, count in self.rows) + self.other

    def rate(self, count: int) -> float:
        return count / self.interval_s if self.interval_s > 0 else 0.0


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class KeyResolver:
    """Raw count keys -> RowKeys, like the decoder reads records, memoised per raw key."""

    def __init__(self, resolver: ProcResolver | None = None) -> None:
        self.proc = resolver or ProcResolver()
        self._cache: dict[bytes, RowKey] = {}

    def __call__(self, raw: bytes) -> RowKey:
        hit = self._cache.get(raw)
        if hit is None:
            hit = self._cache[raw] = self._resolve(raw)
        return hit

    def _resolve(self, raw: bytes) -> RowKey:
        (sender, target, sig, via_code, result, outcome_code, _reserved, sender_comm,
         target_comm) = top_probes.KEY_STRUCT.unpack(raw)
        now = time.monotonic()
        via = rec.VIA_NAMES[via_code] if via_code < len(rec.VIA_NAMES) else str(via_code)
        generated = outcome_code != rec.GEN_NONE
        t_pid: int | None = target
        t_comm: str | None = _comm(target_comm) if generated else None
        if generated:
            if via not in ("tgkill", "rt_tgsigqueueinfo"):
                # signal_generate names a task: its process, when it still exists.
                t_pid = self.proc.tgid(target, now) or target
        elif via == "pidfd_send_signal":
            t_pid = self.proc.pidfd_pid(sender, target)
        elif target <= 0:
            t_pid = None  # kill(0), kill(-pgid), kill(-1) that reached nobody
        elif via == "tkill":
            t_pid = self.proc.tgid(target, now) or target
        if t_comm is None and t_pid is not None:
            t_comm = self.proc.comm(t_pid, now)
        return RowKey(
            sender_pid=sender, sender_comm=_comm(sender_comm), target_pid=t_pid,
            target_comm=t_comm, sig=sig, via=via,
            result=None if via == "kernel" else result,
            outcome=outcome_name(outcome_code) if generated else None,
        )


class Counter(ProbeSession):
    """Loads the counting programs and reads cumulative snapshots of their map."""

    def __init__(
        self,
        filters: Filters | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        map_kind: str = "auto",
        resolver: KeyResolver | None = None,
        claim: str | None = None,
    ) -> None:
        super().__init__(claim)
        if not 1 <= max_keys <= MAX_MAX_KEYS:
            raise TopError(f"--max-keys must be between 1 and {MAX_MAX_KEYS}, not {max_keys}")
        if map_kind not in MAP_KINDS:
            raise TopError(f"unknown map kind {map_kind!r}: choose from {', '.join(MAP_KINDS)}")
        self.filters = filters or Filters()
        self.max_keys = max_keys
        # A per-CPU hash shares no cache line between CPUs counting the same key (measured: the
        # counting exit program 125 ns/run per-CPU vs 143 ns shared, two CPUs storming one key),
        # but user space reads one value per CPU per key (a full 10240-key map: 27 ms at 2 CPUs
        # vs 11 ms shared, growing ~8 ms per CPU). Hence per-CPU only up to PERCPU_MAX_CPUS.
        if map_kind == "auto":
            map_kind = "percpu" if possible_cpus() <= PERCPU_MAX_CPUS else "hash"
        self.map_kind = map_kind
        self.percpu = map_kind == "percpu"
        self.resolve = resolver or KeyResolver()
        self._counts: Map | None = None
        self._counters: PerCPUArrayMap | None = None
        self._lock = threading.Lock()
        self._final: Snapshot | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def _setup(self) -> None:
        inflight = self._own(probes.make_inflight_map(self.claim))
        self._inflight = inflight
        counters = self._own(PerCPUArrayMap(8, top_probes.NUM_COUNTERS, name="sigscope_count"))
        kind = PerCPUHashMap if self.percpu else HashMap
        counts = self._own(kind(top_probes.KEY_SIZE, top_probes.VALUE_SIZE, self.max_keys,
                                name="sigscope_top"))
        self._counters, self._counts = counters, counts  # type: ignore[assignment]
        fds = top_probes.CountMapFds(inflight.fd, counts.fd, counters.fd, self.percpu)
        cfg = top_probes.probe_config(self.filters, fds, claim=self.claim)
        self._load_and_attach(probes.signal_probe_plans(cfg, prefix="t"))

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
            raise TopError("the counter is not started")
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
            lost += max(0, (self._recursion_misses() or 0) - self._recursion_at_start)
            lost += self._unfinished
            return Snapshot(rows, other, lost, len(pairs), now)

    # --- for the Prometheus exporter -------------------------------------------------------

    def exporter_snapshot(self) -> tuple[list[CountRow], Health]:
        """sigscope.outputs.prometheus's Snapshot callable: cumulative rows and health."""
        snap = self.read()
        rows = [
            CountRow(sender_pid=k.sender_pid, sender_comm=k.sender_comm, target_pid=k.target_pid,
                     target_comm=k.target_comm, sig=k.sig, signal=k.signal, via=k.via,
                     result=k.result, error=k.error, outcome=k.outcome, count=count)
            for k, count in snap.rows.items()
        ]
        return rows, Health(lost_events=snap.lost, map_full=snap.other, other=snap.other,
                            records=snap.total)


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
    vias: Iterable[str] | None = None,
    failed_only: bool = False,
    kill_only: bool = False,
    max_keys: int = DEFAULT_MAX_KEYS,
    map_kind: str = "auto",
) -> Counter:
    """A Counter with the same filters as ``sigscope.trace()`` / the command line."""
    return Counter(make_filters(signals, exclude_signals, pids, target_ids, comm, vias,
                                failed_only, kill_only), max_keys=max_keys, map_kind=map_kind)


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


def interval_to_dict(interval: Interval, sort: str = "count", limit: int | None = None
                     ) -> dict[str, Any]:
    """The --json object for one interval (documented; keys may be added, never renamed)."""
    rows = sort_rows(interval.rows, sort)
    if limit is not None:
        rows = rows[:limit]
    return {
        "type": "interval",
        "time": iso_time(interval.time),
        "interval_s": round(interval.interval_s, 6),
        "final": interval.final,
        "rows": [
            {
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
            }
            for k, n in rows
        ],
        "total": interval.total,
        "other": interval.other,
        "lost": interval.lost,
        "keys": interval.keys,
    }


_HEADER = (f"{'COUNT':>8} {'RATE/s':>9} {'SIGNAL':<11} {'VIA':<17} {'PID':>7} {'COMM':<15} "
           f"{'TPID':>7} {'TCOMM':<15} {'RESULT':<8} OUTCOME")


def _result_text(key: RowKey) -> str:
    if key.result is None:
        return "-"
    return key.error or str(key.result)


def render_table(interval: Interval, sort: str = "count", limit: int | None = 20,
                 max_keys: int | None = None) -> str:
    """The text table of one interval, ending with a totals line."""
    stamp = time.strftime("%H:%M:%S", time.localtime(interval.time))
    final = " (final, partial)" if interval.final else ""
    lines = [f"{stamp}  interval {interval.interval_s:.2f}s{final}", _HEADER]
    rows = sort_rows(interval.rows, sort)
    shown = rows if limit is None else rows[:limit]
    for key, n in shown:
        tpid = "-" if key.target_pid is None else str(key.target_pid)
        lines.append(
            f"{n:>8} {interval.rate(n):>9.1f} {key.signal:<11} {key.via:<17} "
            f"{key.sender_pid:>7} {key.sender_comm[:15]:<15} {tpid:>7} "
            f"{(key.target_comm or '-')[:15]:<15} {_result_text(key):<8} {key.outcome or '-'}"
        )
    if len(rows) > len(shown):
        hidden = sum(n for _, n in rows[len(shown):])
        lines.append(f"{hidden:>8} {interval.rate(hidden):>9.1f} ({len(rows) - len(shown)} "
                     "more rows)")
    keys = f"{interval.keys}/{max_keys}" if max_keys else str(interval.keys)
    lines.append(f"total {interval.total} ({interval.rate(interval.total):.1f}/s), "
                 f"other {interval.other}, lost {interval.lost}, keys {keys}")
    return "\n".join(lines) + "\n"


CLEAR_SCREEN = "\x1b[H\x1b[2J"


class IntervalWriter:
    """Prints intervals as a table (redrawn on a terminal unless `append`) or as JSON."""

    def __init__(self, out: IO[str], json_output: bool = False, sort: str = "count",
                 limit: int | None = None, append: bool = False,
                 max_keys: int | None = None) -> None:
        self.out = out
        self.json = json_output
        self.sort = sort
        self.limit = limit
        self.max_keys = max_keys
        isatty = getattr(out, "isatty", lambda: False)()
        self.clear = not json_output and not append and isatty

    def write(self, interval: Interval) -> None:
        if self.json:
            self.out.write(json.dumps(interval_to_dict(interval, self.sort, self.limit)) + "\n")
        else:
            limit = self.limit if self.limit is not None else 20
            text = render_table(interval, self.sort, limit, self.max_keys)
            self.out.write((CLEAR_SCREEN + text) if self.clear else (text + "\n"))
        self.out.flush()
