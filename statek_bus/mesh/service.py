"""The service runner: a NATS micro service (ADR-32) from a table of typed endpoints.

A service module (``services/<name>.py``) is a :data:`ServiceFactory`: given a
:class:`ServiceContext` it opens what it needs on ``ctx.stack`` and returns a :class:`ServiceSpec`
(name, description, endpoints). The runner does the rest, the same way for every service:

- connects (reconnecting forever), provisions (``STATEK_PROVISION=auto``) and verifies the storage it
  uses (one line naming what is missing or forbidden), registers the micro service with a SemVer
  version and a non-empty description (the ``nats`` CLI ignores a service without one);
- decodes each request with its endpoint's typed decoder (a bad field is a 400 naming it, a body
  over ``max_request_bytes`` a 413, one nested deeper than ``MAX_JSON_DEPTH`` a 400 naming the
  path), calls the handler, encodes the reply as JSON;
- dispatches handlers as bounded concurrent tasks: nats-py awaits an endpoint's handler one
  message at a time, which would serialise every request;
- turns every exception into ADR-32 error headers plus a JSON body (:func:`errors.error_reply`),
  sized so that no reply (headers included) can exceed the server's ``max_payload``, and keeps
  the endpoint's counts, error count and last error true in ``$SRV.STATS`` (the responder is our
  own, :mod:`statek_bus.mesh.micro`, so nothing writes nats-py's private state);
- on SIGTERM/SIGINT: stops taking requests, lets in-flight ones finish (up to ``drain_timeout``),
  closes the factory's resources (workers stop fetching; unacknowledged steps are redelivered),
  then drains the connection;
- exits the process (:data:`EXIT_CONNECTION_LOST`) when nats-py closes the connection for good, so
  a supervisor restarts it instead of a live process that answers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from statek_bus.mesh import metrics, tracing
from statek_bus.mesh.connection import connect, drain_and_close
from statek_bus.mesh.health import Check, HealthServer
from statek_bus.mesh.micro import EndpointStats, MicroService, StatsData
from statek_bus.mesh.permissions import SERVICE_ROLES, role
from statek_bus.mesh.provision import prepare
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import PayloadTooLargeError, error_reply
from statek_bus.wire.messages import check_depth, decode, encode
from statek_bus.wire.subjects import ERROR_CODE_HEADER, ERROR_HEADER, SERVICE_VERSION

__all__ = [
    "EXIT_CONNECTION_LOST",
    "YOUNG_THRESHOLD",
    "Endpoint",
    "ServiceContext",
    "ServiceFactory",
    "ServiceHealth",
    "ServiceSpec",
    "freeze_startup_heap",
    "load_service_factory",
    "run_service",
    "running_service",
]

log = logging.getLogger(__name__)

_REPLY_HEADROOM = 1024  # error headers and protocol overhead below the server's max_payload

Handler = Callable[[Any], Awaitable[Any]]
"""An endpoint handler: takes the decoded request, returns the reply (any msgspec-encodable value)."""


@dataclass(frozen=True)
class Endpoint:
    """One request/reply endpoint."""

    name: str
    """Endpoint name, unique within the service (shown by ``nats micro info``)."""
    subject: str
    """The subject it answers on."""
    request: type
    """The msgspec Struct its request decodes to."""
    handler: Handler
    """The coroutine that answers."""
    doc: str = ""
    """One line shown in the endpoint metadata."""
    stats: StatsData | None = None
    """The endpoint's ``data`` in ``$SRV.STATS`` (e.g. the executor's concurrency)."""


@dataclass
class ServiceSpec:
    """What a service factory returns."""

    name: str
    """ADR-32 service name (``statek-state``...)."""
    description: str
    """Non-empty description."""
    endpoints: Sequence[Endpoint]
    """The endpoint table."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Extra ``$SRV.INFO`` metadata (string values)."""
    checks: dict[str, Check] = field(default_factory=dict)
    """Readiness checks of this service beyond the runner's own (``/readyz``)."""


