"""The executor's concurrency slots and the per-agent work queues it pulls from.

:class:`Slots` bounds the steps that run code at once (``max_concurrency``); :class:`AgentQueue` is
one agent's durable work consumer as an executor pulls from it (executor pools: each executor pulls
only its own agents' consumers).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from statek_bus.wire.subjects import WORK_STREAM, work_consumer

__all__ = ["PULL_EXPIRES", "AgentQueue", "Slots"]

PULL_EXPIRES = 5.0
"""Seconds a pull request waits on the server; its unused credit is then released."""


class Slots:
    """The ``max_concurrency`` slots: held by steps that run code, not by steps waiting on the model.

    A step runs any pending code first (a warmup block, a resumed wait), then calls the model, then
    runs the reply's code (:mod:`statek_bus.runtime.engine`). While it waits on the provider it
    holds no code-runner thread, so it gives its slot back (the executor's model seam) and the pull
    loop may take another step in its place; before the reply's code runs it waits for a slot again
    (``resume_code``), in line with messages that found every slot held. A reply without code
    needs no slot for the rest of its step (parsing, the commit, the publishes). The pull loop
    asks for no more reserved credit than ``size - held``; a message that still finds every slot
    held (an idle agent's listening pull reserves none) waits for one, so at most
    ``max_concurrency`` steps run code at once, and steps in flight stay bounded by ``settings.model_waits_per_slot`` more per slot:
    with a slow model, in-flight model calls set the throughput, not slots.
    """

    def __init__(self, size: int, outstanding: Callable[[], int], wake: asyncio.Event) -> None:
        self.size = size
        self.held = 0
        self._outstanding = outstanding
        self._wake = wake
        self._waiting: deque[asyncio.Future[None]] = deque()

    def free(self) -> int:
        """Slots the pull loop may ask messages for."""
        return self.size - self.held - self._outstanding() - len(self._waiting)

    def try_take(self) -> bool:
        """Take a slot for a delivered message if one is free now (its credit normally reserved one)."""
        if self.held < self.size and not self._waiting:
            self.held += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot: a message came while every slot is held (a listening pull's message took
        one its credit did not reserve), so at most ``size`` steps run code, whatever was pulled."""
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut  # release() hands its slot over: ``held`` is already counted
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()
            else:
                self._waiting.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back (the step ended, or waits on the model now): to a waiting step first."""
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.held -= 1
        self._wake.set()


class AgentQueue:
    """One agent's work consumer as this executor pulls from it."""

    def __init__(self, agent: str, index: int, deliver: str) -> None:
        self.agent = agent
        self.consumer = work_consumer(agent)
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{self.consumer}"
        self.reply = f"{deliver}.{index}"
        self.pulls: deque[list[float]] = deque()  # [issued_at, remaining, reserved] per pull request
        self.last_message = -1e9  # monotonic time a message last came

    def outstanding(self) -> int:
        """Credit of this queue's pull requests not yet used that reserves slots."""
        return int(sum(r[1] for r in self.pulls if r[2]))

    def busy(self, now: float) -> bool:
        """Whether it delivered work within the last pull lifetime."""
        return now - self.last_message <= PULL_EXPIRES

    def expire(self, now: float) -> None:
        """Forget pull requests that expired without a status we saw: their credit is free again."""
        while self.pulls and now - self.pulls[0][0] > PULL_EXPIRES + 1.0:
            self.pulls.popleft()

    def used_one(self) -> None:
        """A message came for the oldest pull request (the server serves them in order)."""
        self.last_message = time.monotonic()
        if self.pulls:
            self.pulls[0][1] -= 1
            if self.pulls[0][1] <= 0:
                self.pulls.popleft()
