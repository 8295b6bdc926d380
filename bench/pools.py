"""Executor pools: what routing work by agent costs an executor that serves many agents.

One mesh (every service its own process). The same single-turn workload runs twice, each time on
one executor replica with ``max_concurrency`` 100: first an executor serving only the busy agent,
then one serving it beside 30 idle agents, whose 30 work consumers it keeps a listening pull on.
The ratio column compares the two in the same run. A third row runs two pools at once, each
serving an agent of its own, and counts both pools' jobs.

``python -m bench pools [--quick]``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import progress, ratio
from bench.executor import ONE_TURN, _throughput
from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess

__all__ = ["CROWDED", "OTHER", "SOLO", "run"]

_SCRIPT = {"MODEL": "scripted/bench", "SCRIPT": ["result = n * 2\nexit(str(result))"]}
SOLO = [ONE_TURN]
"""The busy agent alone."""
CROWDED = [ONE_TURN, *(SupervisedAgent(f"bench_idle_{i}", "", metadata=_SCRIPT) for i in range(30))]
"""The busy agent and 30 idle ones."""
OTHER = [SupervisedAgent("bench_other_pool", "", metadata=_SCRIPT)]
"""The second pool's agent."""


_VS_SOLO = ratio("1 agent jobs/s")


def _executor(url: str, spec: str, tmp: Path, env: dict[str, str]) -> ServiceProcess:
    return ServiceProcess("executor", url, args=["--agents", f"bench.pools:{spec}"], env=env, log_path=tmp / f"{spec}.log")


async def run(quick: bool) -> list[dict[str, Any]]:
    """Rows: one agent, one agent among 30 idle ones, two pools at once."""
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-pools-"))
    n = 600 if quick else 3000
    env = {"STATEK_MAX_CONCURRENCY": "100", "STATEK_LOG_LEVEL": "WARNING"}
    settings = Settings.from_env({}, max_concurrency=100, request_timeout=30.0)
    rows: list[dict[str, Any]] = []
    try:
        mesh = Mesh(settings, data_dir=tmp / "nats", kinds=["submission", "state", "provider"], env=env, log_dir=tmp)
        async with mesh, AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url)) as client:
            rates: dict[str, float] = {}
            for spec in ("SOLO", "CROWDED"):
                progress(f"pools: {n:,} single-turn jobs on an executor serving {spec.lower()}")
                executor = _executor(mesh.nats_url, spec, tmp, env)
                await executor.start()
                try:
                    await _throughput(client, ONE_TURN.role, 200)  # warm up
                    rates[spec], _ = await _throughput(client, ONE_TURN.role, n)
                finally:
                    await executor.stop()
            for spec, label in (("SOLO", "1 agent"), ("CROWDED", "1 busy agent + 30 idle agents")):
                rows.append(
                    {
                        "executor serves": label,
                        "single-turn jobs/s": rates[spec],
                        _VS_SOLO: rates[spec] / rates["SOLO"],
                    }
                )
            progress(f"pools: two pools at once, {n:,} jobs each")
            pools = [_executor(mesh.nats_url, spec, tmp, env) for spec in ("SOLO", "OTHER")]
            await asyncio.gather(*(p.start() for p in pools))
            try:
                both = await asyncio.gather(
                    _throughput(client, ONE_TURN.role, n), _throughput(client, OTHER[0].role, n)
                )
            finally:
                await asyncio.gather(*(p.stop() for p in pools))
            total = sum(rate for rate, _ in both)
            rows.append({"executor serves": "2 pools at once (jobs/s of both)", "single-turn jobs/s": total,
                         _VS_SOLO: total / rates["SOLO"]})  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
