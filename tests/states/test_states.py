"""The States API against a real nats-server: semantics, validation, ids, pagination, concurrency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC

import pytest
from nats.aio.client import Client
from statek_bus.services.state import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.states.store import pair_key
from statek_bus.wire.errors import BadRequestError, ConflictError, NotFoundError, PayloadTooLargeError
from statek_bus.wire.messages import State
from statek_bus.wire.subjects import SERVICE_STATE, STATES_BUCKET, STATES_CREATE


@pytest.fixture
async def states(settings: Settings) -> AsyncIterator[object]:
    """The state service in this process and a client's ``states`` namespace."""
    async with (
        running_service(build, settings, name=SERVICE_STATE),
        AsyncStatekClient(settings=settings) as client,
    ):
        yield client.states


async def test_create_retrieve_round_trip(states, uid):
    value = {"a": 1, "nested": {"list": [1, 2.5, None, True]}, "text": "zażółć 🚀"}
    st = await states.create(task_id=f"t{uid}", agent_id="a", state=value)
    assert st.id and st.task_id == f"t{uid}" and st.agent_id == "a"
    assert st.state == value
    assert st.created_at == st.updated_at and st.created_at.tzinfo is not None
    assert st.created_at.utcoffset() == UTC.utcoffset(None)
    assert st.revision > 0
    assert await states.retrieve(st.id) == st
    assert await states.retrieve(task_id=f"t{uid}", agent_id="a") == st
    assert await states.retrieve(task_id=f"t{uid}", agent_id="other") is None


async def test_missing_and_malformed_ids_are_404(states, uid):
    created = await states.create(f"t{uid}", "a", {"x": 1})
    for bad in ("0190a5f2-0000-7000-8000-000000000000", "nope", "../id.x", "*", "a.b"):
        with pytest.raises(NotFoundError):
            await states.retrieve(bad)
        with pytest.raises(NotFoundError):
            await states.update(bad, {"x": 2})
        with pytest.raises(NotFoundError):
            await states.delete(bad)
    assert (await states.retrieve(created.id)).state == {"x": 1}


async def test_duplicate_create_is_409_naming_existing(states, uid):
    first = await states.create(f"t{uid}", "a", {"n": 1})
    with pytest.raises(ConflictError) as info:
        await states.create(f"t{uid}", "a", {"n": 2})
    assert info.value.details["state_id"] == first.id
    assert first.id in info.value.message
    assert (await states.retrieve(first.id)).state == {"n": 1}
    assert [s.id for s in await states.list(task_id=f"t{uid}")] == [first.id]


async def test_update_replaces_and_keeps_identity(states, uid):
    st = await states.create(f"t{uid}", "a", {"a": 1})
    up = await states.update(st.id, {"b": 2})
    assert up.state == {"b": 2}
    assert (up.id, up.task_id, up.agent_id, up.created_at) == (st.id, st.task_id, st.agent_id, st.created_at)
    assert up.revision > st.revision and up.updated_at > st.updated_at
    assert await states.retrieve(st.id) == up


async def test_stale_expected_revision_is_409_with_current(states, uid):
    st = await states.create(f"t{uid}", "a", {"v": 0})
    up = await states.update(st.id, {"v": 1}, expected_revision=st.revision)
    with pytest.raises(ConflictError) as info:
        await states.update(st.id, {"v": 99}, expected_revision=st.revision)
    assert info.value.details["current_revision"] == up.revision
    assert (await states.retrieve(st.id)).state == {"v": 1}


async def test_update_of_missing_never_creates(states, uid):
    st = await states.create(f"t{uid}", "a", {"v": 0})
    await states.delete(st.id)
    with pytest.raises(NotFoundError):
        await states.update(st.id, {"v": 1})
    assert await states.retrieve(task_id=f"t{uid}", agent_id="a") is None


async def test_delete_returns_last_value_and_frees_pair(states, uid):
    st = await states.create(f"t{uid}", "a", {"v": 0})
    last = await states.update(st.id, {"v": 1})
    gone = await states.delete(st.id)
    assert gone == last
    with pytest.raises(NotFoundError):
        await states.retrieve(st.id)
    with pytest.raises(NotFoundError):
        await states.delete(st.id)
    assert len(await states.list(task_id=f"t{uid}")) == 0
    again = await states.create(f"t{uid}", "a", {"v": "new"})
    assert again.id != st.id
    assert [h.state for h in await states.history(again.id)] == [{"v": "new"}]


async def test_list_filters_exactly(states, uid):
    t1, t2, a1, a2 = f"t1{uid}", f"t2{uid}", f"a1{uid}", f"a2{uid}"
    made = {(t, a): await states.create(t, a, {"t": t, "a": a}) for t in (t1, t2) for a in (a1, a2)}
    assert {s.id for s in await states.list(task_id=t1)} == {made[t1, a1].id, made[t1, a2].id}
    assert {s.id for s in await states.list(agent_id=a1)} == {made[t1, a1].id, made[t2, a1].id}
    assert [s.id for s in await states.list(task_id=t1, agent_id=a1)] == [made[t1, a1].id]
    assert [s.id for s in await states.list(task_id=t1, agent_id=a1, page_number=2)] == []
    everything = {s.id for s in await states.list(limit=1000)}
    assert {m.id for m in made.values()} <= everything


