"""JetStream availability: retrying brief outages (a leader election) and reporting longer ones as 503.

A cluster loses its stream leader for a few seconds when a node restarts; nats-py then raises
timeouts, "no response from stream" or "service unavailable". Reads are safe to retry; a write
that timed out may have been applied, so writes are only mapped to
:class:`~statek_bus.wire.errors.ServiceUnavailableError` and left to the caller's idempotent retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import nats.errors
import nats.js.errors

from statek_bus.wire.errors import ServiceUnavailableError

__all__ = ["RETRY_BUDGET", "TRANSIENT", "retry_transient", "unavailable_as_503"]

T = TypeVar("T")

RETRY_BUDGET = 10.0
"""Seconds a read keeps retrying (a leader election takes 1-7 s on a 3-node cluster)."""

TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
)
"""Errors that mean "JetStream did not answer", not "the request is wrong"."""


async def retry_transient(op: Callable[[], Awaitable[T]], *, budget: float = RETRY_BUDGET) -> T:
    """Run ``op``, retrying transient failures with backoff for up to ``budget`` seconds, then 503."""
    deadline = time.monotonic() + budget
    delay = 0.05
    while True:
        try:
            return await op()
        except TRANSIENT as exc:
            if time.monotonic() + delay > deadline:
                raise ServiceUnavailableError(f"JetStream did not answer: {type(exc).__name__}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def unavailable_as_503(what: str) -> Iterator[None]:
    """Report a transient JetStream failure inside the block as a 503 naming ``what``."""
    try:
        yield
    except TRANSIENT as exc:
        raise ServiceUnavailableError(f"{what}: JetStream did not answer ({type(exc).__name__})") from None
