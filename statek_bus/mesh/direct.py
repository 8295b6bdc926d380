"""JetStream reads on one reply subscription per connection: batched direct gets (ADR-31), a
stream's last message on a subject, and any request with one reply.

``$JS.API.DIRECT.GET.<stream>`` with ``multi_last`` (the last message of each of many subjects) or
``next_by_subj`` + ``batch`` (messages in stream order) answers with one message per hit and an
end-of-batch status: ``204`` carrying ``Nats-Num-Pending`` (how many more match) and
``Nats-Last-Sequence``, ``404`` when nothing matched, ``413`` when a ``multi_last`` would return
more than the server allows. The job listing and the state store both read this way, so nothing
lingers on the server after a request (a consumer per request would).

:func:`last_message` reads the newest message on a subject (a KV entry, the end of a job's inbox),
through a direct get or, where it must see every acknowledged write, the JetStream API's message
get, which the leader answers. :func:`publish_acked` stores a message and waits for JetStream's
acknowledgement (a step's commit, the next step's work message). :func:`request_one` is the
request under both.

**One reply subscription per connection.** The answers of every read a connection sends
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
import base64
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from statek_bus.wire.errors import PayloadTooLargeError, ServiceUnavailableError

__all__ = [
    "DirectBatch",
    "StoredMessage",
    "TooManyResults",
    "connection",
    "direct_get",
    "header_bytes",
    "last_message",
    "request_one",
]

_enc = msgspec.json.Encoder()


class TooManyResults(ServiceUnavailableError):
    """The server refused a ``multi_last`` that matches more subjects than it returns at once (413)."""


@dataclass(frozen=True)
class StoredMessage:
    """One stored message, as :func:`last_message` reads it."""

    seq: int
    """Its stream sequence (a KV entry's revision)."""
    data: bytes
    """Its payload."""
    headers: dict[str, str]
    """Its headers (``KV-Operation`` marks a KV delete or purge)."""


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
    """One request's answer as it arrives: its data messages, then the end-of-batch status (or,
    ``single``, the one reply a request gets)."""

    messages: list[Msg]
    end: asyncio.Future[Msg]
    single: bool
    timeout: float
    timer: asyncio.TimerHandle | None = None
    seen: int = 0

    def arm(self) -> None:
        """Give up in ``timeout`` seconds unless messages arrive meanwhile (a long batch that keeps
        arriving waits on). A timer, not ``asyncio.wait``: that costs a task's worth of futures
        and callbacks per read."""
        self.seen = len(self.messages)
        self.timer = self.end.get_loop().call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        if self.end.done():
            return
        if len(self.messages) > self.seen:
            self.arm()
            return
        self.end.set_exception(nats.errors.TimeoutError())

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


@dataclass(eq=False)
class _Replies:
    """A connection's reply subscription for direct gets, and the requests waiting on it."""

    prefix: str
    waiting: dict[str, _Answer] = field(default_factory=dict)
    tokens: itertools.count[int] = field(default_factory=itertools.count)
    sub: weakref.ref[Subscription] | None = None
    """Held weakly: a subscription holds its connection, and this table's value must not keep its
    key alive (the connection holds the subscription while it is open)."""
    ready: asyncio.Lock = field(default_factory=asyncio.Lock)

    def live(self) -> bool:
        """The subscription is made and still the connection's (not closed with it)."""
        sub = self.sub() if self.sub is not None else None
        return sub is not None and not sub._closed

    async def on_reply(self, msg: Msg) -> None:
        answer = self.waiting.get(msg.subject[len(self.prefix) :])
        if answer is None:  # its request gave up (a timeout): nobody reads it
            return
        if not answer.single and (msg.headers is None or "Status" not in msg.headers):
            answer.messages.append(msg)
        elif not answer.end.done():
            answer.end.set_result(msg)

    async def subscribed(self, nc: Client) -> None:
        async with self.ready:
            if not self.live():
                sub = await nc.subscribe(
                    self.prefix + "*", cb=self.on_reply, pending_msgs_limit=0, pending_bytes_limit=0
                )
                self.sub = weakref.ref(sub)


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
    replies, token, answer = await _waiting(nc, single=False, timeout=timeout)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _enc.encode(request), reply=replies.prefix + token)
        end = await answer.end
        return _batch(stream, answer.messages, end)
    finally:
        answer.disarm()
        replies.waiting.pop(token, None)


def connection(js: JetStreamContext) -> Client:
    """The connection ``js`` sends on (nats-py keeps it in ``_nc`` and has no public accessor)."""
    return js._nc


def request_timeout(js: JetStreamContext) -> float:
    """Seconds ``js`` waits for JetStream's answer (the ``timeout`` it was made with; nats-py
    keeps it in ``_timeout``)."""
    return float(js._timeout)


async def _waiting(nc: Client, *, single: bool, timeout: float) -> tuple[_Replies, str, _Answer]:
    """The connection's reply subscription (made on first use), a fresh token and its armed answer."""
    replies = _replies.get(nc)
    if replies is None:
        replies = _replies[nc] = _Replies(prefix=f"{nc.new_inbox()}.")
    if not replies.live():
        await replies.subscribed(nc)
    token = str(next(replies.tokens))
    answer = _Answer([], asyncio.get_running_loop().create_future(), single, timeout)
    replies.waiting[token] = answer
    answer.arm()
    return replies, token, answer


def header_bytes(headers: dict[str, str] | None) -> int:
    """What ``headers`` add to a message (``NATS/1.0``, each ``Name: value`` line, the blank line):
    the server holds headers and payload together to its ``max_payload``."""
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


