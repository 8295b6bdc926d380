"""The health/metrics HTTP endpoint and the JSON log format, over a real socket."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Counter

from statek_bus.mesh.connection import connect
from statek_bus.mesh.health import HealthServer
from statek_bus.mesh.logs import JsonFormatter, job_context
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer, free_port
from tests.support.echo_service import NAME, PREFIX, build


async def _get(port: int, path: str, method: str = "GET", raw: bytes | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw or f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_readyz_follows_its_checks_and_names_each_one() -> None:
    state = {"nats": False}
    registry = CollectorRegistry()
    async with HealthServer(
        0,
        ready={"nats": lambda: state["nats"], "registered": lambda: True},
        host="127.0.0.1",
        registry=registry,
    ) as hs:
        code, body = await _get(hs.port, "/readyz")
        assert code == 503
        assert json.loads(body) == {"ready": False, "checks": {"nats": False, "registered": True}}
        state["nats"] = True
        code, body = await _get(hs.port, "/readyz")
        assert code == 200 and json.loads(body)["ready"] is True
        assert (await _get(hs.port, "/livez"))[0] == 200


async def test_a_check_that_raises_counts_as_unhealthy() -> None:
    def boom() -> bool:
        raise RuntimeError("no")

    async with HealthServer(0, ready={"boom": boom}, host="127.0.0.1", registry=CollectorRegistry()) as hs:
        code, body = await _get(hs.port, "/readyz")
    assert code == 503 and json.loads(body)["checks"] == {"boom": False}


async def test_metrics_expose_the_registry() -> None:
    registry = CollectorRegistry()
    steps = Counter("statek_test_steps", "test", ["agent"], registry=registry)
    steps.labels("a").inc(3)
    async with HealthServer(0, ready={}, host="127.0.0.1", registry=registry) as hs:
        code, body = await _get(hs.port, "/metrics")
    assert code == 200 and b'statek_test_steps_total{agent="a"} 3.0' in body


async def test_unknown_paths_methods_and_oversized_heads_change_nothing() -> None:
    async with HealthServer(
        0, ready={"ok": lambda: True}, host="127.0.0.1", registry=CollectorRegistry()
    ) as hs:
        assert (await _get(hs.port, "/../../etc/passwd"))[0] == 404
        assert (await _get(hs.port, "/readyz", method="POST"))[0] == 405
        huge = b"GET /readyz HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
        assert (await _get(hs.port, "", raw=huge))[0] == 0  # dropped, not answered
        assert (await _get(hs.port, "/readyz"))[0] == 200  # and the server still answers


def test_json_log_lines_carry_the_job_while_a_step_runs() -> None:
    fmt = JsonFormatter(instance="exec-1")
    record = logging.LogRecord(
        "statek_bus.runtime.engine", logging.WARNING, __file__, 1, "job failed: %s", ("x",), None
    )
    plain = json.loads(fmt.format(record))
    assert plain["message"] == "job failed: x" and plain["instance"] == "exec-1" and "job_id" not in plain
    with job_context("j1", 3, "triage", trace_id="abc"):
        line = json.loads(fmt.format(record))
    assert (line["job_id"], line["step"], line["agent"], line["trace_id"]) == ("j1", 3, "triage", "abc")


async def _readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        code, body = await _get(port, "/readyz")
    except OSError:
        return 0, {}
    return code, (json.loads(body) if body else {})


async def _until(port: int, want: int, seconds: float = 30.0) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        code, body = await _readyz(port)
        if code == want:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/readyz stayed {code} {body}, wanted {want}")
        await asyncio.sleep(0.1)


async def test_a_service_process_is_not_ready_while_nats_is_down_and_ready_when_it_returns(
    tmp_path: Path,
) -> None:
    server = NatsServer(data_dir=tmp_path / "nats")
    await server.start()
    port = free_port()
    env = {**os.environ, "STATEK_HEALTH_PORT": str(port), "STATEK_HEALTH_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "statek_bus", "serve", "state", "--nats-url", server.url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = await _until(port, 200)
        assert ready["checks"] == {"nats": True, "storage": True, "registered": True}
        nats_port = server.port
        await server.stop()
        down = await _until(port, 503)
        assert down["checks"]["nats"] is False  # type: ignore[index]
        assert (await _get(port, "/livez"))[0] == 200  # reconnecting, not dead: no restart wanted
        server = NatsServer(data_dir=tmp_path / "nats", port=nats_port)
        await server.start()
        await _until(port, 200)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        await server.stop()


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_a_known_request_workload_exactly_with_4xx_apart_from_5xx(
    settings: Settings, nc: Client
) -> None:
    port = free_port()
    s = settings.replace(health_port=port, health_host="127.0.0.1")
    endpoint = f"{NAME}/echo"
    async with running_service(build, s, name=NAME):
        before = (await _get(port, "/metrics"))[1].decode()
        for i in range(3):
            await nc.request(f"{PREFIX}.echo", json.dumps({"text": f"t{i}"}).encode(), timeout=5)
        for _ in range(2):  # an unknown field: a 400, the caller's mistake
            await nc.request(f"{PREFIX}.echo", b'{"tetx": "x"}', timeout=5)
        await nc.request(f"{PREFIX}.fail", b'{"code": 500}', timeout=5)
        after = (await _get(port, "/metrics"))[1].decode()
    delta = {
        cls: _sample(after, "statek_requests_total", endpoint=ep, code_class=cls)
        - _sample(before, "statek_requests_total", endpoint=ep, code_class=cls)
        for ep, cls in ((endpoint, "2xx"), (endpoint, "4xx"), (f"{NAME}/fail", "5xx"))
    }
    assert delta == {"2xx": 3.0, "4xx": 2.0, "5xx": 1.0}


async def test_a_service_logs_one_json_object_per_line_when_asked(nats_server: NatsServer) -> None:
    port = free_port()
    env = {
        **os.environ,
        "STATEK_LOG_FORMAT": "json",
        "STATEK_HEALTH_PORT": str(port),
        "STATEK_HEALTH_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "statek_bus", "serve", "state", "--nats-url", nats_server.url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await _until(port, 200)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message", "instance"} <= set(x) for x in lines)
    assert any("ready" in x["message"] for x in lines)


async def test_metrics_count_the_steps_and_llm_calls_of_a_known_workload_exactly(
    fresh_server: NatsServer,
) -> None:
    # a server of its own: no job left over by another test may run during the count
    from tests.agents_fixture import services, submit, wait_done

    settings = Settings.from_env({}, nats_url=fresh_server.url, drain_timeout=3.0)
    port = free_port()
    scraped = settings.replace(health_port=port, health_host="127.0.0.1")
    nc = await connect(settings, name="metrics-test")
    js = nc.jetstream()
    async with services(settings, "provider", "submission"), services(scraped, "executor"):
        await _until(port, 200)
        before = (await _get(port, "/metrics"))[1].decode()
        for _ in range(3):  # t_basic: warmup, two LLM replies, the second exits "ok"
            await wait_done(js, await submit(js, "t_basic", {"event": "e"}))
        after = (await _get(port, "/metrics"))[1].decode()
    await nc.close()

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert delta("statek_steps_total", agent="t_basic", outcome="done") == 3
    assert delta("statek_steps_total", agent="t_basic", outcome="error") == 0
    assert delta("statek_llm_calls_total", model="scripted/t_basic", outcome="ok") == 6
    assert delta("statek_llm_tokens_total", model="scripted/t_basic", kind="output") > 0


async def test_a_failed_job_is_one_json_warning_line_naming_the_job(
    settings: Settings, nc: Client, tmp_path: Path
) -> None:
    from statek_bus.ops.mesh import ServiceProcess
    from tests.agents_fixture import AGENTS_SPEC, services, submit, wait_done

    log_path = tmp_path / "executor.log"
    proc = ServiceProcess(
        "executor",
        settings.nats_url,
        args=["--agents", AGENTS_SPEC],
        env={"STATEK_LOG_FORMAT": "json"},
        log_path=log_path,
    )
    js = nc.jetstream()
    async with services(settings, "provider", "submission"):
        await proc.start()
        try:
            job = await submit(js, "t_basic")  # no `event` shared variable: its warmup fails
            record = await wait_done(js, job)
        finally:
            await proc.stop()
    assert record.error is not None
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    failed = [x for x in lines if x.get("job_id") == job and x["level"] == "WARNING"]
    assert len(failed) == 1 and "ended with an error" in failed[0]["message"], failed
    assert failed[0]["step"] >= 0 and failed[0]["instance"]
