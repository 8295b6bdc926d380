"""The client transport: the one seam the jobs and states facades talk through.

:class:`~statek_bus.client.core.AsyncStatekClient` implements :class:`Transport` over a NATS
connection; :class:`~statek_bus.client.jobs.AsyncJobs` and
:class:`~statek_bus.client.states.AsyncStates` only ever see the protocol, so they never import the
client that owns them (httpx's ``BaseTransport`` plays the same part).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from statek_bus.mesh.settings import Settings

__all__ = ["Transport"]

T = TypeVar("T")


class Transport(Protocol):
    """Request/reply and JetStream access on one mesh connection."""

    settings: Settings
    """Timeouts and limits of the connection."""

    async def request(
        self, subject: str, payload: Any, reply_type: type[T], *, timeout: float | None = None
    ) -> T:
        """Send ``payload`` to ``subject`` and decode the reply as ``reply_type``; errors raise."""
        ...

    async def connection(self) -> Client:
        """The NATS connection, opened on first use."""
        ...

    async def jetstream(self) -> JetStreamContext:
        """JetStream on the connection."""
        ...
