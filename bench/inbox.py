"""Inbox benchmark: 1,000 concurrent messages to one handler job from 50 clients.

Starts its own nats-server (temporary, file storage), the submission, state and provider services
and one executor serving a counting handler agent, each as its own process, like a deployment.
50 clients (one connection each) send 20 messages each, all 1,000 in flight at once, to one job
whose ``on_event`` counts them in its state. Then, in the same run, the same 50 connections
publish 1,000 messages of the same size straight to a JetStream stream (awaiting each ack): the
floor an append can get near. Reported: messages accepted and refused, the handler's final count
and whether it saw every message exactly once, accepted messages/s beside the floor's, and how
long the handler took to consume them all.

Run: ``python -m bench inbox [--quick]`` (quick: 10 clients, 20 each).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.js.api import StorageType, StreamConfig

from bench.common import print_table, progress, ratio
from statek_bus.authoring.agents import HandlerAgent, HandlerContext, HandlerEvent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.inbox import JobInbox
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess
from statek_bus.wire.errors import StatekError
from statek_bus.wire.messages import JobEvent, JobRecord, JobStatus, decode, encode
from statek_bus.wire.subjects import JOBS_BUCKET, job_key

__all__ = ["AGENTS", "run"]

COUNTER = HandlerAgent("bench_counter", "Counts the events sent to it, and which ones, in its state.")


@COUNTER.on_create
async def _create(ctx: HandlerContext, params: dict[str, Any]) -> None:
    await ctx.state.create({"count": 0, "seen": []})


@COUNTER.on_event
async def _event(ctx: HandlerContext, event: HandlerEvent) -> None:
    state = await ctx.state.get()
    assert state is not None
    seen = [*state.state["seen"], int(event.content.content.split()[-1])]
    await ctx.state.update({"count": state.state["count"] + 1, "seen": seen})


AGENTS = [COUNTER]
"""The agent the benchmark's executor serves."""
_SPEC = "bench.inbox:AGENTS"


async def _consumed(nc: Any, job_id: str, last_seq: int) -> JobRecord:
    """The job's record once it is DONE and has consumed its inbox through ``last_seq``."""
    kv = await nc.jetstream().key_value(JOBS_BUCKET)
    watcher = await kv.watch(job_key(job_id))
    try:
        async for entry in watcher:
            if entry is None or not entry.value:
                continue
            record = decode(entry.value, JobRecord)
            if record.status is JobStatus.DONE and record.inbox_seq >= last_seq:
                return record
    finally:
        await watcher.stop()
    raise AssertionError("the watch ended")


async def run(quick: bool) -> list[dict[str, Any]]:
    """One row: the 1,000 messages through the mesh, beside the raw publish floor."""
    clients_n, per_client = (10, 20) if quick else (50, 20)
    total = clients_n * per_client
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-inbox-"))
    settings = Settings.from_env({}, request_timeout=60.0)
    env = {"STATEK_LOG_LEVEL": "WARNING"}
    try:
        async with Mesh(
            settings, data_dir=tmp / "nats", kinds=["submission", "state", "provider"], env=env, log_dir=tmp
        ) as mesh:
            executor = ServiceProcess(
                "executor", mesh.nats_url, args=["--agents", _SPEC], env=env, log_path=tmp / "ex.log"
            )
            await executor.start()
            local = settings.replace(nats_url=mesh.nats_url)
            clients = [AsyncStatekClient(settings=local) for _ in range(clients_n)]
            try:
                first = clients[0]
                job = await first.jobs.submit(COUNTER.role)
                await first.jobs.wait(job.id, timeout=60)
                nc = await first.connection()
                errors: list[str] = []

                async def send(client: AsyncStatekClient, i: int) -> bool:
                    try:
                        await client.jobs.send_message(job.id, f"event {i}")
                        return True
                    except StatekError as exc:
                        errors.append(f"{exc.code}: {exc}")
                        return False

                for c in clients:
                    await c.connection()  # connected before the clock starts
                progress(f"inbox: {total:,} messages from {clients_n} clients, then the raw publish floor")
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(
                        send(c, k * per_client + j)
                        for k, c in enumerate(clients)
                        for j in range(per_client)
                    )
                )
                send_s = time.perf_counter() - started
                accepted = sum(results)
                last_seq = await JobInbox(nc, nc.jetstream(), local).last_seq(job.id)
                await asyncio.wait_for(_consumed(nc, job.id, last_seq), timeout=600)
                drained_s = time.perf_counter() - started
                state = await first.states.retrieve(task_id=job.id, agent_id=COUNTER.role)
                assert state is not None
                seen = state.state["seen"]

                sample = JobEvent(job_id=job.id, kind="message", at=job.created_at, text=f"event {total}")
                floor_s = await _floor(clients, per_client, len(encode(sample)))
            finally:
                for c in clients:
                    await c.aclose()
                await executor.stop()
    except BaseException:
        print(f"benchmark failed; service logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return [
        {
            "measurement": f"{total:,} messages to one handler job from {clients_n} clients",
            "accepted": accepted,
            "errors": len(errors),
            "handler count": state.state["count"],
            "each once": sorted(seen) == list(range(total)),
            "accepted msgs/s": accepted / send_s,
            "raw js.publish msgs/s": total / floor_s,
            ratio("raw js.publish msgs/s"): (accepted / send_s) / (total / floor_s),
            "all consumed after s": drained_s,
        }
    ]


async def _floor(clients: list[AsyncStatekClient], per_client: int, size: int) -> float:
    """Seconds for the same connections to publish the same number of messages to a stream."""
    js = (await clients[0].connection()).jetstream()
    await js.add_stream(StreamConfig(name="bench_floor", subjects=["bench.floor.>"], storage=StorageType.FILE))
    body = b"x" * size
    conns = [(await c.connection()).jetstream() for c in clients]
    started = time.perf_counter()
    await asyncio.gather(*(j.publish("bench.floor.one", body) for j in conns for _ in range(per_client)))
    return time.perf_counter() - started


def main() -> None:
    """Print the benchmark as a table (``--quick`` for a short run)."""
    quick = "--quick" in sys.argv[1:]
    print_table(f"inbox{' (quick)' if quick else ''}", asyncio.run(run(quick)))


if __name__ == "__main__":
    main()
