"""Calls by identity and deadline: no paid LLM call for a caller that has given up, and none twice.

With a slow upstream the executor used to give up on a call (``llm_timeout``, counted from before
the request waited in the model's queue here), retry its step, and send the same call again while
the provider still completed the first: 100 jobs against a 40 s upstream made 136 upstream calls.
Two fields of :class:`~statek_bus.wire.messages.CompleteRequest` close that:

- ``deadline_s``: how long the caller waits, counted from when it sent the request. The provider
  turns it into a deadline on receipt and checks it whenever the call is about to reach the
  upstream (after the model's queue, before every retry): a request whose caller is gone is
  dropped with a 503 instead of being paid for.
- ``call_id``: the call's identity, the same for a retried step's call as for the first (the
  executor derives it from the job, its call index and the request's content). A call with the
  identity of one in flight waits for that one; one whose first call finished gets its result
  (kept for :data:`RESULT_TTL` seconds, at most :data:`MAX_RESULTS` of them, per provider
  instance). A failed call is forgotten, so a retry calls again.

The ledger is per provider instance: with several replicas, a retried call reaching another
replica is a second call (the deadline still keeps abandoned calls from stacking up).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from statek_bus.wire.errors import ServiceUnavailableError
from statek_bus.wire.messages import CompleteReply

__all__ = ["MAX_RESULTS", "RESULT_TTL", "CallLedger", "Deadline"]

RESULT_TTL = 900.0
"""Seconds a finished call's result answers repeats of its identity."""
MAX_RESULTS = 10_000
"""Finished results kept (oldest dropped first)."""


class Deadline:
    """When the caller of one request stops waiting (``None``: it never said)."""

    def __init__(self, seconds: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.at = None if seconds is None else clock() + max(0.0, seconds)

    def check(self, what: str) -> None:
        """Raise a 503 if the caller has given up: ``what`` is not worth starting any more."""
        if self.at is not None and self._clock() >= self.at:
            raise ServiceUnavailableError(
                f"{what}: dropped, its caller stopped waiting before it could start"
            )


class CallLedger:
    """In-flight and recently finished calls by identity (see the module docstring)."""

    def __init__(self, *, ttl: float = RESULT_TTL, size: int = MAX_RESULTS) -> None:
        self.ttl = ttl
        self.size = size
        self._running: dict[str, asyncio.Future[CompleteReply]] = {}
        self._done: OrderedDict[str, tuple[float, CompleteReply]] = OrderedDict()
        self.reused = 0
        """Calls answered from another call with the same identity (for STATS and tests)."""

    async def once(self, call_id: str | None, call: Callable[[], Awaitable[CompleteReply]]) -> CompleteReply:
        """``call()``, unless a call with ``call_id`` is running (join it) or finished (its result)."""
        if call_id is None:
            return await call()
        while True:
            hit = self._done.get(call_id)
            if hit is not None and time.monotonic() - hit[0] < self.ttl:
                self.reused += 1
                return hit[1]
            running = self._running.get(call_id)
            if running is None:
                break
            try:
                reply = await asyncio.shield(running)
            except Exception:  # the first call failed (or was dropped): look again, then call
                continue
            self.reused += 1
            return reply
        future: asyncio.Future[CompleteReply] = asyncio.get_running_loop().create_future()
        self._running[call_id] = future
        try:
            reply = await call()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: joiners see it, the loop need not report it
            raise
        finally:
            self._running.pop(call_id, None)
        future.set_result(reply)
        self._remember(call_id, reply)
        return reply

    def _remember(self, call_id: str, reply: CompleteReply) -> None:
        self._done[call_id] = (time.monotonic(), reply)
        self._done.move_to_end(call_id)
        while len(self._done) > self.size:
            self._done.popitem(last=False)