async def test_pagination_walk_137_states_limit_7(states, uid):
    task = f"page {uid}"
    made = await asyncio.gather(*(states.create(task, f"agent-{i:03d}", {"i": i}) for i in range(137)))
    seen: list[State] = []
    page = 1
    while True:
        got = await states.list(task_id=task, limit=7, page_number=page)
        assert got.page_number == page
        if not got:
            break
        assert len(got) == 7 or len(seen) + len(got) == 137
        seen.extend(got)
        page += 1
    assert page == 21  # 20 pages of states (19 * 7 + 4), then an empty one
    assert sorted(s.id for s in seen) == sorted(m.id for m in made)
    assert len({s.id for s in seen}) == 137
    keys = [(s.created_at, s.id) for s in seen]
    assert keys == sorted(keys)
    default = await states.list(task_id=task)
    assert len(default) == 50 and [s.id for s in default] == [s.id for s in seen[:50]]


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("$.limit", {"limit": 0}),
        ("$.limit", {"limit": 1001}),
        ("$.page_number", {"page_number": 0}),
        ("$.page_number", {"page_number": -3}),
    ],
)
async def test_list_bad_paging_is_400(states, uid, field, kwargs):
    with pytest.raises(BadRequestError) as info:
        await states.list(task_id=uid, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("bad", [[1, 2], "text", 3, None, True])
async def test_state_must_be_object_and_nothing_is_written(states, uid, bad):
    with pytest.raises(BadRequestError) as info:
        await states.create(f"t{uid}", "a", bad)
    assert info.value.field == "$.state"
    assert await states.retrieve(task_id=f"t{uid}", agent_id="a") is None
    st = await states.create(f"t{uid}", "a", {"ok": True})
    with pytest.raises(BadRequestError) as info:
        await states.update(st.id, bad)
    assert info.value.field == "$.state"
    assert await states.retrieve(st.id) == st


async def test_oversize_state_is_413_with_measured_size(states, settings, uid):
    big = {"blob": "x" * settings.state_max_bytes}
    size = len(json.dumps(big, separators=(",", ":")))
    with pytest.raises(PayloadTooLargeError) as info:
        await states.create(f"t{uid}", "a", big)
    assert info.value.details == {"size": size, "limit": settings.state_max_bytes}
    assert await states.retrieve(task_id=f"t{uid}", agent_id="a") is None
    st = await states.create(f"t{uid}", "a", {"small": 1})
    with pytest.raises(PayloadTooLargeError):
        await states.update(st.id, big)
    assert await states.retrieve(st.id) == st


async def test_wire_errors_name_fields(nc: Client, states, uid):
    msg = await nc.request(STATES_CREATE, b'{"task_id":"t","agent_id":"a","state":[1]}', timeout=5)
    body = json.loads(msg.data)
    assert msg.headers["Nats-Service-Error-Code"] == "400"
    assert body["error"]["field"] == "$.state"
    msg = await nc.request(STATES_CREATE, b'{"task_id":"t","state":{}}', timeout=5)
    assert json.loads(msg.data)["error"]["field"] == "$.agent_id"


NASTY = [
    "user@example.com/ticket 42",
    "zażółć",
    "a.b",
    "a.b.c",
    "*",
    ">",
    "a.*",
    "a.>",
    "with space",
    "=2E",
    "",
    "a\u00a0\u3000b",  # no-break and ideographic spaces: escaped, and not control characters
    "🚀" * 10,
]


async def test_any_utf8_ids_are_isolated(states, uid):
    made = {}
    for t in NASTY:
        for a in NASTY:
            made[t, a] = await states.create(uid + t, uid + a, {"t": t, "a": a})
    for (t, a), st in made.items():
        found = await states.retrieve(task_id=uid + t, agent_id=uid + a)
        assert found is not None and found.id == st.id and found.state == {"t": t, "a": a}
    for t in NASTY:
        listed = await states.list(task_id=uid + t, limit=1000)
        assert {s.state["a"] for s in listed} == set(NASTY)
        assert {s.task_id for s in listed} == {uid + t}
    for a in ("*", ">", "a.*"):
        listed = await states.list(agent_id=uid + a, limit=1000)
        assert {s.agent_id for s in listed} == {uid + a} and len(listed) == len(NASTY)
    await states.update(made["*", ">"].id, {"changed": True})
    assert (await states.retrieve(made["a.*", "a.>"].id)).state == {"t": "a.*", "a": "a.>"}
    with pytest.raises(BadRequestError) as refused:  # control characters could forge log lines
        await states.create(uid + "a\n\tb", uid, {})
    assert refused.value.field == "$.task_id"
    assert {s.task_id for s in await states.list(agent_id=uid, limit=1000)} == {uid + t for t in NASTY}


async def test_kv_value_is_readable_json(nc: Client, states, uid):
    st = await states.create(f"user@example.com/{uid}", "zażółć", {"k": "v"})
    kv = await nc.jetstream().key_value(STATES_BUCKET)
    entry = await kv.get(pair_key(st.task_id, st.agent_id))
    record = json.loads(entry.value)
    assert record["id"] == st.id and record["state"] == {"k": "v"}
    assert record["task_id"] == st.task_id and entry.revision == st.revision


async def test_concurrent_creates_one_wins(states, uid):
    results = await asyncio.gather(
        *(states.create(f"t{uid}", "a", {"n": i}) for i in range(20)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, State)]
    losers = [r for r in results if isinstance(r, ConflictError)]
    assert len(winners) == 1 and len(losers) == 19
    assert {r.details["state_id"] for r in losers} == {winners[0].id}
    assert [s.id for s in await states.list(task_id=f"t{uid}")] == [winners[0].id]


async def test_get_or_create_is_atomic(states, uid):
    results = await asyncio.gather(*(states.get_or_create(f"t{uid}", "a", {"n": i}) for i in range(20)))
    assert len({r.id for r in results}) == 1
    again = await states.get_or_create(f"t{uid}", "a", {"n": "ignored"})
    assert again.id == results[0].id and again.state == results[0].state
    with pytest.raises(BadRequestError) as info:
        await states.get_or_create(f"t{uid}", "b", [1])
    assert info.value.field == "$.default"


# The two tests below run the same worst-case schedule: 50 handlers each read the counter, wait at
# a barrier until all 50 have read (so every one of them read {"count": 0}), then write count + 1.
# The barrier makes the interleaving deterministic instead of depending on the event loop's timing.


async def test_50_concurrent_increments_with_cas_end_at_50(states, uid):
    st = await states.create(f"t{uid}", "a", {"count": 0})
    everyone_read = asyncio.Barrier(50)
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        first = True
        while True:
            cur = await states.retrieve(st.id)
            if first:
                await everyone_read.wait()
                first = False
            try:
                await states.update(st.id, {"count": cur.state["count"] + 1}, expected_revision=cur.revision)
                return
            except ConflictError as exc:
                assert exc.details["current_revision"] > cur.revision
                conflicts += 1

    await asyncio.gather(*(increment() for _ in range(50)))
    assert (await states.retrieve(st.id)).state == {"count": 50}
    assert conflicts >= 49  # of the 50 first writes, all based on the same revision, one can win


async def test_50_concurrent_increments_without_cas_lose_updates(states, uid):
    """Why ``expected_revision`` exists: without it, the API accepts every write and loses 49.

    What a bug could break here: every update must succeed (no error: without ``expected_revision``
    an update is last-writer-wins, never a 409), each must commit a revision of its own (none
    silently dropped or merged), and each replaces the whole object, so the final count is exactly
    1, not 50: 49 acknowledged increments are lost. The CAS test above, on the same schedule, ends
    at 50.
    """
    st = await states.create(f"t{uid}", "a", {"count": 0})
    everyone_read = asyncio.Barrier(50)

    async def increment() -> State:
        cur = await states.retrieve(st.id)
        await everyone_read.wait()
        return await states.update(st.id, {"count": cur.state["count"] + 1})

    results = await asyncio.gather(*(increment() for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, State) for r in results), results  # the API accepted all 50 writes
    written = [r for r in results if isinstance(r, State)]
    assert all(r.state == {"count": 1} for r in written)
    assert len({r.revision for r in written}) == 50  # each committed as its own revision
    final = await states.retrieve(st.id)
    assert final.revision == max(r.revision for r in written)
    assert final.state == {"count": 1}  # 50 acknowledged increments, 49 of them lost


async def test_transact_retries_to_exactly_50(states, uid):
    ctx = states.for_task(f"t{uid}", "a")
    await ctx.create({"count": 0})
    await asyncio.gather(*(ctx.transact(lambda s: {"count": s["count"] + 1}) for _ in range(50)))
    assert (await ctx.get()).state == {"count": 50}


async def test_history_newest_first(states, uid):
    st = await states.create(f"t{uid}", "a", {"v": 0})
    for v in range(1, 5):
        await states.update(st.id, {"v": v})
    hist = await states.history(st.id)
    assert [h.state["v"] for h in hist] == [4, 3, 2, 1, 0]
    assert [h.revision for h in hist] == sorted((h.revision for h in hist), reverse=True)
    assert [h.state["v"] for h in await states.history(st.id, limit=2)] == [4, 3]
    with pytest.raises(BadRequestError):
        await states.history(st.id, limit=0)


async def test_for_task_context(states, uid):
    ctx = states.for_task(f"job-{uid}", "triage_agent")
    assert await ctx.get() is None
    with pytest.raises(NotFoundError):
        await ctx.update({"step": 2})
    created = await ctx.create({"initialized": True, "step": 1, "history": []})
    state = await ctx.get()
    assert state == created
    updated = await ctx.update({**state.state, "history": ["hi"]}, expected_revision=state.revision)
    assert (await ctx.get()).state["history"] == ["hi"] and updated.revision > created.revision
    other = states.for_task(f"job-{uid}", "other_agent")
    assert await other.get() is None