@dataclass
class ServiceContext:
    """What a service factory gets: settings, the connection and a stack for its resources."""

    settings: Settings
    """Settings of this process."""
    nc: Client
    """The service's NATS connection."""
    js: JetStreamContext
    """JetStream on that connection."""
    stack: AsyncExitStack
    """Enter background workers here; they are closed after in-flight requests finish."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the service begins to stop."""
    instance_id: str = ""
    """The micro service instance id (set once registered)."""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the micro service is registered and answering ``$SRV.PING``."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the connection is closed for good (nats-py will not reconnect)."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by a service whose work is done (an executor in burst mode): the process then stops."""


ServiceFactory = Callable[[ServiceContext], Awaitable[ServiceSpec]]
"""Builds a service: opens its resources on ``ctx.stack`` and returns its spec."""


class _Counted:
    """One endpoint's metrics, their labelled series looked up once (not on every request)."""

    __slots__ = ("_by_class", "endpoint", "seconds")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.seconds = metrics.REQUEST_SECONDS.labels(endpoint=endpoint)
        self._by_class: dict[str, Any] = {}

    def record(self, code: int, elapsed_ns: int) -> None:
        """Count one reply of ``code`` that took ``elapsed_ns``."""
        code_class = metrics.code_class(code)
        series = self._by_class.get(code_class)
        if series is None:
            series = self._by_class[code_class] = metrics.REQUESTS.labels(
                endpoint=self.endpoint, code_class=code_class
            )
        series.inc()
        self.seconds.observe(elapsed_ns / 1e9)


class _Runner:
    def __init__(self, ctx: ServiceContext, spec: ServiceSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        self.sem = asyncio.Semaphore(ctx.settings.handler_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.service = MicroService(
            ctx.nc,
            name=spec.name,
            version=SERVICE_VERSION,
            description=spec.description,
            metadata=spec.metadata,
        )

    async def start(self) -> None:
        self.ctx.instance_id = self.service.id
        for ep in self.spec.endpoints:
            stats = EndpointStats(
                name=ep.name,
                subject=ep.subject,
                metadata={"request": ep.request.__name__, "doc": ep.doc or ep.name},
                data=ep.stats,
            )
            await self.service.add_endpoint(stats, self._dispatcher(ep, stats))
        await self.service.start()

    def _dispatcher(self, ep: Endpoint, stats: EndpointStats) -> Callable[[Msg], Awaitable[None]]:
        counted = _Counted(f"{self.spec.name}/{ep.name}")
        sem, tasks, done = self.sem, self.tasks, self._done

        async def dispatch(msg: Msg) -> None:
            await sem.acquire()
            task = asyncio.create_task(self._handle(ep, stats, counted, msg))
            tasks.add(task)
            task.add_done_callback(done)

        return dispatch

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.sem.release()

    async def _handle(self, ep: Endpoint, stats: EndpointStats, counted: _Counted, msg: Msg) -> None:
        started = time.perf_counter_ns()
        error: str | None = None
        headers: dict[str, str] | None = None
        room = self.ctx.nc.max_payload - _REPLY_HEADROOM
        with tracing.span(ep.subject, msg.headers, kind="server"):  # honours an incoming traceparent
            try:
                limit = self.ctx.settings.max_request_bytes
                if len(msg.data) > limit:
                    raise PayloadTooLargeError(
                        f"request is {len(msg.data)} bytes, over the {limit}-byte limit",
                        details={"size": len(msg.data), "limit": limit},
                    )
                check_depth(msg.data)
                reply = await ep.handler(decode(msg.data or b"{}", ep.request))
                body = encode(reply)
                if len(body) > room:  # nats-py would refuse to publish it and the caller would time out
                    raise PayloadTooLargeError(
                        f"the reply is {len(body)} bytes, over the {room}-byte message limit: ask for less "
                        f"(a smaller limit or batch)",
                        details={"size": len(body), "limit": room},
                    )
            except Exception as exc:
                headers, body = error_reply(exc, context=counted.endpoint)
                if len(body) + sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items()) > room:
                    # an error that would not fit must not cost the connection: send a fixed one
                    headers, body = error_reply(
                        PayloadTooLargeError("the error reply to this request would not fit a message")
                    )
                error = f"{headers.get(ERROR_CODE_HEADER)}:{headers.get(ERROR_HEADER)}"
            if msg.reply:
                try:
                    await self.ctx.nc.publish(msg.reply, body, headers=headers)
                except Exception:  # the connection went away; the caller will time out and retry
                    log.warning("could not reply on %s", ep.subject, exc_info=True)
        elapsed = time.perf_counter_ns() - started
        stats.record(elapsed, error)
        counted.record(int(headers.get(ERROR_CODE_HEADER) or 500) if headers else 200, elapsed)

    async def stop(self) -> None:
        """Stop taking requests and let in-flight ones finish (bounded by ``drain_timeout``)."""
        self.ctx.stopping.set()
        await self.service.drain_endpoints()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=self.ctx.settings.drain_timeout)
            for t in pending:
                t.cancel()
        await self.service.stop()


