"""Chaos: SIGKILL executors, the submission service and nats-server under load, then count outcomes.

Every service is its own process on an embedded nats-server (file storage). Jobs of a 3-step
agent (``trail = [1]``, ``trail.append(2)``, ``exit(str(trail))``) are submitted in batches with
a ``batch_id``, each batch retried until acknowledged (a retry with the same id is idempotent).
Meanwhile a chaos task SIGKILLs a random executor replica every few seconds (and restarts it),
kills the submission service once and nats-server once (both restarted on the same port and
data). Then it waits for every job to finish, up to a deadline, and reports:

- ``acknowledged``: jobs whose submit was answered;
- ``DONE``: those that finished; ``wrong``: finished with another exit than ``[1, 2]`` (a step
  applied twice, or lost, shows here) or an error;
- ``stuck``: acknowledged but not DONE by the deadline;
- ``duplicated DONE``: jobs with more than one DONE event in their job log (a step committed twice).

``python -m bench.chaos [--quick]`` (quick: 300 jobs, 4 kills; full: 5,000 jobs, 15 kills).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from nats.js.api import DeliverPolicy

from bench.common import print_table
from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.listing import read_records
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.errors import StatekError
from statek_bus.wire.messages import JobEvent, JobStatus, decode
from statek_bus.wire.subjects import EVENTS_PREFIX

__all__ = ["AGENTS", "run"]

TRAIL = SupervisedAgent(
    "chaos_trail",
    "",
    metadata={"MODEL": "scripted/chaos", "SCRIPT": ["trail = [1]", "trail.append(2)", "exit(str(trail))"]},
)
AGENTS = [TRAIL]
"""The agent the chaos run's executors serve."""
EXPECTED = "[1, 2]"
_SPEC = "bench.chaos:AGENTS"
_ENV = {"STATEK_LOG_LEVEL": "ERROR", "STATEK_ACK_WAIT": "5", "STATEK_RECOVERY_INTERVAL": "5"}


async def _submit_all(client: AsyncStatekClient, jobs: int, acked: set[str]) -> None:
    """Submit ``jobs`` jobs in batches of 100, retrying each batch (same batch_id) until answered."""
    run = f"chaos-{time.time_ns()}"

    async def batch(k: int) -> None:
        n = min(100, jobs - k)
        while True:
            try:
                made = await client.jobs.submit_batch(TRAIL.role, [None] * n, batch_id=f"{run}-{k}")
            except (StatekError, OSError, TimeoutError):
                await asyncio.sleep(0.5)
                continue
            acked.update(j.id for j in made)
            return

    sem = asyncio.Semaphore(4)

    async def bounded(k: int) -> None:
        async with sem:
            await batch(k)

    await asyncio.gather(*(bounded(k) for k in range(0, jobs, 100)))


async def _chaos(
    server: NatsServer, submission: ServiceProcess, executors: list[ServiceProcess], kills: int, stop: asyncio.Event
) -> Counter[str]:
    done: Counter[str] = Counter()
    plan = ["executor"] * kills
    plan[len(plan) // 3] = "submission"
    plan[2 * len(plan) // 3] = "nats-server"
    for what in plan:
        if stop.is_set():
            break
        await asyncio.sleep(random.uniform(1.0, 3.0))
        if what == "executor":
            victim = random.choice(executors)
            victim.kill()
            await victim.start()
        elif what == "submission":
            submission.kill()
            await submission.start()
        else:
            server.kill()
            await server.start()
        done[what] += 1
    return done


async def _done_events(client: AsyncStatekClient) -> Counter[str]:
    """DONE events per job, from the job-log stream (every status event is captured there)."""
    js = await client.jetstream()
    counts: Counter[str] = Counter()
    sub = await js.subscribe(f"{EVENTS_PREFIX}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except Exception:  # nothing more within the quiet period
                return counts
            e = decode(msg.data, JobEvent)
            if e.kind == "status" and e.status is JobStatus.DONE:
                counts[e.job_id] += 1
    finally:
        await sub.unsubscribe()


async def _chaos_run(jobs: int, kills: int, deadline: float, tmp: Path) -> dict[str, Any]:
    server = NatsServer(data_dir=tmp / "nats")
    await server.start()
    settings = Settings.from_env({}, nats_url=server.url, request_timeout=10.0)
    submission = ServiceProcess("submission", server.url, env=_ENV, log_path=tmp / "submission.log")
    provider = ServiceProcess("provider", server.url, env=_ENV, log_path=tmp / "provider.log")
    executors = [
        ServiceProcess("executor", server.url, args=["--agents", _SPEC], env=_ENV, log_path=tmp / f"executor{i}.log")
        for i in range(3)
    ]
    procs = [submission, provider, *executors]
    client = AsyncStatekClient(settings=settings)
    try:
        for p in procs:
            await p.start()
        acked: set[str] = set()
        stop = asyncio.Event()
        started = time.perf_counter()
        chaos = asyncio.create_task(_chaos(server, submission, executors, kills, stop))
        await _submit_all(client, jobs, acked)
        kinds = await chaos
        finished: dict[str, Any] = {}
        nc = await client.connection()
        while time.perf_counter() - started < deadline:
            pending = [j for j in acked if j not in finished]
            for i in range(0, len(pending), 256):
                for job_id, (rec, _) in (await read_records(nc, pending[i : i + 256])).items():
                    if rec.status is JobStatus.DONE:
                        finished[job_id] = rec
            if len(finished) == len(acked):
                break
            await asyncio.sleep(1.0)
        elapsed = time.perf_counter() - started
        events = await _done_events(client)
        wrong = sum(1 for r in finished.values() if r.exit_status != EXPECTED or r.error)
        return {
            "jobs": jobs,
            "kills (executor/submission/nats)": "/".join(
                str(kinds[k]) for k in ("executor", "submission", "nats-server")
            ),
            "acknowledged": len(acked),
            "DONE": len(finished),
            "wrong": wrong,
            "stuck": len(acked) - len(finished),
            "duplicated DONE": sum(1 for j in acked if events[j] > 1),
            "seconds": elapsed,
        }
    finally:
        await client.aclose()
        for p in procs:
            await p.stop(grace=5)
        await server.stop()


async def run(quick: bool) -> list[dict[str, Any]]:
    """One chaos run: 300 jobs and 4 kills (quick) or 5,000 jobs and 15 kills."""
    tmp = Path(tempfile.mkdtemp(prefix="statek-chaos-"))
    try:
        row = await _chaos_run(300 if quick else 5000, 4 if quick else 15, 120.0 if quick else 600.0, tmp)
    except BaseException:
        print(f"chaos run failed; service logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return [row]


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print_table(f"chaos{' (quick)' if quick else ''}", asyncio.run(run(quick)))
