"""What the Prometheus exposition (prometheus.py) and its HTTP endpoint (prometheus_http.py)
share, kept apart so that neither imports the other at import time: the endpoint's path and the
exporter's one error type."""

from __future__ import annotations

from sigscope.errors import SetupError

METRICS_PATH = "/metrics"


class ExporterError(SetupError, RuntimeError):
    """A one-line, user-facing failure of the exporter (missing dependency, cannot listen)."""
