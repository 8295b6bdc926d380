"""statek-bus beside its peer, the public STATEK 1.4.2, on the same workload in the same run.

The workload is the executor bench's prompted single-turn job (a sectioned system prompt with
``{tools}``, two tools, one instant scripted model call replying ``result = n * 2; exit(str(result))``:
one step: the call, then its code). The mesh runs every service as its own process with 1 and then 2 executors; STATEK
runs in one process (``run_jobs_loop``, ``max_concurrency`` 100, restricted mode, dbzero on local
disk) from a venv of its own holding ``statek[dbzero]==1.4.2`` from PyPI, created on first use
under ``$STATEK_BENCH_CACHE`` (default ``~/.cache/statek-bus-bench``). Its side is
:mod:`bench.peer_statek`, our own code. STATEK runs before and after the mesh runs and the
ratio is taken against the mean of its two runs, so drift on a shared machine shows in both.

Tables: throughput (jobs/s, x STATEK), CPU per job in each process (from ``/proc/<pid>/stat``;
STATEK's is its one process), and idle submit→DONE latency against the raw request/reply
floor measured on the same server (STATEK polls every 0.3 s). ``--llm`` adds the LLM-bound
workload (see :func:`llm_bound`).

``python -m bench peer [--quick] [--llm]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CHEAPER, SLOWER, cpu_seconds, percentile, progress, ratio, settle
from bench.executor import PROMPT, PROMPTED, _latency, _throughput
from bench.floor import measure as floor_measure
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess

__all__ = ["STATEK_REQUIREMENT", "run", "statek_python"]

STATEK_REQUIREMENT = "statek[dbzero]==1.4.2"
"""The peer, as pip installs it."""


def statek_python() -> Path:
    """The interpreter of the STATEK venv, created (pip, from PyPI) when missing."""
    cache = Path(os.environ.get("STATEK_BENCH_CACHE", Path.home() / ".cache" / "statek-bus-bench"))
    venv = cache / "statek-1.4.2"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        progress(f"peer: installing {STATEK_REQUIREMENT} into {venv} (first run only)")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", STATEK_REQUIREMENT],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        marker.write_text(STATEK_REQUIREMENT)
    return python


async def run_statek(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run :mod:`bench.peer_statek` with ``spec``; its warnings and logs go to ``log``."""
    script = Path(__file__).with_name("peer_statek.py")
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            str(statek_python()),
            str(script),
            json.dumps(spec),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=log.parent,
        )
        out, _ = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the STATEK run failed (exit {proc.returncode}); see {log}")
    return dict(json.loads(lines[-1]))


class CpuMeter:
    """CPU seconds per named process between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        """Take the first reading."""
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds used by each process since :meth:`start`."""
        self.used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        return self.used


def mesh_pids(mesh: Mesh, executors: list[ServiceProcess]) -> dict[str, int]:
    """Process ids of the mesh's server and services, by name."""
    pids: dict[str, int] = {}
    server_proc = getattr(mesh.server, "_proc", None)
    if server_proc is not None:
        pids["nats-server"] = server_proc.pid
    for kind, service in mesh.services.items():
        if service.proc is not None:
            pids[kind] = service.proc.pid
    for i, ex in enumerate(executors):
        if ex.proc is not None:
            pids[f"executor{i + 1 if len(executors) > 1 else ''}"] = ex.proc.pid
    return pids


async def _mesh(replicas: int, jobs: int, samples: int, tmp: Path) -> dict[str, Any]:
    settings = Settings.from_env({}, max_concurrency=100, request_timeout=30.0)
    env = {"STATEK_MAX_CONCURRENCY": "100", "STATEK_LOG_LEVEL": "WARNING"}
    mesh = Mesh(
        settings,
        data_dir=tmp / f"nats{replicas}",
        kinds=["submission", "state", "provider"],
        env=env,
        log_dir=tmp,
    )
    async with mesh:
        executors = [
            ServiceProcess(
                "executor",
                mesh.nats_url,
                args=["--agents", "bench.executor:AGENTS"],
                env=env,
                log_path=tmp / f"executor-{replicas}-{i}.log",
            )
            for i in range(replicas)
        ]
        await asyncio.gather(*(e.start() for e in executors))
        client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
        try:
            await _throughput(client, PROMPTED.role, 300)  # warm up
            meter = CpuMeter(mesh_pids(mesh, executors))
            await settle(meter.pids)
            client_cpu = time.process_time()
            meter.start()
            rate, done = await _throughput(client, PROMPTED.role, jobs)
            used = meter.stop()
            used["bench client"] = time.process_time() - client_cpu
            lat = await _latency(client, PROMPTED.role, samples)
            floor = await floor_measure(mesh.nats_url, seconds=0.5)
        finally:
            await client.aclose()
            await asyncio.gather(*(e.stop() for e in executors))
    rr = {(r["operation"], r["in flight"]): r for r in floor}
    return {
        "rate": rate,
        "done": done,
        "cpu": used,
        "latencies": lat,
        "rr_p50_ms": float(rr[("request/reply (raw nats-py)", 1)]["p50 ms"]),  # type: ignore[arg-type]
        "rr_rate_100": float(rr[("request/reply (raw nats-py)", 100)]["ops/s"]),  # type: ignore[arg-type]
    }


