"""Waiting jobs: memory of many suspended jobs, and how late timers fire.

Every service is its own process (embedded nats-server, submission, provider, executor with
``max_concurrency`` 100). Two measurements:

1. **Suspended jobs cost the executor nothing.** ``N`` jobs (100,000; 10,000 with ``--quick``)
   each run one warmup step, ``sleep(3 * 3600)``, and suspend: a record plus one ADR-51 scheduled
   message on the server. The executor's RSS (``VmRSS`` of ``/proc/<pid>/status``) once they are
   all suspended is compared with a second, idle executor started in the same run (it served the
   same few warm-up jobs), and with its own RSS before the load.
2. **Timers due at once.** 1,000 jobs ``wait_until`` the same instant, then print ``time.time()``
   (application code: it resumes in a thread of the executor), then make their model call, whose
   reply, ``exit("ok")``, runs in the same step (the data tier: a thread of the executor). Lateness is that console value
   minus the due time (p50/p99): scheduled-message firing, queueing behind the other 999
   wake-ups, the step's record read and the run. The first wake-up's lateness is the timer itself
   (firing plus one step on an idle executor); the rest is queueing, so the burst's drain rate
   (wake-up steps/s from first to last) is shown too: with one executor, p99 is about
   ``990 / drain rate`` whatever the timer mechanism does. Its floor, in the same run: the steps/s
   of 1,000 one-turn jobs submitted at once (one step each: a model call, then ``exit`` of its
   reply), and the executor CPU per step of each (sandbox workers included; the burst's from the
   due time until its jobs are DONE: every wake-up is one step). Then the same
   1,000 timers fire while no executor runs: the fired messages' stored times give the mechanism
   alone (the wake-up published after due), and an executor started on that full queue gives the
   drain without the timers' own spread. Each drain row also gives the messages the executors'
   connections sent and received per step (the server's ``/connz``), which show a step that costs
   more round trips even where the machine's noise hides its rate.

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

from bench.common import (
    CHEAPER,
    SLOWER,
    connection_messages,
    cpu_seconds,
    percentile,
    print_tables,
    progress,
    ratio,
)
from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess
from statek_bus.wire.messages import JobEvent, JobStatus, decode
from statek_bus.wire.subjects import EVENTS_PREFIX, SERVICE_EXECUTOR, WORK_RUN_PREFIX, WORK_STREAM

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


async def run(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """Two tables: the executor's memory with many suspended jobs, and timer lateness and drain."""
    n = 10_000 if quick else 100_000
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-waits-"))
    settings = Settings.from_env({}, max_concurrency=100, request_timeout=60.0)
    env = {"STATEK_MAX_CONCURRENCY": "100", "STATEK_LOG_LEVEL": "WARNING"}
    memory: list[dict[str, Any]] = []
    timers: list[dict[str, Any]] = []
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
                await _submit(client, ALARM.role, 200, {"due": datetime.now(UTC)})  # and a wake-up's
                await _settled(client, 0, 60)
                before = rss_mib(_pid(loaded))
                progress(f"waits: {n:,} jobs suspend on timers 3 h away")
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
                memory.append(
                    {
                        "measurement": f"{n:,} suspended jobs (timers 3 h away)",
                        "suspend rate jobs/s": n / seconds,
                        "executor RSS MiB": after,
                        "same executor before MiB": before,
                        "idle executor MiB": idle_rss,
                        ratio("idle executor RSS", CHEAPER): after / idle_rss,
                    }
                )
                progress("waits: plain steps (the floor), then 1,000 timers due at once, 1 executor")
                monitor = mesh.server.monitor_url if mesh.server is not None else ""
                plain = await _plain_steps(client, [loaded], 1000, monitor)
                timers.append(
                    {
                        "measurement": "1,000 one-turn jobs at once, first steps (the floor), 1 executor",
                        **plain,
                    }
                )
                timers.append(
                    await _burst(client, [loaded], 1000, "1,000 timers due at once, 1 executor", monitor)
                )
                second = ServiceProcess(
                    "executor", mesh.nats_url, args=["--agents", _SPEC], env=env, log_path=tmp / "ex2.log"
                )
                await second.start()  # wake-ups scale with executor processes (until the cores are full)
                try:
                    progress("waits: 1,000 timers due at once, 2 executors")
                    timers.append(
                        await _burst(client, [loaded, second], 1000, "the same, 2 executors", monitor)
                    )
                finally:
                    await second.stop()
                progress("waits: 1,000 timers with no executor running, then drained from a full queue")
                published, drained = await _mechanism(client, loaded, 1000, loaded.start)
                mechanism = {
                    "measurement": "1,000 timers, no executor running: wake-up published after due",
                    **_lateness(published),
                }
                timers.append(mechanism)
                drained["measurement"] = "the same 1,000 drained from a full queue, 1 executor"
                for key in _LATENESS:
                    drained.pop(key)  # the executor started after the due time: only the rate means something
                timers.append(drained)
                for row in timers:
                    if "drain steps/s" in row:
                        row[_VS_PLAIN] = row["drain steps/s"] / plain["drain steps/s"]
                        row[_VS_BASE] = row["drain steps/s"] / ISSUE_BASE
                    if "p99 ms" in row:
                        row[_VS_MECHANISM] = row["p99 ms"] / mechanism["p99 ms"]
            finally:
                await client.aclose()
                await loaded.stop()
    except BaseException:
        print(f"benchmark failed; service logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "waits: executor memory with suspended jobs": memory,
        "waits: timers due at once (lateness after due; drain of the wake-up steps)": timers,
    }


