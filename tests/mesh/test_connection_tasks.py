"""stop_tasks: every task ends, even one whose cancel a library swallowed once; one that refuses every
cancel is left after its bound, never a stop that hangs."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from statek_bus.mesh.connection import stop_tasks


async def test_a_task_whose_first_cancel_was_swallowed_still_ends() -> None:
    swallowed = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # as nats-py's flush does

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_tasks(task), 5)  # a hang detector, not a timing
    assert task.cancelled() and swallowed.is_set()


async def test_a_task_that_refuses_every_cancel_is_named_and_left(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(stop_tasks(task, within=0.5), 5)  # it used to wait for good
    assert not task.done()
    assert "task stubborn did not stop within 0.5 s" in caplog.text
    stop.set()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done()
