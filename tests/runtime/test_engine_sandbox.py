"""Restricted mode through the mesh (behaviour reference §4.7): refusals reach the model as
``SandboxViolation: ...`` console lines and the job goes on; allow-listed modules work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from statek_bus.mesh.settings import Settings
from tests.agents_fixture import SANDBOX_ATTEMPTS, console, services, submit, wait_done


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """A provider and an executor (serving the fixture agents) on the session server."""
    async with services(settings.replace(max_token_usage=1_000_000), "provider", "executor") as s:
        yield s


async def test_every_attempt_is_refused_and_the_job_goes_on(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    jobs = await asyncio.gather(*(submit(js, f"t_sandbox_{i}") for i in range(len(SANDBOX_ATTEMPTS))))
    records = await asyncio.gather(*(wait_done(js, j) for j in jobs))
    for code, record in zip(SANDBOX_ATTEMPTS, records, strict=True):
        assert record.exit_status == "refused", (code, console(record))
        first = console(record)[0]
        assert first.startswith(("SandboxViolation: ", "NameError: ", "AttributeError: ")), (code, first)


async def test_hidden_tool_call_names_the_tool(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    index = SANDBOX_ATTEMPTS.index("secret_tool()")
    record = await wait_done(js, await submit(js, f"t_sandbox_{index}"))
    assert "secret_tool" in console(record)[0]


async def test_oversized_source_is_refused(mesh: Settings, nc: Client) -> None:
    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), "t_big_source"))
    assert record.exit_status == "refused"
    assert console(record)[0].startswith("SandboxViolation: source")


async def test_allow_listed_modules_work(mesh: Settings, nc: Client) -> None:
    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), "t_sandbox_ok"))
    assert record.exit_status == "allowed"
    assert console(record) == ['{"a": 1} 4.0']
