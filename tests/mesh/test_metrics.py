"""``/metrics`` and ``$SRV.STATS`` of a known workload: jobs by status, in-flight steps, sandbox
refusals, timer lateness and the executor's concurrency, counted exactly."""

from __future__ import annotations

import asyncio
import json

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.connection import connect
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer, free_port
from statek_bus.wire.messages import JobStatus
from statek_bus.wire.subjects import SERVICE_EXECUTOR
from tests.agents_fixture import services, wait_done, wait_status
from tests.mesh.test_health import _get, _sample, _until


async def _metrics(port: int) -> str:
    return (await _get(port, "/metrics"))[1].decode()


async def _until_metric(port: int, name: str, want: float, seconds: float = 60.0, **labels: str) -> None:
    """Scrape until ``name{labels}`` equals ``want`` (the gauge is refreshed every 0.1 s here)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while (got := _sample(await _metrics(port), name, **labels)) != want:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name}{labels} stayed {got}, wanted {want}")
        await asyncio.sleep(0.1)


async def test_metrics_count_jobs_by_status_refusals_timers_and_in_flight_steps_exactly(
    fresh_server: NatsServer,
) -> None:
    # a server of its own: the job counts are of this test's jobs only
    port = free_port()
    settings = Settings.from_env({}, nats_url=fresh_server.url, drain_timeout=3.0, jobs_gauge_interval=0.1)
    scraped = settings.replace(health_port=port, health_host="127.0.0.1")
    nc = await connect(settings, name="metrics-test")
    js = nc.jetstream()
    async with (
        services(settings, "provider", "submission"),
        services(scraped, "executor"),
        AsyncStatekClient(settings=settings) as client,
    ):
        await _until(port, 200)
        before = await _metrics(port)
        sleeper = await client.jobs.submit("t_w_timer")  # sleep(5): SUSPENDED, then a timer wakes it
        await wait_status(js, sleeper.id, JobStatus.SUSPENDED)
        await _until_metric(port, "statek_jobs", 1, status="SUSPENDED")
        assert _sample(await _metrics(port), "statek_jobs", status="READY") == 0
        refused = await client.jobs.submit("t_sandbox_0")  # `import os`: refused, then exits
        await wait_done(js, refused.id)
        record = await wait_done(js, sleeper.id, timeout=60)
        assert record.exit_status == "timer ok"
        await _until_metric(port, "statek_jobs", 0, status="SUSPENDED")
        after = await _metrics(port)
        stats = json.loads((await nc.request(f"$SRV.STATS.{SERVICE_EXECUTOR}", b"", timeout=5)).data)
    await nc.close()

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert delta("statek_sandbox_refusals_total") == 1
    assert delta("statek_timer_lateness_seconds_count") == 1
    assert _sample(after, "statek_steps_in_flight") == 0
    assert delta("statek_steps_total", agent="t_sandbox_0", outcome="done") == 1
    assert delta("statek_steps_total", agent="t_w_timer", outcome="done") == 1
    data = next(e["data"] for e in stats["endpoints"] if e["name"] == "status")
    n = settings.max_concurrency
    assert data == {
        "client_errors": 0,
        "server_errors": 0,
        "max_concurrency": n,
        "running": 0,
        "in_flight": 0,
        "free": n,
    }


async def test_srv_stats_split_client_errors_from_server_errors(settings: Settings) -> None:
    from tests.support.echo_service import NAME, PREFIX, build

    nc = await connect(settings, name="stats-test")
    async with running_service(build, settings, name=NAME) as ctx:
        for code in (400, 404, 409, 500):
            await nc.request(f"{PREFIX}.fail", json.dumps({"code": code}).encode(), timeout=5)
        await nc.request(f"{PREFIX}.echo", b'{"tetx": "x"}', timeout=5)  # a misspelt field: 400
        subject = f"$SRV.STATS.{NAME}.{ctx.instance_id}"
        stats = json.loads((await nc.request(subject, b"", timeout=5)).data)
    await nc.close()
    by_name = {e["name"]: e for e in stats["endpoints"]}
    assert by_name["fail"]["num_errors"] == 4  # ADR-32 counts every error reply
    assert by_name["fail"]["data"] == {"client_errors": 3, "server_errors": 1}
    assert by_name["echo"]["data"] == {"client_errors": 1, "server_errors": 0}
