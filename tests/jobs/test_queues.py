"""Agent queues: events published by any NATS client become jobs, exactly once per event id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from statek_bus import AsyncStatekClient, JobStatus
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.subjects import agent_events_subject, event_job_id
from tests.agents_fixture import console, wait_done

ENV = {"STATEK_LOG_LEVEL": "WARNING", "STATEK_RECOVERY_INTERVAL": "3600"}


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[AsyncStatekClient]:
    """Provider, submission and an executor serving the queue agents, as processes."""
    procs = [
        ServiceProcess("provider", nats_server.url, env=ENV),
        ServiceProcess("submission", nats_server.url, env=ENV),
        ServiceProcess("executor", nats_server.url, env=ENV, args=["--agents", "tests.jobs.queue_agents:AGENTS"]),
    ]
    try:
        for p in procs:
            p.spawn()
        for p in procs:
            await p.wait_ready()
        async with AsyncStatekClient(settings=Settings.from_env({}, nats_url=nats_server.url)) as c:
            yield c
    finally:
        for p in procs:
            await p.stop(grace=10)


async def test_an_event_published_twice_with_one_id_creates_exactly_one_job(
    client: AsyncStatekClient, uid: str
) -> None:
    js = await client.jetstream()
    body = b'{"kind": "ping", "at": "%s"}' % uid.encode()
    # what `nats pub statek.agents.events.q_triage '<json>' -H Nats-Msg-Id:<id>` sends
    first = await js.publish(agent_events_subject("q_triage"), body, headers={"Nats-Msg-Id": f"{uid}-1"})
    again = await js.publish(agent_events_subject("q_triage"), body, headers={"Nats-Msg-Id": f"{uid}-1"})
    assert not first.duplicate and again.duplicate
    job_id = client.queues.job_id("q_triage", f"{uid}-1")
    assert job_id == event_job_id("q_triage", f"{uid}-1")
    done = await wait_done(js, job_id, timeout=60)
    assert done.exit_status == "ping handled"
    assert console(done) == [f"received ping at {uid}"]

    # the same id pushed from Python once the first is processed: the job exists, none is added
    assert await client.queues.push("q_triage", {"kind": "ping", "at": uid}, event_id=f"{uid}-1") == f"{uid}-1"
    other = await client.queues.push("q_triage", {"kind": "pong", "at": uid}, event_id=f"{uid}-2")
    assert (await wait_done(js, client.queues.job_id("q_triage", other), timeout=60)).exit_status == "pong handled"
    mine = [j for j in await client.jobs.list(agent="q_triage", limit=1000) if uid in j.id]
    assert sorted(j.id for j in mine) == sorted([job_id, client.queues.job_id("q_triage", other)])
    assert all(j.status is JobStatus.DONE for j in mine)
    # the pump takes events in order, so the re-push was handled before "pong": the job is untouched
    assert (await client.jobs.get(job_id)).updated_at == done.updated_at
    assert not await client.queues.has_events("q_triage")


async def test_an_agent_that_cannot_take_events_keeps_them_for_pop(client: AsyncStatekClient, uid: str) -> None:
    await client.queues.push("q_no_events", {"n": uid}, event_id=uid)
    assert await client.queues.has_events("q_no_events")
    popped = await client.queues.pop("q_no_events", 10)
    assert [(e.event_id, e.value) for e in popped if e.event_id == uid] == [(uid, {"n": uid})]
    assert not await client.queues.has_events("q_no_events")
    assert await client.jobs.list(agent="q_no_events") == []
