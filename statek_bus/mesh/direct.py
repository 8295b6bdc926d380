"""Batched JetStream direct gets (ADR-31): many keys or messages in one request, no consumer.

``$JS.API.DIRECT.GET.<stream>`` with ``multi_last`` (the last message of each of many subjects) or
``next_by_subj`` + ``batch`` (messages in stream order) answers with one message per hit and an
end-of-batch status: ``204`` carrying ``Nats-Num-Pending`` (how many more match) and
``Nats-Last-Sequence``, ``404`` when nothing matched, ``413`` when a ``multi_last`` would return
more than the server allows. The job listing and the state store both read this way, so nothing
lingers on the server after a request (a consumer per request would).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from statek_bus.wire.errors import ServiceUnavailableError

__all__ = ["DirectBatch", "TooManyResults", "direct_get"]

_enc = msgspec.json.Encoder()


class TooManyResults(ServiceUnavailableError):
    """The server refused a ``multi_last`` that matches more subjects than it returns at once (413)."""


@dataclass(frozen=True)
class DirectBatch:
    """One direct get's answer."""

    messages: list[Msg]
    """The data messages, in the server's order."""
    pending: int = 0
    """How many more messages match after this batch (0 when none matched)."""
    last_sequence: int | None = None
    """Stream sequence of the batch's last message, from the end-of-batch marker."""


async def direct_get(
    nc: Client, stream: str, request: dict[str, Any], *, timeout: float, pending_bytes: int = 64 * 1024 * 1024
) -> DirectBatch:
    """Send one batched direct get on ``stream`` and collect its answer.

    Args:
        nc: the connection.
        stream: the stream (a KV bucket's is ``KV_<bucket>``).
        request: the ADR-31 request body (``multi_last`` or ``next_by_subj`` with ``batch``).
        timeout: seconds to wait for each reply message.
        pending_bytes: how much the reply subscription may buffer (large values, many keys).

    Raises:
        TooManyResults: a ``multi_last`` over the server's limit.
        ServiceUnavailableError: any other error status.
        nats.errors.TimeoutError: no reply in time (transient: callers wrap this in ``retry_transient``).
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_bytes_limit=pending_bytes)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _enc.encode(request), reply=inbox)
        out: list[Msg] = []
        while True:
            msg: Msg = await sub.next_msg(timeout=timeout)  # a timeout propagates: callers retry it
            hdrs = msg.headers or {}
            status = hdrs.get("Status")
            if status is None:
                out.append(msg)
            elif status == "204":
                last = hdrs.get("Nats-Last-Sequence")
                return DirectBatch(out, int(hdrs.get("Nats-Num-Pending") or 0), int(last) if last else None)
            elif status == "404":
                return DirectBatch(out)
            elif status == "413":
                raise TooManyResults(f"direct get on {stream}: more subjects match than one request returns")
            else:
                raise ServiceUnavailableError(f"direct get on {stream}: {status} {hdrs.get('Description', '')}")
    finally:
        await sub.unsubscribe()
