"""Waiting jobs: memory of many suspended jobs, and how late timers fire.

Every service is its own process (embedded nats-server, submission, provider, executor with
``max_concurrency`` 100). Two measurements:

1. **Suspended jobs cost the executor nothing.** ``N`` jobs (100,000; 10,000 with ``--quick``)
   each run one warmup step, ``sleep(3 * 3600)``, and suspend: a record plus one ADR-51 scheduled
   message on the server. The executor's RSS (``VmRSS`` of ``/proc/<pid>/status``) once they are
   all suspended is compared with a second, idle executor started in the same run (it served the
   same few warm-up jobs), and with its own RSS before the load.
2. **Timer lateness.** 1,000 jobs ``wait_until`` the same instant, then print ``time.time()``;
   lateness is that console value minus the due time (p50/p99), i.e. scheduled-message firing,
   queueing behind the other 999 wake-ups, the step's record read and the sandbox run. The first
   wake-up's lateness is the timer itself (firing plus one step on an idle executor); the rest is
   queueing, so the burst's drain rate (wake-ups/s from first to last) is shown too: with one
   executor, p99 is about ``990 / drain rate`` whatever the timer mechanism does.

``python -m bench.waits [--quick]`` (or ``python -m bench waits``).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError

from bench.common import percentile, print_table
from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess
from statek_bus.wire.messages import JobEvent, decode
from statek_bus.wire.subjects import EVENTS_PREFIX, WORK_RUN_PREFIX, WORK_STREAM

__all__ = ["AGENTS", "run"]

SLEEPER = SupervisedAgent(
    "bench_sleeper",
    "",
    metadata={"MODEL": "scripted/bench", "SCRIPT": ['exit("woke")']},
    warmup="sleep(3 * 3600)",
)
ALARM = SupervisedAgent(
    "bench_alarm",
    "",
    metadata={"MODEL": "scripted/bench", "SCRIPT": ['exit("ok")']},
    warmup="wait_until(due)\nimport time\nprint('woke at', time.time())",
)
QUICK = SupervisedAgent(
    "bench_quick_wait", "", metadata={"MODEL": "scripted/bench", "SCRIPT": ['exit("ok")']}
)
AGENTS = [SLEEPER, ALARM, QUICK]
"""The agents the benchmark's executors serve."""

_SPEC = "bench.waits:AGENTS"
_BATCH = 2000


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _submit(
    client: AsyncStatekClient, agent: str, n: int, shared: dict[str, Any] | None = None
) -> None:
    sem = asyncio.Semaphore(4)

    async def batch(size: int) -> None:
        async with sem:
            await client.jobs.submit_batch(agent, [shared] * size)

    await asyncio.gather(*(batch(min(_BATCH, n - i)) for i in range(0, n, _BATCH)))


async def _settled(client: AsyncStatekClient, expect_messages: int, timeout: float) -> float:
    """Wait until the work queue is drained and holds ``expect_messages`` (pending schedules)."""
    nc = await client.connection()
    js = nc.jetstream()
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        info = await js.stream_info(WORK_STREAM)
        consumers = await js.consumers_info(WORK_STREAM)  # one per agent
        if info.state.messages >= expect_messages and not any(
            c.num_pending or c.num_ack_pending for c in consumers
        ):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the work stream did not settle at {expect_messages} messages")


async def _lateness(client: AsyncStatekClient, n: int) -> list[float]:
    nc = await client.connection()
    woke: list[float] = []
    done = asyncio.Event()

    async def on_event(msg: Any) -> None:
        e = decode(msg.data, JobEvent)
        if e.kind == "console" and e.text and e.text.startswith("woke at "):
            woke.append(float(e.text.split()[-1]))
            if len(woke) >= n:
                done.set()

    sub = await nc.subscribe(f"{EVENTS_PREFIX}.>", cb=on_event, pending_msgs_limit=1_000_000)
    due = datetime.now(UTC) + timedelta(seconds=4 + n / 400)
    await _submit(client, ALARM.role, n, {"due": due})
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        await sub.unsubscribe()
    return [w - due.timestamp() for w in woke]


