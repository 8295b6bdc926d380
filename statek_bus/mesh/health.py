"""Health and metrics over HTTP: ``/livez``, ``/readyz`` and ``/metrics`` on one port.

Kubernetes probes and Prometheus need a port; NATS services have none. Each service process can
serve this small HTTP/1.1 endpoint (setting ``STATEK_HEALTH_PORT``; unset or ``-1``: no server,
``0``: a free port, logged at start):

- ``/livez``: 200 while the event loop answers and the NATS connection has not closed for good
  (a closed connection never comes back in nats-py, so the pod must be restarted);
- ``/readyz``: 200 when every readiness check passes, else 503; the body is JSON naming each
  check, e.g. ``{"ready": false, "checks": {"nats": false, "registered": true}}``;
- ``/metrics``: the Prometheus text exposition of :mod:`statek_bus.mesh.metrics`.

Only ``GET`` (and ``HEAD``) of those three paths is served; anything else is 404/405, a request
head over :data:`MAX_HEAD_BYTES` or slower than :data:`READ_TIMEOUT` is dropped, so a port scanner
or a slow client cannot hold the service's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from types import TracebackType

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

__all__ = ["MAX_HEAD_BYTES", "READ_TIMEOUT", "Check", "Checks", "HealthServer"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
"""Longest request line plus headers accepted."""
READ_TIMEOUT = 5.0
"""Seconds a client has to send its request head."""

Check = Callable[[], bool]
"""A readiness or liveness check: true when healthy; an exception counts as unhealthy."""

Checks = Mapping[str, Check] | Callable[[], Mapping[str, Check]]
"""Checks by name, or a callable giving them at each request (for checks that appear later)."""

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _run_checks(checks: Checks) -> dict[str, bool]:
    results: dict[str, bool] = {}
    for name, check in (checks() if callable(checks) else checks).items():
        try:
            results[name] = bool(check())
        except Exception:
            log.debug("health check %s raised", name, exc_info=True)
            results[name] = False
    return results


class HealthServer:
    """An async context manager serving ``/livez``, ``/readyz`` and ``/metrics``.

    Args:
        port: TCP port (0: a free one; :attr:`port` tells which after entering).
        ready: readiness checks by name (all must pass), or a callable returning them.
        live: liveness checks by name (all must pass), or a callable returning them.
        host: bind address (``0.0.0.0`` in a pod, so the kubelet reaches it).
        registry: the Prometheus registry to expose.
    """

    def __init__(
        self,
        port: int,
        *,
        ready: Checks,
        live: Checks | None = None,
        host: str = "0.0.0.0",
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.port = port
        """The bound port (the real one once entered)."""
        self.host = host
        """The bind address."""
        self._ready = ready
        self._live: Checks = live or {}
        self._registry = registry
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health and metrics on http://%s:%d (/livez /readyz /metrics)", self.host, self.port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def readiness(self) -> dict[str, bool]:
        """The result of every readiness check, by name."""
        return _run_checks(self._ready)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        if len(head) > MAX_HEAD_BYTES:
            writer.close()
            return
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        status, ctype, body = self._route(method, path)
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        if method != "HEAD":
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if path not in ("/livez", "/readyz", "/metrics"):
            return 404, "text/plain", b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        checks = _run_checks(self._ready if path == "/readyz" else self._live)
        ok = all(checks.values())
        body = json.dumps({"ready" if path == "/readyz" else "live": ok, "checks": checks}).encode()
        return (200 if ok else 503), "application/json", body + b"\n"
