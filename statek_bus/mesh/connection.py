"""Opening NATS connections the way every statek-bus process should.

Services reconnect forever (``max_reconnect_attempts=-1``: a pod that starts before NATS waits
instead of crash-looping). Clients and the CLI try each server twice on the first connection (about
half a second when nothing listens) and then give up with one clear
:class:`~statek_bus.wire.errors.ServiceUnavailableError` naming the URL, logging nothing on the way;
once connected they ride out a restart with up to :data:`CLIENT_RECONNECTS` reconnects. Connection
errors are logged once per event, not as a traceback per failed reconnect (nats-py's default).

Every connection is a :class:`Connection`, nats-py's client with its PONG handling made safe
against a cancelled flush (see there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client

from statek_bus.mesh.auth import connect_options, redact_url
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import ServiceUnavailableError

__all__ = [
    "CLIENT_RECONNECTS",
    "Connection",
    "connect",
    "drain_and_close",
    "pause_before_retry",
    "raise_if_cancelled",
    "stop_tasks",
]

log = logging.getLogger(__name__)

CLIENT_RECONNECTS = 10
"""Reconnect attempts (per server) of an established client connection."""
_CANCEL_AGAIN = 0.25  # seconds between two cancels of a task that did not end (stop_tasks)
_FIRST_CONNECT_ATTEMPTS = 1  # nats-py: a server is tried this many times + 1 before it is dropped


class Connection(Client):
    """nats-py's client, whose read loop survives a PONG for a cancelled flush.

    ``flush()`` queues a future per PING and each PONG completes the oldest. When the flush is
    cancelled (a timeout around it, a signal while a mesh starts, a cancelled ``drain()``), its
    future stays queued, cancelled, and nats-py 2.16 calls ``set_result`` on it when the PONG
    comes: ``InvalidStateError`` ends the read loop, which logs a traceback and never reads again,
    so every later request on the connection times out. Here that PONG still answers its own
    PING (PONGs come back in order) and completes nothing.
    """

    async def _process_pong(self) -> None:
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


def raise_if_cancelled() -> None:
    """:class:`asyncio.CancelledError` if the current task was asked to stop, even though what it
    awaited raised something else or returned.

    A loop around nats-py calls that catches an error and goes on checks this first, or it
    outlives its cancel for good: nats-py's ``next_msg`` and ``unsubscribe`` on a closed connection
    raise ``ConnectionClosedError`` in place of the CancelledError in flight, and Python 3.11's
    ``asyncio.wait_for`` (inside ``fetch``) raises ``TimeoutError`` when the cancel comes as its
    timeout fires. (An executor told to stop right after ``statek-bus up`` was killed retried a
    watch every second, or fetched its queue again, and never exited.)
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_tasks(*tasks: asyncio.Task[Any] | None, within: float = 10.0) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every
    :data:`_CANCEL_AGAIN` seconds one is still running; what they raised is dropped. A task still
    running after ``within`` seconds (one that refuses every cancel) is named in a warning and
    left: a stop never hangs on it.

    A cancel nats-py swallowed (see :func:`raise_if_cancelled`) otherwise leaves a task running
    until its own timeout, or for good: the queue pump of an executor told to stop kept fetching
    for another 4 s.
    """
    pending = {t for t in tasks if t is not None}
    deadline = asyncio.get_running_loop().time() + within
    try:
        while pending and asyncio.get_running_loop().time() < deadline:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_AGAIN)
        for t in pending:
            log.warning("task %s did not stop within %g s of being cancelled", t.get_name(), within)
    finally:  # also when the stop itself is cancelled: what the ended ones raised is retrieved
        for task in tasks:
            if task is not None and task.done() and not task.cancelled():
                task.exception()  # never "exception was never retrieved" at exit


async def pause_before_retry(seconds: float) -> None:
    """The pause of a loop that caught an error and tries again (:func:`raise_if_cancelled` first)."""
    raise_if_cancelled()
    await asyncio.sleep(seconds)


async def drain_and_close(nc: Client) -> None:
    """Drain ``nc`` (what was sent is flushed, subscriptions finish their messages), and close it
    even when the drain fails or is cancelled: nats-py's ``drain`` then leaves the connection open,
    its socket and read loop alive for good."""
    try:
        await nc.drain()
    finally:
        if not nc.is_closed:
            await nc.close()


async def _reconnected_cb() -> None:
    log.info("nats: reconnected")


async def connect(
    settings: Settings, *, name: str, service: bool = False, on_closed: Callable[[], None] | None = None
) -> Client:
    """Connect to ``settings.nats_url``.

    Args:
        settings: where to connect and how long to wait.
        name: connection name shown by ``nats server report connections``.
        service: reconnect forever, including the first connection.
        on_closed: called once the connection is closed for good: by ``close()``/``drain()``, or
            by nats-py itself after an error it treats as fatal (a server ``-ERR`` such as
            ``maximum control line exceeded``), after which it never reconnects.
    """
    holder: list[Client] = []
    refused: list[Exception] = []  # the server refused this identity (not: nothing listens)

    async def error_cb(exc: Exception) -> None:
        # nats-py reports a refused identity as a bare Error carrying the server's -ERR text
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower():
            refused.append(exc)
        # a client's failed first connection ends in one error below, not a warning per attempt
        if service or holder:
            log.warning("nats: %s", exc or type(exc).__name__)

    async def closed_cb() -> None:
        if on_closed is not None:
            on_closed()

    async def disconnected_cb() -> None:
        # nats-py also calls this on a deliberate close(); only a lost connection is worth a warning
        if holder and not holder[0].is_closed:
            log.warning("nats: disconnected from %s", redact_url(settings.nats_url))

    try:
        nc = Connection()
        await nc.connect(
            servers=[u.strip() for u in settings.nats_url.split(",") if u.strip()],
            name=name,
            # nats-py annotates these seconds as int; it only sleeps and waits on them
            connect_timeout=settings.connect_timeout,  # type: ignore[arg-type]
            reconnect_time_wait=0.5,  # type: ignore[arg-type]
            max_reconnect_attempts=-1 if service else _FIRST_CONNECT_ATTEMPTS,
            allow_reconnect=True,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=_reconnected_cb,
            closed_cb=closed_cb,
            pending_size=64 * 1024 * 1024,
            inbox_prefix=settings.inbox_prefix,
            **connect_options(settings),
        )
        holder.append(nc)
        if not service:
            nc.options["max_reconnect_attempts"] = CLIENT_RECONNECTS  # read at each reconnect
        return nc
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        reason = "nothing answers there" if isinstance(exc, nats.errors.NoServersError) else str(exc)
        if refused:
            raise ServiceUnavailableError(
                f"NATS at {redact_url(settings.nats_url)} refused this identity (authorization violation): "
                f"give the credentials the mesh issued with NATS_CREDS or --creds (see docs/permissions.md)"
            ) from None
        raise ServiceUnavailableError(
            f"cannot connect to NATS at {redact_url(settings.nats_url)} ({reason}): "
            f"start a mesh with `statek-bus up`, or point NATS_URL / --nats-url at a running one"
        ) from None