@dataclass
class ServiceHealth:
    """How far a starting service has come, read by ``/readyz`` and ``/livez``."""

    nc: Client | None = None
    """The connection, once opened."""
    provisioned: bool = False
    """Buckets and streams verified."""
    spec: ServiceSpec | None = None
    """The service's spec (its own checks), once built."""
    registered: bool = False
    """The micro service answers ``$SRV.PING``."""

    def ready(self) -> dict[str, Check]:
        """Readiness: connected now, storage verified, registered, and the service's own checks."""
        checks: dict[str, Check] = {
            "nats": lambda: self.nc is not None and self.nc.is_connected,
            "storage": lambda: self.provisioned,
            "registered": lambda: self.registered,
        }
        if self.spec is not None:
            checks.update(self.spec.checks)
        return checks

    def live(self) -> dict[str, Check]:
        """Liveness: the connection has not closed for good (nats-py never reopens a closed one)."""
        return {"nats_open": lambda: self.nc is None or not self.nc.is_closed}


@contextlib.asynccontextmanager
async def running_service(
    factory: ServiceFactory, settings: Settings, *, name: str, health: ServiceHealth | None = None
) -> AsyncIterator[ServiceContext]:
    """Run a service in this process for the duration of the ``async with`` block.

    With ``settings.health_port`` set, ``/livez``, ``/readyz`` and ``/metrics`` are served from the
    start, so a probe sees why the service is not ready yet while it connects and provisions.
    ``health``: filled in as the service comes up (what ``/readyz`` reports). ``ctx.closed`` is set
    if the connection is closed for good while the block runs (see :func:`run_service`, which
    exits the process then).
    """
    health = health if health is not None else ServiceHealth()
    async with contextlib.AsyncExitStack() as outer:
        if settings.health_port >= 0:
            await outer.enter_async_context(
                HealthServer(
                    settings.health_port, host=settings.health_host, ready=health.ready, live=health.live
                )
            )
        async with _running(factory, settings, name, health) as ctx:
            yield ctx


@contextlib.asynccontextmanager
async def _running(
    factory: ServiceFactory, settings: Settings, name: str, health: ServiceHealth
) -> AsyncIterator[ServiceContext]:
    closed = asyncio.Event()
    nc = await connect(settings, name=name, service=True, on_closed=closed.set)
    health.nc = nc
    try:
        js = nc.jetstream(timeout=max(5.0, settings.request_timeout))
        await prepare(js, settings, _streams(name))
        health.provisioned = True
        async with AsyncExitStack() as stack:
            ctx = ServiceContext(settings=settings, nc=nc, js=js, stack=stack, closed=closed)
            spec = await factory(ctx)
            health.spec = spec
            runner = _Runner(ctx, spec)
            await runner.start()
            ctx.ready.set()
            health.registered = True
            log.info("%s %s ready (instance %s)", spec.name, SERVICE_VERSION, ctx.instance_id)
            _serving_started()
            try:
                yield ctx
            finally:
                health.registered = False
                try:
                    await runner.stop()
                finally:
                    _serving_stopped()
    finally:
        with contextlib.suppress(Exception):
            await drain_and_close(nc)


