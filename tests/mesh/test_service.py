"""The service runner and error tree through real requests to a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import msgspec
import pytest
from nats.aio.client import Client

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.discovery import info, ping, stats, status_report
from statek_bus.mesh.service import EXIT_CONNECTION_LOST, running_service
from statek_bus.mesh.settings import Settings
from statek_bus.wire import errors
from statek_bus.wire.subjects import ERROR_CODE_HEADER, ERROR_HEADER
from tests.support import echo_service
from tests.support.echo_service import NAME, PREFIX, build

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def echo(settings: Settings):  # type: ignore[no-untyped-def]
    async with running_service(build, settings, name=NAME) as ctx:
        yield ctx


@pytest.fixture
async def client(settings: Settings):  # type: ignore[no-untyped-def]
    async with AsyncStatekClient(settings=settings) as c:
        yield c


async def test_reply_is_json(echo: object, client: AsyncStatekClient) -> None:
    reply = await client.request(f"{PREFIX}.echo", {"text": "zażółć ", "times": 2}, dict)
    assert reply == {"text": "zażółć zażółć "}


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400, errors.BadRequestError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.PayloadTooLargeError),
        (503, errors.ServiceUnavailableError),
        (500, errors.InternalError),
    ],
)
async def test_every_error_class_round_trips(
    echo: object, client: AsyncStatekClient, code: int, cls: type
) -> None:
    with pytest.raises(cls) as info_:
        await client.request(f"{PREFIX}.fail", {"code": code}, dict)
    err = info_.value
    assert isinstance(err, errors.StatekError)
    assert err.code == code
    assert err.message == echo_service._BY_CODE[code].message
    assert err.details == echo_service._BY_CODE[code].details
    assert err.field == echo_service._BY_CODE[code].field


async def test_error_reply_has_adr32_headers_and_json_body(echo: object, nc: Client) -> None:
    msg = await nc.request(f"{PREFIX}.fail", b'{"code": 404}', timeout=5)
    assert msg.headers is not None
    assert msg.headers[ERROR_CODE_HEADER] == "404"
    assert msg.headers[ERROR_HEADER] == "no such thing"
    body = json.loads(msg.data)
    assert body == {"error": {"code": 404, "name": "not_found", "message": "no such thing"}}


async def test_unexpected_exception_is_500_with_trace_id_never_repr(echo: object, nc: Client) -> None:
    msg = await nc.request(f"{PREFIX}.fail", b'{"code": 0}', timeout=5)
    assert msg.headers is not None and msg.headers[ERROR_CODE_HEADER] == "500"
    body = json.loads(msg.data)["error"]
    assert body["code"] == 500 and len(body["trace_id"]) == 16
    raw = msg.data.decode() + json.dumps(msg.headers)
    assert "hunter2" not in raw and "RuntimeError" not in raw


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"{not json", "$"),
        (b"[1, 2]", "$"),
        (b'{"text": 5}', "$.text"),
        (b'{"text": "x", "times": "many"}', "$.times"),
        (b"{}", "$.text"),
        (b'{"text": "x", "tmes": 2}', "$.tmes"),
    ],
)
async def test_malformed_and_mistyped_requests_are_400_naming_the_field(
    echo: object, nc: Client, payload: bytes, field: str
) -> None:
    msg = await nc.request(f"{PREFIX}.echo", payload, timeout=5)
    body = json.loads(msg.data)["error"]
    assert msg.headers is not None and msg.headers[ERROR_CODE_HEADER] == "400"
    assert body["code"] == 400 and body["field"] == field


async def test_oversize_request_is_413(settings: Settings, nc: Client) -> None:
    async with running_service(build, settings.replace(max_request_bytes=1000), name=NAME):
        msg = await nc.request(f"{PREFIX}.echo", json.dumps({"text": "x" * 2000}).encode(), timeout=5)
    body = json.loads(msg.data)["error"]
    assert body["code"] == 413 and body["details"]["limit"] == 1000


async def test_reply_over_max_payload_is_413_not_a_timeout(echo: object, client: AsyncStatekClient) -> None:
    with pytest.raises(errors.PayloadTooLargeError, match=r"over the .*-byte message limit") as info_:
        await client.request(f"{PREFIX}.echo", {"text": "x" * 1000, "times": 2000}, dict)
    assert info_.value.details["size"] > info_.value.details["limit"]


async def test_handlers_run_concurrently(echo: object, client: AsyncStatekClient) -> None:
    # nats-py runs a micro handler one message at a time; the runner must not.
    started = time.monotonic()
    await asyncio.gather(*(client.request(f"{PREFIX}.slow", {"seconds": 0.5}, dict) for _ in range(8)))
    assert time.monotonic() - started < 8 * 0.5 / 2  # serial would take 4 s


async def test_srv_ping_info_stats_have_adr32_shapes(
    echo: object, nc: Client, client: AsyncStatekClient
) -> None:
    with pytest.raises(errors.NotFoundError):
        await client.request(f"{PREFIX}.fail", {"code": 404}, dict)
    await client.request(f"{PREFIX}.echo", {"text": "a"}, dict)
    (p,) = [x for x in await ping(nc, NAME)]
    assert p["type"] == "io.nats.micro.v1.ping_response"
    assert set(p) >= {"name", "id", "version", "metadata"}
    (i,) = [x for x in await info(nc, NAME)]
    assert i["type"] == "io.nats.micro.v1.info_response"
    assert isinstance(i["description"], str) and i["description"]
    assert {e["subject"] for e in i["endpoints"]} == {
        f"{PREFIX}.echo",
        f"{PREFIX}.fail",
        f"{PREFIX}.slow",
        f"{PREFIX}.poison",
    }
    assert all(isinstance(v, str) for e in i["endpoints"] for v in (e.get("metadata") or {}).values())
    (s,) = [x for x in await stats(nc, NAME)]
    assert s["type"] == "io.nats.micro.v1.stats_response"
    by_name = {e["name"]: e for e in s["endpoints"]}
    assert by_name["fail"]["num_errors"] >= 1 and by_name["fail"]["last_error"].startswith("404:")
    assert by_name["echo"]["num_requests"] >= 1 and by_name["echo"]["num_errors"] == 0
    report = [r for r in await status_report(nc) if r["name"] == NAME]
    assert report and report[0]["version"] == "0.1.0"


def _spawn_echo(url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NATS_URL": url}
    return subprocess.Popen([sys.executable, "-m", "tests.support.echo_service", *args], cwd=ROOT, env=env)


async def _wait_for_echo(nc: Client) -> None:
    for _ in range(200):
        if await ping(nc, NAME, wait=0.1):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("echo service did not come up")


async def test_killed_service_is_503_then_client_recovers(fresh_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.from_env({}, nats_url=fresh_server.url, request_timeout=1.0)
    async with AsyncStatekClient(settings=settings) as client:
        nc = await client.connection()
        proc = _spawn_echo(fresh_server.url)
        await _wait_for_echo(nc)
        assert await client.request(f"{PREFIX}.echo", {"text": "up"}, dict) == {"text": "up"}
        proc.kill()
        proc.wait()
        with pytest.raises(errors.ServiceUnavailableError, match="no service is answering"):
            await client.request(f"{PREFIX}.echo", {"text": "down"}, dict)
        proc = _spawn_echo(fresh_server.url)
        try:
            await _wait_for_echo(nc)
            assert await client.request(f"{PREFIX}.echo", {"text": "back"}, dict) == {"text": "back"}
        finally:
            proc.terminate()
            proc.wait()


async def test_sigterm_drains_in_flight_requests(fresh_server) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.from_env({}, nats_url=fresh_server.url, request_timeout=5.0)
    async with AsyncStatekClient(settings=settings) as client:
        proc = _spawn_echo(fresh_server.url)
        await _wait_for_echo(await client.connection())
        pending = [
            asyncio.ensure_future(client.request(f"{PREFIX}.slow", {"seconds": 1.0}, dict)) for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*pending)
        assert results == [{"slept": 1.0}] * 3
        assert await asyncio.to_thread(proc.wait, 10) == 0


def test_error_body_schema_is_stable() -> None:
    headers, body = errors.error_reply(errors.ConflictError("x", details={"current_revision": 3}))
    assert headers == {ERROR_HEADER: "x", ERROR_CODE_HEADER: "409"}
    assert msgspec.json.decode(body) == {
        "error": {"code": 409, "name": "conflict", "message": "x", "details": {"current_revision": 3}}
    }


async def test_stats_count_requests_answered_by_concurrent_tasks(
    echo: object, nc: Client, client: AsyncStatekClient
) -> None:
    # the runner answers from tasks, so the counts must come from the runner, not a serial handler
    await asyncio.gather(*(client.request(f"{PREFIX}.slow", {"seconds": 0.05}, dict) for _ in range(8)))
    await asyncio.gather(
        *(nc.request(f"{PREFIX}.fail", b'{"code": 409}', timeout=5) for _ in range(3)),
    )
    (s,) = await stats(nc, NAME)
    by_name = {e["name"]: e for e in s["endpoints"]}
    slow, fail = by_name["slow"], by_name["fail"]
    assert (slow["num_requests"], slow["num_errors"]) == (8, 0)
    assert slow["average_processing_time"] == slow["processing_time"] // 8
    assert (fail["num_requests"], fail["num_errors"], fail["last_error"]) == (3, 3, "409:stale")
    assert all(e["queue_group"] == "q" for e in s["endpoints"])
    assert s["started"].endswith("Z")


@pytest.mark.parametrize("how", ["run_service", "serve"])
async def test_a_service_whose_connection_closes_for_good_exits_for_its_supervisor(fresh_server, how) -> None:  # type: ignore[no-untyped-def]
    # nats-py gives up on a connection after a fatal -ERR (here: a protocol line over 4 KiB) and
    # never reconnects; a process that stayed up would answer nothing while looking healthy.
    settings = Settings.from_env({}, nats_url=fresh_server.url, request_timeout=2.0)
    async with AsyncStatekClient(settings=settings) as client:
        nc = await client.connection()
        proc = _spawn_echo(fresh_server.url, *(["--serve"] if how == "serve" else []))
        try:
            await _wait_for_echo(nc)
            with contextlib.suppress(errors.StatekError):
                await client.request(f"{PREFIX}.poison", {"subject_length": 5000}, dict)
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == EXIT_CONNECTION_LOST


ADR32 = Path(__file__).resolve().parents[1] / "support" / "adr32"


@pytest.mark.parametrize("verb", ["PING", "INFO", "STATS"])
async def test_srv_replies_validate_against_the_schemas_the_nats_cli_uses(
    echo: object, nc: Client, client: AsyncStatekClient, verb: str
) -> None:
    await client.request(f"{PREFIX}.echo", {"text": "a"}, dict)
    with pytest.raises(errors.NotFoundError):
        await client.request(f"{PREFIX}.fail", {"code": 404}, dict)
    schema = json.loads((ADR32 / f"{verb.lower()}_response.json").read_text())
    replies = {"PING": ping, "INFO": info, "STATS": stats}[verb]
    (reply,) = await replies(nc, NAME)
    jsonschema.validate(reply, schema, format_checker=jsonschema.FormatChecker())


async def test_a_probe_cancelled_at_any_moment_leaves_its_connection_working(echo: object, nc: Client) -> None:
    """A readiness probe cut short (the first Ctrl-C while a mesh starts cancels it) must not
    break the connection it ran on: a PING whose waiter is cancelled still gets its PONG, and
    nats-py then raises in its read loop, logs a traceback and stops reading for good."""
    for moment in range(12):
        probe = asyncio.ensure_future(ping(nc, NAME, wait=1.0))
        for _ in range(moment):
            await asyncio.sleep(0)
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        reply = await nc.request(f"$SRV.PING.{NAME}", b"", timeout=2.0)
        assert json.loads(reply.data)["name"] == NAME, f"cancelled after {moment} loop turns"