async def request_one(
    nc: Client, subject: str, payload: bytes = b"", *, timeout: float, headers: dict[str, str] | None = None
) -> Msg:
    """A request and its one reply, answered on the connection's shared reply subscription.

    What ``nc.request`` does, without a subscription, a random token and a ``wait_for`` task per
    call: the hot reads of a step go this way.

    Raises:
        nats.errors.NoRespondersError: nobody serves ``subject`` (a ``503`` status; transient).
        nats.errors.TimeoutError: no reply in ``timeout`` seconds (transient).
        PayloadTooLargeError: ``payload`` and ``headers`` are over the server's ``max_payload``;
            nothing was sent, and no retry can change that.
    """
    size = len(payload) + header_bytes(headers)
    if size > nc.max_payload:  # the server would close the connection (nats-py checks the payload only)
        raise PayloadTooLargeError(
            f"{size:,} bytes for {subject} are over the server's max_payload of {nc.max_payload:,}",
            details={"size": size, "limit": nc.max_payload},
        )
    replies, token, answer = await _waiting(nc, single=True, timeout=timeout)
    try:
        await nc.publish(subject, payload, reply=replies.prefix + token, headers=headers)
        msg = await answer.end
    finally:
        answer.disarm()
        replies.waiting.pop(token, None)
    if not msg.data and msg.headers and msg.headers.get("Status") == "503":
        raise nats.errors.NoRespondersError
    return msg


async def last_message(
    nc: Client, stream: str, subject: str, *, leader: bool, timeout: float
) -> StoredMessage | None:
    """The newest message of ``stream`` on ``subject``, or ``None`` when it holds none.

    ``leader``: ask through the JetStream API, which the stream's leader answers, so the answer is
    no older than any write acknowledged before the call; otherwise a direct get, which any replica
    may answer (with one replica that is the leader, and it costs the server less).

    Raises:
        nats.js.errors.APIError: an error status or API error other than "not found" (the subclass
            nats-py raises: a 503 is ``ServiceUnavailableError``, transient).
        nats.errors.NoRespondersError, nats.errors.TimeoutError: JetStream did not answer (transient).
    """
    if not leader:
        msg = await request_one(nc, f"$JS.API.DIRECT.GET.{stream}.{subject}", timeout=timeout)
        hdrs = msg.headers or {}
        status = hdrs.get("Status")
        if status == "404":
            return None
        if status is not None:  # what JetStream's client raises for it (a 503 is transient)
            code = int(status) if status.isdigit() else 500
            raise _ApiError(
                code=code, description=f"direct get on {stream}: {hdrs.get('Description', '')}"
            ).raised()
        return StoredMessage(int(hdrs.get("Nats-Sequence") or 0), msg.data, hdrs)
    msg = await request_one(
        nc, f"$JS.API.STREAM.MSG.GET.{stream}", _enc.encode({"last_by_subj": subject}), timeout=timeout
    )
    answer = _STREAM_MSG.decode(msg.data)
    if answer.error is not None:
        if answer.error.code == 404:
            return None
        raise answer.error.raised()
    if answer.message is None:
        raise ServiceUnavailableError(f"message get on {stream}: an answer with neither message nor error")
    stored = answer.message
    return StoredMessage(stored.seq, base64.b64decode(stored.data or ""), _headers(stored.hdrs))


def _headers(raw: str | None) -> dict[str, str]:
    """The headers of a stored message, from the JetStream API's base64 of its ``NATS/1.0`` block."""
    if not raw:
        return {}
    lines = base64.b64decode(raw).decode("utf-8", "replace").split("\r\n")[1:]
    pairs = (line.partition(":") for line in lines)
    return {k.strip(): v.strip() for k, sep, v in pairs if sep}


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""

    def raised(self) -> nats.js.errors.APIError:
        """The error nats-py's JetStream client raises for this answer (``from_error`` picks the
        subclass by code: a 503 is ``ServiceUnavailableError``, which reads retry)."""
        try:
            nats.js.errors.APIError.from_error(
                {"code": self.code, "err_code": self.err_code, "description": self.description}
            )
        except nats.js.errors.APIError as exc:  # from_error raises what it builds
            return exc
        return nats.js.errors.APIError(code=self.code, err_code=self.err_code, description=self.description)


class PubAck(msgspec.Struct):
    """JetStream's acknowledgement of a stored message."""

    stream: str = ""
    """The stream that stored it."""
    seq: int = 0
    """Its sequence in that stream (a KV entry's new revision)."""
    duplicate: bool = False
    """The stream had a message with its ``Nats-Msg-Id`` in the duplicate window: nothing stored."""
    error: _ApiError | None = None


class _Stored(msgspec.Struct):
    seq: int = 0
    data: str | None = None
    hdrs: str | None = None


class _StreamMsgAnswer(msgspec.Struct):
    message: _Stored | None = None
    error: _ApiError | None = None


_STREAM_MSG = msgspec.json.Decoder(_StreamMsgAnswer)
_PUB_ACK = msgspec.json.Decoder(PubAck)


async def publish_acked(
    nc: Client, subject: str, payload: bytes, *, timeout: float, headers: dict[str, str] | None = None
) -> PubAck:
    """Publish to a stream's subject and wait for JetStream's acknowledgement (what
    ``JetStreamContext.publish`` does, on the shared reply subscription).

    Raises:
        nats.js.errors.APIError: the stream refused it (the subclass nats-py raises: a
            ``BadRequestError`` with ``err_code`` 10071 for a wrong expected last sequence...).
        nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError: no stream answered (transient).
    """
    try:
        msg = await request_one(nc, subject, payload, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise nats.js.errors.NoStreamResponseError from None
    ack = _PUB_ACK.decode(msg.data)
    if ack.error is not None:
        raise ack.error.raised()
    return ack


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
