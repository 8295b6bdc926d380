"""Knowledge: how fast a published version reaches running executors, and what serving one costs a step.

Every service is its own process (embedded nats-server, submission, provider, two executors).
Two measurements:

1. **Propagation.** ``statek_knowledge`` versions are published (``KnowledgeStore.publish``, what
   ``statek-bus knowledge publish`` calls) and the time until *both* executors report the version
   in ``served.<id>`` is taken from a KV watch: a small version (5 files), a large one (``F``
   documents of 2 KiB), then the large one with one document changed (an executor fetches only
   the changed file).
2. **Step cost.** ``N`` one-turn jobs of an agent whose prompt, metadata and examples come from
   the published version, against ``N`` jobs of the same agent shape with no knowledge file, in
   the same run, interleaved, best of two rounds: jobs/s and their ratio.

``python -m bench.knowledge [--quick]`` (or ``python -m bench knowledge``); quick: F=200, N=300;
full: F=1000, N=2000.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SLOWER, print_tables, progress, ratio
from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.knowledge import KnowledgeStore, RawFile
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess
from statek_bus.wire.knowledge import KnowledgeServed
from statek_bus.wire.messages import JobEvent, decode
from statek_bus.wire.subjects import EVENTS_PREFIX, KNOWLEDGE_SERVED_KEYS

__all__ = ["AGENTS", "run"]

_SCRIPT = ["x = 6 * 7\nexit(str(x))"]
WITH = SupervisedAgent("bench_k_with", "Own prompt.", metadata={"MODEL": "scripted/bench", "SCRIPT": _SCRIPT})
"""Its prompt and examples come from the published version."""
WITHOUT = SupervisedAgent(
    "bench_k_without", "Own prompt.", metadata={"MODEL": "scripted/bench", "SCRIPT": _SCRIPT}
)
"""The same agent with no knowledge file."""
AGENTS = [WITH, WITHOUT]
"""The agents the benchmark's executors serve."""
_SPEC = "bench.knowledge:AGENTS"

_PROMPT = b"# DESCRIPTION: bench\n# System Prompt\nFile prompt.\n<HARD difficulty='H'>\nhard\n</HARD>\n"
_EXAMPLE = b"# name: Sum\n```python\nprint(1 + 1)\n```\n2\n"


def _doc(i: int, salt: str = "") -> RawFile:
    body = (f"line {i} {salt} " * 16 + "\n") * 16  # ~2 KiB
    text = f"# ord_no: {i}\n# topic: T{i % 10}\n# title: Doc {i}\n{body}"
    return RawFile("documents", f"d{i}.md", text.encode())


async def _propagate(client: AsyncStatekClient, files: list[RawFile], executors: int) -> float:
    """Seconds from the publish call to every executor serving the new version."""
    js = await client.jetstream()
    store = await KnowledgeStore.open(js)
    watcher = await store.kv.watch(KNOWLEDGE_SERVED_KEYS)
    try:
        started = time.perf_counter()
        manifest = await store.publish(files, ["prompts", "examples", "documents"], source="bench")
        served: dict[str, str] = {}
        async with asyncio.timeout(120):
            async for entry in watcher:
                if entry is not None and entry.value:
                    s = decode(entry.value, KnowledgeServed)
                    served[s.instance] = s.version
                if len(served) >= executors and all(v == manifest.version for v in served.values()):
                    return time.perf_counter() - started
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    raise AssertionError("unreachable")


async def _jobs_per_second(client: AsyncStatekClient, agent: str, n: int) -> float:
    nc = await client.connection()
    done = asyncio.Event()
    count = 0

    async def on_event(msg: Any) -> None:
        nonlocal count
        e = decode(msg.data, JobEvent)
        if e.kind == "status" and e.status is not None and e.status.value == "DONE":
            count += 1
            if count >= n:
                done.set()

    sub = await nc.subscribe(f"{EVENTS_PREFIX}.>", cb=on_event, pending_msgs_limit=1_000_000)
    try:
        started = time.perf_counter()
        for i in range(0, n, 500):
            await client.jobs.submit_batch(agent, [None] * min(500, n - i))
        await asyncio.wait_for(done.wait(), timeout=600)
        return n / (time.perf_counter() - started)
    finally:
        await sub.unsubscribe()


async def run(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """Two tables: how long a published version takes to reach the executors, and jobs/s with it."""
    docs, n = (200, 300) if quick else (1000, 2000)
    tmp = Path(tempfile.mkdtemp(prefix="statek-bench-knowledge-"))
    settings = Settings.from_env({}, request_timeout=60.0)
    env = {"STATEK_LOG_LEVEL": "WARNING"}
    rows: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    try:
        async with Mesh(
            settings, data_dir=tmp / "nats", kinds=["submission", "provider"], env=env, log_dir=tmp
        ) as mesh:
            executors = [
                ServiceProcess(
                    "executor", mesh.nats_url, args=["--agents", _SPEC], env=env, log_path=tmp / f"e{i}.log"
                )
                for i in (1, 2)
            ]
            for e in executors:
                await e.start()
            client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
            try:
                base = [
                    RawFile("prompts", "bench_k_with.md", _PROMPT),
                    *(RawFile("examples", f"bench_k_with/e{i}.md", _EXAMPLE) for i in range(4)),
                ]
                progress(f"knowledge: publishing 5, then {len(base) + docs:,} files to 2 executors")
                small = await _propagate(client, base, 2)
                large_files = [*base, *(_doc(i) for i in range(docs))]
                large = await _propagate(client, large_files, 2)
                changed = await _propagate(client, [*large_files[:-1], _doc(docs - 1, "changed")], 2)
                for name, files, seconds in [
                    ("5 files", base, small),
                    (f"{len(large_files)} files (~2 KiB documents)", large_files, large),
                    (f"{len(large_files)} files, 1 changed", large_files, changed),
                ]:
                    rows.append(
                        {
                            "measurement": f"publish -> both executors serve it: {name}",
                            "files": len(files),
                            "ms": seconds * 1000,
                            ratio("5-file version", SLOWER): seconds / small,
                        }
                    )
                progress(f"knowledge: {n} one-turn jobs without and with the knowledge version, twice")
                await _jobs_per_second(client, WITHOUT.role, 100)  # warm both paths once
                await _jobs_per_second(client, WITH.role, 100)
                without = with_k = 0.0
                for _ in range(2):  # interleaved, best of two: the host is shared
                    without = max(without, await _jobs_per_second(client, WITHOUT.role, n))
                    with_k = max(with_k, await _jobs_per_second(client, WITH.role, n))
                jobs.append({"measurement": f"{n} one-turn jobs, no knowledge file", "jobs/s": without, _VS_NONE: 1.0})
                jobs.append(
                    {
                        "measurement": f"{n} one-turn jobs, prompt file + examples ({len(large_files)}-file version)",
                        "jobs/s": with_k,
                        _VS_NONE: with_k / without,
                    }
                )
            finally:
                await client.aclose()
                for e in executors:
                    await e.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"knowledge: publish until both executors serve it": rows, "knowledge: one-turn jobs/s": jobs}


_VS_NONE = ratio("no knowledge file jobs/s")


if __name__ == "__main__":
    import sys

    from bench.__main__ import _run

    print_tables("knowledge" + (" (quick)" if "--quick" in sys.argv else ""), _run(run("--quick" in sys.argv)))
