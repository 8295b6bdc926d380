"""Batched JetStream direct gets (ADR-31): many keys or messages in one request, no consumer.

``$JS.API.DIRECT.GET.<stream>`` with ``multi_last`` (the last message of each of many subjects) or
``next_by_subj`` + ``batch`` (messages in stream order) answers with one message per hit and an
end-of-batch status: ``204`` carrying ``Nats-Num-Pending`` (how many more match) and
``Nats-Last-Sequence``, ``404`` when nothing matched, ``413`` when a ``multi_last`` would return
more than the server allows. The job listing and the state store both read this way, so nothing
lingers on the server after a request (a consumer per request would).

**One reply subscription per connection.** The answers of every direct get a connection sends
arrive on one wildcard subscription (``<inbox>.*``, made on the first get), each request's reply
subject ending in a token of its own. A subscription per request costs two more protocol
messages (``SUB``, ``UNSUB``), the server's bookkeeping for them, and objects in reference cycles
for the collector, on every read of a job's inbox, that is on every step. The subscription
buffers without limit: its callback only files each message under its request, and what a
request can receive is bounded by what it asked for (``batch``, ``max_bytes``, the subjects of a
``multi_last``).
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

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


@dataclass(eq=False)
class _Answer:
    """One request's answer as it arrives: its data messages, then the end-of-batch status."""

    messages: list[Msg]
    end: asyncio.Future[Msg]


@dataclass(eq=False)
class _Replies:
    """A connection's reply subscription for direct gets, and the requests waiting on it."""

    prefix: str
    waiting: dict[str, _Answer] = field(default_factory=dict)
    tokens: itertools.count[int] = field(default_factory=itertools.count)
    sub: Subscription | None = None
    ready: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def on_reply(self, msg: Msg) -> None:
        answer = self.waiting.get(msg.subject[len(self.prefix) :])
        if answer is None:  # its request gave up (a timeout): nobody reads it
            return
        if msg.headers is None or "Status" not in msg.headers:
            answer.messages.append(msg)
        elif not answer.end.done():
            answer.end.set_result(msg)

    async def subscribed(self, nc: Client) -> None:
        async with self.ready:
            if self.sub is None:
                self.sub = await nc.subscribe(
                    self.prefix + "*", cb=self.on_reply, pending_msgs_limit=0, pending_bytes_limit=0
                )


_replies: weakref.WeakKeyDictionary[Client, _Replies] = weakref.WeakKeyDictionary()


async def direct_get(nc: Client, stream: str, request: dict[str, Any], *, timeout: float) -> DirectBatch:
    """Send one batched direct get on ``stream`` and collect its answer.

    Args:
        nc: the connection.
        stream: the stream (a KV bucket's is ``KV_<bucket>``).
        request: the ADR-31 request body (``multi_last`` or ``next_by_subj`` with ``batch``).
        timeout: seconds to wait for the answer; while its messages keep arriving it waits on.

    Raises:
        TooManyResults: a ``multi_last`` over the server's limit.
        ServiceUnavailableError: any other error status.
        nats.errors.TimeoutError: no reply in time (transient: callers wrap this in ``retry_transient``).
    """
    replies = _replies.get(nc)
    if replies is None:
        replies = _replies[nc] = _Replies(prefix=f"{nc.new_inbox()}.")
    if replies.sub is None:
        await replies.subscribed(nc)
    token = str(next(replies.tokens))
    answer = _Answer([], asyncio.get_running_loop().create_future())
    replies.waiting[token] = answer
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _enc.encode(request), reply=replies.prefix + token)
        while True:
            seen = len(answer.messages)
            done, _ = await asyncio.wait((answer.end,), timeout=timeout)
            if done:
                break
            if len(answer.messages) == seen:  # nothing arrived in ``timeout``: callers retry it
                raise nats.errors.TimeoutError
        return _batch(stream, answer.messages, answer.end.result())
    finally:
        replies.waiting.pop(token, None)


def _batch(stream: str, out: list[Msg], end: Msg) -> DirectBatch:
    """The answer, from its data messages and the end-of-batch status message ``end``."""
    hdrs = end.headers or {}
    status = hdrs.get("Status")
    if status == "204":
        last = hdrs.get("Nats-Last-Sequence")
        return DirectBatch(out, int(hdrs.get("Nats-Num-Pending") or 0), int(last) if last else None)
    if status == "404":
        return DirectBatch(out)
    if status == "413":
        raise TooManyResults(f"direct get on {stream}: more subjects match than one request returns")
    raise ServiceUnavailableError(f"direct get on {stream}: {status} {hdrs.get('Description', '')}")
