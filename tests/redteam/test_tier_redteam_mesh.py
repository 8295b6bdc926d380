"""A lone surrogate through a real executor: with the tier on, the job must end as with it off."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client

from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import SERVICE_KINDS
from tests.agents_fixture import console, submit, wait_done
from tests.redteam.agents import AGENTS_SPEC


@contextlib.asynccontextmanager
async def _mesh(settings: Settings, **overrides: Any) -> AsyncIterator[Settings]:
    s = settings.replace(agents=AGENTS_SPEC, step_timeout=5.0, max_token_usage=1_000_000, **overrides)
    async with contextlib.AsyncExitStack() as stack:
        for kind in ("provider", "executor"):
            factory = importlib.import_module(f"statek_bus.services.{kind}").build
            await stack.enter_async_context(running_service(factory, s, name=SERVICE_KINDS[kind]))
        yield s


@pytest.mark.parametrize("agent", ["rt_surrogate_print", "rt_surrogate_var"])
async def test_a_lone_surrogate_ends_the_job_as_a_worker_would(
    settings: Settings, nc: Client, agent: str
) -> None:
    outcomes = []
    for tier in (False, True):
        async with _mesh(settings, data_tier=tier):
            js = nc.jetstream()
            record = await wait_done(js, await submit(js, agent))
            outcomes.append((record.status, record.exit_status, record.error, console(record)))
    print(outcomes)
    assert outcomes[1] == outcomes[0]
