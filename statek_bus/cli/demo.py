"""``statek-bus demo``: the README's first command.

Starts an embedded nats-server and the four services, submits a job of the built-in ``demo``
agent (scripted model: no API key, no network), shows its status changes, chat and console live,
prints its exit status and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from typing import Any

from statek_bus.authoring.demo import DEMO, DEMO_SHARED_VARS
from statek_bus.cli import run_async
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.wire.messages import JobEvent, JobStatus, decode
from statek_bus.wire.subjects import job_events_subject

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``demo`` to the ``statek-bus`` parser."""
    p = sub.add_parser("demo", help="run a demo job on an embedded mesh (no API key needed)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="JetStream storage (default: a temporary directory; use ./.statek to keep the data)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the job (default 60)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.data_dir:
        return int(run_async(demo(settings, args.data_dir, args.timeout)))
    with tempfile.TemporaryDirectory(prefix="statek-demo-") as tmp:
        return int(run_async(demo(settings, tmp, args.timeout)))


async def demo(settings: Settings, data_dir: str, timeout: float) -> int:
    """Run the demo; returns the process exit code (0 when the job ends without an error)."""
    from statek_bus.ops.mesh import Mesh

    print("starting an embedded NATS server and the four services...", flush=True)
    with tempfile.TemporaryDirectory(prefix="statek-demo-logs-") as logs:
        async with Mesh(settings, data_dir=data_dir, port=0, log_dir=logs, env={"STATEK_AGENTS": ""}) as mesh:
            print(f"mesh up at {mesh.nats_url}", flush=True)
            client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
            try:
                return await _run_job(client, timeout)
            finally:
                await client.aclose()


async def _run_job(client: AsyncStatekClient, timeout: float) -> int:
    nc = await client.connection()
    job_id = f"demo-{uuid.uuid4().hex[:8]}"
    finished: asyncio.Future[JobEvent] = asyncio.get_running_loop().create_future()

    async def show(msg: Any) -> None:
        e = decode(msg.data, JobEvent)
        if e.kind == "status":
            print(f"[step {e.step}] status → {e.status}", flush=True)
            if e.status is JobStatus.DONE and not finished.done():
                finished.set_result(e)
        elif e.kind == "console":
            print(f"[step {e.step}]   > {e.text}", flush=True)
        elif e.kind == "chat":
            text = (e.text or "").strip().replace("\n", "\n             ")
            print(f"[step {e.step}] {e.role}: {text}", flush=True)

    sub = await nc.subscribe(job_events_subject(job_id), cb=show)
    await nc.flush()
    try:
        job = await client.jobs.submit(DEMO.role, DEMO_SHARED_VARS, job_id=job_id)
        print(f"submitted job {job.id} (agent {job.agent}, status {job.status})", flush=True)
        try:
            await asyncio.wait_for(asyncio.shield(finished), timeout=timeout)
        except TimeoutError:
            current = await client.jobs.get(job_id)
            if current.status is not JobStatus.DONE:
                print(f"the job did not finish within {timeout:g}s (status {current.status})")
                return 1
        final = await client.jobs.get(job_id)
    finally:
        await sub.unsubscribe()
    print(f"\nexit status: {final.exit_status!r}")
    if final.error:
        print(f"error: {final.error}")
    print(
        f"LLM calls: {final.usage.llm_calls}, tokens in/out: {final.usage.input_tokens}/{final.usage.output_tokens}"
    )
    return 1 if final.error else 0
