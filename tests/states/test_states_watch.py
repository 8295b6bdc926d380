"""States beyond the peers: watch, TTL, the sync client, and self-healing of crash leftovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from statek_bus.services.state import build

from statek_bus.client.core import AsyncStatekClient, StatekClient
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.states.store import ORPHAN_GRACE, StateRef, StateStore, new_state_id
from statek_bus.wire.errors import BadRequestError, ConflictError, NotFoundError
from statek_bus.wire.subjects import SERVICE_STATE


@pytest.fixture
async def states(settings: Settings) -> AsyncIterator[object]:
    """The state service in this process and a client's ``states`` namespace."""
    async with (
        running_service(build, settings, name=SERVICE_STATE),
        AsyncStatekClient(settings=settings) as client,
    ):
        yield client.states


async def _take(watch, n: int) -> list:
    out = []
    async with asyncio.timeout(10):
        async for change in watch:
            out.append(change)
            if len(out) == n:
                break
    return out


async def test_watch_task_sees_create_update_delete(states, uid):
    watch = await states.watch(task_id=f"t{uid}")
    st = await states.create(f"t{uid}", "a", {"v": 0})
    await states.create(f"other{uid}", "a", {"not": "seen"})
    up = await states.update(st.id, {"v": 1})
    gone = await states.delete(st.id)
    changes = await _take(watch, 3)
    await watch.aclose()
    assert [c.op for c in changes] == ["create", "update", "delete"]
    assert [c.state.state for c in changes] == [{"v": 0}, {"v": 1}, {"v": 1}]
    assert changes[0].revision == st.revision and changes[1].revision == up.revision
    assert changes[2].state == gone


async def test_watch_by_agent_with_special_ids(states, uid):
    async with states.watch(agent_id=f"{uid}.*") as watch:
        await states.create("t1", f"{uid}.x", {"no": 1})
        await states.create("t1", f"{uid}.*", {"yes": 1})
        await states.create("t.2", f"{uid}.*", {"yes": 2})
        changes = await _take(watch, 2)
    assert [c.state.state for c in changes] == [{"yes": 1}, {"yes": 2}]


async def test_watch_one_state_ends_after_delete(states, uid):
    st = await states.create(f"t{uid}", "a", {"v": 0})
    watch = await states.watch(state_id=st.id)
    await states.update(st.id, {"v": 1})
    await states.delete(st.id)
    await states.create(f"t{uid}", "a", {"v": "another state"})
    async with asyncio.timeout(10):
        ops = [c.op async for c in watch]
    assert ops == ["update", "delete"]
    with pytest.raises(NotFoundError):
        await states.watch(state_id=st.id)


async def test_watch_since_revision_replays(states, uid):
    st = await states.create(f"t{uid}", "a", {"v": 0})
    for v in (1, 2):
        await states.update(st.id, {"v": v})
    async with states.watch(task_id=f"t{uid}", since_revision=st.revision) as watch:
        changes = await _take(watch, 2)
    assert [c.state.state["v"] for c in changes] == [1, 2]


async def test_ttl_expires_and_frees_pair(states, uid):
    st = await states.create(f"t{uid}", "a", {"v": 0}, ttl_seconds=1)
    assert (await states.retrieve(st.id)).state == {"v": 0}
    updated = await states.update(st.id, {"v": 1})  # keeps the original deadline
    deadline = time.monotonic() + 10
    while await states.retrieve(task_id=f"t{uid}", agent_id="a") is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    with pytest.raises(NotFoundError):
        await states.retrieve(updated.id)
    again = await states.create(f"t{uid}", "a", {"v": "new"})
    assert again.id != st.id
    with pytest.raises(BadRequestError) as info:
        await states.create(f"t{uid}", "b", {}, ttl_seconds=0)
    assert info.value.field == "$.ttl_seconds"


async def test_sync_client(settings, uid):
    async with running_service(build, settings, name=SERVICE_STATE):

        def use_sync() -> list[str]:
            client = StatekClient(settings=settings)
            try:
                st = client.states.create(task_id=f"t{uid}", agent_id="a", state={"n": 1})
                assert client.states.retrieve(task_id=f"t{uid}", agent_id="a") == st
                try:
                    client.states.create(task_id=f"t{uid}", agent_id="a", state={"n": 2})
                except ConflictError as exc:
                    assert exc.details["state_id"] == st.id
                ctx = client.states.for_task(f"t{uid}", "b")
                assert ctx.get() is None
                ctx.create({"k": 1})
                ctx.update({"k": 2})
                page = client.states.list(task_id=f"t{uid}")
                assert len(page) == 2 and page[0].id == st.id
                watch = client.states.watch(task_id=f"t{uid}", since_revision=0)
                ops = [next(watch).op for _ in range(3)]
                watch.close()
                return [*ops, *(s.state["n"] for s in client.states.history(st.id))]
            finally:
                client.close()

        assert await asyncio.to_thread(use_sync) == ["create", "create", "update", 1]


async def test_crashed_create_leftovers_are_invisible_and_collected(nc, settings, uid):
    store = StateStore(nc.jetstream(), settings)
    old = datetime.now(UTC) - timedelta(seconds=ORPHAN_GRACE * 2)
    orphan = StateRef(id=new_state_id(old), task_id=f"t{uid}", agent_id="a")
    young = StateRef(id=new_state_id(datetime.now(UTC)), task_id=f"t{uid}", agent_id="b")
    await store._put_refs(orphan, None)  # what a create leaves when it dies before its commit
    await store._put_refs(young, None)
    with pytest.raises(NotFoundError):
        await store.retrieve(orphan.id)
    assert await store.list(task_id=f"t{uid}") == []
    real = await store.create(f"t{uid}", "a", {"pair": "not stuck"})
    assert [s.id for s in await store.list(task_id=f"t{uid}")] == [real.id]
    assert set(await store._scan(f"task.t{uid}.*")) == {real.id, young.id}  # old orphan collected
