"""Prometheus exposition of in-kernel signal counts (`sigscope top --prometheus ADDR:PORT`).

The counting side (the BPF programs and the map reader) is not this module's business: it hands us
a ``snapshot()`` callable returning cumulative rows and health counters, and we turn each scrape
into metric families. Keeping that seam small means this module is tested with a fake snapshot and
the counting can change without touching the exposition.

prometheus-client is an optional dependency (``pip install 'sigscope[prometheus]'``); it is
only imported when a collector or server is built, so ``import sigscope.outputs.prometheus``
always works.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from sigscope import __version__
from sigscope.errors import UsageError
from sigscope.model.counts import CountRow, Health
from sigscope.model.escape import printable
from sigscope.outputs.exporter_base import (  # noqa: F401 (METRICS_PATH: re-exported)
    METRICS_PATH,
    ExporterError,
)

# Every label a user may keep, in the order they appear in the output when all are kept.
LABEL_NAMES: Tuple[str, ...] = (
    "signal",
    "via",
    "outcome",
    "error",
    "sender_comm",
    "target_comm",
    "sender_pid",
    "target_pid",
    "sender_container",
    "target_container",
    "pod_uid",
)
# Labels that make the kernel count by cgroup ids (an 80-byte key, programs/count.py): the
# sender's and the recipient's container (sigscope.containers.container_label: namespace/pod/
# container, a name, or 12 hex digits of the id; "" outside one) and the recipient's pod UID.
CONTAINER_LABELS = frozenset({"sender_container", "target_container", "pod_uid"})
# Bounded by the number of distinct programs, not processes: pids are opt-in.
DEFAULT_LABELS: Tuple[str, ...] = ("signal", "via", "outcome", "sender_comm", "target_comm")

MISSING_DEPENDENCY = (
    "the Prometheus exporter needs prometheus-client: pip install 'sigscope[prometheus]'"
)


Snapshot = Callable[[], Tuple[List[CountRow], Health]]


def parse_labels(spec: str) -> Tuple[str, ...]:
    """Parse a ``--labels`` value such as ``"signal,via,sender_comm"``.

    Whitespace around names is ignored, repeated names are kept once, and an empty spec means no
    labels at all (one series with the total). Unknown names raise a one-line ValueError.
    """
    labels: List[str] = []
    for part in spec.split(","):
        name = part.strip()
        if not name:
            continue
        if name not in LABEL_NAMES:
            raise UsageError(
                f"unknown label {name!r} in --labels (valid: {', '.join(LABEL_NAMES)})"
            )
        if name not in labels:
            labels.append(name)
    return tuple(labels)


def _require_prometheus_client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ExporterError(MISSING_DEPENDENCY) from None
    return prometheus_client


def _label_value(value: object) -> str:
    """A label's value as exposed: comms and container names are chosen by other processes,
    and a scrape is often read on a terminal (curl), so control and other non-printable
    characters are escaped as in the text outputs (model/escape.py), before prometheus_client
    escapes backslash, quote and newline for the exposition format itself."""
    # Prometheus treats an empty label value as "label not set", which is what None means here.
    return "" if value is None else printable(str(value))


class _MonotonicCounters:
    """Keeps exposed counters from ever going down.

    The snapshot is cumulative by contract, so a sum only drops when the counting side forgot
    something (a key evicted, a process's rows pruned). Prometheus would read the drop as a counter
    reset and double-count on the next rate(); instead we carry the forgotten amount as an offset
    and keep exposing series that vanished, at their last value.
    """

    def __init__(self) -> None:
        self._last_raw: Dict[Tuple[str, ...], float] = {}
        self._offset: Dict[Tuple[str, ...], float] = {}

    def update(self, raw: Dict[Tuple[str, ...], float]) -> Dict[Tuple[str, ...], float]:
        exposed: Dict[Tuple[str, ...], float] = {}
        for key in list(self._last_raw) + [k for k in raw if k not in self._last_raw]:
            value = raw.get(key, 0)
            previous = self._last_raw.get(key, 0)
            if value < previous:
                self._offset[key] = self._offset.get(key, 0) + (previous - value)
            self._last_raw[key] = value
            exposed[key] = value + self._offset.get(key, 0)
        return exposed


class SignalCollector:
    """A prometheus_client custom collector over a cumulative count snapshot.

    Each ``collect()`` takes one snapshot, keeps the chosen labels, sums the rows that collapse to
    the same label values, and yields the metric families. Safe to call from several scrape
    threads at once.
    """

    def __init__(self, snapshot: Snapshot, labels: Sequence[str] = DEFAULT_LABELS) -> None:
        _require_prometheus_client()
        unknown = [name for name in labels if name not in LABEL_NAMES]
        if unknown:
            raise UsageError(f"unknown label {unknown[0]!r} (valid: {', '.join(LABEL_NAMES)})")
        self.labels: Tuple[str, ...] = tuple(dict.fromkeys(labels))
        self._snapshot = snapshot
        self._kernel_release = os.uname().release
        self._lock = threading.Lock()
        self._signals = _MonotonicCounters()
        self._health = _MonotonicCounters()

    def _sum_rows(self, rows: Sequence[CountRow]) -> Dict[Tuple[str, ...], float]:
        sums: Dict[Tuple[str, ...], float] = {}
        for row in rows:
            key = tuple(_label_value(getattr(row, name)) for name in self.labels)
            sums[key] = sums.get(key, 0) + row.count
        return sums

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        # Snapshot and update under one lock: two scrapes racing could otherwise apply an older
        # snapshot after a newer one, which would look like a drop and be carried as an offset.
        with self._lock:
            rows, health = self._snapshot()
            signals = self._signals.update(self._sum_rows(rows))
            health_values = self._health.update(
                {
                    ("lost_events",): health.lost_events,
                    ("other",): health.other,
                    ("records",): health.records,
                    ("skipped",): health.skipped,
                }
            )

        family = CounterMetricFamily(
            "sigscope_signals_total",
            "Signals counted since start, by the kept labels (see --labels).",
            labels=self.labels,
        )
        for key in sorted(signals):
            family.add_metric(list(key), signals[key])
        yield family

        health_help = {
            "lost_events": (
                "sigscope_lost_events_total",
                "Signals that matched the filters but could not be counted (in-flight map full).",
            ),
            "other": (
                "sigscope_other_signals_total",
                "Signals counted in the other bucket, without their labels (map was full).",
            ),
            "records": (
                "sigscope_records_total",
                "Signals counted in total, keyed and other bucket alike.",
            ),
            "skipped": (
                "sigscope_skipped_probe_runs_total",
                "Probe runs the kernel skipped while another BPF program ran on the CPU; "
                "unknown whether they matched the filters.",
            ),
        }
        for field, (name, documentation) in health_help.items():
            yield CounterMetricFamily(name, documentation, value=health_values[(field,)])

        yield GaugeMetricFamily(
            "sigscope_map_full",
            "1 while the kernel count map is full (new label sets go to the other bucket).",
            value=health.map_full,
        )
        yield GaugeMetricFamily(
            "sigscope_tracked_keys",
            "Keys currently held in the kernel count map.",
            value=health.keys,
        )
        if health.max_keys:
            yield GaugeMetricFamily(
                "sigscope_max_keys",
                "Keys the kernel count map can hold (--max-keys).",
                value=health.max_keys,
            )
        build = GaugeMetricFamily(
            "sigscope_build_info",
            "Always 1; the sigscope version and the kernel release it runs on.",
            labels=("version", "kernel"),
        )
        build.add_metric([__version__, self._kernel_release], 1)
        yield build


# ---------------------------------------------------------------------------------------------
# HTTP server

_ADDR_RE = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_listen_address(spec: str) -> Tuple[str, int]:
    """Parse ``HOST:PORT``, ``:PORT`` (all IPv4 interfaces) or ``[IPV6]:PORT``."""
    match = _ADDR_RE.match(spec.strip())
    if match is None:
        raise UsageError(f"bad listen address {spec!r}: expected HOST:PORT, :PORT or [IPV6]:PORT")
    port = int(match.group("port"))
    if port > 65535:
        raise UsageError(f"bad listen address {spec!r}: port {port} is out of range 0-65535")
    if match.group("v6") is not None:
        host = match.group("v6")
        if not host:
            raise UsageError(f"bad listen address {spec!r}: empty IPv6 address")
    else:
        host = match.group("host") or "0.0.0.0"
    return host, port


def serve(addr: str, collector: Any) -> Any:
    """Serve ``collector`` on ``http://ADDR/metrics`` from a background daemon thread; returns a
    MetricsServer (``.port``, ``.url``, ``.close()``).

    The registry is private and holds only ``collector``: no process/GC metrics from the global
    registry, so a scrape shows exactly what sigscope counts. Raises ValueError for a bad address
    and ExporterError (one line) when the address cannot be bound or prometheus-client is missing.
    (The HTTP server lives in prometheus_http.py, imported only here: `sigscope trace` never
    pays for http.server.)
    """
    from sigscope.outputs.prometheus_http import start_server

    host, port = parse_listen_address(addr)
    prometheus_client = _require_prometheus_client()
    return start_server(addr, host, port, prometheus_client, collector)
