"""Waiting jobs: child jobs, futures, combinators, sub-tasks, timers and messages (issue 7).

Real nats-server, real provider (scripted model), submission and executor services; the agents are
``tests.agents_fixture.WAIT_AGENTS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.mesh.settings import Settings
from statek_bus.runtime.engine_state import load_state
from statek_bus.wire.messages import JobRecord, JobStatus, decode
from tests.agents_fixture import chat_log, console, services, submit, wait_done, wait_status


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """Provider, submission and an executor (the fixture agents) on the session server.

    No step here tests the step limit: it is wide, so a warmup block submitting a child among a
    thousand others on a loaded machine is not cut off (it was, at the default 10 s)."""
    async with services(settings.replace(step_timeout=120.0), "provider", "submission", "executor") as s:
        yield s


async def test_delegate_task_suspends_at_the_statement_that_reads_the_status(
    mesh: Settings, nc: Client
) -> None:
    """Behaviour reference §4 item 4: ``s, j = delegate_task(...)`` then ``print(s)``."""
    js = nc.jetstream()
    job = await submit(js, "t_w_parent")
    record = await wait_done(js, job)
    assert record.exit_status == "parent child done"
    child_id = f"{job}/0.0.0.0"
    # "before" ran once (statements before the suspended one are not re-run), then the child's status
    assert console(record) == ["before", "child done", child_id]
    child, _ = await (await JobStore.open(js)).get(child_id)
    assert child.status is JobStatus.DONE and child.parent_id == job
    statuses = [e for e in chat_log(record) if e.kind == "llm"]
    assert len(statuses) == 2 and load_state(record).wait is None


async def test_usage_is_summed_up_the_chain(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_w_grand"))
    assert record.exit_status == "grand parent child done"
    # grand: 2 calls; parent: 2 calls; child: 1 call
    assert record.usage.llm_calls == 5
    parent, _ = await (await JobStore.open(js)).get(f"{record.id}/0.0.0.0")
    assert parent.usage.llm_calls == 3
    assert load_state(record).calls == 2


async def test_a_failing_child_reaches_the_parent_as_an_error_value(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_w_parent_fail"))
    assert isinstance(record.exit_status, str) and record.exit_status.startswith("Error: Maximum consecutive")
    out = console(record)
    assert out[0].startswith("Error: Maximum consecutive") and out[1].startswith("Error: Maximum consecutive")
    assert record.error is None  # the parent itself did not fail


async def test_get_all_over_three_children_and_get_any_with_a_timer(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_w_all"))
    assert record.exit_status == "all"
    # delegate_mute_task: the child's replies joined (a console job's reply is its code, as in STATEK)
    assert console(record) == ['child done slow done exit("child done")', "slow done"]


async def test_after_an_error_in_resumed_code_the_next_reply_runs_from_its_first_statement(
    mesh: Settings, nc: Client
) -> None:
    """STATEK's stale-index defect (§5 item 8) is not reproduced."""
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_w_err"))
    assert record.exit_status == "fine"
    out = console(record)
    assert out == ["a", "child done", "ZeroDivisionError: division by zero", "first", "second"]


async def test_children_inherit_the_parent_locale_unless_given_one(
    mesh: Settings, nc: Client, uid: str
) -> None:
    js = nc.jetstream()
    store = await JobStore.open(js)
    now = utcnow()
    job = f"loc-{uid}"
    await store.create(JobRecord(id=job, agent="t_w_locale", locale="pl-PL", created_at=now, updated_at=now))
    await store.enqueue(job, 0, agent="t_w_locale")
    record = await wait_done(js, job)
    assert record.exit_status == "ok"
    inherited, _ = await store.get(f"{job}/0.0.0.0")
    explicit, _ = await store.get(f"{job}/0.0.1.0")
    assert inherited.locale == "pl-PL"
    assert explicit.locale is not None and explicit.locale.lower() == "en-us"


