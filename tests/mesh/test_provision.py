"""Provisioning: idempotent, concurrent-safe, and a clear error on a conflicting config."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import StorageType

from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import ProvisionError, configure_work_consumers, provision, verify
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire import subjects as s


async def test_provision_creates_everything_and_is_idempotent(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(settings, name="t")
    js = nc.jetstream()
    await provision(js, settings)
    await provision(js, settings)
    for bucket in (s.JOBS_BUCKET, s.AGENTS_BUCKET, s.STATES_BUCKET):
        status = await (await js.key_value(bucket)).status()
        assert status.stream_info.config.allow_direct is True
        assert status.stream_info.config.storage == StorageType.FILE
    work = await js.stream_info(s.WORK_STREAM)
    assert work.config.allow_msg_schedules is True
    assert await js.consumers_info(s.WORK_STREAM) == []  # work consumers are the executors' own
    await js.stream_info(s.JOB_LOG_STREAM)
    await js.object_store(s.OBJECT_STORE_BUCKET)
    await nc.close()


async def test_provision_from_many_replicas_at_once(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url)
    conns = [await connect(settings, name=f"r{i}") for i in range(6)]
    await asyncio.gather(*(provision(c.jetstream(), settings) for c in conns))
    for c in conns:
        await c.close()


async def test_conflicting_bucket_config_names_the_difference(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(settings, name="t")
    await provision(nc.jetstream(), settings)
    with pytest.raises(
        ProvisionError,
        match=r"bucket statek_states exists with a different config: max_msgs_per_subject 5 wanted, 16 found",
    ):
        await provision(nc.jetstream(), settings.replace(state_history=5))
    await nc.close()


async def test_each_agent_has_its_own_work_consumer_and_provision_never_rewrites_one(
    fresh_server: NatsServer,
) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(settings, name="t")
    js = nc.jetstream()
    await provision(js, settings)
    await configure_work_consumers(js, settings.replace(ack_wait=300.0), ["heavy"])
    await configure_work_consumers(js, settings.replace(ack_wait=7.0), ["light"])  # another pool
    await provision(js, settings.replace(ack_wait=5.0))  # e.g. a state pod with default env
    heavy = await js.consumer_info(s.WORK_STREAM, s.work_consumer("heavy"))
    light = await js.consumer_info(s.WORK_STREAM, s.work_consumer("light"))
    assert (heavy.config.filter_subject, heavy.config.ack_wait) == ("statek.work.run.heavy.*", 300.0)
    assert (light.config.filter_subject, light.config.ack_wait) == ("statek.work.run.light.*", 7.0)
    await nc.close()


async def test_verify_names_every_missing_stream_in_one_line(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url, request_timeout=2.0)
    nc = await connect(settings, name="t")
    js = nc.jetstream()
    with pytest.raises(ProvisionError) as caught:
        await verify(js, settings, ["KV_statek_states", "statek_work"])
    assert str(caught.value).startswith(
        "storage not ready: bucket statek_states is missing; stream statek_work is missing (run `statek-bus provision`"
    )
    await provision(js, settings)
    await verify(js, settings, ["KV_statek_states", "statek_work"])
    with pytest.raises(
        ProvisionError, match=r"bucket statek_states differs: max_msgs_per_subject 5 wanted, 16 found"
    ):
        await verify(js, settings.replace(state_history=5), ["KV_statek_states"])
    await nc.close()


async def test_provision_moves_the_queue_of_a_version_before_pools(fresh_server: NatsServer) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig

    from statek_bus.jobs.store import JobStore, utcnow
    from statek_bus.wire.messages import JobRecord, WorkMessage, decode, encode

    settings = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(settings, name="t")
    js = nc.jetstream()
    await provision(js, settings)
    # what the previous version left: its shared consumer and a queued step on statek.work.run.<job>
    await js.add_consumer(
        s.WORK_STREAM,
        ConsumerConfig(
            durable_name=s.LEGACY_WORK_CONSUMER,
            filter_subject=f"{s.WORK_RUN_PREFIX}.>",
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    store = await JobStore.open(js)
    now = utcnow()
    await store.create(JobRecord(id="old-1", agent="triage", created_at=now, updated_at=now))
    await js.publish(f"{s.WORK_RUN_PREFIX}.old-1", encode(WorkMessage(job_id="old-1", step=0)))
    await provision(js, settings)
    assert [c.name for c in await js.consumers_info(s.WORK_STREAM)] == []
    moved = await js.get_last_msg(s.WORK_STREAM, s.work_run_subject("triage", "old-1"))
    assert decode(moved.data or b"", WorkMessage) == WorkMessage(job_id="old-1", step=0)
    assert (await js.stream_info(s.WORK_STREAM)).state.messages == 1
    await nc.close()
