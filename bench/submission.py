"""Submission throughput and latency, each next to the raw floor measured in the same run.

The floor is what nats-py alone does for a job: one KV create plus one work-stream publish,
pipelined the same way (gather the creates, then the publishes) at the same batch size. The
service adds validation, the pending marker, list indexes, READY events and a request/reply hop.
Jobs with options of their own add a definition in ``statek_jobdefs``: stored once per content
(the "same options" rows find it stored), one more KV create when the content is new.

Run: ``python -m bench.submission`` (``--quick`` for a short run). It starts its own nats-server
and a submission service process, so nothing else on the machine is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import percentile, print_table, progress, ratio
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.messages import AgentDescription, JobOptions, WorkMessage, encode
from statek_bus.wire.subjects import (
    AGENTS_BUCKET,
    JOBS_BUCKET,
    MSG_ID_HEADER,
    job_key,
    token,
    work_run_subject,
)

__all__ = ["run"]

ROLE = "bench_agent"
_RECORD = b'{"id":"%s","agent":"bench_agent","status":"READY","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","shared_vars":{"event":{"n":1}},"step":0}'


async def _floor_batch(js: Any, kv: Any, size: int) -> None:
    ids = [uuid.uuid4().hex for _ in range(size)]
    await asyncio.gather(*(kv.create(job_key(i), _RECORD % i.encode()) for i in ids))
    await asyncio.gather(
        *(
            js.publish(
                work_run_subject("bench_agent", i),
                encode(WorkMessage(job_id=i, step=0)),
                headers={MSG_ID_HEADER: f"{token(i)}:0"},
            )
            for i in ids
        )
    )


async def run(quick: bool) -> list[dict[str, Any]]:
    """Measure; one row per metric with our figure, the raw floor and their ratio."""
    latency_n = 200 if quick else 1000
    totals = {1: 300 if quick else 1500, 100: 2000 if quick else 20_000, 1000: 5000 if quick else 50_000}
    rows: list[dict[str, Any]] = []
    async with NatsServer() as server:
        settings = Settings.from_env({}, nats_url=server.url, request_timeout=60.0)
        nc = await connect(settings, name="bench")
        js = nc.jetstream(timeout=60)
        await provision(js, settings)
        agents = await js.key_value(AGENTS_BUCKET)
        await agents.put(token(ROLE), encode(AgentDescription(role=ROLE)))
        kv = await js.key_value(JOBS_BUCKET)
        logs = Path(tempfile.mkdtemp(prefix="statek-bench-submission-"))
        proc = ServiceProcess("submission", server.url, log_path=logs / "submission.log")  # logs out of the table
        await proc.start()
        try:
            async with AsyncStatekClient(settings=settings) as client:
                progress(f"submission: {latency_n} submits of each kind, interleaved with the floor")
                floor_lat: list[float] = []
                lat: list[float] = []
                shared: list[float] = []  # a job's own options: one stored definition per content
                distinct: list[float] = []
                for n in range(latency_n):  # interleaved, so load and warm-up weigh on each alike
                    t = time.perf_counter()
                    await _floor_batch(js, kv, 1)
                    floor_lat.append(time.perf_counter() - t)
                    for series, options in (
                        (lat, None),
                        (shared, JobOptions(warmup_code="x = 1")),
                        (distinct, JobOptions(warmup_code=f"x = {n}")),
                    ):
                        t = time.perf_counter()
                        await client.jobs.submit(ROLE, {"event": {"n": 1}}, options=options)
                        series.append(time.perf_counter() - t)
                for q in (50, 99):
                    floor = percentile(floor_lat, q) * 1000
                    for label, series in (("", lat), (", same options", shared), (", new options each", distinct)):
                        value = percentile(series, q) * 1000
                        rows.append(_row(f"submit p{q} latency{label} (ms)", value, floor, floor / value))
                for size, total in totals.items():
                    progress(f"submission: submit_batch of {size} against the raw floor")
                    batches = max(1, total // size)
                    t = time.perf_counter()
                    for _ in range(batches):
                        await _floor_batch(js, kv, size)
                    floor_rate = batches * size / (time.perf_counter() - t)
                    t = time.perf_counter()
                    for _ in range(batches):
                        await client.jobs.submit_batch(ROLE, [{"event": {"n": i}} for i in range(size)])
                    rate = batches * size / (time.perf_counter() - t)
                    rows.append(_row(f"jobs/s, submit_batch of {size}", rate, floor_rate, rate / floor_rate))
        finally:
            await proc.stop()
            await nc.close()
    shutil.rmtree(logs, ignore_errors=True)  # kept when the run failed
    return rows


def _row(metric: str, value: float, floor: float, times: float) -> dict[str, Any]:
    # rates: ours / floor; latencies: floor / ours (both 1.0 = as fast as raw nats-py, higher = faster)
    return {"metric": metric, "statek-bus": value, "raw floor": floor, ratio("raw floor"): times}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    print_table(f"submission{' (quick)' if quick else ''}", asyncio.run(run(quick)))


if __name__ == "__main__":
    main()