async def run(quick: bool) -> list[dict[str, Any]]:
    """One row per measurement."""
    n = 10_000 if quick else 100_000
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-waits-"))
    settings = Settings.from_env({}, max_concurrency=100, request_timeout=60.0)
    env = {"STATEK_MAX_CONCURRENCY": "100", "STATEK_LOG_LEVEL": "WARNING"}
    rows: list[dict[str, Any]] = []
    try:
        async with Mesh(
            settings, data_dir=tmp / "nats", kinds=["submission", "provider"], env=env, log_dir=tmp
        ) as mesh:
            loaded = ServiceProcess(
                "executor", mesh.nats_url, args=["--agents", _SPEC], env=env, log_path=tmp / "ex.log"
            )
            await loaded.start()
            client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
            try:
                await _submit(client, QUICK.role, 200)  # warm up every code path once
                await _settled(client, 0, 60)
                before = rss_mib(_pid(loaded))
                started = time.monotonic()
                await _submit(client, SLEEPER.role, n)
                await _settled(client, n, 1800)
                seconds = time.monotonic() - started
                await asyncio.sleep(2.0)
                after = rss_mib(_pid(loaded))
                idle = ServiceProcess(
                    "executor", mesh.nats_url, args=["--agents", _SPEC], env=env, log_path=tmp / "idle.log"
                )
                await idle.start()  # idle in the same run: it serves a few warm-up jobs, nothing waits in it
                await _submit(client, QUICK.role, 200)
                await _settled(client, n, 60)
                await asyncio.sleep(2.0)
                idle_rss = rss_mib(_pid(idle))
                await idle.stop()
                rows.append(
                    {
                        "measurement": f"{n:,} suspended jobs (timers 3 h away)",
                        "suspend rate jobs/s": n / seconds,
                        "executor RSS MiB": after,
                        "same executor before MiB": before,
                        "idle executor MiB": idle_rss,
                        "ratio to idle": after / idle_rss,
                    }
                )
                rows.append(_lateness_row("1,000 timers due at once", await _lateness(client, 1000)))
                second = ServiceProcess(
                    "executor", mesh.nats_url, args=["--agents", _SPEC], env=env, log_path=tmp / "ex2.log"
                )
                await second.start()  # wake-ups scale with executor processes (until the cores are full)
                try:
                    late = await _lateness(client, 1000)
                finally:
                    await second.stop()
                rows.append(_lateness_row("1,000 timers due at once, 2 executors", late))
                rows[-1]["x 1 executor drain (higher = faster)"] = (
                    rows[-1]["drain wake-ups/s"] / rows[-2]["drain wake-ups/s"]
                )
                published, woke = await _mechanism(client, loaded, 1000, loaded.start)
                rows.append(
                    {
                        "measurement": "1,000 timers, no executor running: wake-up published after due",
                        "lateness p50 ms": percentile(published, 50) * 1000,
                        "p99 ms": percentile(published, 99) * 1000,
                        "max ms": max(published) * 1000,
                        "first ms": min(published) * 1000,
                        "early": sum(1 for x in published if x < 0),
                    }
                )
                drain = _lateness_row("the same 1,000 drained from a full queue, 1 executor", woke)
                for key in (
                    "lateness p50 ms",
                    "p99 ms",
                    "max ms",
                    "first ms",
                    "p99 / queueing bound 990/drain",
                ):
                    drain.pop(key)  # the executor started after the due time: only the rate means something
                rows.append(drain)
            finally:
                await client.aclose()
                await loaded.stop()
    except BaseException:
        print(f"benchmark failed; service logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


async def _mechanism(
    client: AsyncStatekClient, loaded: ServiceProcess, n: int, start: Any
) -> tuple[list[float], list[float]]:
    """(publish lateness, wake-up lateness) of ``n`` timers due at once while no executor runs.

    The jobs suspend, the executor stops before the due time, and the fired wake-ups wait in the
    work stream: each one's stored timestamp minus the due time is the mechanism alone (the
    server's ADR-51 scheduler), with no queueing behind other steps. Then an executor starts on
    the backlog: the console times give the drain rate from a full queue.
    """
    nc = await client.connection()
    js = nc.jetstream()
    await _settled(client, 0, 120)  # the earlier rows' last steps are done: only schedules are left
    due = datetime.now(UTC) + timedelta(seconds=6 + n / 400)
    info = await js.stream_info(WORK_STREAM)
    base = info.state.messages
    await _submit(client, ALARM.role, n, {"due": due})
    await _settled(client, base + n, 120)
    await loaded.stop()
    while datetime.now(UTC) < due + timedelta(seconds=1.5):
        await asyncio.sleep(0.2)
    published: list[float] = []
    seq = 0
    while len(published) < n:  # the fired wake-ups, in stream order, skipping the pending schedules
        try:
            m = await js.get_msg(WORK_STREAM, seq + 1, subject=f"{WORK_RUN_PREFIX}.>", next=True)
        except NotFoundError:
            break
        seq = m.seq or seq + 1
        if m.time is not None:
            published.append(m.time.timestamp() - due.timestamp())
    woke: list[float] = []
    done = asyncio.Event()

    async def on_event(msg: Any) -> None:
        e = decode(msg.data, JobEvent)
        if e.kind == "console" and e.text and e.text.startswith("woke at "):
            woke.append(float(e.text.split()[-1]))
            if len(woke) >= n:
                done.set()

    sub = await nc.subscribe(f"{EVENTS_PREFIX}.>", cb=on_event, pending_msgs_limit=1_000_000)
    try:
        await start()
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        await sub.unsubscribe()
    return published, [w - due.timestamp() for w in woke]


def _lateness_row(name: str, late: list[float]) -> dict[str, Any]:
    return {
        "measurement": name,
        "lateness p50 ms": percentile(late, 50) * 1000,
        "p99 ms": percentile(late, 99) * 1000,
        "max ms": max(late) * 1000,
        "first ms": min(late) * 1000,
        "drain wake-ups/s": (len(late) - 1) / max(1e-9, max(late) - min(late)),
        "x issue-13 base 1,200/s (higher = faster)": (len(late) - 1)
        / max(1e-9, max(late) - min(late))
        / 1200,
        "p99 / queueing bound 990/drain": percentile(late, 99) / max(1e-9, max(late) - min(late)),
        "early": sum(1 for x in late if x < 0),
    }


def _pid(process: ServiceProcess) -> int:
    assert process.proc is not None, "the service is not running"
    return process.proc.pid


if __name__ == "__main__":
    try:  # as bench.executor: the client's own CPU competes with the mesh on a 2-core host
        import uvloop

        rows = uvloop.run(run("--quick" in sys.argv))
    except ImportError:
        rows = asyncio.run(run("--quick" in sys.argv))
    print_table(f"waits{' (quick)' if '--quick' in sys.argv else ''}", rows)
