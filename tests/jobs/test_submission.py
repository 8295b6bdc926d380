"""The submission service against a real nats-server: validation, idempotency, batches, list,
cancel, messages, events, history, agents and the recovery pass.

Until an executor exists, "runnable" means: the job's step-0 work message is in the work stream,
counted per job subject with ``stream_info(subjects_filter=...)``. Agents are registered by writing
their descriptions into ``statek_agents`` as an executor would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from statek_bus.services.submission import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs import checks as jobchecks
from statek_bus.jobs import listing as joblist
from statek_bus.jobs.inbox import JobInbox
from statek_bus.jobs.store import JobStore
from statek_bus.jobs.submission import MAX_BATCH, Submission
from statek_bus.mesh.provision import provision
from statek_bus.mesh.service import ServiceContext, running_service
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import BadRequestError, ConflictError, NotFoundError, PayloadTooLargeError
from statek_bus.wire.messages import (
    AgentDescription,
    JobEvent,
    JobRecord,
    JobStatus,
    ParamDescription,
    PendingMarker,
    encode,
)
from statek_bus.wire.subjects import (
    AGENTS_BUCKET,
    INDEX_PREFIX,
    JOBS_BUCKET,
    JOBS_CANCEL,
    JOBS_SUBMIT,
    JOBS_SUBMIT_BATCH,
    PENDING_PREFIX,
    SERVICE_SUBMISSION,
    WORK_RUN_PREFIX,
    WORK_STREAM,
    job_events_subject,
    token,
    untoken,
    work_run_subject,
)

# --- helpers shared with the other submission and jobs-client test modules --------------------------


async def register_agent(js: JetStreamContext, role: str, **fields: object) -> None:
    """Register ``role`` in statek_agents the way an executor does."""
    kv = await js.key_value(AGENTS_BUCKET)
    await kv.put(token(role), encode(AgentDescription(role=role, description=f"{role} test agent", **fields)))  # type: ignore[arg-type]


async def work_counts(js: JetStreamContext, job_ids: list[str]) -> dict[str, int]:
    """How many work messages each job has in the work stream."""
    info = await js.stream_info(WORK_STREAM, subjects_filter=f"{WORK_RUN_PREFIX}.>")
    subjects = info.state.subjects or {}
    counts = {j: 0 for j in job_ids}
    for subject, n in subjects.items():  # statek.work.run.<agent>.<job>
        job = untoken(subject.rsplit(".", 1)[-1])
        if job in counts:
            counts[job] += n
    return counts


async def finish(js: JetStreamContext, job_id: str, exit_status: str = "ok") -> None:
    """Play the executor: commit the job DONE and publish its DONE event."""
    store = await JobStore.open(js)

    def done(rec: JobRecord) -> JobRecord:
        rec.status, rec.exit_status, rec.step = JobStatus.DONE, exit_status, rec.step + 1
        return rec

    rec, _, _ = await store.transition(job_id, done)
    await store.publish(
        JobEvent(
            job_id=job_id, kind="status", at=rec.updated_at, status=JobStatus.DONE, exit_status=exit_status
        )
    )


async def set_status(js: JetStreamContext, job_id: str, status: JobStatus) -> JobRecord:
    """Play the executor: move the job to ``status`` (committing a step)."""
    store = await JobStore.open(js)

    def move(rec: JobRecord) -> JobRecord:
        rec.status, rec.step = status, rec.step + 1
        return rec

    rec, _, _ = await store.transition(job_id, move)
    return rec


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[ServiceContext]:
    """The submission service, in this process."""
    async with running_service(build, settings, name=SERVICE_SUBMISSION) as ctx:
        yield ctx


@pytest.fixture
async def client(settings: Settings, service: ServiceContext) -> AsyncIterator[AsyncStatekClient]:
    """A client of the running service."""
    async with AsyncStatekClient(settings=settings) as c:
        yield c


@pytest.fixture
async def agent(service: ServiceContext, uid: str) -> str:
    """A registered agent role unique to the test."""
    role = f"triage_{uid}"
    await register_agent(service.js, role)
    return role


async def raw(nc: Client, subject: str, body: bytes) -> dict[str, object]:
    """Send raw bytes; the decoded JSON reply body."""
    msg = await nc.request(subject, body, timeout=5)
    out: dict[str, object] = json.loads(msg.data)
    return out


# --- validation -------------------------------------------------------------------------------------


async def test_submit_stores_ready_job_and_enqueues_step_zero(client: AsyncStatekClient, agent: str) -> None:
    when = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    job = await client.jobs.submit(
        agent,
        {"event": {"at": when, "amount": Decimal("1.10"), "raw": b"\x00\xff"}},
        "en-us",
        params={"a": 1},
    )
    assert (job.status, job.agent, job.locale, job.params) == (JobStatus.READY, agent, "EN-US", {"a": 1})
    js = (await client.connection()).jetstream()
    rec, _ = await (await JobStore.open(js)).get(job.id)
    assert rec.step == 0
    assert rec.shared_vars["event"]["amount"] == {"$t": "decimal", "v": "1.10"}
    assert await work_counts(js, [job.id]) == {job.id: 1}


async def test_unicode_ids_roles_and_values_round_trip(
    client: AsyncStatekClient, service: ServiceContext, uid: str
) -> None:
    role = f"agent_żółw_{uid}_🐢"
    await register_agent(service.js, role)
    job = await client.jobs.submit(role, {"tekst": "zażółć gęślą jaźń ✓"}, job_id=f"zadanie/ą.{uid} *>")
    assert (job.id, job.agent) == (f"zadanie/ą.{uid} *>", role)
    assert (await client.jobs.get(job.id)).id == job.id
    assert [j.id for j in await client.jobs.list(agent=role)] == [job.id]


async def test_malformed_json_and_wrong_types_are_400_naming_the_field(
    nc: Client, service: ServiceContext, agent: str
) -> None:
    body = await raw(nc, JOBS_SUBMIT, b"{not json")
    assert body["error"] == {
        "code": 400,
        "name": "bad_request",
        "message": body["error"]["message"],
        "field": "$",
    }  # type: ignore[index]
    body = await raw(nc, JOBS_SUBMIT, json.dumps({"agent": agent, "shared_vars": [1, 2]}).encode())
    assert body["error"]["field"] == "$.shared_vars"  # type: ignore[index]
    body = await raw(nc, JOBS_SUBMIT, json.dumps({"agent": agent, "colour": 1}).encode())
    assert "colour" in body["error"]["message"]  # type: ignore[index]
    body = await raw(nc, JOBS_SUBMIT, json.dumps({"agent": agent, "shared_vars": {"not valid": 1}}).encode())
    assert body["error"]["field"] == "$.shared_vars.not valid"  # type: ignore[index]
    bad_tag = {"agent": agent, "shared_vars": {"when": {"$t": "datetime", "v": "yesterday"}}}
    body = await raw(nc, JOBS_SUBMIT, json.dumps(bad_tag).encode())
    assert body["error"]["field"] == "$.shared_vars.when"  # type: ignore[index]
    m = 2**61 - 1  # hash(m * i) == 0
    for tagged in (  # decimal.InvalidOperation and OverflowError were 500s
        {"$t": "decimal", "v": "nope"},
        {"$t": "timedelta", "v": 1e308},
        {"$t": "set", "v": [m * i for i in range(1, 40)]},
    ):
        body = await raw(nc, JOBS_SUBMIT, json.dumps({"agent": agent, "shared_vars": {"x": tagged}}).encode())
        error = body["error"]  # type: ignore[index]
        assert (error["code"], error["field"]) == (400, "$.shared_vars.x"), error
        assert error["message"].startswith(f"invalid tagged value ({tagged['$t']!r})"), error


async def test_oversize_request_is_413(nc: Client, settings: Settings, uid: str) -> None:
    small = settings.replace(max_request_bytes=10_000)
    async with running_service(build, small, name=SERVICE_SUBMISSION) as ctx:
        agent = f"big_{uid}"
        await register_agent(ctx.js, agent)
        payload = json.dumps({"agent": agent, "shared_vars": {"blob": "x" * 20_000}}).encode()
        msgs = [await nc.request(JOBS_SUBMIT, payload, timeout=5) for _ in range(3)]
    assert {json.loads(m.data)["error"]["code"] for m in msgs} == {413}


async def test_unknown_agent_is_404_listing_known_roles(client: AsyncStatekClient, agent: str) -> None:
    with pytest.raises(NotFoundError) as err:
        await client.jobs.submit("no_such_agent")
    assert "no_such_agent" in err.value.message and agent in err.value.message
    assert err.value.field == "$.agent"


async def test_bad_locale_is_400_before_and_at_the_service(
    client: AsyncStatekClient, nc: Client, agent: str
) -> None:
    with pytest.raises(BadRequestError) as err:
        await client.jobs.submit(agent, locale="XX-US")
    assert err.value.field == "locale"
    body = await raw(nc, JOBS_SUBMIT, json.dumps({"agent": agent, "locale": "EN"}).encode())
    assert body["error"]["field"] == "$.locale"  # type: ignore[index]


async def test_required_params_declared_by_the_agent_are_checked(
    client: AsyncStatekClient, service: ServiceContext, uid: str
) -> None:
    role = f"strict_{uid}"
    await register_agent(service.js, role, params=[ParamDescription(name="source", required=True)])
    with pytest.raises(BadRequestError) as err:
        await client.jobs.submit(role)
    assert err.value.field == "$.params.source"
    assert (await client.jobs.submit(role, params={"source": "cli"})).params == {"source": "cli"}


# --- idempotency and concurrency ----------------------------------------------------------------------


async def test_same_job_id_returns_the_first_job(client: AsyncStatekClient, agent: str, uid: str) -> None:
    first = await client.jobs.submit(agent, {"n": 1}, job_id=f"k-{uid}")
    again = await client.jobs.submit(agent, {"n": 2}, job_id=f"k-{uid}")
    assert (again.id, again.created_at, again.revision) == (first.id, first.created_at, first.revision)
    js = (await client.connection()).jetstream()
    assert await work_counts(js, [first.id]) == {first.id: 1}
    await register_agent(js, f"other_{uid}")
    with pytest.raises(ConflictError):
        await client.jobs.submit(f"other_{uid}", job_id=f"k-{uid}")


async def test_200_concurrent_submits_make_200_jobs_each_enqueued_once(
    client: AsyncStatekClient, agent: str
) -> None:
    jobs = await asyncio.gather(*(client.jobs.submit(agent, {"i": i}) for i in range(200)))
    ids = [j.id for j in jobs]
    assert len(set(ids)) == 200
    js = (await client.connection()).jetstream()
    assert set((await work_counts(js, ids)).values()) == {1}
    listed = await client.jobs.list(agent=agent, limit=1000)
    assert sorted(j.id for j in listed) == sorted(ids)


async def test_batch_ids_derive_from_batch_id_and_a_retry_changes_nothing(
    client: AsyncStatekClient, agent: str, uid: str
) -> None:
    batch = [{"i": i} for i in range(50)] + [None]
    first = await client.jobs.submit_batch(agent, batch, params={"src": "t"}, batch_id=f"b-{uid}")
    assert [j.id for j in first] == [f"b-{uid}-{i}" for i in range(51)]
    again = await client.jobs.submit_batch(agent, batch, params={"src": "t"}, batch_id=f"b-{uid}")
    assert [j.revision for j in again] == [j.revision for j in first]
    js = (await client.connection()).jetstream()
    assert set((await work_counts(js, [j.id for j in first])).values()) == {1}
    assert await client.jobs.submit_batch(agent, [], batch_id=f"e-{uid}") == []


# --- list -------------------------------------------------------------------------------------------


async def test_list_filters_by_agent_status_parent_and_pages(
    client: AsyncStatekClient, agent: str, service: ServiceContext
) -> None:
    parent = await client.jobs.submit(agent)
    kids = await client.jobs.submit_batch(
        agent, [{"k": i} for i in range(5)], parent_id=parent.id, locale="PL-PL"
    )
    child = await client.jobs.submit(agent, parent_id=parent.id)
    assert child.locale is None and kids[0].locale == "PL-PL"
    assert [j.id for j in await client.jobs.list(parent_id=parent.id)] == [k.id for k in kids] + [child.id]
    pages = [await client.jobs.list(agent=agent, limit=3, page_number=p) for p in (1, 2, 3)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [j.id for p in pages for j in p] == [parent.id, *(k.id for k in kids), child.id]
    await set_status(service.js, kids[1].id, JobStatus.STARTED)
    await set_status(service.js, kids[3].id, JobStatus.STARTED)
    started = await client.jobs.list(agent=agent, status="STARTED")
    assert [j.id for j in started] == [kids[1].id, kids[3].id]
    assert [j.id for j in await client.jobs.list(agent=agent, status="STARTED", limit=1, page_number=2)] == [
        kids[3].id
    ]
    with pytest.raises(BadRequestError) as err:
        await client.jobs.list(limit=0)
    assert err.value.field == "$.limit"


async def test_child_inherits_parent_locale_and_missing_parent_is_404(
    client: AsyncStatekClient, agent: str
) -> None:
    parent = await client.jobs.submit(agent, locale="DE-DE")
    assert (await client.jobs.submit(agent, parent_id=parent.id)).locale == "DE-DE"
    with pytest.raises(NotFoundError) as err:
        await client.jobs.submit(agent, parent_id="no-such-parent")
    assert err.value.field == "$.parent_id"


# --- cancel, messages, events --------------------------------------------------------------------------


async def test_cancel_semantics(client: AsyncStatekClient, agent: str, service: ServiceContext) -> None:
    ready = await client.jobs.submit(agent)
    cancelled = await client.jobs.cancel(ready.id, "duplicate")
    assert (cancelled.status, cancelled.exit_status) == (JobStatus.DONE, "Cancelled: duplicate")
    with pytest.raises(ConflictError):
        await client.jobs.cancel(ready.id)

    running = await client.jobs.submit(agent)
    await set_status(service.js, running.id, JobStatus.STARTED)
    still = await client.jobs.cancel(running.id)
    assert still.status is JobStatus.STARTED
    rec, _ = await (await JobStore.open(service.js)).get(running.id)
    assert rec.cancel_reason == "no reason given"

    suspended = await client.jobs.submit(agent)
    await set_status(service.js, suspended.id, JobStatus.SUSPENDED)
    assert (await client.jobs.cancel(suspended.id)).exit_status == "Cancelled: no reason given"


async def test_message_to_done_job_restarts_it_and_wakes_suspended(
    client: AsyncStatekClient, agent: str, service: ServiceContext
) -> None:
    js = service.js
    job = await client.jobs.submit(agent)
    await finish(js, job.id)
    restarted = await client.jobs.send_message(job.id, "Thanks! One more thing…")
    assert (restarted.status, restarted.exit_status) == (JobStatus.STARTED, None)
    store = await JobStore.open(js)
    rec, _ = await store.get(job.id)
    queued = await JobInbox(service.nc, js, Settings()).read(job.id, rec.inbox_seq, room=100_000)
    assert [(i.event.kind, i.event.text) for i in queued] == [("message", "Thanks! One more thing…")]
    info = await js.stream_info(WORK_STREAM, subjects_filter=work_run_subject(job.agent, job.id))
    assert (info.state.subjects or {})[work_run_subject(job.agent, job.id)] == 2  # step 0, then the restart

    sleeper = await client.jobs.submit(agent)
    await set_status(js, sleeper.id, JobStatus.SUSPENDED)
    woken = await client.jobs.send_notification(sleeper.id, "child finished")
    assert woken.status is JobStatus.SUSPENDED
    assert await work_counts(js, [sleeper.id]) == {sleeper.id: 2}
    with pytest.raises(BadRequestError):
        await client.jobs.send_message(sleeper.id, "   ")


async def test_a_job_that_ended_with_an_error_forgets_it_when_a_message_restarts_it(
    client: AsyncStatekClient, agent: str, service: ServiceContext
) -> None:
    job = await client.jobs.submit(agent)
    store = await JobStore.open(service.js)

    def failed(rec: JobRecord) -> JobRecord:
        rec.end("Error: boom", "boom")
        rec.step += 1
        return rec

    await store.transition(job.id, failed)
    restarted = await client.jobs.send_message(job.id, "try again")
    assert (restarted.status, restarted.exit_status, restarted.error) == (JobStatus.STARTED, None, None)


async def test_cancelled_job_restarted_by_a_message_gets_a_fresh_work_message(
    client: AsyncStatekClient, agent: str, service: ServiceContext
) -> None:
    job = await client.jobs.submit(agent)
    await client.jobs.cancel(job.id)
    await client.jobs.send_message(job.id, "please run after all")
    assert await work_counts(service.js, [job.id]) == {job.id: 2}  # not swallowed by dedup


async def test_status_changes_are_published(client: AsyncStatekClient, agent: str, nc: Client) -> None:
    job = await client.jobs.submit(agent)
    got: list[JobEvent] = []

    async def collect(msg: Msg) -> None:
        got.append(msgspec.json.decode(msg.data, type=JobEvent))

    sub = await nc.subscribe(job_events_subject(job.id), cb=collect)
    await client.jobs.cancel(job.id, "stop")
    await client.jobs.send_message(job.id, "again")
    await nc.flush()
    await asyncio.sleep(0.1)
    await sub.unsubscribe()
    assert [(e.kind, e.status) for e in got] == [
        ("status", JobStatus.DONE),
        ("message", None),
        ("status", JobStatus.STARTED),
    ]


async def test_history_reads_chat_and_console_from_the_job_log(
    client: AsyncStatekClient, agent: str, service: ServiceContext
) -> None:
    job = await client.jobs.submit(agent)
    store = await JobStore.open(service.js)
    now = datetime.now(UTC)
    await store.publish(JobEvent(job_id=job.id, kind="console", at=now, text="received event"))
    await store.publish(
        JobEvent(job_id=job.id, kind="chat", at=now, role="assistant", text="print(1)", step=1)
    )
    await store.publish(JobEvent(job_id=job.id, kind="console", at=now, text="1"))
    hist = await client.jobs.history(job.id)
    assert hist.console == ["received event", "1"]
    assert [(c.role, c.content, c.step) for c in hist.chat] == [("assistant", "print(1)", 1)]
    with pytest.raises(NotFoundError):
        await client.jobs.history("missing-job")


async def test_agents_list_and_get(client: AsyncStatekClient, agent: str) -> None:
    assert agent in [a.role for a in await client.jobs.agents()]
    assert (await client.jobs.agent(agent)).description == f"{agent} test agent"
    with pytest.raises(NotFoundError):
        await client.jobs.agent("nobody")


# --- recovery ---------------------------------------------------------------------------------------


async def test_recovery_enqueues_a_ready_job_whose_work_message_is_missing(
    nc: Client, settings: Settings, uid: str
) -> None:
    """The service died after the record and before the work publish: only the marker is left.

    No submission service runs here: its own recovery pass (at start, then every interval) would
    race this test's pass for the marker, and the test must see what *its* pass does.
    """
    js = nc.jetstream()
    await provision(js, settings)
    await register_agent(js, f"triage_{uid}")
    store = await JobStore.open(js)
    now = datetime(2020, 1, 1, tzinfo=UTC)  # an old marker: its submit is certainly over
    await store.kv.put(f"{PENDING_PREFIX}.{uid}", encode(PendingMarker(job_ids=[f"s-{uid}"], created_at=now)))
    await store.create(JobRecord(id=f"s-{uid}", agent=f"triage_{uid}", created_at=now, updated_at=now))
    assert await work_counts(js, [f"s-{uid}"]) == {f"s-{uid}": 0}
    sub = await Submission.open(nc, js, settings)
    assert await sub.recover() >= 1
    assert await sub.recover() == 0  # marker purged, work present: nothing twice
    assert await work_counts(js, [f"s-{uid}"]) == {f"s-{uid}": 1}


# --- nothing is written when a submit is refused ------------------------------------------------------


async def _absent(js: JetStreamContext, key: str) -> bool:
    kv = await js.key_value(JOBS_BUCKET)
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return True
    return not entry.value


async def test_duplicate_job_id_of_another_agent_is_409_and_writes_nothing(
    client: AsyncStatekClient, service: ServiceContext, agent: str, uid: str
) -> None:
    other = f"other_{uid}"
    await register_agent(service.js, other)
    taken = await client.jobs.submit(agent, job_id=f"dup-{uid}")
    with pytest.raises(ConflictError) as err:
        await client.jobs.submit(other, job_id=f"dup-{uid}")
    assert (err.value.field, err.value.details["job_ids"]) == ("$.job_id", [taken.id])
    assert await _absent(service.js, f"{INDEX_PREFIX}.agent.{token(other)}.j.{token(taken.id)}")
    mine = await client.jobs.submit(other)
    assert [j.id for j in await client.jobs.list(agent=other, limit=1, page_number=1)] == [mine.id]
    assert (await client.jobs.get(taken.id)).revision == taken.revision


async def test_batch_with_one_conflicting_id_is_409_and_creates_none_of_the_others(
    client: AsyncStatekClient, service: ServiceContext, agent: str, uid: str
) -> None:
    other = f"other_{uid}"
    await register_agent(service.js, other)
    taken = await client.jobs.submit(agent, job_id=f"bx-{uid}-2")
    with pytest.raises(ConflictError) as err:
        await client.jobs.submit_batch(other, [{"i": i} for i in range(5)], batch_id=f"bx-{uid}")
    assert (err.value.field, err.value.details["job_ids"]) == ("$.batch_id", [taken.id])
    others = [f"bx-{uid}-{i}" for i in (0, 1, 3, 4)]
    store = await JobStore.open(service.js)
    assert [await store.find(j) for j in others] == [None] * 4
    assert set((await work_counts(service.js, others)).values()) == {0}
    for scope in ("all", f"agent.{token(other)}"):
        assert await _absent(service.js, f"{INDEX_PREFIX}.{scope}.b.{token(f'bx-{uid}')}")
    assert await client.jobs.list(agent=other) == []


async def test_batch_too_large_for_one_reply_is_413_before_anything_is_written(
    nc: Client, service: ServiceContext, agent: str, uid: str
) -> None:
    too_many = {"agent": agent, "shared_vars_batch": [None] * (MAX_BATCH + 1), "batch_id": f"tm-{uid}"}
    body = await raw(nc, JOBS_SUBMIT_BATCH, json.dumps(too_many).encode())
    assert (body["error"]["code"], body["error"]["field"]) == (413, "$.shared_vars_batch")  # type: ignore[index]
    # few enough jobs, but with these params their reply would exceed the 1 MiB message limit
    fat = {
        "agent": agent,
        "shared_vars_batch": [None] * 1000,
        "params": {"note": "x" * 1500},
        "batch_id": f"ft-{uid}",
    }
    body = await raw(nc, JOBS_SUBMIT_BATCH, json.dumps(fat).encode())
    assert body["error"]["code"] == 413 and body["error"]["details"]["max_jobs"] < 1000  # type: ignore[index]
    store = await JobStore.open(service.js)
    assert await store.find(f"tm-{uid}-0") is None and await store.find(f"ft-{uid}-0") is None
    assert await work_counts(service.js, [f"ft-{uid}-0"]) == {f"ft-{uid}-0": 0}
    assert await _absent(service.js, f"{INDEX_PREFIX}.all.b.{token(f'ft-{uid}')}")


async def test_client_splits_a_batch_over_max_batch_into_parts_with_derived_ids(
    client: AsyncStatekClient, service: ServiceContext, agent: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobchecks, "MAX_BATCH", 3)  # the client's part size (the service keeps its own)
    entries = [{"i": i} for i in range(7)]
    jobs = await client.jobs.submit_batch(agent, entries, batch_id=f"sp-{uid}")
    want = [f"sp-{uid}.p{p}-{i}" for p, n in ((0, 3), (1, 3), (2, 1)) for i in range(n)]
    assert [j.id for j in jobs] == want
    again = await client.jobs.submit_batch(agent, entries, batch_id=f"sp-{uid}")
    assert [j.revision for j in again] == [j.revision for j in jobs]
    assert set((await work_counts(service.js, want)).values()) == {1}


# --- list: bounded work, no consumers ----------------------------------------------------------------


async def test_status_list_stops_at_a_full_page_and_refuses_an_unbounded_scan(
    client: AsyncStatekClient, service: ServiceContext, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(joblist, "MAX_EXAMINED", 300)
    jobs = await client.jobs.submit_batch(agent, [None] * 700)
    await set_status(service.js, jobs[2].id, JobStatus.DONE)
    assert [j.id for j in await client.jobs.list(agent=agent, status="DONE", limit=1)] == [jobs[2].id]
    ready = await client.jobs.list(agent=agent, status="READY", limit=5, page_number=3)
    assert [j.id for j in ready] == [j.id for j in jobs[11:16]]
    with pytest.raises(PayloadTooLargeError) as err:  # no second DONE job: every record would be read
        await client.jobs.list(agent=agent, status="DONE", limit=2)
    assert err.value.field == "$.status" and "narrow" in err.value.message
    page = await client.jobs.list(agent=agent, limit=100, page_number=7)
    assert [j.id for j in page] == [j.id for j in jobs[600:700]]


async def test_list_creates_no_consumer(
    client: AsyncStatekClient, service: ServiceContext, agent: str
) -> None:
    await client.jobs.submit_batch(agent, [None] * 20)
    before = len(await service.js.consumers_info(f"KV_{JOBS_BUCKET}"))
    await client.jobs.list(agent=agent)
    await client.jobs.list(agent=agent, status="READY")
    await client.jobs.list()
    assert len(await service.js.consumers_info(f"KV_{JOBS_BUCKET}")) <= before


async def test_a_cancel_reason_too_large_to_store_is_a_413_naming_it(
    client: AsyncStatekClient, agent: str, nc: Client
) -> None:
    job = await client.jobs.submit(agent)
    body = json.dumps({"job_id": job.id, "reason": "r" * 600_000}).encode()  # stored twice: over 1 MiB
    msg = await nc.request(JOBS_CANCEL, body, timeout=10)
    err = json.loads(msg.data)["error"]
    assert (err["code"], err["field"]) == (413, "$.reason")
    assert (await client.jobs.get(job.id)).status is JobStatus.READY  # nothing changed
