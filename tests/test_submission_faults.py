"""Crashes and restarts: the submission service as a real process (SIGKILL), nats-server restarted.

Each test has a server of its own, so whole-stream counts are exact.
"""

from __future__ import annotations

import asyncio
import json

from statek_bus.client import AsyncStatekClient
from statek_bus.connection import connect
from statek_bus.jobstore import JobStore
from statek_bus.launcher import NatsServer
from statek_bus.mesh import ServiceProcess
from statek_bus.messages import JobStatus
from statek_bus.provision import provision
from statek_bus.settings import Settings
from statek_bus.subjects import JOBS_SUBMIT_BATCH, WORK_STREAM, job_key
from tests.test_submission import register_agent, work_counts


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
