"""The client side of jobs: wait, watch, encoding errors before sending, the synchronous
``StatekClientAPI`` from plain sync code, and the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from statek_bus.client.core import AsyncStatekClient
from statek_bus.client.statek_client_api import StatekClientAPI
from statek_bus.jobs.store import JobStore
from statek_bus.mesh.connection import connect
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.errors import NotFoundError
from statek_bus.wire.locale import (
    StatekCountryCode,
    StatekLangCode,
    StatekLocale,
    UnknownLocaleError,
    resolve_locale,
)
from statek_bus.wire.messages import JobEvent, JobStatus
from statek_bus.wire.values import from_json
from tests.jobs import test_submission as ts
from tests.jobs.test_submission import finish, register_agent, set_status

service, client, agent = ts.service, ts.client, ts.agent  # the same fixtures as test_submission

# --- async client -----------------------------------------------------------------------------------


async def test_wait_returns_when_done_without_missing_an_early_finish(
    client: AsyncStatekClient, agent: str
) -> None:
    job = await client.jobs.submit(agent)
    js = await client.jetstream()
    waiter = asyncio.ensure_future(client.jobs.wait(job.id, timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await finish(js, job.id, "Success: 5")
    done = await waiter
    assert (done.status, done.exit_status) == (JobStatus.DONE, "Success: 5")
    assert (await client.jobs.wait(job.id)).revision == done.revision  # already DONE: at once
    with pytest.raises(TimeoutError):
        await client.jobs.wait((await client.jobs.submit(agent)).id, timeout=0.2)
    with pytest.raises(NotFoundError):
        await client.jobs.wait("no-such-job", timeout=5)


async def test_watch_replays_then_follows_until_done(client: AsyncStatekClient, agent: str) -> None:
    job = await client.jobs.submit(agent)
    js = await client.jetstream()
    store = await JobStore.open(js)
    seen: list[JobEvent] = []

    async def follow() -> None:
        async for event in client.jobs.watch(job.id):
            seen.append(event)

    watcher = asyncio.ensure_future(follow())
    await set_status(js, job.id, JobStatus.STARTED)
    now = datetime.now(UTC)
    await store.publish(JobEvent(job_id=job.id, kind="chat", at=now, role="assistant", text="x = 1"))
    await store.publish(JobEvent(job_id=job.id, kind="console", at=now, text="1"))
    await finish(js, job.id)
    await asyncio.wait_for(watcher, 10)
    assert [(e.kind, e.status, e.text) for e in seen] == [
        ("status", JobStatus.READY, None),
        ("chat", None, "x = 1"),
        ("console", None, "1"),
        ("status", JobStatus.DONE, None),
    ]
    replayed = [e async for e in client.jobs.watch(job.id)]  # a DONE job: its log, then the end
    assert [e.kind for e in replayed] == [e.kind for e in seen]


async def test_watch_ends_from_the_record_when_the_done_event_was_lost(
    client: AsyncStatekClient, agent: str
) -> None:
    job = await client.jobs.submit(agent)
    store = await JobStore.open(await client.jetstream())

    def done(rec):  # type: ignore[no-untyped-def]
        rec.status, rec.exit_status = JobStatus.DONE, "ok"
        return rec

    await store.transition(job.id, done)  # no DONE event: an executor died right after its commit
    events = [e async for e in client.jobs.watch(job.id, replay=False)]
    assert [(e.status, e.exit_status) for e in events] == [(JobStatus.DONE, "ok")]


async def test_unencodable_shared_var_is_a_type_error_naming_it_before_sending(
    client: AsyncStatekClient, agent: str
) -> None:
    with pytest.raises(TypeError, match=r"shared_vars\['event'\]\['handler'\]"):
        await client.jobs.submit(agent, {"ok": 1, "event": {"handler": object()}})
    with pytest.raises(TypeError, match=r"shared_vars_batch\[1\]\['bad'\]"):
        await client.jobs.submit_batch(agent, [{"a": 1}, {"bad": lambda: 1}])
    assert await client.jobs.list(agent=agent) == []


def test_resolve_locale_matches_statek() -> None:
    assert resolve_locale("pl-pl") == StatekLocale(StatekLangCode.PL, StatekCountryCode.PL)
    assert resolve_locale("EN-US").code == "EN-US"
    with pytest.raises(UnknownLocaleError, match="XX") as err:
        resolve_locale("XX-US")
    assert err.value.field == "locale" and isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="LANG-COUNTRY"):
        resolve_locale("EN")


# --- synchronous API and CLI (plain sync code, the service in its own process) ----------------------


@pytest.fixture
def mesh(nats_server: NatsServer) -> Iterator[tuple[Settings, str]]:
    """The submission service as a process, and a registered agent role."""
    settings = Settings.from_env({}, nats_url=nats_server.url, request_timeout=10.0)
    proc = ServiceProcess("submission", nats_server.url)
    proc.spawn()
    asyncio.run(proc.wait_ready())
    role = f"sync_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        nc = await connect(settings, name="test")
        await register_agent(nc.jetstream(), role)
        await nc.close()

    asyncio.run(setup())
    yield settings, role
    asyncio.run(proc.stop())


class _Agent:
    role = ""


def test_statek_client_api_from_plain_sync_code(mesh: tuple[Settings, str]) -> None:
    settings, role = mesh
    agent_obj = _Agent()
    agent_obj.role = role
    api = StatekClientAPI(settings=settings)
    try:
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        job = api.submit_new_job(
            agent_obj,
            {"event": {"at": when, "day": date(2026, 1, 2), "amount": Decimal("9.99")}},
            "EN-US",
            source="webhook",
        )
        assert (job.agent, job.locale, job.params) == (role, "EN-US", {"source": "webhook"})
        jobs = StatekClientAPI(settings=settings).submit_new_jobs_batch(
            role,
            [{"n": 1}, None],
            locale=StatekLocale(StatekLangCode.ES, StatekCountryCode.ES),
            source="batch_import",
        )
        assert [j.locale for j in jobs] == ["ES-ES", "ES-ES"]
        assert api.client is StatekClientAPI(settings=settings).client  # one shared connection

        async def stored() -> object:
            nc = await connect(settings, name="test")
            rec, _ = await (await JobStore.open(nc.jetstream())).get(job.id)
            await nc.close()
            return from_json(rec.shared_vars["event"])

        assert asyncio.run(stored()) == {"at": when, "day": date(2026, 1, 2), "amount": Decimal("9.99")}
        with pytest.raises(ValueError, match="unknown language"):
            api.submit_new_job(role, locale="QQ-US")
        assert [j.id for j in api.client.jobs.list(agent=role)] == [job.id, *(j.id for j in jobs)]
    finally:
        api.close()


def _cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NATS_URL": settings.nats_url}
    return subprocess.Popen(
        [sys.executable, "-m", "statek_bus", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_submit_wait_get_list_watch_cancel_send(mesh: tuple[Settings, str]) -> None:
    settings, role = mesh
    job_id = f"cli-{uuid.uuid4().hex[:8]}"
    waiting = _cli(
        settings,
        "submit",
        role,
        "--var",
        'event={"a": 2}',
        "--var",
        "who=ops team",
        "--param",
        'source="cli"',
        "--locale",
        "pl-pl",
        "--job-id",
        job_id,
        "--wait",
        "--timeout",
        "30",
    )
    watching = None
    try:

        async def when_submitted_then_finish() -> None:
            nc = await connect(settings, name="test")
            js = nc.jetstream()
            kv = await js.key_value("statek_jobs")
            from statek_bus.wire.subjects import job_key

            w = await kv.watch(job_key(job_id))
            while await w.updates(20) is None:
                pass
            await w.stop()
            nonlocal watching
            watching = _cli(settings, "jobs", "watch", job_id)
            await asyncio.sleep(0.5)
            await finish(js, job_id, "Success")
            await nc.close()

        asyncio.run(when_submitted_then_finish())
        out, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 0, err
        final = json.loads(out)
        assert (final["id"], final["status"], final["exit_status"], final["locale"]) == (
            job_id,
            "DONE",
            "Success",
            "PL-PL",
        )
        assert watching is not None
        wout, werr = watching.communicate(timeout=30)
        assert watching.returncode == 0, werr
        assert "[status] DONE" in wout.splitlines()[-1]
    finally:
        for p in (waiting, watching):
            if p is not None and p.poll() is None:
                p.kill()

    def run_all(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        procs = [_cli(settings, *c) for c in commands]  # in parallel: interpreter start-up dominates
        outputs = [p.communicate(timeout=60) for p in procs]
        return [
            subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outputs, strict=True)
        ]

    got, listed, missing, unknown = run_all(
        ("jobs", "get", job_id, "--json"),  # reads print text unless --json (issue 19)
        ("jobs", "list", "--agent", role, "--status", "DONE"),
        ("jobs", "get", "no-such-job"),
        ("submit", "nobody-here"),
    )
    assert json.loads(got.stdout)["params"] == {"source": "cli"}
    assert job_id in listed.stdout
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert unknown.returncode == 1 and role in unknown.stderr
    (sent,) = run_all(("jobs", "send", job_id, "one more thing"))
    assert json.loads(sent.stdout)["status"] == "STARTED"
