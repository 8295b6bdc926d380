"""Each job's inbox (``statek_bus.jobs.inbox``): sends append without contending, bounded, once each.

No executor serves these jobs: what a send leaves behind is read from the inbox stream and the
work stream, as an executor would find it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from statek_bus.services.submission import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.inbox import InboxItem, JobInbox, fit
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.jobs.submission import Submission
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.service import ServiceContext, running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.errors import PayloadTooLargeError
from statek_bus.wire.messages import JobEvent, JobSendMessageRequest, JobStatus, SubmitRequest
from statek_bus.wire.subjects import SERVICE_SUBMISSION, work_run_subject
from tests.jobs.test_submission import finish, register_agent, work_counts


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[ServiceContext]:
    """The submission service, in this process."""
    async with running_service(build, settings, name=SERVICE_SUBMISSION) as ctx:
        yield ctx


@pytest.fixture
async def agent(service: ServiceContext, uid: str) -> str:
    """A registered agent role unique to the test, served by no executor."""
    role = f"inbox_{uid}"
    await register_agent(service.js, role)
    return role


async def queued(nc: Client, job_id: str) -> list[str]:
    """The texts waiting in the job's inbox, oldest first."""
    js = nc.jetstream()
    record, _ = await (await JobStore.open(js)).get(job_id)
    items = await JobInbox(nc, js, Settings()).read(job_id, record.inbox_seq, room=1_000_000)
    return [i.event.text or "" for i in items]


async def test_fifty_clients_sending_at_once_are_all_accepted_each_once_in_each_senders_order(
    settings: Settings, service: ServiceContext, agent: str
) -> None:
    async with AsyncStatekClient(settings=settings) as first:
        job = await first.jobs.submit(agent)
        clients = [AsyncStatekClient(settings=settings) for _ in range(50)]
        try:

            async def sender(k: int, client: AsyncStatekClient) -> None:
                for j in range(4):  # one sender's messages go one after the other
                    await client.jobs.send_message(job.id, f"{k}.{j}")

            await asyncio.gather(*(sender(k, c) for k, c in enumerate(clients)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
    texts = await queued(service.nc, job.id)
    assert sorted(texts) == sorted(f"{k}.{j}" for k in range(50) for j in range(4))
    for k in range(50):
        assert [t for t in texts if t.split(".")[0] == str(k)] == [f"{k}.{j}" for j in range(4)]
    record, _ = await (await JobStore.open(service.js)).get(job.id)
    assert record.status is JobStatus.READY and record.inbox_seq == 0  # no sender wrote the record


async def test_a_repeated_message_id_is_stored_once(
    settings: Settings, service: ServiceContext, agent: str
) -> None:
    async with AsyncStatekClient(settings=settings) as client:
        job = await client.jobs.submit(agent)
        await client.jobs.send_message(job.id, "hello", message_id="m-1")
        await client.jobs.send_message(job.id, "hello", message_id="m-1")  # a retry of the same send
        await client.jobs.send_notification(job.id, "note", message_id="m-2")
    assert await queued(service.nc, job.id) == ["hello", "note"]


async def test_a_full_inbox_is_a_413_naming_the_limit_and_stores_nothing(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url, inbox_limit=3)
    nc = await connect(settings, name="statek-test")
    try:
        js = nc.jetstream()
        await provision(js, settings)
        await register_agent(js, "full")
        sub = await Submission.open(nc, js, settings)
        job = await sub.submit(SubmitRequest(agent="full"))
        for i in range(3):
            await sub.send_message(JobSendMessageRequest(job_id=job.id, message=f"m{i}", message_id=f"id{i}"))
        inbox = JobInbox(nc, js, settings)
        before = await inbox.last_seq(job.id)
        with pytest.raises(PayloadTooLargeError) as err:
            await sub.send_message(JobSendMessageRequest(job_id=job.id, message="one too many"))
        assert err.value.field == "$.message"
        assert err.value.details == {"limit": 3, "setting": "inbox_limit"}
        assert "inbox_limit" in str(err.value)
        assert await inbox.last_seq(job.id) == before
        # a retry of a send that was stored is still answered (deduplicated, not refused)
        again = await sub.send_message(JobSendMessageRequest(job_id=job.id, message="m1", message_id="id1"))
        assert again.id == job.id
        assert await queued(nc, job.id) == ["m0", "m1", "m2"]
    finally:
        await nc.close()


async def test_the_recovery_sweep_wakes_a_done_job_whose_sender_died_after_the_append(
    nc: Client, settings: Settings, uid: str
) -> None:
    # No submission service runs: its own recovery pass would race this one.
    js = nc.jetstream()
    await provision(js, settings)
    await register_agent(js, f"sweep_{uid}")
    sub = await Submission.open(nc, js, settings)
    job = await sub.submit(SubmitRequest(agent=f"sweep_{uid}"))
    await js.purge_stream("statek_work", subject=work_run_subject(job.agent, job.id))  # an executor ran step 0
    await finish(js, job.id)
    inbox = JobInbox(nc, js, settings)
    await inbox.append(
        JobEvent(job_id=job.id, kind="message", at=job.created_at, text="late"),
        message_id=None,
        field="$.message",
    )
    assert await sub.sweep_inboxes() >= 1  # the sender "died" here: only the item is left
    record, _ = await (await JobStore.open(js)).get(job.id)
    assert record.status is JobStatus.STARTED
    assert await work_counts(js, [job.id]) == {job.id: 1}
    await sub.sweep_inboxes()
    assert await work_counts(js, [job.id]) == {job.id: 1}  # never twice
    assert await queued(nc, job.id) == ["late"]


async def test_the_sweep_leaves_a_cancelled_job_cancelled(nc: Client, settings: Settings, uid: str) -> None:
    js = nc.jetstream()
    await provision(js, settings)
    await register_agent(js, f"sweepc_{uid}")
    sub = await Submission.open(nc, js, settings)
    job = await sub.submit(SubmitRequest(agent=f"sweepc_{uid}"))
    inbox = JobInbox(nc, js, settings)
    await inbox.append(
        JobEvent(job_id=job.id, kind="message", at=job.created_at, text="raced"),
        message_id=None,
        field="$.message",
    )
    from statek_bus.wire.messages import JobCancelRequest

    await sub.cancel(JobCancelRequest(job_id=job.id, reason="stop"))  # the cancel won the race
    await sub.sweep_inboxes()
    record, _ = await (await JobStore.open(js)).get(job.id)
    assert (record.status, record.exit_status) == (JobStatus.DONE, "Cancelled: stop")


def test_a_step_takes_what_fits_its_record_and_cuts_an_item_too_large_alone() -> None:
    at = utcnow()
    items = [
        InboxItem(seq, JobEvent(job_id="j", kind="message", at=at, text=t))
        for seq, t in ((4, "a" * 3000), (5, "b" * 100))
    ]
    assert [i.seq for i in fit(items, 0, 10_000)] == [4, 5]
    assert [i.seq for i in fit(items, 4, 10_000)] == [5]  # consumed ones are skipped
    assert [i.seq for i in fit(items, 0, 4_000)] == [4]  # the next one waits for the next step
    (cut,) = fit(items, 0, 2_000)  # alone, and too large: delivered cut, saying so
    assert cut.seq == 4 and cut.event.text is not None
    assert cut.event.text.startswith("a" * 100) and "did not fit the job's record" in cut.event.text
    assert len(cut.event.text) < 2_000
