"""Waiting jobs across crashes and races: timers through restarts, wake-ups that cannot be lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client
from statek_bus.services import provider as provider_service

from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.runtime import wakeups as waits
from statek_bus.runtime.engine_state import EngineState, Wait, load_state, store_state
from statek_bus.runtime.executor import Executor
from statek_bus.runtime.outcome import StepOutcome
from statek_bus.wire.messages import JobRecord, JobStatus, WorkMessage, decode
from statek_bus.wire.subjects import WORK_RUN_PREFIX, WORK_STREAM, token
from tests.agents_fixture import AGENTS_SPEC, console, family, submit, wait_done, wait_status


async def test_a_timer_fires_after_the_executor_and_nats_server_restarted(
    fresh_server: NatsServer, tmp_path: Path
) -> None:
    s = Settings.from_env({}, nats_url=fresh_server.url, ack_wait=2.0, drain_timeout=3.0, agents=AGENTS_SPEC)
    nc = await connect(s, name="statek-test")
    js = nc.jetstream()
    await provision(js, s)
    try:
        async with running_service(provider_service.build, s, name="statek-provider"):
            first = ServiceProcess(
                "executor", s.nats_url, args=["--agents", AGENTS_SPEC], log_path=tmp_path / "1.log"
            )
            await first.start()
            job = await submit(js, "t_w_timer")
            waiting = await wait_status(js, job, JobStatus.SUSPENDED)
            due = load_state(waiting).wait.due[0]  # type: ignore[union-attr]
            first.kill()
            fresh_server.kill()  # the scheduled wake-up is only in the server's file store now
            await asyncio.sleep(0.5)
            await fresh_server.start()
            second = ServiceProcess(
                "executor", fresh_server.url, args=["--agents", AGENTS_SPEC], log_path=tmp_path / "2.log"
            )
            await second.start()
            try:
                record = await wait_done(js, job, timeout=40)
            finally:
                await second.stop()
    finally:
        await nc.close()
    assert record.exit_status == "timer ok"
    assert console(record) == ["start", "woke"]
    assert record.updated_at >= due  # never early


async def _last_work(nc: Client, job_id: str) -> WorkMessage:
    msg = await nc.jetstream().get_last_msg(WORK_STREAM, f"{WORK_RUN_PREFIX}.*.{token(job_id)}")
    return decode(msg.data or b"", WorkMessage)


async def _pair(store: JobStore, uid: str, tag: str) -> tuple[JobRecord, JobRecord]:
    parent, child = family(f"race-{tag}-{uid}", JobStatus.STARTED, exit_status="child done")
    child.usage.llm_calls = 1
    await store.create(parent)
    await store.create(child)
    return parent, child


def _suspended(base: JobRecord, child_id: str) -> JobRecord:
    new = JobRecord(**{f: getattr(base, f) for f in base.__struct_fields__})
    new.status, new.step = JobStatus.SUSPENDED, base.step + 1
    state = EngineState(wait=Wait(item=0, jobs=[child_id], checked_at=utcnow()))
    store_state(new, state)
    return new


async def test_a_child_done_while_its_parent_runs_the_creating_step_still_wakes_it(
    settings: Settings, nc: Client, uid: str
) -> None:
    """The child's DONE lands before the parent's SUSPENDED commit: the commit re-reads, keeps the
    completion note and queues the parent at once."""
    js = nc.jetstream()
    await provision(js, settings)
    store = await JobStore.open(js)
    parent, child = await _pair(store, uid, "child-first")
    base, rev = await store.get(parent.id)
    await waits.child_done(store, child)  # the parent is STARTED: a note, no wake-up yet
    executor = Executor(nc, js, settings, agents=AGENTS_SPEC)
    executor.store = store
    try:
        committed = await executor._commit(
            base, rev, StepOutcome(record=_suspended(base, child.id), consumed=0)
        )
        assert committed is not None and committed.status is JobStatus.SUSPENDED
        assert [e.job_id for e in committed.inbox] == [child.id]
        assert committed.usage.llm_calls == 1  # the child's usage survived the merge
        await executor._after_commit(committed)
    finally:
        await executor.runner.aclose()
    assert (await _last_work(nc, parent.id)).step == 4


async def test_a_child_done_after_its_parent_suspended_wakes_it(
    settings: Settings, nc: Client, uid: str
) -> None:
    js = nc.jetstream()
    await provision(js, settings)
    store = await JobStore.open(js)
    parent, child = await _pair(store, uid, "parent-first")
    base, rev = await store.get(parent.id)
    await store.put(_suspended(base, child.id), rev)
    await waits.child_done(store, child)
    assert (await _last_work(nc, parent.id)).step == 4
    await waits.child_done(store, child)  # a redelivery repeats it: usage is not added twice
    record, _ = await store.get(parent.id)
    assert record.usage.llm_calls == 1 and len(record.inbox) == 1
