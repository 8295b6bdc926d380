"""`statek-bus up --auth`: every connection authenticated, every identity held to its permissions.

One mesh for the module, started as a user starts it (`statek-bus up --auth`, real nats-server
permissions from docs/permissions.md). The client user submits, waits, watches and uses states;
what the matrix forbids it is refused by nats-server (a permissions violation, and nothing
changes); an anonymous connection is refused; the job scenarios run with each service under its
own identity, and the server saw no service step outside its permissions; no secret is printed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from statek_bus.client.core import AsyncStatekClient, StatekClient
from statek_bus.mesh.connection import connect
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import ServiceUnavailableError
from statek_bus.wire.messages import JobStatus
from statek_bus.wire.subjects import JOB_LOG_STREAM, LLM_COMPLETE, job_key, work_run_subject
from tests.agents_fixture import AGENTS_SPEC

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CONNECTIONS = ("statek-submission", "statek-executor", "statek-state", "statek-provider")


@dataclass
class AuthMesh:
    url: str
    creds: str
    data_dir: Path
    output: Path

    def settings(self, **changes: object) -> Settings:
        return Settings.from_env({}, nats_url=self.url, creds_file=self.creds, request_timeout=10.0, **changes)


@pytest.fixture(scope="module")
def auth_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthMesh]:
    base = tmp_path_factory.mktemp("auth")
    output = base / "up.out"
    env = {**os.environ, "STATEK_WORKSPACE_INLINE_MAX": "1"}  # every workspace goes through the object store
    env.pop("NATS_CREDS", None)
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "statek_bus", "up", "--auth", "--port", "0", "--data-dir", str(base / "data"),
             "--agents", AGENTS_SPEC],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        first, second = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        try:
            assert first.startswith("NATS_URL=nats://127.0.0.1:"), first
            assert second.startswith("NATS_CREDS="), second
            yield AuthMesh(first.split("=", 1)[1], second.split("=", 1)[1], base / "data", output)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=90)
            proc.stdout.close()
            assert code == 0


@pytest.fixture
async def client(auth_mesh: AuthMesh) -> AsyncIterator[AsyncStatekClient]:
    async with AsyncStatekClient(settings=auth_mesh.settings()) as c:
        yield c


async def _violation(auth_mesh: AuthMesh, act: object) -> str:
    """Connect as the client, do ``act(nc)``, and return the permissions violation nats-server sent
    (nats-py lower-cases it)."""
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        seen.put_nowait(str(exc))

    nc = await nats.connect(auth_mesh.url, nkeys_seed=auth_mesh.creds, error_cb=on_error, name="forbidden-probe")
    try:
        await act(nc)  # type: ignore[operator]
        await nc.flush()
        return await asyncio.wait_for(seen.get(), timeout=10)
    finally:
        await nc.close()


def test_credentials_are_private_files(auth_mesh: AuthMesh) -> None:
    auth = auth_mesh.data_dir / "auth"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o700
    files = sorted(p.name for p in auth.iterdir())
    assert files == [
        "admin.nk", "client.nk", "executor.nk", "nats-server.conf", "provider.nk", "state.nk", "submission.nk",
        "users.env",
    ]  # fmt: skip
    assert all(stat.S_IMODE((auth / f).stat().st_mode) == 0o600 for f in files)
    assert auth_mesh.creds == str(auth / "client.nk")


async def test_the_client_user_submits_waits_watches_and_uses_states(client: AsyncStatekClient) -> None:
    job = await client.jobs.submit("t_basic", shared_vars={"event": {"kind": "ping"}})
    done = await client.jobs.wait(job.id, timeout=60)
    assert (done.status, done.exit_status) == (JobStatus.DONE, "ok")
    events = [e async for e in client.jobs.watch(job.id)]
    assert [e.status for e in events if e.kind == "status"][-1] is JobStatus.DONE
    assert 'received event: {"kind":"ping"}' in [e.text for e in events if e.kind == "console"]
    state = await client.states.create(task_id=job.id, agent_id="reviewer", state={"step": 1})
    updated = await client.states.update(state.id, {"step": 2}, expected_revision=state.revision)
    got = await client.states.retrieve(task_id=job.id, agent_id="reviewer")
    assert got is not None and got.state == {"step": 2} and got.revision == updated.revision


async def test_the_cli_takes_the_printed_credentials(auth_mesh: AuthMesh) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_CREDS", "STATEK_CREDS_FILE")}
    cmd = [sys.executable, "-m", "statek_bus"]
    run = await asyncio.create_subprocess_exec(
        *cmd, "submit", "t_quick", "--var", "n=7", "--wait", "--nats-url", auth_mesh.url, "--creds", auth_mesh.creds,
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await run.communicate()
    assert run.returncode == 0, err.decode()
    assert "done 7" in out.decode()
    anonymous = await asyncio.create_subprocess_exec(
        *cmd, "jobs", "list", "--nats-url", auth_mesh.url, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = await anonymous.communicate()
    assert anonymous.returncode == 1
    assert "authorization violation" in err.decode().lower()


async def test_an_anonymous_connection_is_refused(auth_mesh: AuthMesh) -> None:
    with pytest.raises(ServiceUnavailableError, match=r"refused this identity \(authorization violation\)"):
        await connect(Settings.from_env({}, nats_url=auth_mesh.url), name="anonymous")


async def test_the_client_cannot_write_job_records(auth_mesh: AuthMesh, client: AsyncStatekClient) -> None:
    job = await client.jobs.wait((await client.jobs.submit("t_quick", shared_vars={"n": 1})).id, timeout=60)

    async def overwrite(nc: nats.NATS) -> None:
        await nc.publish(f"$KV.statek_jobs.{job_key(job.id)}", b'{"id": "forged"}')

    expected = f'permissions violation for publish to "$KV.statek_jobs.{job_key(job.id)}"'
    assert expected.lower() in await _violation(auth_mesh, overwrite)
    assert await client.jobs.get(job.id) == job


async def test_the_client_cannot_publish_work_or_reach_the_provider(auth_mesh: AuthMesh) -> None:
    async def work(nc: nats.NATS) -> None:
        await nc.publish(work_run_subject("t_quick", "forged"), b'{"job_id": "forged", "step": 0}')

    async def llm(nc: nats.NATS) -> None:
        await nc.publish(LLM_COMPLETE, b'{"model": "scripted/x", "messages": []}')

    async def listen(nc: nats.NATS) -> None:
        await nc.subscribe("statek.llm.>")

    assert 'violation for publish to "statek.work.run.t_quick.forged"' in await _violation(auth_mesh, work)
    assert f'violation for publish to "{LLM_COMPLETE}"' in await _violation(auth_mesh, llm)
    assert 'violation for subscription to "statek.llm.>"' in await _violation(auth_mesh, listen)


async def test_the_client_cannot_create_a_consumer(auth_mesh: AuthMesh) -> None:
    # a push consumer's deliver subject is not checked against its creator's permissions:
    # a client that could create one could make the server publish stored data anywhere
    async def create(nc: nats.NATS) -> None:
        await nc.publish(f"$JS.API.CONSUMER.CREATE.{JOB_LOG_STREAM}", b'{"config": {"deliver_subject": "x"}}')

    expected = f'violation for publish to "$JS.API.CONSUMER.CREATE.{JOB_LOG_STREAM}"'
    assert expected.lower() in await _violation(auth_mesh, create)


async def test_job_scenarios_pass_with_each_service_under_its_own_identity(
    auth_mesh: AuthMesh, client: AsyncStatekClient
) -> None:
    grand = await client.jobs.submit("t_w_grand")  # a child job of a child job: delegate, wake, usage
    timer = await client.jobs.submit("t_w_timer")  # a scheduled wake-up (statek.work.sched)
    sub = await client.jobs.submit("t_w_sub_parent")  # a sub-task reporting to its parent
    restart = await client.jobs.submit("t_restart")
    counter = await client.jobs.submit("t_counter")  # a handler agent: its state through the state service
    assert (await client.jobs.wait(restart.id, timeout=60)).exit_status == "first"
    await client.jobs.send_message(restart.id, "again")
    await client.jobs.wait(counter.id, timeout=60)
    await client.jobs.send_message(counter.id, "event 1")
    results = await asyncio.gather(*(client.jobs.wait(j.id, timeout=90) for j in (grand, timer, restart)))
    assert [r.exit_status for r in results] == ["grand parent child done", "timer ok", "second"]
    if (await client.jobs.wait(sub.id, timeout=60)).exit_status == "parent done":
        async for _ in client.jobs.watch(sub.id, replay=False):  # the child's report restarts it
            pass
    assert (await client.jobs.wait(sub.id, timeout=60)).exit_status == "got 20"
    counted = await client.states.watch(task_id=counter.id, agent_id="t_counter", since_revision=0)
    async for change in counted:
        if change.state.state["count"] == 1:
            break
    await counted.aclose()

    log = (auth_mesh.data_dir / "nats-server.log").read_text()
    violations = [ln for ln in log.splitlines() if "Violation" in ln and any(s in ln for s in SERVICE_CONNECTIONS)]
    assert violations == []


def test_no_secret_is_printed(auth_mesh: AuthMesh) -> None:
    seeds = [p.read_text().strip() for p in (auth_mesh.data_dir / "auth").glob("*.nk")]
    printed = auth_mesh.output.read_text() + (auth_mesh.data_dir / "nats-server.log").read_text()
    assert len(seeds) == 6 and all(seed.startswith("SU") and seed not in printed for seed in seeds)


@pytest.mark.parametrize("mode", ["verify", "auto"])
async def test_a_service_without_the_rights_it_needs_stops_in_one_line(auth_mesh: AuthMesh, mode: str) -> None:
    # the state service started with the provider's identity, which may not touch any stream
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("NATS_CREDS", "STATEK_CREDS_FILE")},
        "NATS_URL": auth_mesh.url,
        "STATEK_CREDS_FILE": str(auth_mesh.data_dir / "auth" / "provider.nk"),
        "STATEK_INBOX_PREFIX": "_INBOX_provider",
        "STATEK_PROVISION": mode,
        "STATEK_REQUEST_TIMEOUT": "2",
    }
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "statek_bus", "serve", "state", cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(run.communicate(), timeout=60)
    assert run.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("statek-bus: storage not ready: bucket statek_states: no answer to "), last
    assert "forbidden to this user" in last and "Traceback" not in err.decode()


def test_the_blocking_client_takes_nats_creds(auth_mesh: AuthMesh) -> None:
    settings = Settings.from_env({"NATS_URL": auth_mesh.url, "NATS_CREDS": auth_mesh.creds})
    assert settings.creds_file == auth_mesh.creds
    with StatekClient(settings=settings) as client:
        job = client.jobs.submit("t_quick", shared_vars={"n": 3})
        assert client.jobs.wait(job.id, timeout=60).exit_status == "done 3"
        state = client.states.create(task_id=job.id, agent_id="blocking", state={"ok": True})
        assert state.state == {"ok": True}
