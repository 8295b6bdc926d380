"""``statek-bus demo``: the README's first command.

Starts an embedded nats-server and the four services, submits a job of the built-in ``demo``
agent (scripted model: no API key, no network), shows its status changes, code and console
output live, prints its exit status and stops everything. Each code block and the output it
prints share one label (``warmup``, ``turn 1``, ...): the engine runs a model's code in the step
after the one that asked the model, so engine step numbers would split them.

Ctrl-C or SIGTERM at any moment stops it within seconds and leaves nothing running
(:mod:`statek_bus.ops.signals`); a second one kills what is left at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import uuid
from typing import Any

from statek_bus.authoring.demo import DEMO, DEMO_SHARED_VARS
from statek_bus.cli import run_async
from statek_bus.cli.output import EXIT_INTERRUPTED, EXIT_TIMEOUT, explain, job_exit_code
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.signals import StopSignals
from statek_bus.wire.messages import JobEvent, JobStatus, decode
from statek_bus.wire.subjects import job_events_subject

__all__ = ["EventPrinter", "demo", "register"]


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
        mesh = Mesh(settings, data_dir=data_dir, port=0, log_dir=logs, env={"STATEK_AGENTS": ""})
        async with StopSignals() as signals, contextlib.AsyncExitStack() as stack:
            signals.on_force(mesh.force_kill)
            with signals.cancelling() as running:
                await stack.enter_async_context(mesh)
                print(f"mesh up at {mesh.nats_url}", flush=True)
                client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
                stack.push_async_callback(client.aclose)
                return await _run_job(client, timeout)
            if running.cancelled_caught:
                print("\ninterrupted: stopping the mesh", flush=True)
            return EXIT_INTERRUPTED


class EventPrinter:
    """Prints a job's events for people: one label per code block and the output it printed."""

    def __init__(self, warmup: list[str]) -> None:
        self._warmup = {w.strip() for w in warmup}
        self._turn = 0
        self._label = "warmup"

    def show(self, e: JobEvent) -> JobStatus | None:
        """Print ``e``; returns the status when it is a status change."""
        if e.kind == "status":
            if e.status is not None and e.status is not JobStatus.READY:  # READY: said at submit
                print(f"status → {e.status.value}", flush=True)
            return e.status
        if e.kind == "chat" and e.role == "assistant":
            code = (e.text or "").strip()
            if code in self._warmup:
                self._label = "warmup"
                print(f"[warmup] code:\n{_indent(code)}", flush=True)
            else:
                self._turn += 1
                self._label = f"turn {self._turn}"
                print(f"[{self._label}] assistant:\n{_indent(code)}", flush=True)
        elif e.kind == "chat":
            print(f"[{self._label}] {e.role}: {(e.text or '').strip()}", flush=True)
        elif e.kind == "console":
            for line in (e.text or "").rstrip("\n").splitlines() or [""]:
                print(f"[{self._label}] > {line}", flush=True)
        return None


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


async def _run_job(client: AsyncStatekClient, timeout: float) -> int:
    nc = await client.connection()
    job_id = f"demo-{uuid.uuid4().hex[:8]}"
    events: asyncio.Queue[JobEvent] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        events.put_nowait(decode(msg.data, JobEvent))

    # subscribe before submitting so no event is missed; print only after the "submitted" line
    sub = await nc.subscribe(job_events_subject(job_id), cb=collect)
    await nc.flush()
    printer = EventPrinter([b.code for b in DEMO.warmup_blocks()])
    try:
        job = await client.jobs.submit(DEMO.role, DEMO_SHARED_VARS, job_id=job_id)
        print(f"submitted job {job.id} (agent {job.agent}, status {job.status.value})", flush=True)
        try:
            async with asyncio.timeout(timeout):
                while printer.show(await events.get()) is not JobStatus.DONE:
                    pass
        except TimeoutError:
            current = await client.jobs.get(job_id)
            if current.status is not JobStatus.DONE:
                print(f"the job did not finish within {timeout:g}s (status {current.status.value})")
                return EXIT_TIMEOUT
        final = await client.jobs.get(job_id)
    finally:
        await sub.unsubscribe()
    print(f"\nexit status: {final.exit_status!r}")
    if final.error:
        print(f"error: {explain(final.error)}")
    print(
        f"LLM calls: {final.usage.llm_calls}, tokens in/out: {final.usage.input_tokens}/{final.usage.output_tokens}"
    )
    return job_exit_code(final)
