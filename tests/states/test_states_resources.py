"""The state service does not leak server resources: no consumer left per read, no deleted body kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from statek_bus.services.state import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.client.states import AsyncStates
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.states import store as states_module
from statek_bus.states.store import STREAM
from statek_bus.wire.messages import State, StateChange
from statek_bus.wire.subjects import SERVICE_STATE


@pytest.fixture
async def states(settings: Settings) -> AsyncIterator[AsyncStates]:
    """The state service in this process and a client's ``states`` namespace."""
    async with (
        running_service(build, settings, name=SERVICE_STATE),
        AsyncStatekClient(settings=settings) as client,
    ):
        yield client.states


async def _consumers(nc: Client) -> int:
    return (await nc.jetstream().stream_info(STREAM)).state.consumer_count


async def test_history_and_large_lists_leave_no_consumers(nc: Client, states: AsyncStates, uid: str) -> None:
    start = await _consumers(nc)
    st = await states.create(f"t{uid}", "a", {"v": 0})
    for v in range(1, 4):
        await states.update(st.id, {"v": v})
    for _ in range(50):
        assert [h.state["v"] for h in await states.history(st.id)] == [3, 2, 1, 0]
    # Over ~1,024 matching index keys the server refuses one multi-last direct get (413), and the
    # list takes its fallback path: that path must not leave a consumer behind either.
    task, n = f"big {uid}", 1100
    gate = asyncio.Semaphore(100)

    async def make(i: int) -> str:
        async with gate:
            return (await states.create(task, f"agent-{i:04d}", {"i": i})).id

    made = await asyncio.gather(*(make(i) for i in range(n)))
    for _ in range(3):
        first = await states.list(task_id=task, limit=1000)
        second = await states.list(task_id=task, limit=1000, page_number=2)
        assert sorted(s.id for s in [*first, *second]) == sorted(made)
        assert len(second) == n - 1000
    # Without a consumer per call this holds at once; consumers of earlier tests may only go away.
    assert await _consumers(nc) <= start


async def test_deleted_bodies_do_not_stay_in_the_stream(
    nc: Client, states: AsyncStates, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # markers live 3 s, and the watch reads each change as it is made: a watch that fell further
    # behind (reading 20 x 200 KB bodies only after the last delete took over 3 s on a loaded
    # machine) would find a marker expired, a lost change
    monkeypatch.setattr(states_module, "DELETE_MARKER_TTL", 3)
    js = nc.jetstream()
    before = (await js.stream_info(STREAM)).state.bytes
    body = {"blob": "x" * 200_000}
    async with states.watch(task_id=f"t{uid}") as watch:
        changes: list[StateChange] = []

        async def read() -> None:
            async for change in watch:
                changes.append(change)
                if len(changes) == 40:
                    return

        reading = asyncio.create_task(read())
        deleted: list[State] = []
        for i in range(20):  # 20 pairs: a pair's next marker would roll up its previous one
            st = await states.create(f"t{uid}", f"a{i}", body)
            deleted.append(await states.delete(st.id))
        async with asyncio.timeout(10):
            await reading
    # Watchers still see each delete with the state as it was.
    assert [c.state for c in changes if c.op == "delete"] == deleted
    assert all(c.state.state == body for c in changes)
    # Once the markers' TTL has passed, none of the 20 x 200 KB bodies is left (4 MB before the fix).
    deadline = time.monotonic() + 15
    while (grown := (await js.stream_info(STREAM)).state.bytes - before) > 64 * 1024:
        assert time.monotonic() < deadline, f"{grown} bytes still held after deleting every state"
        await asyncio.sleep(0.25)
    assert await states.retrieve(task_id=f"t{uid}", agent_id="a0") is None
    again = await states.create(f"t{uid}", "a0", {"v": "after the marker expired"})
    assert [h.state for h in await states.history(again.id)] == [{"v": "after the marker expired"}]
