"""The HTTP endpoint beside a running process: ``/metrics``, ``/healthz``, ``/readyz``.

Why a small server of our own rather than ``prometheus_client.start_http_server``: the
liveness and readiness answers live on the same port, and binding port 0 must tell the
caller which port it got (tests run several processes at once).

* ``/healthz`` (liveness): 200 while the process's main loop goes round; 503 once it has
  not for ``stuck_after_s`` (a supervisor restarts it).
* ``/readyz`` (readiness): 200 when the process does its job (``ready()`` says so), else
  503 with the reason as the body.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from cutline.errors import ConfigError
from cutline.metrics import PrometheusMetrics

log = logging.getLogger("cutline.metrics")

# (ready?, why not); asked on every /readyz request, from the server's thread
Readiness = Callable[[], tuple[bool, str]]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464``, ``:9464`` for every interface; port 0: any free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"--metrics-address {text!r} is not HOST:PORT: use e.g. 127.0.0.1:9464 or :9464"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """Serves one :class:`PrometheusMetrics` on a daemon thread until :meth:`close`."""

    def __init__(
        self,
        metrics: PrometheusMetrics,
        address: str,
        *,
        ready: Readiness = lambda: (True, "ready"),
        stuck_after_s: float = 180.0,  # longer than any bounded wait of a main loop
    ):
        self.metrics = metrics
        self.ready = ready
        self.stuck_after_s = stuck_after_s
        host, port = parse_address(address)
        handler = _handler(self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-address {address}: cannot listen there ({exc.strerror}); "
                "choose a free port"
            ) from None
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}"

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
        if path == "/healthz":
            silent = self.metrics.seconds_since_beat()
            if silent > self.stuck_after_s:
                return 503, "text/plain", f"main loop silent for {silent:.0f} s\n".encode()
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            try:
                ok, why = self.ready()
            except Exception as exc:  # a readiness check must answer, never hang or crash
                ok, why = False, f"readiness check failed: {exc}"
            return (200 if ok else 503), "text/plain", (why + "\n").encode()
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, content_type, body = server.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics endpoint: " + format, *args)

    return Handler


def serve_metrics(
    address: str | None, source: str, ready: Readiness, progress: Callable[[str], None]
) -> tuple[PrometheusMetrics | None, MetricsServer | None]:
    """Metrics and their endpoint for ``--metrics-address`` (both None when it is not given)."""
    if not address:
        return None, None
    metrics = PrometheusMetrics(source)
    server = MetricsServer(metrics, address, ready=ready)
    progress(f"metrics at {server.url}/metrics (liveness /healthz, readiness /readyz)")
    return metrics, server
