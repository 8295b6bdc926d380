"""Crashes and restarts: the submission service as a real process (SIGKILL), nats-server restarted,
and a crash between a restart's compare-and-set and its work message (a failing enqueue injected
through a :class:`JobStore` subclass).

The process tests have a server of their own, so whole-stream counts are exact.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.registry import AgentDirectory
from statek_bus.jobs.repair import reconcile, repair_all
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.jobs.submission import Submission
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.service import ServiceContext
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.errors import ServiceUnavailableError
from statek_bus.wire.messages import (
    JobRecord,
    JobSendMessageRequest,
    JobSendNotificationRequest,
    JobStatus,
    SubmitRequest,
)
from statek_bus.wire.subjects import (
    AGENTS_BUCKET,
    JOBS_SUBMIT_BATCH,
    WORK_RUN_PREFIX,
    WORK_STREAM,
    job_key,
    token,
)
from tests.jobs.test_submission import agent, client, finish, register_agent, service, work_counts

__all__ = ["agent", "client", "service"]  # fixtures shared with test_submission


def _settings(server: NatsServer) -> Settings:
    return Settings.from_env({}, nats_url=server.url, request_timeout=10.0)


async def _prepare(server: NatsServer, role: str) -> None:
    nc = await connect(_settings(server), name="test")
    js = nc.jetstream()
    await provision(js, _settings(server))
    await register_agent(js, role)
    await nc.close()


async def test_job_id_is_idempotent_across_a_service_restart(fresh_server: NatsServer) -> None:
    await _prepare(fresh_server, "triage")
    proc = ServiceProcess("submission", fresh_server.url)
    await proc.start()
    try:
        async with AsyncStatekClient(settings=_settings(fresh_server)) as client:
            first = await client.jobs.submit("triage", {"n": 1}, job_id="order-42")
            await proc.stop()
            await proc.start()
            again = await client.jobs.submit("triage", {"n": 1}, job_id="order-42")
            assert (again.id, again.created_at, again.revision) == (
                first.id,
                first.created_at,
                first.revision,
            )
            assert await work_counts(await client.jetstream(), ["order-42"]) == {"order-42": 1}
    finally:
        await proc.stop()


async def test_batch_retried_after_sigkill_mid_batch_makes_every_job_exactly_once(
    fresh_server: NatsServer,
) -> None:
    await _prepare(fresh_server, "triage")
    n = 2000
    proc = ServiceProcess("submission", fresh_server.url)
    await proc.start()
    try:
        async with AsyncStatekClient(settings=_settings(fresh_server)) as client:
            nc = await client.connection()
            js = nc.jetstream()
            kv = await js.key_value("statek_jobs")
            first_record = await kv.watch(job_key("imp-0"))
            body = json.dumps(
                {"agent": "triage", "shared_vars_batch": [{"i": i} for i in range(n)], "batch_id": "imp"}
            ).encode()
            reply = asyncio.ensure_future(nc.request(JOBS_SUBMIT_BATCH, body, timeout=30))
            while await first_record.updates(10) is None:  # wait until the batch has begun writing
                pass
            proc.kill()  # SIGKILL, mid-batch
            await first_record.stop()
            reply.cancel()
            await asyncio.gather(reply, return_exceptions=True)

            await proc.start()
            jobs = await client.jobs.submit_batch("triage", [{"i": i} for i in range(n)], batch_id="imp")
            assert [j.id for j in jobs] == [f"imp-{i}" for i in range(n)]
            assert {j.status for j in jobs} == {JobStatus.READY}
            counts = await work_counts(js, [j.id for j in jobs])
            assert set(counts.values()) == {1}
            assert (await js.stream_info(WORK_STREAM)).state.messages == n
            assert len(await kv.keys(["job."])) == n
    finally:
        await proc.stop()


async def test_acknowledged_submits_survive_a_nats_server_crash(fresh_server: NatsServer) -> None:
    await _prepare(fresh_server, "triage")
    proc = ServiceProcess("submission", fresh_server.url)
    await proc.start()
    try:
        async with AsyncStatekClient(settings=_settings(fresh_server)) as client:
            single = [await client.jobs.submit("triage", {"i": i}) for i in range(20)]
            batch = await client.jobs.submit_batch("triage", [{"i": i} for i in range(200)])
        ids = [j.id for j in single + batch]

        fresh_server.kill()
        await fresh_server.start()

        nc = await connect(_settings(fresh_server), name="test")
        try:
            js = nc.jetstream()
            store = await JobStore.open(js)
            records = await asyncio.gather(*(store.get(i) for i in ids))
            assert {r.status for r, _ in records} == {JobStatus.READY}
            assert set((await work_counts(js, ids)).values()) == {1}
        finally:
            await nc.close()
        await proc.wait_ready()  # the service reconnects on its own
        async with AsyncStatekClient(settings=_settings(fresh_server)) as client:
            assert (await client.jobs.get(ids[0])).id == ids[0]
    finally:
        await proc.stop()


# --- a message that restarts a DONE job: crash between the CAS and the enqueue -------------------------


class _EnqueueFailsOnce(JobStore):
    """The service "dies" right after committing DONE → STARTED: the next enqueue raises."""

    failures = 1

    async def enqueue(self, job_id: str, step: int, **kw: Any) -> bool:
        if self.failures:
            self.failures -= 1
            raise ServiceUnavailableError("injected: the service died before the enqueue")
        return await super().enqueue(job_id, step, **kw)


async def _done_job_whose_restart_lost_its_work_message(
    nc: Client, js: JetStreamContext, settings: Settings, job_id: str
) -> Submission:
    await js.purge_stream(WORK_STREAM, subject=f"{WORK_RUN_PREFIX}.*.{token(job_id)}")  # an executor ran step 0
    await finish(js, job_id)
    store = await JobStore.open(js)
    sub = Submission(
        nc, _EnqueueFailsOnce(js, store.kv), AgentDirectory(await js.key_value(AGENTS_BUCKET)), settings
    )
    with pytest.raises(ServiceUnavailableError):
        await sub.send_message(JobSendMessageRequest(job_id=job_id, message="one more thing"))
    rec, _ = await store.get(job_id)
    assert rec.status is JobStatus.STARTED  # the CAS is committed ...
    assert await work_counts(js, [job_id]) == {job_id: 0}  # ... and nothing will run it
    return sub


async def test_a_retried_message_enqueues_a_restart_whose_enqueue_was_lost(
    service: ServiceContext, settings: Settings, client: AsyncStatekClient, agent: str
) -> None:
    job_id = (await client.jobs.submit(agent)).id
    await _done_job_whose_restart_lost_its_work_message(service.nc, service.js, settings, job_id)
    again = await client.jobs.send_notification(job_id, "one more thing")  # the caller retries
    assert again.status is JobStatus.STARTED
    assert await work_counts(service.js, [job_id]) == {job_id: 1}
    await client.jobs.send_message(job_id, "and another")  # queued already: nothing added
    assert await work_counts(service.js, [job_id]) == {job_id: 1}


async def test_recovery_enqueues_a_restart_whose_enqueue_was_lost(
    nc: Client, settings: Settings, uid: str
) -> None:
    # No submission service runs: its own recovery pass would race this one for the marker.
    js = nc.jetstream()
    await provision(js, settings)
    await register_agent(js, f"triage_{uid}")
    job_id = (await (await Submission.open(nc, js, settings)).submit(SubmitRequest(agent=f"triage_{uid}"))).id
    sub = await _done_job_whose_restart_lost_its_work_message(nc, js, settings, job_id)
    assert await sub.recover() >= 1  # the marker written before the CAS names the job
    assert await work_counts(js, [job_id]) == {job_id: 1}
    await sub.recover()
    assert await work_counts(js, [job_id]) == {job_id: 1}  # never twice
    woken = await sub.send_notification(JobSendNotificationRequest(job_id=job_id, text="still there?"))
    assert woken.status is JobStatus.STARTED
    assert await work_counts(js, [job_id]) == {job_id: 1}


async def test_a_purged_work_stream_is_repaired_once_for_every_runnable_job(fresh_server: NatsServer) -> None:
    # An operator purges statek_work (or restores an older backup): before, every READY job stayed
    # READY for good, since recovery follows only pending markers.
    await _prepare(fresh_server, "idle")  # no executor serves it: its jobs stay READY
    proc = ServiceProcess("submission", fresh_server.url, env={"STATEK_RECONCILE_INTERVAL": "0"})
    await proc.start()
    try:
        async with AsyncStatekClient(settings=_settings(fresh_server)) as client:
            singles = [(await client.jobs.submit("idle", {}, job_id=f"single-{i}")).id for i in range(3)]
            batch = [j.id for j in await client.jobs.submit_batch("idle", [None] * 3, batch_id="lost")]
            done = (await client.jobs.submit("idle", {}, job_id="finished")).id
            js = await client.jetstream()
            await finish(js, done)
            legacy = await _legacy_job(js, "legacy")  # written before the live index existed
            runnable = [*singles, *batch, legacy]
            await js.purge_stream(WORK_STREAM)
            assert set((await work_counts(js, [*runnable, done])).values()) == {0}

            nc = await client.connection()
            store = await JobStore.open(js)
            first = await reconcile(nc, store, grace=timedelta(0))
            assert (first.enqueued, first.finished_entries) == (6, 1)  # the live index: all but legacy
            assert (await reconcile(nc, store, grace=timedelta(0))).enqueued == 0  # idempotent
            full = await repair_all(nc, store, grace=timedelta(0))
            assert (full.examined, full.runnable, full.enqueued) == (8, 7, 1)
            assert (await repair_all(nc, store, grace=timedelta(0))).enqueued == 0
            assert await work_counts(js, [*runnable, done]) == {**dict.fromkeys(runnable, 1), done: 0}
            await js.purge_stream(WORK_STREAM)
            young = await reconcile(nc, store)  # by default, just-changed jobs wait for the next pass
            assert (young.runnable, young.enqueued) == (6, 0)
    finally:
        await proc.stop()


async def _legacy_job(js: Any, job_id: str) -> str:
    store = await JobStore.open(js)
    now = utcnow()
    await store.create(JobRecord(id=job_id, agent="idle", created_at=now, updated_at=now))
    await store.enqueue(job_id, 0, agent="idle")
    return job_id
