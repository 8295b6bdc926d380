"""Retention: DONE jobs older than ``job_retention`` disappear with their logs and list entries;
jobs still waiting stay, and storage limits and compression are on every stream."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import StoreCompression

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import desired_streams
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.errors import NotFoundError
from statek_bus.wire.messages import JobStatus
from statek_bus.wire.subjects import JOB_LOG_STREAM, OBJECT_STORE_BUCKET, job_events_subject
from tests.agents_fixture import services, wait_done, wait_status


async def _gone(client: AsyncStatekClient, job_id: str, seconds: float = 60.0) -> None:
    """Wait until ``jobs.get`` answers 404 (a retention pass runs every 0.2 s here)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            await client.jobs.get(job_id)
        except NotFoundError:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} still there after {seconds}s")
        await asyncio.sleep(0.1)


async def test_done_jobs_older_than_the_retention_disappear_with_their_logs(fresh_server: NatsServer) -> None:
    settings = Settings.from_env(
        {}, nats_url=fresh_server.url, drain_timeout=3.0, job_retention=1.0, retention_interval=0.2
    )
    nc = await connect(settings, name="retention-test")
    js = nc.jetstream()
    async with (
        services(settings, "provider", "submission", "executor"),
        AsyncStatekClient(settings=settings) as client,
    ):
        waiting = await client.jobs.submit("t_w_long")  # sleeps an hour: SUSPENDED, never DONE here
        await wait_status(js, waiting.id, JobStatus.SUSPENDED)
        single = await client.jobs.submit("t_basic", {"event": "e"})
        batch = await client.jobs.submit_batch("t_basic", [{"event": "a"}, {"event": "b"}])
        done = [single.id, *(j.id for j in batch)]
        for job_id in done:
            await wait_done(js, job_id)
        assert (await client.jobs.history(single.id)).chat  # its log is there while it is kept
        for job_id in done:
            await _gone(client, job_id)
        with pytest.raises(NotFoundError):
            await client.jobs.history(single.id)
        for job_id in done:  # nothing of its log is left in the job-log stream
            info = await js.stream_info(JOB_LOG_STREAM, subjects_filter=job_events_subject(job_id))
            assert not info.state.subjects, job_id
        assert [j.id for j in await client.jobs.list()] == [waiting.id]  # the listing agrees
        assert [j.id for j in await client.jobs.list(agent="t_basic")] == []
        assert (await client.jobs.get(waiting.id)).status is JobStatus.SUSPENDED  # not DONE: kept

        await client.jobs.cancel(waiting.id)  # DONE now, so it goes too
        await _gone(client, waiting.id)
        assert await client.jobs.list() == []
    await nc.close()


async def test_every_stream_has_a_storage_limit_and_compression(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url, job_log_max_bytes=123 * 1024**2)
    nc = await connect(settings, name="limits-test")
    js = nc.jetstream()
    async with services(settings, "state"):  # any service provisions everything at start
        for want in desired_streams(settings):
            assert want.name is not None
            have = (await js.stream_info(want.name)).config
            assert have.max_bytes is not None and have.max_bytes > 0, want.name
            assert have.compression == StoreCompression.S2, want.name
        assert (await js.stream_info(JOB_LOG_STREAM)).config.max_bytes == 123 * 1024**2
        blobs = await js.stream_info(f"OBJ_{OBJECT_STORE_BUCKET}")
        assert blobs.config.max_bytes == settings.blobs_max_bytes
    await nc.close()
