"""LLM-bound load, the case users have: every model call takes :data:`~bench.executor.LLM_LATENCY` s.

10,000 jobs (1,000 with ``--quick``) of the prompted agent with two model calls each (two steps:
each calls the model and runs its reply, ``a = n + 1`` then ``exit``), through one executor with
``max_concurrency`` 40. The scripted model waits ``SCRIPT_LATENCY`` on a timer in the provider
(no thread held). A step waiting on the model gives its slot back, so the executor keeps up to
``5 x max_concurrency`` steps in flight (``Settings.model_waits_per_slot``); those are its in-flight model
calls. The ideal wall time is ``jobs x calls x latency / in-flight calls allowed``; the table
shows the measured time against it, and the executor's RSS growth per in-flight step (peak RSS
minus the idle RSS, over the peak of unacknowledged work messages, sampled every 0.5 s).

STATEK 1.4.2 runs the same workload in one process beside it (its ``max_concurrency`` 100 bounds
its in-flight model calls; the fake model sleeps the same latency without a thread).

``python -m bench llm [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SLOWER, progress, ratio, settle
from bench.executor import LLM_BOUND, LLM_LATENCY, PROMPT, _throughput
from bench.peer import run_statek
from bench.waits import rss_mib
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess
from statek_bus.wire.subjects import WORK_STREAM

__all__ = ["run"]

_CONCURRENCY = 40
_WAITS_PER_SLOT = Settings().model_waits_per_slot
_CALLS = 2
_STATEK_CONCURRENCY = 100


async def _mesh(jobs: int, tmp: Path) -> dict[str, Any]:
    settings = Settings.from_env({}, max_concurrency=_CONCURRENCY, request_timeout=60.0)
    env = {
        "STATEK_MAX_CONCURRENCY": str(_CONCURRENCY),
        "STATEK_HANDLER_CONCURRENCY": "2048",  # the provider answers every in-flight call at once
        "STATEK_LOG_LEVEL": "WARNING",
    }
    async with Mesh(
        settings, data_dir=tmp / "nats", kinds=["submission", "provider"], env=env, log_dir=tmp
    ) as mesh:
        ex = ServiceProcess(
            "executor",
            mesh.nats_url,
            args=["--agents", "bench.executor:AGENTS"],
            env=env,
            log_path=tmp / "executor.log",
        )
        await ex.start()
        assert ex.proc is not None
        client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
        try:
            await _throughput(client, LLM_BOUND.role, 50, timeout=60)  # warm up
            pids = [p.proc.pid for p in [*mesh.services.values(), ex] if p.proc is not None]
            await settle(dict(enumerate(pids)))
            idle_rss = rss_mib(ex.proc.pid)
            nc = await client.connection()
            js = nc.jetstream()
            peak = {"rss": idle_rss, "in_flight": 0}
            stop = asyncio.Event()

            async def sample() -> None:
                assert ex.proc is not None
                while not stop.is_set():
                    infos = await js.consumers_info(WORK_STREAM)  # one per agent
                    peak["in_flight"] = max(peak["in_flight"], sum(i.num_ack_pending for i in infos))
                    peak["rss"] = max(peak["rss"], rss_mib(ex.proc.pid))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)

            sampler = asyncio.create_task(sample())
            started = time.perf_counter()
            _, done = await _throughput(client, LLM_BOUND.role, jobs, timeout=3600)
            seconds = time.perf_counter() - started
            stop.set()
            await sampler
        finally:
            await client.aclose()
            await ex.stop()
    return {"seconds": seconds, "done": done, "idle_rss": idle_rss, **peak}


_VS_IDEAL = ratio("ideal wall", SLOWER)
"""Wall time against the ideal (jobs x calls x latency / in-flight calls allowed): 1.00 is the ideal."""
_VS_PEER = ratio("STATEK wall", SLOWER)


async def run(quick: bool) -> list[dict[str, Any]]:
    """One row for the mesh, one for STATEK."""
    jobs = 1000 if quick else 10_000
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-llm-"))
    try:
        allowed = _CONCURRENCY * (1 + _WAITS_PER_SLOT)
        progress(f"llm: statek-bus, 1 executor, {jobs:,} jobs x {_CALLS} calls of {LLM_LATENCY} s")
        mesh = await _mesh(jobs, tmp)
        progress(f"llm: STATEK 1.4.2, {jobs:,} jobs x {_CALLS} calls of {LLM_LATENCY} s")
        spec = {
            "jobs": jobs,
            "calls": _CALLS,
            "latency": LLM_LATENCY,
            "prompt": PROMPT,
            "concurrency": _STATEK_CONCURRENCY,
        }
        peer = await run_statek(spec, tmp / "statek.log")
    except BaseException:
        print(f"llm bench failed; logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    mesh_ideal = jobs * _CALLS * LLM_LATENCY / allowed
    peer_ideal = jobs * _CALLS * LLM_LATENCY / _STATEK_CONCURRENCY
    grown = mesh["rss"] - mesh["idle_rss"]
    rows = [
        {
            "system": "statek-bus, 1 executor",
            "jobs": mesh["done"],
            "in-flight calls allowed": allowed,
            "wall s": mesh["seconds"],
            "ideal s": mesh_ideal,
            _VS_IDEAL: mesh["seconds"] / mesh_ideal,
            "model calls/s": jobs * _CALLS / mesh["seconds"],
            "peak steps in flight": mesh["in_flight"],
            "RSS idle MiB": mesh["idle_rss"],
            "RSS peak MiB": mesh["rss"],
            "KiB per in-flight step": 1024 * grown / max(1, mesh["in_flight"]),
        },
        {
            "system": "STATEK 1.4.2, one process",
            "jobs": peer["jobs"],
            "in-flight calls allowed": _STATEK_CONCURRENCY,
            "wall s": peer["seconds"],
            "ideal s": peer_ideal,
            _VS_IDEAL: peer["seconds"] / peer_ideal,
            "model calls/s": jobs * _CALLS / peer["seconds"],
            "RSS idle MiB": peer["rss_before_mib"],
            "RSS peak MiB": peer["max_rss_mib"],
            "KiB per in-flight step": 1024
            * (peer["max_rss_mib"] - peer["rss_before_mib"])
            / _STATEK_CONCURRENCY,
        },
    ]
    rows[0][_VS_PEER] = mesh["seconds"] / peer["seconds"]
    rows[1][_VS_PEER] = 1.0
    rows[-1]["load avg"] = os.getloadavg()[0]
    return rows
