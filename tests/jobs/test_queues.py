"""Agent queues: events published by any NATS client become jobs, exactly once per event id."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

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


async def test_has_job_sees_a_message_no_step_has_read_yet(nats_server: NatsServer, uid: str) -> None:
    submission = ServiceProcess("submission", nats_server.url, env=ENV)
    executor = ServiceProcess("executor", nats_server.url, env=ENV, args=["--agents", "tests.jobs.queue_agents:AGENTS"])
    async with AsyncStatekClient(settings=Settings.from_env({}, nats_url=nats_server.url)) as c:
        try:
            submission.spawn()
            executor.spawn()  # registers the agents, then leaves: the job below waits for an executor
            await submission.wait_ready()
            await executor.wait_ready()
            await executor.stop(grace=10)
            job = await c.jobs.submit("q_triage", {"event": {"kind": "x", "at": uid}}, job_id=f"{uid}-held")
            assert not await c.queues.has_job(job.id)
            await c.jobs.send_message(job.id, "are you there?")
            assert await c.queues.has_job(job.id)
            assert not await c.queues.has_job(f"{uid}-no-such-job")
        finally:
            await executor.stop(grace=10)
            await submission.stop(grace=10)


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "statek_bus", "queues", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_the_queues_command_pushes_events_that_become_jobs(client: AsyncStatekClient, uid: str) -> None:
    url = client.settings.nats_url
    event = json.dumps({"kind": "cli", "at": uid})
    pushed = await asyncio.to_thread(_cli, url, "push", "q_triage", event, "--id", f"{uid}-cli")
    assert pushed.returncode == 0, pushed.stderr
    ids = json.loads(pushed.stdout)
    assert ids == {"event_id": f"{uid}-cli", "job_id": event_job_id("q_triage", f"{uid}-cli")}
    done = await wait_done(await client.jetstream(), ids["job_id"], timeout=60)
    assert done.exit_status == "cli handled"

    bad = await asyncio.to_thread(_cli, url, "push", "q_triage", "{not json")
    assert bad.returncode == 1 and "the event is not valid JSON" in bad.stderr, bad.stderr
    assert (await asyncio.to_thread(_cli, url, "pending", "q_no_events")).returncode == 1
    await client.queues.push("q_no_events", {"n": uid}, event_id=f"{uid}-cli-2")  # ids are per stream
    assert (await asyncio.to_thread(_cli, url, "pending", "q_no_events")).returncode == 0
    popped = await asyncio.to_thread(_cli, url, "pop", "q_no_events", "--count", "5")
    assert [json.loads(line)["value"] for line in popped.stdout.splitlines()] == [{"n": uid}]


async def test_a_burst_executor_turns_queued_events_into_jobs_before_it_exits(fresh_server: NatsServer) -> None:
    from tests.agents_fixture import services

    settings = Settings.from_env({}, nats_url=fresh_server.url, drain_timeout=3.0)
    async with services(settings, "provider", "submission"), AsyncStatekClient(settings=settings) as c:
        ids = [await c.queues.push("q_triage", {"kind": f"k{i}", "at": "burst"}, event_id=f"burst-{i}") for i in range(3)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "statek_bus", "serve", "executor", "--burst",
            "--agents", "tests.jobs.queue_agents:AGENTS", "--nats-url", fresh_server.url,
            cwd=Path(__file__).resolve().parents[2],
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        code = await asyncio.wait_for(proc.wait(), 90)
        done = [await c.jobs.get(c.queues.job_id("q_triage", i)) for i in ids]
    assert code == 0  # it stopped by itself, once the work queue and the event queue were idle
    assert [j.exit_status for j in done] == ["k0 handled", "k1 handled", "k2 handled"]
