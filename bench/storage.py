"""Storage benchmark: JetStream bytes per job and per state, for the sizing guide (deploy/README.md).

Starts its own nats-server (temporary, file storage) and the services in this process, runs
``demo`` jobs (warmup, two LLM turns, an exit: the scripted model) to DONE, creates states of
about 1 KiB and updates each a few times, then reads each stream's stored bytes. ``bytes/item`` is
what one job or one state costs; the ratio column relates it to the JSON the client sent, in the
same run. Compression (S2) is on, as provisioned.

Run: ``python -m bench.storage [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import CHEAPER, print_table, ratio
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.connection import connect
from statek_bus.mesh.service import load_service_factory, running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import SERVICE_KINDS
from statek_bus.wire.subjects import JOB_LOG_STREAM, JOBS_BUCKET, STATES_BUCKET

__all__ = ["run"]

Row = dict[str, Any]
_UPDATES = 4
_WAVE = 25
_STATE_WAVE = 100


async def _bytes(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.bytes)


async def run(quick: bool) -> list[Row]:
    """Run the benchmark; returns one row per stream measured."""
    jobs, states = (50, 200) if quick else (500, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=Path(tmp))
        await server.start()
        settings = Settings.from_env({}, nats_url=server.url, reconcile_interval=0, jobs_gauge_interval=0)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for kind in ("provider", "submission", "executor", "state"):
                    await stack.enter_async_context(
                        running_service(load_service_factory(kind), settings, name=SERVICE_KINDS[kind])
                    )
                client = await stack.enter_async_context(AsyncStatekClient(settings=settings))
                nc = await connect(settings, name="bench-storage")
                stack.push_async_callback(nc.close)
                js = nc.jetstream()
                base = {n: await _bytes(js, n) for n in (f"KV_{JOBS_BUCKET}", JOB_LOG_STREAM, f"KV_{STATES_BUCKET}")}
                shared = {"numbers": list(range(20))}
                for _ in range(0, jobs, _WAVE):  # in waves: a step's 10 s code limit must not bite
                    wave = await asyncio.gather(*(client.jobs.submit("demo", shared) for _ in range(_WAVE)))
                    done = await asyncio.gather(*(client.jobs.wait(j.id, timeout=600) for j in wave))
                    failed = [j.id for j in done if j.error is not None]
                    if failed:
                        raise RuntimeError(f"{len(failed)} demo jobs failed (e.g. {failed[0]}): sizes would be off")
                job_payload = len(json.dumps({"agent": "demo", "shared_vars": shared}))
                body = {"notes": "x" * 900, "step": 0}
                created = []
                for start in range(0, states, _STATE_WAVE):  # in waves: no request waits past its timeout
                    created += await asyncio.gather(
                        *(
                            client.states.create(task_id=f"t{i}", agent_id="bench", state=body)
                            for i in range(start, min(states, start + _STATE_WAVE))
                        )
                    )
                for step in range(1, _UPDATES + 1):
                    for start in range(0, states, _STATE_WAVE):
                        await asyncio.gather(
                            *(
                                client.states.update(s.id, {**body, "step": step})
                                for s in created[start : start + _STATE_WAVE]
                            )
                        )
                state_payload = len(json.dumps(body)) * (1 + _UPDATES)
                rows = []
                for name, n, payload in (
                    (f"KV_{JOBS_BUCKET}", jobs, job_payload),
                    (JOB_LOG_STREAM, jobs, job_payload),
                    (f"KV_{STATES_BUCKET}", states, state_payload),
                ):
                    used = await _bytes(js, name) - base[name]
                    rows.append(
                        {
                            "stream": name,
                            "items": n,
                            "bytes": used,
                            "bytes/item": float(round(used / n)),
                            ratio("client JSON bytes", CHEAPER): used / n / payload,
                        }
                    )
                return rows
        finally:
            await server.stop()


if __name__ == "__main__":
    print_table("storage", asyncio.run(run("--quick" in sys.argv)))
