"""Provisioning: idempotent, concurrent-safe, and a clear error on a conflicting config."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import StorageType

from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import ProvisionError, configure_work_consumer, provision
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
    consumer = await js.consumer_info(s.WORK_STREAM, s.WORK_CONSUMER)
    assert consumer.config.filter_subject == f"{s.WORK_RUN_PREFIX}.>"
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


async def test_other_services_never_rewrite_the_work_consumer(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(settings, name="t")
    js = nc.jetstream()
    await provision(js, settings)
    await configure_work_consumer(js, settings.replace(ack_wait=300.0))
    await provision(js, settings.replace(ack_wait=5.0))  # e.g. a state pod with default env
    info = await js.consumer_info(s.WORK_STREAM, s.WORK_CONSUMER)
    assert info.config.ack_wait == 300.0
    await nc.close()
