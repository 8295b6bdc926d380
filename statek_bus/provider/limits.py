"""Per-model admission: a concurrency bound and a start-rate bound, so a thousand jobs waking
together queue here instead of stampeding a provider.

Each model string gets one :class:`ModelLimiter` (created on first use with the defaults from
settings): a FIFO semaphore of ``llm_model_concurrency`` slots and, when ``llm_model_rate`` > 0, a
:class:`RateLimiter`. Every *attempt* (retries included) takes a slot, so retries count against
the same limits as first tries. A caller cancelled while queued gives its place up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from statek_bus.mesh.settings import Settings

__all__ = ["Limits", "ModelLimiter", "ModelLoad", "RateLimiter"]


class RateLimiter:
    """Calls started per second, as a GCRA (a token bucket without a refill task).

    Up to ``burst`` calls may start at once; after that starts are spaced ``1/rate`` apart. Waiters
    are served in arrival order: each reserves its start time when it arrives.

    Args:
        rate: starts per second (> 0).
        burst: starts allowed back to back (default: one second's worth, at least 1).
        clock, sleep: seams for tests.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.interval = 1.0 / rate
        self.burst = max(1, burst if burst is not None else int(rate))
        self._clock = clock
        self._sleep = sleep
        self._tat = 0.0  # theoretical arrival time of the next conforming start

    def reserve(self) -> float:
        """Reserve the next start; returns how many seconds to wait for it."""
        now = self._clock()
        tat = max(self._tat, now)
        start = max(now, tat - (self.burst - 1) * self.interval)
        self._tat = tat + self.interval
        return start - now

    async def acquire(self) -> None:
        """Wait for this caller's start time."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)


@dataclass(frozen=True)
class ModelLoad:
    """A snapshot of one model's limiter."""

    model: str
    """The model string."""
    concurrency: int
    """Slots."""
    rate: float
    """Starts per second (0: unlimited)."""
    in_flight: int
    """Attempts holding a slot now."""
    waiting: int
    """Attempts queued for a slot."""
    peak_in_flight: int
    """Most attempts ever in flight at once."""


class ModelLimiter:
    """Concurrency and rate limits of one model."""

    def __init__(self, model: str, concurrency: int, rate: float) -> None:
        self.model = model
        self.concurrency = max(1, concurrency)
        self.rate = max(0.0, rate)
        self._sem = asyncio.Semaphore(self.concurrency)
        self._rate = RateLimiter(self.rate) if self.rate > 0 else None
        self.in_flight = 0
        self.waiting = 0
        self.peak_in_flight = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the duration of an attempt (rate-limited start)."""
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        try:
            if self._rate is not None:
                await self._rate.acquire()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
        finally:
            self._sem.release()

    def load(self) -> ModelLoad:
        """A snapshot of this limiter."""
        return ModelLoad(
            model=self.model,
            concurrency=self.concurrency,
            rate=self.rate,
            in_flight=self.in_flight,
            waiting=self.waiting,
            peak_in_flight=self.peak_in_flight,
        )


class Limits:
    """The limiters of every model seen, created on first use.

    Args:
        concurrency: slots per model (``llm_model_concurrency``).
        rate: starts per second per model (``llm_model_rate``; 0: unlimited).
    """

    def __init__(self, concurrency: int, rate: float) -> None:
        self.concurrency = max(1, concurrency)
        self.rate = max(0.0, rate)
        self._models: dict[str, ModelLimiter] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """Limits with the defaults of ``settings``."""
        return cls(settings.llm_model_concurrency, settings.llm_model_rate)

    def for_model(self, model: str) -> ModelLimiter:
        """The limiter of ``model``."""
        limiter = self._models.get(model)
        if limiter is None:
            limiter = self._models[model] = ModelLimiter(model, self.concurrency, self.rate)
        return limiter

    def loads(self) -> list[ModelLoad]:
        """Snapshots of every model seen, by name."""
        return [self._models[m].load() for m in sorted(self._models)]
