"""The health/metrics HTTP endpoint and the JSON log format, over a real socket."""

from __future__ import annotations

import asyncio
import json
import logging

from prometheus_client import CollectorRegistry, Counter

from statek_bus.mesh.health import HealthServer
from statek_bus.mesh.logs import JsonFormatter, job_context


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