ISSUE_BASE = 1200.0
"""Wake-up steps/s one executor drained when issue 13 was filed (its target 4 is twice that)."""
_VS_PLAIN = ratio("plain steps/s")
_VS_BASE = ratio("issue-13 base 1,200/s")
_VS_MECHANISM = ratio("mechanism p99", SLOWER)
_LATENESS = ("lateness p50 ms", "p99 ms", "max ms", "first ms", "early")


def _lateness(late: list[float]) -> dict[str, Any]:
    return {
        "lateness p50 ms": percentile(late, 50) * 1000,
        "p99 ms": percentile(late, 99) * 1000,
        "max ms": max(late) * 1000,
        "first ms": min(late) * 1000,
        "early": sum(1 for x in late if x < 0),
    }


def _cpu(executors: list[ServiceProcess]) -> float:
    """CPU seconds of the executors and their sandbox workers so far."""
    return sum(cpu_seconds(_pid(e)) for e in executors)


async def _plain_steps(
    client: AsyncStatekClient, executors: list[ServiceProcess], n: int, monitor: str
) -> dict[str, Any]:
    """The floor of the drain: ``n`` one-turn jobs submitted at once. Their first steps (record read,
    model call, commit: a wake-up step without the gate and the warmup) drain at the rate of their
    STARTED events, first to last; the CPU is per step until they are DONE (each job is one step:
    the model call and ``exit`` of its reply, as a wake-up step ends)."""
    nc = await client.connection()
    started: list[float] = []
    finished = asyncio.Event()
    ended = 0

    async def on_event(msg: Any) -> None:
        nonlocal ended
        e = decode(msg.data, JobEvent)
        if e.kind == "status" and e.status is JobStatus.STARTED:
            started.append(e.at.timestamp())
        elif e.kind == "status" and e.status is JobStatus.DONE:
            ended += 1
            if ended >= n:
                finished.set()

    await _settled(client, await _messages(client), 60)
    sub = await nc.subscribe(f"{EVENTS_PREFIX}.>", cb=on_event, pending_msgs_limit=1_000_000)
    try:
        cpu, sent = _cpu(executors), _messages_of(monitor)
        await _submit(client, QUICK.role, n)
        await asyncio.wait_for(finished.wait(), timeout=120)
        used, sent = _cpu(executors) - cpu, _messages_of(monitor) - sent
    finally:
        await sub.unsubscribe()
    late = [t - min(started) for t in started]
    return {**_drain(late), "executor CPU ms/step": used * 1000 / n, _MSGS: sent / n}


async def _messages(client: AsyncStatekClient) -> int:
    js = (await client.connection()).jetstream()
    return int((await js.stream_info(WORK_STREAM)).state.messages)


async def _burst(
    client: AsyncStatekClient, executors: list[ServiceProcess], n: int, name: str, monitor: str
) -> dict[str, Any]:
    """``n`` timers due at once: lateness of each wake-up step's code, the drain rate, CPU per wake-up.

    The CPU is the executors' (sandbox workers included) from the due time until the jobs are
    DONE, per step: each job runs one after its timer, the wake-up (its warmup resumes, then the
    model call and ``exit`` of its reply), a floor step plus the resumed warmup.
    """
    nc = await client.connection()
    woke: list[float] = []
    done = asyncio.Event()

    async def on_event(msg: Any) -> None:
        e = decode(msg.data, JobEvent)
        if e.kind == "console" and e.text and e.text.startswith("woke at "):
            woke.append(float(e.text.split()[-1]))
            if len(woke) >= n:
                done.set()

    await _settled(client, await _messages(client), 60)  # the earlier rows' steps are done
    base = await _messages(client)  # the pending schedules of other jobs
    sub = await nc.subscribe(f"{EVENTS_PREFIX}.>", cb=on_event, pending_msgs_limit=1_000_000)
    due = datetime.now(UTC) + timedelta(seconds=4 + n / 400)
    await _submit(client, ALARM.role, n, {"due": due})
    try:
        await asyncio.sleep(max(0.0, due.timestamp() - time.time()))
        cpu, sent = _cpu(executors), _messages_of(monitor)
        await asyncio.wait_for(done.wait(), timeout=120)
        await _settled(client, base, 120)  # every step has ended
        used, sent = _cpu(executors) - cpu, _messages_of(monitor) - sent
    finally:
        await sub.unsubscribe()
    late = [w - due.timestamp() for w in woke]
    return {
        "measurement": name,
        **_lateness(late),
        **_drain(late),
        "executor CPU ms/step": used * 1000 / n,
        _MSGS: sent / n,
    }


_MSGS = "executor msgs/step"
"""Messages the executors' connections sent and received per step (``/connz``, both ways): a step
that costs more round trips shows here before its rate moves."""


def _messages_of(monitor: str) -> int:
    return connection_messages(monitor, SERVICE_EXECUTOR)


def _drain(late: list[float]) -> dict[str, float]:
    return {"drain steps/s": (len(late) - 1) / max(1e-9, max(late) - min(late))}


async def _mechanism(
    client: AsyncStatekClient, loaded: ServiceProcess, n: int, start: Any
) -> tuple[list[float], dict[str, Any]]:
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
    late = [w - due.timestamp() for w in woke]
    return published, {**_lateness(late), **_drain(late)}


def _pid(process: ServiceProcess) -> int:
    assert process.proc is not None, "the service is not running"
    return process.proc.pid


if __name__ == "__main__":
    try:  # as bench.executor: the client's own CPU competes with the mesh on a 2-core host
        import uvloop

        rows = uvloop.run(run("--quick" in sys.argv))
    except ImportError:
        rows = asyncio.run(run("--quick" in sys.argv))
    print_tables(f"waits{' (quick)' if '--quick' in sys.argv else ''}", rows)
