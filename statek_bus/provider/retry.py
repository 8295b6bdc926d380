"""Retries of provider calls: exponential backoff with full jitter, honouring ``Retry-After``.

Only transient failures are retried: HTTP 408, 429 and 5xx, timeouts and connection errors (the
caller's ``classify`` decides, with :func:`is_retryable_status` for status codes). Everything else
is raised at once. The delay before retry ``n`` (from 0) is ``uniform(0, min(cap, base * 2**n))``
("full jitter", which spreads a thundering herd best among the AWS-studied variants), unless the
provider sent ``Retry-After`` / ``retry-after-ms``, which is honoured as given. A ``Retry-After``
longer than :data:`MAX_RETRY_AFTER` means a quota is exhausted, not a blip: the call fails at once
with :class:`RetriesExhausted` rather than holding a job's step for minutes.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from statek_bus.mesh.settings import Settings

__all__ = [
    "MAX_RETRY_AFTER",
    "RetriesExhausted",
    "RetryPolicy",
    "Transient",
    "is_retryable_status",
    "parse_retry_after",
    "retry_call",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RETRY_AFTER = 60.0
"""Longest ``Retry-After`` (seconds) the provider waits; a longer one fails the call at once."""


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status is transient: 408, 429 or any 5xx."""
    return status in (408, 429) or 500 <= status <= 599


@dataclass(frozen=True)
class Transient:
    """A classification: this failure may be retried."""

    reason: str
    """Short description for logs and the final error (``429 rate limited``)."""
    retry_after: float | None = None
    """Seconds the provider asked us to wait, if it said."""


class RetriesExhausted(Exception):
    """A transient failure that outlived the policy; ``__cause__`` is the last failure."""

    def __init__(self, attempts: int, reason: str, *, retry_after: float | None = None) -> None:
        detail = (
            f"the provider asks to retry after {retry_after:g} s (more than the {MAX_RETRY_AFTER:g} s "
            f"this service waits): {reason}"
            if retry_after is not None
            else f"{reason} (after {attempts} attempt{'s' if attempts != 1 else ''})"
        )
        super().__init__(detail)
        self.attempts = attempts
        """Attempts made."""
        self.reason = reason
        """The last failure's reason."""
        self.detail = detail
        """A complete, safe description."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry."""

    attempts: int = 5
    """Attempts in all (1: no retry)."""
    base: float = 0.5
    """Upper bound of the first backoff delay, in seconds."""
    cap: float = 30.0
    """Upper bound of any backoff delay, in seconds."""
    max_retry_after: float = MAX_RETRY_AFTER
    """Longest ``Retry-After`` honoured; longer fails at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy of ``llm_retry_attempts``, ``llm_retry_base`` and ``llm_retry_cap``."""
        return cls(
            attempts=max(1, settings.llm_retry_attempts),
            base=max(0.0, settings.llm_retry_base),
            cap=max(0.0, settings.llm_retry_cap),
        )

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Full-jitter delay before retry ``retry`` (0-based)."""
        bound = min(self.cap, self.base * (2.0 ** min(retry, 62)))
        return rand() * bound


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    Header names are matched case-insensitively; unparsable or negative values are ignored.
    """
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = -1.0
        if ms >= 0:
            return ms / 1000.0
    raw = lower.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if seconds >= 0 else None


async def retry_call(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    classify: Callable[[BaseException], Transient | None],
    *,
    what: str = "call",
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[int, float, Transient], None] | None = None,
) -> T:
    """Await ``call()`` until it succeeds, a failure is not transient, or the policy runs out.

    Args:
        call: makes one attempt.
        policy: attempts and delays.
        classify: :class:`Transient` for a retryable failure, ``None`` for one to raise at once.
        what: names the call in log lines.
        sleep, rand: seams for tests.
        on_retry: called with (retry number, delay, classification) before each wait.

    Raises:
        RetriesExhausted: a transient failure on the last attempt, or a ``Retry-After`` too long.
        Exception: any failure ``classify`` does not call transient, unchanged.
    """
    attempts = max(1, policy.attempts)
    for attempt in range(attempts):
        try:
            return await call()
        except Exception as exc:
            transient = classify(exc)
            if transient is None:
                raise
            if transient.retry_after is not None and transient.retry_after > policy.max_retry_after:
                raise RetriesExhausted(
                    attempt + 1, transient.reason, retry_after=transient.retry_after
                ) from exc
            if attempt + 1 >= attempts:
                raise RetriesExhausted(attempt + 1, transient.reason) from exc
            delay = (
                transient.retry_after if transient.retry_after is not None else policy.backoff(attempt, rand)
            )
            log.warning(
                "%s: %s; retry %d/%d in %.2fs%s",
                what,
                transient.reason,
                attempt + 1,
                attempts - 1,
                delay,
                " (Retry-After)" if transient.retry_after is not None else "",
            )
            if on_retry is not None:
                on_retry(attempt, delay, transient)
            await sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
