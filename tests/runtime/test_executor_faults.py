"""Faults found in review: poisoned workspaces, replay side effects, lost wake-ups, cancels the
record cache hid, duplicate deliveries, shared tool internals, the decimal context, echoed futures.

Through a real nats-server (services in-process) and the real code runner; nothing is mocked or
patched: a fault is a misbehaving application tool, or a write the test makes as another replica.
"""

from __future__ import annotations

import asyncio
import decimal
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from statek_bus.authoring.futures import REGISTRY, JobHandle, StepRuntime
from statek_bus.authoring.tools import SYSTEM_TOOLS, JobContext, current_job, docstr, tool
from statek_bus.authoring.waiting import WAIT_TOOLS
from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.runtime import wakeups as waits
from statek_bus.runtime.chat import LogItem
from statek_bus.runtime.coderunner import (
    ExecRequest,
    ExecUnit,
    SandboxSession,
    ThreadCodeRunner,
    execute,
)
from statek_bus.runtime.engine_state import EngineState, Wait, load_state, store_state
from statek_bus.runtime.executor import Executor
from statek_bus.runtime.outcome import StepOutcome
from statek_bus.sandbox.restricted import SandboxPolicy
from statek_bus.wire.messages import JobRecord, JobStatus, WorkMessage, decode, encode
from statek_bus.wire.subjects import WORK_RUN_PREFIX, WORK_STREAM, token
from tests.agents_fixture import (
    AGENTS_SPEC,
    MARKS,
    TWIN_ENTERED,
    TWIN_RELEASE,
    console,
    family,
    services,
    submit,
    wait_done,
)


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """Provider, submission and one executor (the fixture agents) on the session server."""
    async with services(settings, "provider", "submission", "executor") as s:
        yield s


class _Msg:
    """Stands in for a work message handed to ``Executor._run`` directly (only ``ack`` is used)."""

    acked = False

    async def ack(self) -> None:
        self.acked = True


async def _last_work(js: Any, job_id: str) -> WorkMessage | None:
    try:
        msg = await js.get_last_msg(WORK_STREAM, f"{WORK_RUN_PREFIX}.*.{token(job_id)}")
    except Exception:
        return None
    return decode(msg.data, WorkMessage)


# --- 1. a poisoned workspace, a BaseException out of a step --------------------------------------


