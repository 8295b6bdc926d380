"""The newest message on each of many subjects of one stream, read together.

Every step of the executor asks the same question of a few subjects: is there anything in this
job's inbox past its position (at the step's start, before an ending step commits, and after
every commit, :mod:`statek_bus.jobs.inbox`)? Asked one direct get at a time, each question is a
request and a reply through the client library, and under load those round trips cost the
executor more CPU than any other part of a wake-up step. :class:`LastReads` asks them together:
the questions put during one turn of the event loop go out as one ``multi_last`` direct get
(ADR-31) at the end of that turn, of up to :data:`~statek_bus.wire.limits.MULTI_LAST_MAX`
subjects, and a subject with nothing stored costs no reply at all (the server answers a batch
that matched nothing with one ``404``). An idle caller waits no longer than before: its read is
sent in the same turn, as one request.

**Fresh enough for a hand-off.** A read is sent after it was asked, never answered from a request
already in flight, so its answer is no older than any write acknowledged before the ask. A direct
get may be answered by any replica of the stream: with one replica that is the leader, and the
answer sees every acknowledged write; callers that need that on a replicated stream ask the
leader one subject at a time instead (:func:`~statek_bus.mesh.direct.last_message`).

**Bounded answers.** Each batch asks for at most ``max_payload`` bytes (at least one message is
always returned); when the server stops short it says how many matched messages are left, and the
subjects not answered yet are asked again, so a batch of large messages arrives in pieces rather
than in one unbounded burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.client import Client

from statek_bus.mesh.direct import StoredMessage, direct_get
from statek_bus.wire.limits import MULTI_LAST_MAX

__all__ = ["LastReads", "read_newest"]


class LastReads:
    """Reads of the newest message on a subject of ``stream``, batched per turn of the event loop.

    Args:
        nc: the connection (its shared reply subscription answers the batches).
        stream: the stream the subjects belong to.
        timeout: seconds a batch waits for its answer; its readers get the timeout (transient:
            callers retry as they would a single read).
    """

    def __init__(self, nc: Client, stream: str, *, timeout: float) -> None:
        self.nc = nc
        self.stream = stream
        self.timeout = timeout
        self._asked: dict[str, list[asyncio.Future[StoredMessage | None]]] = {}
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def last(self, subject: str) -> StoredMessage | None:
        """The newest message on ``subject``, or ``None`` when it holds none.

        Raises:
            nats.errors.TimeoutError: the batch got no answer in time (transient).
            ServiceUnavailableError: the server answered the batch with an error status.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[StoredMessage | None] = loop.create_future()
        self._asked.setdefault(subject, []).append(fut)
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        """Send what was asked during this turn, :data:`MULTI_LAST_MAX` subjects per request."""
        self._flushing = False
        asked, self._asked = self._asked, {}
        subjects = list(asked)
        for i in range(0, len(subjects), MULTI_LAST_MAX):
            part = {s: asked[s] for s in subjects[i : i + MULTI_LAST_MAX]}
            task = asyncio.get_running_loop().create_task(self._read(part))
            self._tasks.add(task)  # held until it ends: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)

    async def _read(self, asked: dict[str, list[asyncio.Future[StoredMessage | None]]]) -> None:
        try:
            found = await read_newest(self.nc, self.stream, list(asked), timeout=self.timeout)
        except BaseException as exc:  # every reader still waiting gets what the batch raised
            for waiters in asked.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        for subject, waiters in asked.items():
            for fut in waiters:
                if not fut.done():  # a reader that gave up (cancelled) is skipped
                    fut.set_result(found.get(subject))


async def read_newest(
    nc: Client, stream: str, subjects: Sequence[str], *, timeout: float
) -> dict[str, StoredMessage]:
    """The newest message of each of ``subjects`` that holds one, by subject.

    ``multi_last`` direct gets of :data:`~statek_bus.wire.limits.MULTI_LAST_MAX` subjects, each
    answer at most ``max_payload`` bytes: while the server says more are left, the subjects not
    answered yet are asked again.

    Raises:
        nats.errors.TimeoutError: a request got no answer in time (transient).
        ServiceUnavailableError: the server answered with an error status.
    """
    found: dict[str, StoredMessage] = {}
    for i in range(0, len(subjects), MULTI_LAST_MAX):
        left = set(subjects[i : i + MULTI_LAST_MAX])
        while left:
            request = {"multi_last": sorted(left), "max_bytes": nc.max_payload}
            batch = await direct_get(nc, stream, request, timeout=timeout)
            for msg in batch.messages:
                hdrs = msg.headers or {}
                subject = hdrs.get("Nats-Subject", "")
                left.discard(subject)
                found[subject] = StoredMessage(int(hdrs.get("Nats-Sequence") or 0), msg.data, hdrs)
            if batch.pending <= 0 or not batch.messages:  # the rest hold nothing
                break
    return found
