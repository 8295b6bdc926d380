"""Bad input against the real service processes (``statek-bus serve ...``): one request must never
take a service down, a 4xx names the field and writes nothing, and what submit accepts runs.

The services run as child processes on the session server for the whole module (started once);
after every bad request the test checks the same instance still answers ``$SRV.PING``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from statek_bus.mesh.connection import connect
from statek_bus.mesh.discovery import ping
from statek_bus.mesh.settings import Settings
from statek_bus.wire.limits import MAX_ERROR_TEXT, MAX_JSON_DEPTH
from statek_bus.wire.subjects import (
    AGENTS_GET,
    ERROR_CODE_HEADER,
    JOBS_BUCKET,
    JOBS_CANCEL,
    JOBS_GET,
    JOBS_HISTORY,
    JOBS_LIST,
    JOBS_SEND_MESSAGE,
    JOBS_SEND_NOTIFICATION,
    JOBS_SUBMIT,
    JOBS_SUBMIT_BATCH,
    LLM_COMPLETE,
    SERVICE_PROVIDER,
    SERVICE_STATE,
    SERVICE_SUBMISSION,
    STATES_BUCKET,
    STATES_CREATE,
    STATES_DELETE,
    STATES_HISTORY,
    STATES_RETRIEVE,
    STATES_UPDATE,
    WORK_STREAM,
)
from tests.jobs.test_submission import register_agent
from tests.support.processes import Mesh, service_processes

pytestmark = pytest.mark.asyncio(loop_scope="module")

_STREAMS = (f"KV_{JOBS_BUCKET}", f"KV_{STATES_BUCKET}", WORK_STREAM)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    kinds = ["submission", "state", "provider", "executor"]
    with service_processes(tmp_path_factory.mktemp("nats"), kinds) as m:
        yield m


@pytest_asyncio.fixture(loop_scope="module")
async def conn(mesh: Mesh) -> AsyncIterator[Client]:
    nc = await connect(Settings.from_env({}, nats_url=mesh.url), name="statek-test")
    yield nc
    await nc.close()


async def _still_answering(nc: Client, mesh: Mesh, name: str) -> None:
    ids = {p["id"] for p in await ping(nc, name, wait=1.0)}
    assert mesh.ids[name] in ids, f"{name} no longer answers $SRV.PING"


async def _sequences(js: JetStreamContext) -> dict[str, int]:
    return {s: (await js.stream_info(s)).state.last_seq for s in _STREAMS}


async def _quiet_sequences(js: JetStreamContext) -> dict[str, int]:
    """Stream sequences once background writes (marker purges) have settled."""
    last = await _sequences(js)
    for _ in range(50):
        await asyncio.sleep(0.2)
        now = await _sequences(js)
        if now == last:
            return now
        last = now
    return last


async def _error(nc: Client, subject: str, payload: Any) -> tuple[dict[str, str], dict[str, Any]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    msg = await nc.request(subject, body, timeout=10)
    assert msg.headers is not None and ERROR_CODE_HEADER in msg.headers, msg.data[:200]
    return msg.headers, json.loads(msg.data)["error"]


_DOTS, _LONG, _WIDE = "." * 1340, "a" * 4000, "中" * 450
_HUGE_STATE_ID = "x" * 530_000

_OVERSIZED = [
    (SERVICE_SUBMISSION, JOBS_GET, {"job_id": _DOTS}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_GET, {"job_id": _LONG}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_GET, {"job_id": _WIDE}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_GET, {"job_id": "中" * 100}, "$.job_id"),  # 100 characters, 300 bytes
    (SERVICE_SUBMISSION, JOBS_HISTORY, {"job_id": _DOTS}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_CANCEL, {"job_id": _DOTS}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_SEND_MESSAGE, {"job_id": _DOTS, "message": "hi"}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_SEND_NOTIFICATION, {"job_id": _WIDE, "text": "hi"}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_SUBMIT, {"agent": "a" * 4100}, "$.agent"),
    (SERVICE_SUBMISSION, JOBS_SUBMIT, {"agent": "中" * 100}, "$.agent"),
    (SERVICE_SUBMISSION, JOBS_SUBMIT_BATCH, {"agent": "a" * 4100, "shared_vars_batch": [None]}, "$.agent"),
    (SERVICE_SUBMISSION, AGENTS_GET, {"agent": "a" * 4100}, "$.agent"),
    (SERVICE_SUBMISSION, AGENTS_GET, {"agent": "." * 250}, "$.agent"),
    (SERVICE_SUBMISSION, JOBS_LIST, {"agent": "." * 250}, "$.agent"),
    (SERVICE_SUBMISSION, JOBS_LIST, {"parent_id": _DOTS}, "$.parent_id"),
    (SERVICE_STATE, STATES_RETRIEVE, {"state_id": _HUGE_STATE_ID}, "$.state_id"),
    (SERVICE_STATE, STATES_UPDATE, {"state_id": _HUGE_STATE_ID, "state": {}}, "$.state_id"),
    (SERVICE_STATE, STATES_DELETE, {"state_id": _HUGE_STATE_ID}, "$.state_id"),
    (SERVICE_STATE, STATES_HISTORY, {"state_id": _HUGE_STATE_ID}, "$.state_id"),
    (SERVICE_STATE, STATES_CREATE, {"task_id": "中" * 200, "agent_id": "a", "state": {}}, "$.task_id"),
    (SERVICE_PROVIDER, LLM_COMPLETE, {"model": "m" * 5000, "messages": []}, "$.model"),
]


@pytest.mark.parametrize(("service", "subject", "payload", "field"), _OVERSIZED)
async def test_an_oversized_id_is_a_400_naming_it_and_the_service_keeps_answering(
    mesh: Mesh, conn: Client, service: str, subject: str, payload: dict[str, Any], field: str
) -> None:
    js = conn.jetstream()
    before = await _quiet_sequences(js)
    headers, err = await _error(conn, subject, payload)
    assert (err["code"], err["field"]) == (400, field), err
    assert len(err["message"]) <= MAX_ERROR_TEXT
    assert sum(len(k) + len(v) for k, v in headers.items()) < 2 * MAX_ERROR_TEXT  # never the input
    assert await _sequences(js) == before  # nothing written
    await _still_answering(conn, mesh, service)
    # and it still does its work
    _, err = await _error(conn, JOBS_GET, {"job_id": "no-such-job"})
    assert err["code"] == 404


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


_DEEP = [
    (SERVICE_STATE, STATES_CREATE, '{"task_id":"t","agent_id":"a","state":{"a":%s}}', "$.state.a"),
    (SERVICE_SUBMISSION, JOBS_SUBMIT, '{"agent":"t_basic","shared_vars":{"x":%s}}', "$.shared_vars.x"),
    (
        SERVICE_PROVIDER,
        LLM_COMPLETE,
        '{"model":"scripted/x","messages":[],"metadata":{"m":%s}}',
        "$.metadata.m",
    ),
]


@pytest.mark.parametrize(("service", "subject", "template", "field"), _DEEP)
async def test_deep_nesting_is_a_400_naming_the_field(
    mesh: Mesh, conn: Client, service: str, subject: str, template: str, field: str
) -> None:
    js = conn.jetstream()
    before = await _quiet_sequences(js)
    body = (template % _nest(999)).encode()
    assert len(body) < 2100  # the 2 KB request that used to be a 500
    _, err = await _error(conn, subject, body)
    assert err["code"] == 400 and err["field"].startswith(field + "[0]"), err
    assert err["details"] == {"limit": MAX_JSON_DEPTH}
    assert await _sequences(js) == before
    await _still_answering(conn, mesh, service)


async def test_submit_refuses_what_the_executor_could_not_load_and_runs_what_it_accepts(
    mesh: Mesh, conn: Client, uid: str
) -> None:
    # The body is depth 1, shared_vars 2, so x may nest MAX_JSON_DEPTH - 2 levels.
    deepest = MAX_JSON_DEPTH - 2
    too_deep = json.dumps({"agent": "t_basic", "shared_vars": {"x": json.loads(_nest(deepest + 1))}})
    _, err = await _error(conn, JOBS_SUBMIT, too_deep.encode())
    assert err["code"] == 400 and err["field"].startswith("$.shared_vars.x")

    job_id = f"deep-{uid}"
    shared = {"event": "deep", "x": json.loads(_nest(deepest))}  # t_basic prints event at warmup
    ok = {"agent": "t_basic", "job_id": job_id, "shared_vars": shared}
    msg = await conn.request(JOBS_SUBMIT, json.dumps(ok).encode(), timeout=10)
    assert not (msg.headers and ERROR_CODE_HEADER in msg.headers), msg.data
    job = await _wait_done(conn, job_id)
    assert (job["exit_status"], job["error"]) == ("ok", None)


async def _wait_done(nc: Client, job_id: str) -> dict[str, Any]:
    sub = await nc.subscribe(f"statek.events.jobs.{job_id}")
    try:
        for _ in range(600):
            msg = await nc.request(JOBS_GET, json.dumps({"job_id": job_id}).encode(), timeout=10)
            job: dict[str, Any] = json.loads(msg.data)
            if job["status"] == "DONE":
                return job
            try:
                await sub.next_msg(timeout=0.5)
            except Exception:
                continue
    finally:
        await sub.unsubscribe()
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.parametrize(
    ("subject", "payload"),
    [
        (JOBS_SEND_MESSAGE, {"job_id": "never-submitted", "message": "hello"}),
        (JOBS_SEND_NOTIFICATION, {"job_id": "never-submitted", "text": "hello"}),
    ],
)
async def test_a_message_to_an_unknown_job_is_a_404_that_writes_nothing(
    mesh: Mesh, conn: Client, subject: str, payload: dict[str, Any]
) -> None:
    js = conn.jetstream()
    before = await _quiet_sequences(js)
    _, err = await _error(conn, subject, payload)
    assert (err["code"], err["field"]) == (404, "$.job_id")
    assert await _quiet_sequences(js) == before  # no pending marker, no purge tombstone


async def test_a_message_over_a_full_inbox_is_a_413_that_writes_nothing(
    mesh: Mesh, conn: Client, uid: str
) -> None:
    js = conn.jetstream()
    agent = f"t_noexec_{uid}"  # registered, but no executor serves it: the inbox only fills
    await register_agent(js, agent)
    job_id = f"full-{uid}"
    for _ in range(100):
        msg = await conn.request(JOBS_SUBMIT, json.dumps({"agent": agent, "job_id": job_id}).encode(), timeout=10)
        if not (msg.headers and ERROR_CODE_HEADER in msg.headers):
            break
        await asyncio.sleep(0.1)
    big = {"job_id": job_id, "message": "m" * 600_000}
    msg = await conn.request(JOBS_SEND_MESSAGE, json.dumps(big).encode(), timeout=10)
    assert not (msg.headers and ERROR_CODE_HEADER in msg.headers), msg.data[:300]
    before = await _quiet_sequences(js)
    _, err = await _error(conn, JOBS_SEND_MESSAGE, big)
    assert (err["code"], err["field"]) == (413, "$.message")
    assert await _quiet_sequences(js) == before