async def test_a_class_body_that_exits_on_replay_does_not_strand_the_job(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_f_poison")
    record = await wait_done(js, job)
    assert record.exit_status == "done", record.error
    lines = console(record)
    assert any("could not restore P: ReplayRefused: exit() cannot run" in line for line in lines), lines
    assert not any("ExitSignal" in line for line in lines)


async def test_a_base_exception_escaping_a_step_ends_the_job_with_an_internal_error(
    mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_f_poison_tool")  # its application tool raises a BaseException
    record = await wait_done(js, job, timeout=30)
    assert record.error is not None and "internal error" in record.error
    after = await wait_done(js, await submit(js, "t_basic", {"event": "next"}))  # the executor serves on
    assert after.exit_status == "ok", after.error


# --- 6. replay has no side effects -------------------------------------------------------------------


async def test_replayed_class_bodies_and_decorators_call_no_tool(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    MARKS.clear()
    job = await submit(js, "t_f_replay")
    record = await wait_done(js, job)
    assert record.exit_status == "replayed", record.error
    assert MARKS == ["class body", "decorator", "called"]  # once each: never again on a replay
    lines = console(record)
    assert any("could not restore Mailer: ReplayRefused: mark() cannot run" in line for line in lines), lines
    assert "called" in lines  # a function calling a tool when called still works


# --- 3. a cancel is honoured before any code runs ----------------------------------------------------


async def test_a_cancelled_suspended_job_does_not_run_its_next_step(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    MARKS.clear()
    store = await JobStore.open(js)
    job = await submit(js, "t_f_hold")
    for _ in range(250):
        rec, _ = await store.get(job)
        if rec.status is JobStatus.SUSPENDED:
            break
        await asyncio.sleep(0.02)
    assert rec.status is JobStatus.SUSPENDED
    client = AsyncStatekClient(settings=mesh, nc=nc)
    cancelled = await client.jobs.cancel(job, "stop")
    assert cancelled.exit_status == "Cancelled: stop"
    await asyncio.sleep(1.8)  # the timer for the old step fires meanwhile
    rec, _ = await store.get(job)
    assert rec.status is JobStatus.DONE and rec.exit_status == "Cancelled: stop"
    assert MARKS == []


async def test_a_cancel_after_the_record_was_cached_is_honoured_before_code_runs(
    settings: Settings, nc: Client, uid: str
) -> None:
    js = nc.jetstream()
    await provision(js, settings)
    MARKS.clear()
    async with services(settings, "provider"):
        store = await JobStore.open(js)
        now = utcnow()
        record = JobRecord(id=f"cache-{uid}", agent="t_f_warm", created_at=now, updated_at=now)
        rev = await store.create(record)
        ex = Executor(nc, js, settings, agents=AGENTS_SPEC)
        ex.store = store
        try:
            ex._remember(record, rev)  # as if this replica had just committed it

            def cancel(r: JobRecord) -> JobRecord:
                r.cancel_reason = "late"
                return r

            await store.transition(record.id, cancel)
            await asyncio.sleep(0.2)
            msg = _Msg()
            await ex._run(WorkMessage(job_id=record.id, step=0), msg)  # type: ignore[arg-type]
        finally:
            await ex.runner.aclose()
        final, _ = await store.get(record.id)
        assert msg.acked
        assert final.status is JobStatus.DONE and final.exit_status == "Cancelled: late"
        assert MARKS == []


# --- 8. a duplicate delivery whose twin committed but never queued the next step ------------------


async def test_a_step_committed_elsewhere_still_gets_its_successor_queued(mesh: Settings, nc: Client) -> None:
    """A duplicate delivery: another replica commits the step this one is running and dies before
    queueing the next; this replica's commit loses, and it queues the successor itself."""
    js = nc.jetstream()
    store = await JobStore.open(js)
    TWIN_ENTERED.clear()
    TWIN_RELEASE.clear()
    job = await submit(js, "t_f_twin")
    try:
        assert await asyncio.to_thread(TWIN_ENTERED.wait, 15)  # step 0 runs, its record read
        base, rev = await store.get(job)
        twin = msgspec.structs.replace(
            base, status=JobStatus.STARTED, step=base.step + 1, updated_at=utcnow()
        )
        await store.put(twin, rev)  # the other replica's commit; it queues nothing
    finally:
        TWIN_RELEASE.set()
    record = await wait_done(js, job, timeout=30)  # stranded at step 1 if nothing queued it
    assert record.exit_status == "twin done", record.error
    assert record.step > twin.step


# --- 2. no lost wake-up when a woken step creates a child that finishes before the commit ---------


async def test_a_child_finishing_before_its_woken_parent_commits_still_wakes_it(
    settings: Settings, nc: Client, uid: str
) -> None:
    js = nc.jetstream()
    await provision(js, settings)
    store = await JobStore.open(js)
    now = utcnow()
    # the parent is SUSPENDED at step 3 on child A; a wake-up is running its step 3 now
    parent, child_b = family(f"lost-{uid}", JobStatus.SUSPENDED, child="0.0.1.0", exit_status="B done")
    store_state(parent, EngineState(wait=Wait(item=0, jobs=[f"lost-{uid}/0.0.0.0"], checked_at=now)))
    await store.create(parent)
    await store.create(child_b)
    base, rev = await store.get(parent.id)
    # ...that step created child B, which reaches DONE before the parent's commit
    await waits.child_done(store, child_b)
    # the parent's step commits SUSPENDED, now waiting on B
    new = msgspec.structs.replace(base, status=JobStatus.SUSPENDED, step=4)
    store_state(new, EngineState(wait=Wait(item=0, statement=1, jobs=[child_b.id], checked_at=utcnow())))
    ex = Executor(nc, js, settings, agents=AGENTS_SPEC)
    ex.store = store
    try:
        committed = await ex._commit(base, rev, StepOutcome(record=new, consumed=0))
        assert committed is not None
        await ex._after_commit(committed)
    finally:
        await ex.runner.aclose()
    queued = await _last_work(js, parent.id)
    assert queued is not None and queued.step == 4, "parent SUSPENDED on a DONE child with no queued step"


# --- unit level: the session and the runner ----------------------------------------------------------

CALLS: list[str] = []


@tool
def send_email(to: str) -> str:
    """Send an email.

    Args:
        to: the address.
    """
    CALLS.append(to)
    return "sent"


def _session(ws: Any = None, *tools: Any) -> tuple[SandboxSession, StepRuntime]:
    env = StepRuntime("job1", None, None, None)
    ctx = JobContext(job_id="job1", agent="a", params={}, namespace={}, extras={"env": env})
    policy = SandboxPolicy()
    return SandboxSession(
        policy=policy,
        trusted_policy=policy,
        tools={t.name: t for t in (*SYSTEM_TOOLS, *WAIT_TOOLS, *tools)},
        job=ctx,
        workspace=ws,
        shared_vars={},
        registry=REGISTRY,
    ), env


def _run(code: str, ws: Any = None, *tools: Any) -> Any:
    session, _ = _session(ws, *tools)
    return execute(
        ExecRequest(session=session, units=[ExecUnit(kind="code", code=code, site="0.0")], deadline_seconds=5)
    )


def test_a_step_run_on_the_callers_thread_leaves_it_bound_to_no_job() -> None:
    result = _run("x = 1")
    assert result.units[0].error is None
    with pytest.raises(RuntimeError):  # the host's thread is no job's: tools called there refuse
        current_job()


def test_a_suspend_or_exit_in_a_replayed_definition_is_a_restore_error() -> None:
    first = _run('armed = False\nclass P:\n    if armed:\n        exit("boom")\narmed = True')
    second = _run("print('step 2')", first.workspace)
    assert second.units[0].console == ["step 2"] and not second.exited
    assert any(n.startswith("Warning: could not restore P: ReplayRefused") for n in second.notes), (
        second.notes
    )


def test_a_class_body_calling_a_tool_is_not_replayed() -> None:
    CALLS.clear()
    result = _run('class Mailer:\n    status = send_email("boss")\nprint("ok")', None, send_email)
    for _ in range(3):
        result = _run("print(1)", result.workspace, send_email)
    assert CALLS == ["boss"]


def test_echoing_a_container_of_a_pending_future_suspends() -> None:
    for code in ("[sleep(5)]", "x = [sleep(5)]\nx"):
        result = _run(code)
        unit = result.units[-1]
        assert unit.error is None and unit.suspended is not None, unit
        assert not any("Suspend" in line for line in unit.console)


def test_model_code_cannot_change_a_tool_for_other_jobs() -> None:
    before = docstr.parameters()
    result = _run('docstr.arg_docs["what"] = "INJECTED"')
    assert result.units[0].error is not None and result.units[0].error.startswith("TypeError")
    result = _run("sleep.hints['seconds'] = int")
    assert result.units[0].error is not None and result.units[0].error.startswith("TypeError")
    assert docstr.parameters() == before


async def test_the_decimal_context_does_not_leak_between_steps_or_to_the_host() -> None:
    decimal.getcontext()  # the loop thread has a context: tasks' copied contexts share the object
    expected = str(decimal.Decimal(1) / decimal.Decimal(7))
    runner = ThreadCodeRunner(threads=1)
    try:
        for _ in range(2):
            session, _ = _session()
            unit = ExecUnit(kind="code", code="import decimal\ndecimal.getcontext().prec = 3", site="0.0")
            await runner.run(ExecRequest(session=session, units=[unit], deadline_seconds=5))
        session, _ = _session()
        code = "import decimal\nprint(decimal.Decimal(1) / decimal.Decimal(7))"
        result = await runner.run(
            ExecRequest(
                session=session, units=[ExecUnit(kind="code", code=code, site="0.0")], deadline_seconds=5
            )
        )
    finally:
        await runner.aclose()
    assert result.units[0].console == [expected]
    assert str(decimal.Decimal(1) / decimal.Decimal(7)) == expected


async def test_a_value_that_raises_while_saved_is_dropped_not_a_hung_step() -> None:
    # a list that holds itself: saving it recurses until RecursionError (a subclass's own methods
    # are never what saving calls: tests/wire/test_values.py)
    code = "d = [1]\nd.append(d)\nprint('ran')"
    runner = ThreadCodeRunner()
    session, _ = _session()
    try:
        result = await asyncio.wait_for(
            runner.run(
                ExecRequest(
                    session=session, units=[ExecUnit(kind="code", code=code, site="0.0")], deadline_seconds=5
                )
            ),
            10,
        )
    finally:
        await runner.aclose()
    assert result.units[0].console == ["ran"]
    assert "d" in result.dropped


def test_a_job_handle_in_a_replayed_class_body_sends_nothing() -> None:
    from statek_bus.runtime.workspace import WorkspaceData
    from statek_bus.wire.values import to_json

    sent: list[tuple[str, str]] = []

    class Jobs:
        async def send_message(self, job_id: str, text: str) -> None:
            sent.append((job_id, text))

    class Jobs_client:
        jobs = Jobs()

    def run(code: str, ws: Any) -> Any:
        session, env = _session(ws)
        env.client = Jobs_client()
        return execute(
            ExecRequest(
                session=session, units=[ExecUnit(kind="code", code=code, site="0.0")], deadline_seconds=5
            )
        )

    ws = WorkspaceData(values={"h": to_json(JobHandle("child1", "a"), REGISTRY)})
    result = run('class Pinger:\n    r = h.send_message("hello again")\nprint("defined")', ws)
    notes: list[str] = []
    for _ in range(3):
        result = run('print("step")', result.workspace)
        notes += result.notes
    assert sent == [("child1", "hello again")]
    assert any("Pinger" in n and "ReplayRefused" in n for n in notes), notes


@tool
def old_tool() -> str:
    """The tool before the swap."""
    return "old"


@tool
def new_tool() -> str:
    """The tool after the swap."""
    return "new"


async def test_a_tool_swapped_in_place_reaches_the_next_session(settings: Settings, nc: Client) -> None:
    from statek_bus.authoring.agents import SupervisedAgent

    js = nc.jetstream()
    ex = Executor(nc, js, settings, agents=AGENTS_SPEC)
    agent = SupervisedAgent("t_f_swap", "", tools=[old_tool], metadata={"MODEL": "scripted/x"})
    ctx = JobContext(job_id="job-swap", agent=agent.role, params={}, namespace={})
    try:
        first = await ex._session(ctx, agent, None, {}, False)
        agent.tools[0] = new_tool  # same number of tools: only their identity changed
        second = await ex._session(ctx, agent, None, {}, False)
    finally:
        await ex.runner.aclose()
    assert "old_tool" in first.tools
    assert "new_tool" in second.tools and "old_tool" not in second.tools


# --- records at the size limit ----------------------------------------------------------------------


@pytest.fixture
async def store(settings: Settings, nc: Client) -> JobStore:
    """The job store on the session server (buckets provisioned)."""
    js = nc.jetstream()
    await provision(js, settings)
    return await JobStore.open(js)


def _full(record: JobRecord, room: int, max_payload: int, state: EngineState) -> JobRecord:
    """``record`` with one chat entry sized so that it encodes to ``max_payload - room`` bytes."""
    state.log = [LogItem(kind="user", step=0, text="x")]
    store_state(record, state)
    pad = max_payload - room - len(encode(record))
    state.log = [LogItem(kind="user", step=0, text="x" * (1 + pad))]
    store_state(record, state)
    assert len(encode(record)) == max_payload - room
    return record


async def test_a_parent_whose_record_cannot_take_its_childs_report_ends_with_the_limit_named(
    store: JobStore, nc: Client, uid: str
) -> None:
    """Before, the child's report raised nats-py's MaxPayloadError on every delivery and the parent
    waited for ever on a child that had finished."""
    now = utcnow()
    parent, child = family(f"full-{uid}", JobStatus.SUSPENDED)
    wait = Wait(item=0, jobs=[child.id], checked_at=now)
    await store.create(_full(parent, 100, nc.max_payload, EngineState(wait=wait)))
    await store.create(child)
    await waits.child_done(store, child)
    ended, _ = await store.get(parent.id)
    assert ended.status is JobStatus.DONE and ended.step == 4
    assert ended.error is not None and ended.error.startswith("Maximum record size exceeded: "), ended.error
    assert load_state(ended).log == []  # the error did not fit beside the log either


async def test_a_job_ended_over_the_limit_keeps_its_chat_log_when_the_error_fits(
    store: JobStore, nc: Client, uid: str
) -> None:
    now = utcnow()
    job = JobRecord(
        id=f"end-{uid}", agent="t_basic", status=JobStatus.STARTED, step=5, created_at=now, updated_at=now
    )
    await store.create(_full(job, 4096, nc.max_payload, EngineState()))
    await waits.end_job(store, job.id, "Maximum record size exceeded: 1/1 bytes", step=4)  # moved on: kept
    assert (await store.get(job.id))[0].status is JobStatus.STARTED
    await waits.end_job(store, job.id, "Maximum record size exceeded: 1/1 bytes", step=5)
    ended, _ = await store.get(job.id)
    assert ended.status is JobStatus.DONE and ended.error == "Maximum record size exceeded: 1/1 bytes"
    assert len(load_state(ended).log) == 1
