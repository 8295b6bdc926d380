"""A client's connection is closed by ``aclose`` whatever happens to it on the way."""

from __future__ import annotations

import asyncio
import contextlib

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings


async def test_a_close_cancelled_at_any_moment_still_closes_the_connection(settings: Settings) -> None:
    """Ctrl-C while a script leaves ``async with AsyncStatekClient()`` cancels the drain: nats-py
    then skips its close, and the connection (its socket, its read loop) stayed open for good."""
    for moment in range(1, 9):  # 0: cancelled before it starts, so it never ran
        client = AsyncStatekClient(settings=settings)
        nc = await client.connection()
        await nc.publish("statek.test.close", b"x")
        closing = asyncio.ensure_future(client.aclose())
        for _ in range(moment):
            await asyncio.sleep(0)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        assert nc.is_closed, f"cancelled after {moment} loop turns"
    async with AsyncStatekClient(settings=settings) as client:  # and a closed client opens anew
        assert (await client.connection()).is_connected
