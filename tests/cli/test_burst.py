"""``statek-bus serve executor --burst``: run the queued work, then exit (arq's burst mode)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from statek_bus.mesh.connection import connect
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.messages import JobStatus
from tests.agents_fixture import AGENTS_SPEC, services, submit, wait_done

ROOT = Path(__file__).resolve().parents[2]


async def test_a_burst_executor_runs_every_queued_job_then_exits_0(fresh_server: NatsServer) -> None:
    settings = Settings.from_env({}, nats_url=fresh_server.url, drain_timeout=3.0)
    nc = await connect(settings, name="burst-test")
    try:
        async with services(settings, "provider", "submission"):  # no executor yet: jobs wait
            js = nc.jetstream()
            jobs = [await submit(js, "t_basic", {"event": i}) for i in range(6)]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "statek_bus",
                "serve",
                "executor",
                "--burst",
                "--agents",
                AGENTS_SPEC,
                "--nats-url",
                fresh_server.url,
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            code = await asyncio.wait_for(proc.wait(), 90)
            done = [await wait_done(js, j, timeout=5) for j in jobs]
    finally:
        await nc.close()
    assert code == 0  # it stopped by itself, once the queue was idle
    assert [r.status for r in done] == [JobStatus.DONE] * 6 and {r.exit_status for r in done} == {"ok"}
