"""Executor pools: work is routed by agent, so pools serving different agents share one mesh.

Each executor consumes only the work of the agents it serves (one durable consumer per agent); a
job whose agent no live executor serves waits in the stream and runs when a pool for it starts;
starting or stopping a pool leaves every other pool's consumer as it was.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.messages import JobStatus
from statek_bus.wire.subjects import WORK_STREAM, work_consumer


def _pool(server: NatsServer, logs: Path, name: str, spec: str) -> ServiceProcess:
    return ServiceProcess(
        "executor",
        server.url,
        args=["--agents", f"tests.pool_agents:{spec}"],
        env={"TEST_POOL": name, "STATEK_DRAIN_TIMEOUT": "3"},
        log_path=logs / f"{name}.log",
    )


async def test_two_pools_run_only_their_own_agents_and_a_job_waits_for_its_pool(
    fresh_server: NatsServer, tmp_path: Path
) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url, request_timeout=10.0)
    base = [ServiceProcess(k, fresh_server.url, log_path=tmp_path / f"{k}.log") for k in ("submission", "provider")]
    heavy = _pool(fresh_server, tmp_path, "heavy", "HEAVY")
    light = _pool(fresh_server, tmp_path, "light", "LIGHT")
    late = _pool(fresh_server, tmp_path, "late1", "LATE")
    started = [*base, heavy, light, late]
    try:
        await asyncio.gather(*(p.start() for p in started))
        await late.stop()  # p_late is known to the mesh, but no live executor serves it now
        async with AsyncStatekClient(settings=settings) as client:
            js = await client.jetstream()
            before = (await js.consumer_info(WORK_STREAM, work_consumer("p_heavy"))).config

            waiting = await client.jobs.submit("p_late", shared_vars={})
            agents = ["p_heavy", "p_light", "p_light_too"]
            jobs = [await client.jobs.submit(a, shared_vars={}) for a in agents for _ in range(10)]
            done = await asyncio.gather(*(client.jobs.wait(j.id, timeout=120) for j in jobs))
            pool_of = {"p_heavy": "heavy", "p_light": "light", "p_light_too": "light"}
            assert [(j.agent, j.exit_status) for j in done] == [
                (j.agent, f"{j.agent} on {pool_of[j.agent]}") for j in jobs
            ]
            assert all(j.error is None for j in done)

            assert (await client.jobs.get(waiting.id)).status is JobStatus.READY  # waits, not failed
            late_again = _pool(fresh_server, tmp_path, "late2", "LATE")
            started.append(late_again)
            await late_again.start()
            finished = await client.jobs.wait(waiting.id, timeout=120)
            assert (finished.exit_status, finished.error) == ("p_late on late2", None)

            after = (await js.consumer_info(WORK_STREAM, work_consumer("p_heavy"))).config
            assert after == before  # the late pool's coming and going changed nothing of the heavy pool's
    finally:
        await asyncio.gather(*(p.stop() for p in started))
