"""Opening NATS connections the way every statek-bus process should.

Services reconnect forever (``max_reconnect_attempts=-1``: a pod that starts before NATS waits
instead of crash-looping); clients and the CLI give up after ``connect_timeout`` with a clear
:class:`~statek_bus.wire.errors.ServiceUnavailableError`. Connection errors are logged once per event,
not as a traceback per failed reconnect (nats-py's default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import nats
from nats.aio.client import Client

from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import ServiceUnavailableError

__all__ = ["connect"]

log = logging.getLogger(__name__)


async def _error_cb(exc: Exception) -> None:
    log.warning("nats: %s", exc or type(exc).__name__)


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

    async def closed_cb() -> None:
        if on_closed is not None:
            on_closed()

    async def disconnected_cb() -> None:
        # nats-py also calls this on a deliberate close(); only a lost connection is worth a warning
        if holder and not holder[0].is_closed:
            log.warning("nats: disconnected from %s", settings.nats_url)

    try:
        nc = await nats.connect(
            servers=[u.strip() for u in settings.nats_url.split(",") if u.strip()],
            name=name,
            connect_timeout=settings.connect_timeout,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1 if service else 10,
            allow_reconnect=True,
            error_cb=_error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=_reconnected_cb,
            closed_cb=closed_cb,
            pending_size=64 * 1024 * 1024,
        )
        holder.append(nc)
        return nc
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise ServiceUnavailableError(f"cannot connect to NATS at {settings.nats_url}: {exc}") from None
