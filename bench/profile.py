"""A sampling profile of the executor process under the executor bench's load (py-spy).

Starts the mesh as :mod:`bench.executor` does (every service its own process, one executor with
``max_concurrency`` 100), warms it up, attaches ``py-spy record`` to the executor process, runs
single-turn jobs of the prompted agent (a system prompt with sections and a ``{tools}``
placeholder, two tools: what a real agent has) and prints where the executor's samples fall:
self and inclusive shares of the functions from ``statek_bus`` and of everything else.

``python -m bench.profile [--quick] [--idle] [--service NAME] [--keep PATH]``: ``--idle`` also samples
idle threads (the code-runner pool waiting for work, the loop waiting in ``select``), so the
shares are of wall time per thread rather than of busy CPU. Needs ``py-spy`` (``pip install
py-spy``) and the right to attach (root, or ``ptrace_scope`` 0). ``--keep`` saves the raw
collapsed stacks (flamegraph input).
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, settle
from bench.executor import PROMPTED, _throughput
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess

__all__ = ["run", "summarise"]


def _frame_name(frame: str) -> str:
    """``function (path/to/module.py:123)`` → ``module.function`` (line numbers merged)."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    if "statek_bus/" in path:
        mod = "statek_bus/" + path.split("statek_bus/", 1)[1]
    else:
        mod = Path(path).name if path else "?"
    return f"{mod.removesuffix('.py')}:{func}"


def summarise(raw: str, top: int = 18) -> tuple[int, list[dict[str, Any]]]:
    """(samples, rows) from py-spy's raw collapsed stacks: the functions by inclusive share."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
    rows = [
        {
            "function (module:name)": name,
            "inclusive %": 100 * n / max(1, total),
            "self %": 100 * own[name] / max(1, total),
        }
        for name, n in inclusive.most_common(top)
    ]
    rows += [
        {"function (module:name)": f"(self) {name}", "inclusive %": None, "self %": 100 * n / max(1, total)}
        for name, n in own.most_common(8)
    ]
    return total, rows


async def run(
    quick: bool, *, idle: bool = False, keep: str | None = None, service: str = "executor"
) -> list[dict[str, Any]]:
    """Profile ``service`` (the executor, or a service of the mesh) during 6,000 single-turn jobs (1,000 with ``quick``)."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-profile-"))
    settings = Settings.from_env({}, max_concurrency=100, request_timeout=30.0)
    env = {"STATEK_MAX_CONCURRENCY": "100", "STATEK_LOG_LEVEL": "WARNING"}
    out = Path(keep) if keep else tmp / "profile.txt"
    async with Mesh(
        settings, data_dir=tmp / "nats", kinds=["submission", "state", "provider"], env=env, log_dir=tmp
    ) as mesh:
        ex = ServiceProcess(
            "executor",
            mesh.nats_url,
            args=["--agents", "bench.executor:AGENTS"],
            env=env,
            log_path=tmp / "ex.log",
        )
        await ex.start()
        client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
        try:
            await _throughput(client, PROMPTED.role, 300)
            assert ex.proc is not None
            pids = [p.proc.pid for p in [*mesh.services.values(), ex] if p.proc is not None]
            await settle(dict(enumerate(pids)))  # the provider's litellm import ends first
            target = ex.proc.pid if service == "executor" else mesh.services[service].proc.pid  # type: ignore[union-attr]
            cmd = [spy, "record", "--pid", str(target), "--format", "raw", "--rate", "250"]
            cmd += ["--nonblocking", "--output", str(out)] + (["--idle"] if idle else [])
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)
            started = time.perf_counter()
            rate, _ = await _throughput(client, PROMPTED.role, 1000 if quick else 6000)
            seconds = time.perf_counter() - started
            proc.send_signal(signal.SIGINT)
            await asyncio.to_thread(proc.wait, 30)
        finally:
            await client.aclose()
            await ex.stop()
    total, rows = summarise(out.read_text() if out.exists() else "")
    print(
        f"{'idle threads included' if idle else 'busy samples only'}: {total} samples over {seconds:.1f} s "
        f"at {rate:,.0f} jobs/s; load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    argv = sys.argv[1:]
    keep = argv[argv.index("--keep") + 1] if "--keep" in argv else None
    service = argv[argv.index("--service") + 1] if "--service" in argv else "executor"
    rows = asyncio.run(run("--quick" in argv, idle="--idle" in argv, keep=keep, service=service))
    print_table(f"{service} profile{' (idle threads included)' if '--idle' in argv else ''}", rows)