async def test_subtask_completion_notifies_and_restarts_the_parent(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_w_sub_parent"))
    if record.exit_status == "parent done":  # the child's report restarts the DONE parent
        await asyncio.sleep(0.05)
        deadline = asyncio.get_running_loop().time() + 20
        while record.exit_status != "got 20" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            record = await wait_done(js, record.id)
    assert record.exit_status == "got 20"
    notes = [i for i in chat_log(record) if i.kind == "notification"]
    assert [n.text for n in notes] == ["[Notification] sub-task id=sq completed successfully."]
    assert notes[0].calls[0].result == "20"
    assert notes[0].calls[0].arguments == {"code": "print(find_sub_task_handler(id='sq'))"}
    assert load_state(record).subtasks["sq"].state == "COMPLETED"


async def test_a_message_restarts_a_done_job(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_restart")
    assert (await wait_done(js, job)).exit_status == "first"
    client = AsyncStatekClient(settings=mesh, nc=nc)
    await client.jobs.send_message(job, "again")
    deadline = asyncio.get_running_loop().time() + 20
    record = await wait_done(js, job)
    while record.exit_status != "second" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        record = await wait_done(js, job)
    assert record.exit_status == "second"
    assert [i.text for i in chat_log(record) if i.kind == "user"] == ["again"]


async def test_a_message_to_a_suspended_job_is_held_until_it_resumes(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_w_hold")
    await wait_status(js, job, JobStatus.SUSPENDED)
    client = AsyncStatekClient(settings=mesh, nc=nc)
    await client.jobs.send_message(job, "hello while waiting")
    await asyncio.sleep(0.2)
    assert (await (await JobStore.open(js)).get(job))[0].status is JobStatus.SUSPENDED  # still waiting
    record = await wait_done(js, job)
    assert record.exit_status == "held"
    kinds = [(i.kind, i.text if i.kind == "user" else None) for i in chat_log(record)]
    assert kinds == [("llm", None), ("user", "hello while waiting"), ("llm", None)]
    assert console(record) == ["resumed"]


async def test_a_notification_to_a_running_job_is_delivered_at_its_next_safe_point(
    mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_note")
    store = await JobStore.open(js)
    while (await store.get(job))[0].step < 1:  # step 1 runs the 1.5 s block that exits
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    client = AsyncStatekClient(settings=mesh, nc=nc)
    await client.jobs.send_notification(job, "stop soon")
    record = await wait_done(js, job)
    log = chat_log(record)
    assert record.exit_status == "after note"  # the exit was deferred: the notification came first
    kinds = [i.kind for i in log]
    assert kinds == ["llm", "llm", "notification", "llm"]
    assert log[2].text == "stop soon"


@pytest.mark.timeout(600)  # 2,000 jobs on a loaded 2-core machine; the pace is not what is tested
async def test_a_thousand_parents_each_waiting_on_a_child_all_complete(
    mesh: Settings, nc: Client, uid: str
) -> None:
    js = nc.jetstream()
    ids = [f"many-{uid}-{i}" for i in range(1000)]
    store = await JobStore.open(js)
    watcher = await store.kv.watch("job.*")  # every commit, pushed: no poll competing with the executor
    pending = set(ids)
    try:
        await asyncio.gather(*(submit(js, "t_w_many", job_id=j) for j in ids))
        async for entry in watcher:
            if entry is None or not entry.value or entry.key[len("job.") :] not in pending:
                continue
            record = decode(entry.value, JobRecord)
            if record.status is JobStatus.DONE:
                assert record.exit_status == "child done", record.id
                pending.discard(record.id)
                if not pending:
                    break
    finally:
        await watcher.stop()
    assert not pending


async def test_a_resumed_statement_shows_its_earlier_output_once(mesh: Settings, nc: Client) -> None:
    """Statement-level resume: the lines printed before ``sleep`` appear once in the job's history."""
    js = nc.jetstream()
    job = await submit(js, "t_w_resume_print")
    record = await wait_done(js, job)
    assert record.exit_status == "1"  # n stayed 1: nothing before the sleep ran twice
    async with AsyncStatekClient(settings=mesh) as client:
        history = await client.jobs.history(job)
    assert history.console == ["before 1", "after 1"]
    assert console(record) == ["before 1", "after 1"]
