"""The /metrics HTTP endpoint of the Prometheus exporter (see outputs/prometheus.py).

Kept apart so that only `sigscope top --prometheus` imports http.server.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Tuple

from sigscope.outputs.exporter_base import METRICS_PATH, ExporterError

log = logging.getLogger("sigscope.outputs.prometheus")


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer
    # A stuck client must not hold a handler thread forever.
    timeout = 30

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path != METRICS_PATH:
            self._send(
                404, "text/plain; charset=utf-8", b"not found: metrics are at /metrics\n", send_body
            )
            return
        encoder, content_type = self.server.choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.server.registry)
        except Exception as error:  # a failing snapshot must not take the server down
            log.warning("collecting metrics failed: %s", error)
            self._send(
                500,
                "text/plain; charset=utf-8",
                f"collecting metrics failed: {error}\n".encode(),
                send_body,
            )
            return
        self._send(200, content_type, body, send_body)

    def _send(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # The default writes every request to stderr, which would scribble over `top`'s screen.
        log.debug("%s - %s", self.address_string(), format % args)


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    registry: Any
    choose_encoder: Callable[[str], Tuple[Callable[[Any], bytes], str]]


class MetricsServer:
    """A running /metrics endpoint; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, httpd: _MetricsHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        address = httpd.server_address
        host = address[0]  # a str for AF_INET/AF_INET6 sockets
        self.host: str = host if isinstance(host, str) else bytes(host).decode()
        self.port: int = address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{METRICS_PATH}"

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(addr: str, host: str, port: int, prometheus_client: Any,
                 collector: Any) -> MetricsServer:
    from prometheus_client.exposition import choose_encoder

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(collector)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("MetricsHTTPServer", (_MetricsHTTPServer,), {"address_family": family})
    try:
        httpd = server_class((host, port), _MetricsHandler)
    except (OSError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ExporterError(f"cannot listen on {addr}: {reason}") from None
    httpd.registry = registry
    httpd.choose_encoder = choose_encoder

    # A short poll interval only bounds how long close() waits for the loop to notice shutdown.
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=f"sigscope-metrics-{httpd.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return MetricsServer(httpd, thread)
