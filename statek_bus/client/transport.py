"""The client transport: the one seam the jobs and states facades talk through.

:class:`~statek_bus.client.core.AsyncStatekClient` implements :class:`Transport` over a NATS
connection; :class:`~statek_bus.client.jobs.AsyncJobs` and
:class:`~statek_bus.client.states.AsyncStates` only ever see the protocol, so they never import the
client that owns them (httpx's ``BaseTransport`` plays the same part).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from statek_bus.mesh import tracing
from statek_bus.mesh.direct import request_one
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import ServiceUnavailableError, error_from_reply
from statek_bus.wire.messages import decode, encode

__all__ = ["Transport", "request_reply"]

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


async def request_reply(nc: Client, subject: str, payload: Any, reply_type: type[T], *, timeout: float) -> T:
    """One request/reply on ``nc``: the reply decoded, or the error it carries raised.

    Raises:
        StatekError: the subclass matching the error reply's code (ADR-32 headers + JSON body).
        ServiceUnavailableError: nothing answers on ``subject``, no reply in ``timeout``, or the
            connection closed meanwhile; the message names the subject.
    """
    try:
        with tracing.span(subject, kind="client"):  # the request carries the caller's trace
            msg = await request_one(nc, subject, encode(payload), timeout=timeout, headers=tracing.inject())
    except nats.errors.NoRespondersError:
        raise ServiceUnavailableError(f"no service is answering on {subject}; is the mesh up?") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ServiceUnavailableError(f"no reply on {subject} within {timeout:g}s") from None
    except nats.errors.ConnectionClosedError:
        raise ServiceUnavailableError(f"connection to NATS closed while requesting {subject}") from None
    err = error_from_reply(msg.headers, msg.data)
    if err is not None:
        raise err
    return decode(msg.data, reply_type)
