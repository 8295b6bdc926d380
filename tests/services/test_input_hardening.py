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
    STATES_GET_OR_CREATE,
    STATES_HISTORY,
    STATES_LIST,
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


async def _refused(
    nc: Client, mesh: Mesh, service: str, subject: str, payload: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """The error reply to ``payload``, once it is seen to have written nothing to any stream and
    to have left ``service`` answering."""
    js = nc.jetstream()
    before = await _quiet_sequences(js)
    headers, err = await _error(nc, subject, payload)
    assert await _sequences(js) == before, err  # nothing written
    await _still_answering(nc, mesh, service)
    return headers, err


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
    headers, err = await _refused(conn, mesh, service, subject, payload)
    assert (err["code"], err["field"]) == (400, field), err
    assert len(err["message"]) <= MAX_ERROR_TEXT
    assert sum(len(k) + len(v) for k, v in headers.items()) < 2 * MAX_ERROR_TEXT  # never the input
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
    body = (template % _nest(999)).encode()
    assert len(body) < 2100  # the 2 KB request that used to be a 500
    _, err = await _refused(conn, mesh, service, subject, body)
    assert err["code"] == 400 and err["field"].startswith(field + "[0]"), err
    assert err["details"] == {"limit": MAX_JSON_DEPTH}


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


# C0 and C1 controls, DEL, line/paragraph separators and the bidi controls: none may reach a log line.
_CONTROLS = list("\x00\n\r\x1b\x7f\x85\x9f\u061c\u200e\u200f\u2028\u2029\u202a\u202e\u2066\u2069")


def _with(c: str) -> str:
    return f"job-1{c}INFO forged line"


_CONTROLLED = [
    *[
        (SERVICE_SUBMISSION, JOBS_SUBMIT, {"agent": "t_basic", "job_id": _with(c)}, "$.job_id")
        for c in _CONTROLS
    ],
    (SERVICE_SUBMISSION, JOBS_SUBMIT, {"agent": "t_basic\n"}, "$.agent"),
    (SERVICE_SUBMISSION, JOBS_SUBMIT, {"agent": "t_basic", "parent_id": _with("\x00")}, "$.parent_id"),
    (
        SERVICE_SUBMISSION,
        JOBS_SUBMIT_BATCH,
        {"agent": "t_basic", "shared_vars_batch": [None], "batch_id": _with("\u202e")},
        "$.batch_id",
    ),
    (SERVICE_SUBMISSION, JOBS_GET, {"job_id": _with("\r")}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_CANCEL, {"job_id": _with("\x85")}, "$.job_id"),
    (
        SERVICE_SUBMISSION,
        JOBS_SEND_MESSAGE,
        {"job_id": "j", "message": "hi", "message_id": _with("\n")},
        "$.message_id",
    ),
    (SERVICE_SUBMISSION, JOBS_SEND_NOTIFICATION, {"job_id": _with("\u2066"), "text": "hi"}, "$.job_id"),
    (SERVICE_SUBMISSION, JOBS_LIST, {"parent_id": _with("\x1b")}, "$.parent_id"),
    (SERVICE_SUBMISSION, AGENTS_GET, {"agent": _with("\u200f")}, "$.agent"),
    (SERVICE_STATE, STATES_CREATE, {"task_id": _with("\n"), "agent_id": "a", "state": {}}, "$.task_id"),
    (SERVICE_STATE, STATES_CREATE, {"task_id": "t", "agent_id": _with("\u2028"), "state": {}}, "$.agent_id"),
    (
        SERVICE_STATE,
        STATES_GET_OR_CREATE,
        {"task_id": "t", "agent_id": _with("\x00"), "default": {}},
        "$.agent_id",
    ),
    (SERVICE_STATE, STATES_RETRIEVE, {"task_id": _with("\x7f"), "agent_id": "a"}, "$.task_id"),
    (SERVICE_STATE, STATES_RETRIEVE, {"state_id": _with("\n")}, "$.state_id"),
    (SERVICE_STATE, STATES_UPDATE, {"state_id": _with("\u202e"), "state": {}}, "$.state_id"),
    (SERVICE_PROVIDER, LLM_COMPLETE, {"model": "scripted/x\n", "messages": []}, "$.model"),
]


@pytest.mark.parametrize(("service", "subject", "payload", "field"), _CONTROLLED)
async def test_a_control_character_in_an_id_is_a_400_naming_it_that_writes_nothing(
    mesh: Mesh, conn: Client, service: str, subject: str, payload: dict[str, Any], field: str
) -> None:
    _, err = await _refused(conn, mesh, service, subject, payload)  # no job, no state, no marker
    assert (err["code"], err["field"]) == (400, field), err
    name = field.removeprefix("$.")
    assert err["message"].startswith(f"{name} must not contain control characters (U+0000-U+001F"), err
    assert "regex" not in err["message"] and "forged" not in err["message"]  # never the input


async def test_ids_without_control_characters_still_pass(mesh: Mesh, conn: Client, uid: str) -> None:
    job_id = f"Zoë 中文 tab-free {uid}"  # spaces and non-ASCII letters are no control characters
    msg = await conn.request(
        JOBS_SUBMIT, json.dumps({"agent": "t_basic", "job_id": job_id}).encode(), timeout=10
    )
    assert not (msg.headers and ERROR_CODE_HEADER in msg.headers), msg.data
    assert json.loads(msg.data)["id"] == job_id
    state = {
        "task_id": f"tâche {uid}",
        "agent_id": "agent ☃",
        "state": {"k": "line\nbreaks are fine in values"},
    }
    msg = await conn.request(STATES_CREATE, json.dumps(state).encode(), timeout=10)
    assert not (msg.headers and ERROR_CODE_HEADER in msg.headers), msg.data
    assert json.loads(msg.data)["task_id"] == state["task_id"]


_BLANK_OWNERS = [
    (STATES_CREATE, {"task_id": "", "agent_id": "a", "state": {}}, "$.task_id"),
    (STATES_CREATE, {"task_id": "t", "agent_id": "   ", "state": {}}, "$.agent_id"),
    (STATES_GET_OR_CREATE, {"task_id": "\u3000", "agent_id": "a", "default": {}}, "$.task_id"),
    (STATES_GET_OR_CREATE, {"task_id": "t", "agent_id": "", "default": {}}, "$.agent_id"),
    (STATES_RETRIEVE, {"task_id": " ", "agent_id": "a"}, "$.task_id"),
    (STATES_RETRIEVE, {"task_id": "t", "agent_id": ""}, "$.agent_id"),
    (STATES_LIST, {"task_id": ""}, "$.task_id"),
    (STATES_LIST, {"agent_id": "  "}, "$.agent_id"),
]


@pytest.mark.parametrize(("subject", "payload", "field"), _BLANK_OWNERS)
async def test_a_blank_task_or_agent_id_is_a_400_naming_it_that_writes_nothing(
    mesh: Mesh, conn: Client, subject: str, payload: dict[str, Any], field: str
) -> None:
    _, err = await _refused(conn, mesh, SERVICE_STATE, subject, payload)  # no state created
    want = (400, field, f"{field[2:]} must be a non-blank string")
    assert (err["code"], err["field"], err["message"]) == want


_LONE_SURROGATES = [
    (SERVICE_SUBMISSION, JOBS_GET, rb'{"job_id":"\ud800"}', "\\ud800 at byte 11"),
    (SERVICE_SUBMISSION, JOBS_SUBMIT, rb'{"agent":"t_basic","job_id":"x\uDBFF"}', "\\uDBFF at byte 30"),
    (
        SERVICE_STATE,
        STATES_CREATE,
        rb'{"task_id":"t","agent_id":"a","state":{"k":"\ud83d"}}',
        "\\ud83d at byte 44",
    ),
]


@pytest.mark.parametrize(("service", "subject", "body", "where"), _LONE_SURROGATES)
async def test_a_lone_surrogate_escape_is_named_as_such_not_as_truncated_input(
    mesh: Mesh, conn: Client, service: str, subject: str, body: bytes, where: str
) -> None:
    _, err = await _refused(conn, mesh, service, subject, body)
    assert (err["code"], err["field"]) == (400, "$"), err
    assert (
        err["message"]
        == f"request body is not valid JSON: invalid string escape {where}: a lone UTF-16 surrogate"
    )
    _, err = await _error(conn, JOBS_GET, b'{"job_id":"cut')  # a body really cut short still says so
    assert err["message"] == "request body is not valid JSON: Input data was truncated"