_serving = 0  # services running in this process (their heap is frozen while any is)
_thresholds: tuple[int, int, int] | None = None  # the collector's thresholds before the first service

YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation while a service runs (CPython's
default is 700). A service's requests leave no reference cycles behind (a step's session breaks
its own, :meth:`~statek_bus.runtime.coderunner.SandboxSession.end`), so a young collection finds
almost nothing to free, yet each one walks every young object of the steps in flight: with the
default, 2,000 timers due at once cost the executor 0.07-0.08 ms of collection per wake-up, with
this 0.02 (``python -m bench.profile --waits --gc``)."""


def freeze_startup_heap() -> None:
    """While a service runs in this process, keep what the process holds now out of the cyclic
    garbage collector's full collections (:func:`gc.freeze`).

    A service's imports and start-up objects (litellm's alone are ~400,000) live as long as it
    runs; scanned again by every full collection, which requests in flight trigger, they cost
    the provider ~90 µs of CPU per call with 2,000 calls waiting on the model. The runner calls
    this once a service is ready; so does whatever loads more for good later (the provider, after
    litellm). Objects that die are still freed by reference counting, and when the last service
    of the process stops the heap is unfrozen (:func:`gc.unfreeze`), so a test's or an
    application's process collects what its services left behind as before. Outside a running
    service it does nothing.
    """
    if _serving:
        gc.freeze()


def _serving_started() -> None:
    global _serving, _thresholds
    _serving += 1
    if _serving == 1:
        _thresholds = gc.get_threshold()
        if _thresholds[0]:  # 0: the application turned automatic collection off; leave it off
            gc.set_threshold(max(YOUNG_THRESHOLD, _thresholds[0]), *_thresholds[1:])
    freeze_startup_heap()


def _serving_stopped() -> None:
    global _serving
    _serving -= 1
    if not _serving:
        gc.unfreeze()
        if _thresholds is not None and gc.get_threshold()[0] == max(YOUNG_THRESHOLD, _thresholds[0]):
            gc.set_threshold(*_thresholds)  # unless something set its own meanwhile


def _streams(name: str) -> tuple[str, ...]:
    """The streams service ``name`` uses (docs/permissions.md); a service of another name: all of them."""
    known = SERVICE_ROLES.get(name)
    if known is not None:
        return role(known).streams
    from statek_bus.mesh.provision import desired_streams, object_store_stream

    return (*(c.name for c in desired_streams(Settings()) if c.name), object_store_stream())


EXIT_CONNECTION_LOST = 75
"""Exit status of a service process whose NATS connection closed for good (``EX_TEMPFAIL``): its
supervisor (Kubernetes, ``statek-bus up``) restarts it, instead of a live process that no longer
answers anything."""


async def run_service(factory: ServiceFactory, settings: Settings, *, name: str) -> None:
    """Run a service until SIGTERM or SIGINT (or until it says it is finished), then stop it gracefully.

    If the connection is closed for good meanwhile (nats-py gives up on a connection after a
    fatal server error and never reconnects), the service stops and the process exits with
    :data:`EXIT_CONNECTION_LOST`.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_service(factory, settings, name=name) as ctx:
        waiters = [asyncio.ensure_future(e.wait()) for e in (stop, ctx.closed, ctx.finished)]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        lost = ctx.closed.is_set() and not stop.is_set()
        if lost:
            log.error("%s: the NATS connection is closed for good; exiting so a supervisor restarts it", name)
        else:
            log.info("%s stopping", name)
    if lost:
        raise SystemExit(EXIT_CONNECTION_LOST)


def load_service_factory(kind: str) -> ServiceFactory:
    """The factory of service ``kind`` (``submission``, ``executor``, ``state``, ``provider``).

    Imported by name, so a process loads only the service it runs (litellm only in the provider).
    """
    module = importlib.import_module(f"statek_bus.services.{kind}")
    factory: ServiceFactory = module.build
    return factory
