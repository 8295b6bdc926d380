"""Our own ADR-32 (NATS Service API) responder: ``$SRV.PING/INFO/STATS`` and the endpoint counters.

Why not ``nats.micro``: its endpoints await their handler one message at a time, and its STATS
count only what that serial handler raised. Our runner (:mod:`statek_bus.mesh.service`) answers
from bounded concurrent tasks, so keeping STATS true meant writing nats-py's private attributes
(``_endpoints``, ``_num_errors``), which pinned nats-py to one minor release. The protocol is
small (three verbs on three subjects each, JSON replies of fixed shape), so we own it here and
use only nats-py's public client API (``subscribe``, ``publish``, ``drain``).

Shapes follow ADR-32 and the jsm.go schemas ``micro/v1/{ping,info,stats}_response.json`` that the
``nats`` CLI validates against (it silently drops a reply that does not match: ``description``
must be a string, metadata values strings, times RFC 3339).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = [
    "INFO_RESPONSE_TYPE",
    "PING_RESPONSE_TYPE",
    "QUEUE_GROUP",
    "SRV_PREFIX",
    "STATS_RESPONSE_TYPE",
    "EndpointInfo",
    "EndpointStats",
    "InfoResponse",
    "MicroService",
    "PingResponse",
    "StatsData",
    "StatsResponse",
]

log = logging.getLogger(__name__)

_READY_TIMEOUT = 10.0  # seconds the server may take to confirm the subscriptions

SRV_PREFIX = "$SRV"
"""ADR-32 discovery prefix."""
QUEUE_GROUP = "q"
"""ADR-32's default queue group: instances of a service share each endpoint's requests."""
PING_RESPONSE_TYPE = "io.nats.micro.v1.ping_response"
"""``type`` of a ``$SRV.PING`` reply."""
INFO_RESPONSE_TYPE = "io.nats.micro.v1.info_response"
"""``type`` of a ``$SRV.INFO`` reply."""
STATS_RESPONSE_TYPE = "io.nats.micro.v1.stats_response"
"""``type`` of a ``$SRV.STATS`` reply."""

StatsData = Callable[[], dict[str, object]]
"""What an endpoint reports as its ``data`` in ``$SRV.STATS`` (JSON-encodable), read at each request."""

MsgHandler = Callable[[Msg], Awaitable[None]]
"""What an endpoint subscription calls for each request (it must return quickly: nats-py awaits it
before delivering the next message of the subscription)."""


class _Identity(msgspec.Struct, kw_only=True):
    """What every ``$SRV`` reply says of the instance."""

    name: str
    """Service name."""
    id: str
    """Instance id."""
    version: str
    """SemVer of the service."""
    metadata: dict[str, str]
    """Service metadata."""


class PingResponse(_Identity, kw_only=True):
    """ADR-32 ``$SRV.PING`` reply."""

    type: str = PING_RESPONSE_TYPE
    """Protocol type tag."""


class EndpointInfo(msgspec.Struct, kw_only=True):
    """One endpoint in an ``$SRV.INFO`` reply."""

    name: str
    """Endpoint name."""
    subject: str
    """Subject it answers on."""
    queue_group: str
    """Queue group its subscription joins."""
    metadata: dict[str, str]
    """Endpoint metadata (string values)."""


class InfoResponse(_Identity, kw_only=True):
    """ADR-32 ``$SRV.INFO`` reply."""

    type: str = INFO_RESPONSE_TYPE
    """Protocol type tag."""
    description: str
    """Non-empty description (the CLI drops a reply without one)."""
    endpoints: list[EndpointInfo]
    """The endpoints."""


@dataclass
class EndpointStats:
    """Counters of one endpoint, as ``$SRV.STATS`` reports them."""

    name: str
    """Endpoint name."""
    subject: str
    """Subject it answers on."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Endpoint metadata."""
    num_requests: int = 0
    """Requests answered."""
    num_errors: int = 0
    """Requests answered with an error."""
    last_error: str = ""
    """The last error as ``code:description``."""
    processing_time: int = 0
    """Total nanoseconds spent answering."""
    subscription: Subscription | None = None
    """The endpoint's queue subscription, once started."""
    client_errors: int = 0
    """Of ``num_errors``, the 4xx replies: the caller's mistakes, not the service's."""
    server_errors: int = 0
    """Of ``num_errors``, every other error reply (5xx): what an alert should watch."""
    data: StatsData | None = None
    """More of what ``$SRV.STATS`` reports in the endpoint's ``data`` (beside the error split)."""

    def record(self, elapsed_ns: int, error: str | None = None) -> None:
        """Count one answered request that took ``elapsed_ns``; ``error`` as ``code:description``
        (ADR-32's ``num_errors`` counts every error reply; ``data`` splits 4xx from the rest)."""
        self.num_requests += 1
        self.processing_time += elapsed_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error
            if error.startswith("4"):
                self.client_errors += 1
            else:
                self.server_errors += 1


class _EndpointStatsReply(msgspec.Struct, kw_only=True):
    name: str
    data: dict[str, object]
    subject: str
    queue_group: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int
    average_processing_time: int


class StatsResponse(_Identity, kw_only=True):
    """ADR-32 ``$SRV.STATS`` reply."""

    type: str = STATS_RESPONSE_TYPE
    """Protocol type tag."""
    started: str
    """When the instance started (RFC 3339, UTC, milliseconds)."""
    endpoints: list[_EndpointStatsReply]
    """Per-endpoint counters."""


