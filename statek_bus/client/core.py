"""The Python client: :class:`AsyncStatekClient` (inside an event loop) and :class:`StatekClient`.

Both speak the same request/reply subjects as the ``nats`` CLI. An error reply comes back as the
:class:`~statek_bus.wire.errors.StatekError` subclass of its code; no responder, a timeout or a lost
connection is a :class:`~statek_bus.wire.errors.ServiceUnavailableError` naming the subject.

:class:`StatekClient` is the synchronous twin: it runs one event loop in a daemon thread and
exposes every namespace (``states``, ``jobs``...) with the same names, each call blocking until
its reply; async iterators (``watch``) become plain iterators.
"""

from __future__ import annotations

import asyncio
import functools
from types import TracebackType
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from statek_bus.client.blocking import BlockingJobs, BlockingStates, LoopThread
from statek_bus.client.jobs import AsyncJobs
from statek_bus.client.queues import AsyncQueues, BlockingQueues
from statek_bus.client.states import AsyncStates
from statek_bus.client.transport import request_reply
from statek_bus.mesh.connection import connect, drain_and_close
from statek_bus.mesh.settings import Settings

__all__ = ["AsyncStatekClient", "StatekClient"]

T = TypeVar("T")


class AsyncStatekClient:
    """Async client of a statek-bus mesh.

    Args:
        nats_url: the NATS server (default: ``NATS_URL`` or ``nats://127.0.0.1:4222``).
        settings: full settings (timeouts, limits); ``nats_url`` overrides its URL.
        nc: an open connection to reuse (not closed by :meth:`aclose`).
    """

    def __init__(
        self, nats_url: str | None = None, *, settings: Settings | None = None, nc: Client | None = None
    ):
        base = settings or Settings.from_env()
        self.settings = base.replace(nats_url=nats_url) if nats_url else base
        self._nc = nc
        self._owns_nc = nc is None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncStatekClient:
        await self.connection()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def connection(self) -> Client:
        """The NATS connection, opened on first use."""
        if self._nc is None or self._nc.is_closed:
            async with self._lock:
                if self._nc is None or self._nc.is_closed:
                    self._nc = await connect(self.settings, name="statek-client")
                    self._owns_nc = True
        return self._nc

    async def jetstream(self) -> JetStreamContext:
        """JetStream on the client's connection."""
        return (await self.connection()).jetstream(timeout=self.settings.request_timeout)

    async def aclose(self) -> None:
        """Close the connection if this client opened it (drained, and closed even when the drain
        fails or is cancelled)."""
        nc, self._nc = self._nc, None
        if nc is None or not self._owns_nc or nc.is_closed:
            return
        await drain_and_close(nc)

    async def request(
        self, subject: str, payload: Any, reply_type: type[T], *, timeout: float | None = None
    ) -> T:
        """Send ``payload`` (a Struct or any encodable value) to ``subject`` and decode the reply.

        Raises:
            StatekError: the subclass matching the error reply's code.
            ServiceUnavailableError: nothing answers on ``subject``, or no reply in time.
        """
        nc = await self.connection()
        wait = timeout if timeout is not None else self.settings.request_timeout
        return await request_reply(nc, subject, payload, reply_type, timeout=wait)

    @functools.cached_property
    def states(self) -> AsyncStates:
        """The States API."""
        return AsyncStates(self)

    @functools.cached_property
    def jobs(self) -> AsyncJobs:
        """Jobs: submit, get, list, cancel, messages, wait, watch."""
        return AsyncJobs(self)

    @functools.cached_property
    def queues(self) -> AsyncQueues:
        """Agents' event queues: each event pushed makes one job."""
        return AsyncQueues(self)


class StatekClient:
    """Synchronous client: the same namespaces as :class:`AsyncStatekClient`, blocking calls.

    Use it as a context manager, or call :meth:`close` when done.
    """

    def __init__(self, nats_url: str | None = None, *, settings: Settings | None = None) -> None:
        self._runner = LoopThread()
        self._async = AsyncStatekClient(nats_url, settings=settings)

    def __enter__(self) -> StatekClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def aio(self) -> AsyncStatekClient:
        """The underlying async client (its loop runs in this client's thread)."""
        return self._async

    def request(self, subject: str, payload: Any, reply_type: type[T], *, timeout: float | None = None) -> T:
        """Blocking :meth:`AsyncStatekClient.request`."""
        result: T = self._runner.run(self._async.request(subject, payload, reply_type, timeout=timeout))
        return result

    @functools.cached_property
    def states(self) -> BlockingStates:
        """The States API, blocking."""
        return BlockingStates(self._async.states, self._runner)

    @functools.cached_property
    def jobs(self) -> BlockingJobs:
        """Jobs, blocking."""
        return BlockingJobs(self._async.jobs, self._runner)

    @functools.cached_property
    def queues(self) -> BlockingQueues:
        """Agents' event queues, blocking."""
        return BlockingQueues(self._async.queues, self._runner.run)

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        try:
            self._runner.run(self._async.aclose())
        finally:
            self._runner.close()