async def run(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """Throughput, cost per job and idle latency tables, STATEK beside the mesh."""
    jobs = 1000 if quick else 3000
    samples = 30 if quick else 200
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-peer-"))
    spec = {"jobs": jobs, "prompt": PROMPT, "latency_samples": 10 if quick else 30}
    try:
        progress(f"peer: STATEK 1.4.2, {jobs:,} jobs (run 1 of 2)")
        peer_a = await run_statek(spec, tmp / "statek.log")
        mesh_runs = {}
        for replicas in (1, 2):
            progress(f"peer: statek-bus, {replicas} executor(s), {jobs:,} jobs")
            mesh_runs[replicas] = await _mesh(replicas, jobs, samples, tmp)
        progress(f"peer: STATEK 1.4.2, {jobs:,} jobs (run 2 of 2)")
        peer_b = await run_statek(spec, tmp / "statek.log")
    except BaseException:
        print(f"peer bench failed; logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    peer_rate = (peer_a["rate"] + peer_b["rate"]) / 2
    load = os.getloadavg()[0]

    throughput: list[dict[str, Any]] = []
    for name, r in (("STATEK 1.4.2, one process (run 1)", peer_a), ("STATEK 1.4.2 (run 2)", peer_b)):
        throughput.append(
            {"system": name, "jobs/s": r["rate"], "x STATEK (higher = faster)": r["rate"] / peer_rate}
        )
    for replicas, m in mesh_runs.items():
        throughput.append(
            {
                "system": f"statek-bus, {replicas} executor{'s' if replicas > 1 else ''}",
                "jobs/s": m["rate"],
                "x STATEK (higher = faster)": m["rate"] / peer_rate,
                ratio("raw request/reply, 100 in flight", SLOWER): m["rr_rate_100"] / m["rate"],
            }
        )
    throughput[-1]["load avg"] = load

    cost: list[dict[str, Any]] = [
        {
            "system": "STATEK 1.4.2 (one process, mean of 2 runs)",
            "total CPU ms/job": (peer_a["cpu_ms_per_job"] + peer_b["cpu_ms_per_job"]) / 2,
        }
    ]
    for replicas, m in mesh_runs.items():
        row: dict[str, Any] = {"system": f"statek-bus, {replicas} executor{'s' if replicas > 1 else ''}"}
        mesh_cpu = {k: v for k, v in m["cpu"].items() if k != "bench client"}
        row["total CPU ms/job"] = 1000 * sum(mesh_cpu.values()) / jobs
        for name, seconds in sorted(m["cpu"].items()):
            row[f"{name} ms"] = 1000 * seconds / jobs
        row[ratio("prototype 1.45 ms (1.1-1.8)", CHEAPER)] = row["total CPU ms/job"] / 1.45
        row[ratio("STATEK CPU", CHEAPER)] = row["total CPU ms/job"] / cost[0]["total CPU ms/job"]
        cost.append(row)

    latency: list[dict[str, Any]] = []
    peer_lat = [*peer_a["latencies"], *peer_b["latencies"]]
    floor = mesh_runs[1]["rr_p50_ms"]
    latency.append(
        {
            "system": "STATEK 1.4.2 (polls every 0.3 s)",
            "samples": len(peer_lat),
            "submit→DONE p50 ms": percentile(peer_lat, 50) * 1000,
            "p99 ms": percentile(peer_lat, 99) * 1000,
        }
    )
    for replicas, m in mesh_runs.items():
        p50 = percentile(m["latencies"], 50) * 1000
        latency.append(
            {
                "system": f"statek-bus, {replicas} executor{'s' if replicas > 1 else ''}",
                "samples": len(m["latencies"]),
                "submit→DONE p50 ms": p50,
                "p99 ms": percentile(m["latencies"], 99) * 1000,
                ratio("raw request/reply p50", SLOWER): p50 / floor,
                "raw request/reply p50 ms": floor,
            }
        )
    for row in latency[1:]:
        row["x STATEK p50 (lower = faster)"] = row["submit→DONE p50 ms"] / latency[0]["submit→DONE p50 ms"]
    return {
        "peer: throughput, prompted single-turn jobs": throughput,
        "peer: CPU per job by process (ms)": cost,
        "peer: idle submit→DONE latency": latency,
    }