_encoder = msgspec.json.Encoder()


class MicroService:
    """One ADR-32 service instance on ``nc``: discovery subjects plus endpoint subscriptions.

    Args:
        nc: the connection.
        name: service name (``[A-Za-z0-9_-]+``).
        version: SemVer.
        description: non-empty description.
        metadata: string-valued service metadata.
    """

    def __init__(
        self, nc: Client, *, name: str, version: str, description: str, metadata: dict[str, str] | None = None
    ) -> None:
        if not name or not all(c.isalnum() or c in "-_" for c in name) or not name.isascii():
            raise ValueError(f"invalid ADR-32 service name {name!r}")
        if not description:
            raise ValueError("an ADR-32 service needs a non-empty description")
        self.nc = nc
        self.name = name
        self.version = version
        self.description = description
        self.metadata = dict(metadata or {})
        self.id = uuid.uuid4().hex
        self.endpoints: list[EndpointStats] = []
        self._control: list[Subscription] = []
        self._started = datetime.now(UTC)

    async def start(self) -> None:
        """Answer ``$SRV.{PING,INFO,STATS}`` (all, by name, by name and id), without a queue group."""
        handlers = {"PING": self._ping, "INFO": self._info, "STATS": self._stats}
        for verb, handler in handlers.items():
            for subject in (
                f"{SRV_PREFIX}.{verb}",
                f"{SRV_PREFIX}.{verb}.{self.name}",
                f"{SRV_PREFIX}.{verb}.{self.name}.{self.id}",
            ):
                self._control.append(await self.nc.subscribe(subject, cb=handler))
        self._started = datetime.now(UTC)
        # Not ``nc.flush()``: nats-py writes its PING straight to the socket, ahead of the SUBs
        # still in its write buffer, so the PONG can come back before the server has them, and a
        # request sent right after "ready" got no responders (seen under CPU load). A request to
        # our own PING goes through that buffer behind every SUB: its reply means the server has
        # processed them all, endpoints included (they were subscribed before).
        await self.nc.request(f"{SRV_PREFIX}.PING.{self.name}.{self.id}", b"", timeout=_READY_TIMEOUT)

    async def add_endpoint(self, endpoint: EndpointStats, handler: MsgHandler) -> None:
        """Subscribe ``handler`` to ``endpoint.subject`` in the shared queue group; ``endpoint``
        holds its counters (the handler records into it)."""
        endpoint.subscription = await self.nc.subscribe(endpoint.subject, queue=QUEUE_GROUP, cb=handler)
        self.endpoints.append(endpoint)

    async def drain_endpoints(self) -> None:
        """Stop taking requests: drain every endpoint subscription (queued requests still run)."""
        for ep in self.endpoints:
            if ep.subscription is not None:
                try:
                    await ep.subscription.drain()  # type: ignore[no-untyped-call]
                except Exception:  # already closed with the connection
                    log.debug("endpoint %s: drain failed", ep.name, exc_info=True)

    async def stop(self) -> None:
        """Stop answering discovery requests (endpoints: :meth:`drain_endpoints`)."""
        for sub in self._control:
            try:
                await sub.unsubscribe()
            except Exception:
                log.debug("discovery subscription already gone", exc_info=True)
        self._control.clear()

    # --- replies -----------------------------------------------------------------------------------
    def ping(self) -> PingResponse:
        """This instance's PING reply."""
        return PingResponse(name=self.name, id=self.id, version=self.version, metadata=self.metadata)

    def info(self) -> InfoResponse:
        """This instance's INFO reply."""
        return InfoResponse(
            name=self.name,
            id=self.id,
            version=self.version,
            metadata=self.metadata,
            description=self.description,
            endpoints=[
                EndpointInfo(name=e.name, subject=e.subject, queue_group=QUEUE_GROUP, metadata=e.metadata)
                for e in self.endpoints
            ],
        )

    def stats(self) -> StatsResponse:
        """This instance's STATS reply."""
        return StatsResponse(
            name=self.name,
            id=self.id,
            version=self.version,
            metadata=self.metadata,
            started=self._started.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            endpoints=[
                _EndpointStatsReply(
                    name=e.name,
                    data={
                        "client_errors": e.client_errors,
                        "server_errors": e.server_errors,
                        **(e.data() if e.data is not None else {}),
                    },
                    subject=e.subject,
                    queue_group=QUEUE_GROUP,
                    num_requests=e.num_requests,
                    num_errors=e.num_errors,
                    last_error=e.last_error,
                    processing_time=e.processing_time,
                    average_processing_time=e.processing_time // max(1, e.num_requests),
                )
                for e in self.endpoints
            ],
        )

    async def _answer(self, msg: Msg, body: msgspec.Struct) -> None:
        if msg.reply:
            try:
                await self.nc.publish(msg.reply, _encoder.encode(body))
            except Exception:  # the connection is going away; the caller's gather simply misses us
                log.debug("could not answer %s", msg.subject, exc_info=True)

    async def _ping(self, msg: Msg) -> None:
        await self._answer(msg, self.ping())

    async def _info(self, msg: Msg) -> None:
        await self._answer(msg, self.info())

    async def _stats(self, msg: Msg) -> None:
        await self._answer(msg, self.stats())
