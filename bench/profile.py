"""A sampling profile of the executor process under the executor bench's load (py-spy).

Starts the mesh as :mod:`bench.executor` does (every service its own process, one executor with
``max_concurrency`` 100), warms it up, attaches ``py-spy record`` to the executor process, runs
single-turn jobs of the prompted agent (a system prompt with sections and a ``{tools}``
placeholder, two tools: what a real agent has) and prints where the executor's samples fall:
self and inclusive shares of the functions from ``statek_bus`` and of everything else.

``python -m bench.profile [--quick] [--idle] [--gil] [--service NAME] [--keep PATH] [--waits]``:
``--idle`` also samples idle threads (the code-runner pool waiting for work, the loop waiting in
``select``), so the shares are of wall time per thread rather than of busy CPU; ``--gil`` samples
only the thread holding the GIL (the interpreter's own CPU, whichever thread spends it). ``--waits`` profiles a timer
drain instead (:mod:`bench.waits`): 2,000 timers (1,000 with ``--quick``) due at once on one
executor, sampled from the due time until the last wake-up step has run, with the executor's CPU
per wake-up (sandbox workers included) in the summary line; ``--gc`` adds the CPU the executor's
cyclic garbage collector took per wake-up (:mod:`bench.gcprobe`), and ``--gc-threshold N`` tries
``gc.freeze()`` and ``gc.set_threshold(N, 10, 10)`` in that executor. Needs ``py-spy`` (``pip install
py-spy``) and the right to attach (root, or ``ptrace_scope`` 0). ``--keep`` saves the raw
collapsed stacks (flamegraph input).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, print_table, progress, settle
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


def _spy(pid: int, out: Path, idle: bool, gil: bool) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    cmd = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
    cmd += ["--nonblocking", "--output", str(out)] + (["--idle"] if idle else [])
    cmd += ["--gil"] if gil else []  # only the thread holding the GIL: the interpreter's own CPU
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _gc_seconds(path: Path) -> dict[str, list[float]]:
    """What :mod:`bench.gcprobe` last wrote: generation → [collections, CPU seconds]."""
    for _ in range(20):
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):  # not written yet
            time.sleep(0.1)
    return {}


async def waits(
    quick: bool,
    *,
    idle: bool = False,
    gil: bool = False,
    keep: str | None = None,
    gc: bool = False,
    threshold: str | None = None,
) -> list[dict[str, Any]]:
    """Profile one executor while it drains 2,000 timers due at once (1,000 with ``quick``).

    ``gc``: the executor also times Python's cyclic garbage collector (:mod:`bench.gcprobe`), and
    ``threshold`` tries ``gc.freeze()`` with ``gc.set_threshold(threshold, 10, 10)`` in it.
    """
    from bench.waits import _SPEC, ALARM, QUICK, _settled, _submit
    from statek_bus.wire.messages import JobEvent, decode
    from statek_bus.wire.subjects import EVENTS_PREFIX

    n = 1000 if quick else 2000
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-profile-"))
    settings = Settings.from_env({}, max_concurrency=100, request_timeout=60.0)
    env = {"STATEK_MAX_CONCURRENCY": "100", "STATEK_LOG_LEVEL": "WARNING"}
    out = Path(keep) if keep else tmp / "profile.txt"
    gc_file = tmp / "gc.json"
    probe = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "gcprobe"), os.getcwd()])}
    probe |= {"STATEK_BENCH_GC_FILE": str(gc_file)} | ({"STATEK_BENCH_GC_THRESHOLD": threshold} if threshold else {})
    ex_env = env | (probe if gc else {})
    async with Mesh(settings, data_dir=tmp / "nats", kinds=["submission", "provider"], env=env, log_dir=tmp) as mesh:
        ex = ServiceProcess("executor", mesh.nats_url, args=["--agents", _SPEC], env=ex_env, log_path=tmp / "ex.log")
        await ex.start()
        client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
        try:
            await _submit(client, QUICK.role, 200)  # warm up every code path once, a wake-up's too
            await _submit(client, ALARM.role, 200, {"due": datetime.now(UTC)})
            await _settled(client, 0, 120)
            assert ex.proc is not None
            pids = [p.proc.pid for p in [*mesh.services.values(), ex] if p.proc is not None]
            await settle(dict(enumerate(pids)))
            nc = await client.connection()
            woke = 0
            done = asyncio.Event()

            async def on_event(msg: Any) -> None:
                nonlocal woke
                e = decode(msg.data, JobEvent)
                if e.kind == "console" and e.text and e.text.startswith("woke at "):
                    woke += 1
                    if woke >= n:
                        done.set()

            sub = await nc.subscribe(f"{EVENTS_PREFIX}.>", cb=on_event, pending_msgs_limit=1_000_000)
            due = datetime.now(UTC) + timedelta(seconds=4 + n / 400)
            progress(f"profile: {n:,} timers due at {due:%H:%M:%S}")
            await _submit(client, ALARM.role, n, {"due": due})
            await asyncio.sleep(max(0.0, due.timestamp() - time.time()))
            proc = _spy(ex.proc.pid, out, idle, gil)
            gc_before = _gc_seconds(gc_file) if gc else {}
            cpu, started = cpu_seconds(ex.proc.pid), time.perf_counter()
            await asyncio.wait_for(done.wait(), timeout=300)
            seconds, used = time.perf_counter() - started, cpu_seconds(ex.proc.pid) - cpu
            await asyncio.sleep(0.6 if gc else 0)  # the probe's next report
            gc_after = _gc_seconds(gc_file) if gc else {}
            proc.send_signal(signal.SIGINT)
            await asyncio.to_thread(proc.wait, 30)
            await sub.unsubscribe()
        finally:
            await client.aclose()
            await ex.stop()
    total, rows = summarise(out.read_text() if out.exists() else "")
    print(
        f"{'idle threads included' if idle else 'busy samples only'}: {total} samples over {seconds:.1f} s, "
        f"{n / seconds:,.0f} wake-up steps/s, executor CPU {used * 1000 / n:.2f} ms per wake-up (its exit "
        f"steps that ran meanwhile included); load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    if gc:
        spent = {g: [gc_after[g][i] - gc_before.get(g, [0, 0.0])[i] for i in (0, 1)] for g in gc_after}
        print(
            "executor's cyclic GC during the drain"
            + (f" (gc.freeze(), threshold {threshold})" if threshold else "")
            + ": "
            + ", ".join(f"gen{g} {int(c)} collections {s * 1000 / n:.3f} ms" for g, (c, s) in sorted(spent.items()))
            + f" per wake-up; {sum(s for _, s in spent.values()) * 1000 / n:.2f} ms per wake-up in all",
            file=sys.stderr,
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


async def run(
    quick: bool, *, idle: bool = False, gil: bool = False, keep: str | None = None, service: str = "executor"
) -> list[dict[str, Any]]:
    """Profile ``service`` (the executor, or a service of the mesh) during 6,000 single-turn jobs (1,000 with ``quick``)."""
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
            proc = _spy(target, out, idle, gil)
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
    if "--waits" in argv:
        threshold = argv[argv.index("--gc-threshold") + 1] if "--gc-threshold" in argv else None
        gc = "--gc" in argv or threshold is not None
        rows = asyncio.run(waits("--quick" in argv, idle="--idle" in argv, gil="--gil" in argv, keep=keep, gc=gc, threshold=threshold))
        service = "executor (timer drain)"
    else:
        rows = asyncio.run(run("--quick" in argv, idle="--idle" in argv, gil="--gil" in argv, keep=keep, service=service))
    print_table(f"{service} profile{' (idle threads included)' if '--idle' in argv else ''}", rows, ratios=False)
