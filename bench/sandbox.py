"""Cost of restricted mode and of the process boundary.

The process rows run the same step through :class:`ProcessCodeRunner` (a fresh locked-down worker
per step) and :class:`ThreadCodeRunner` (in-process) in the same run: a trivial step, a step making
10 tool calls (per call), both one at a time and 8 in flight, with the ratio (process ÷ in-process, x
slower). Then the pieces: a fork from the fork server, the lock-down of a worker, and the floor: a
fork + exit of a bare interpreter. A second table splits the CPU of one trivial step by process
(executor, fork server, worker) with the workers' page faults, beside the in-process runner and
the data tier (:mod:`statek_bus.runtime.tierrunner`: the same plain-data step proven safe and run in
the executor's threads with its guard; the trivial rows of the first table have its time too).

Rows compare the same code compiled plainly (``compile``) and through :func:`compile_block` with a
deadline set, per iteration or per call; plus ``compile_block`` uncached and cached, and a
workspace of 20 definitions and 200 values through snapshot → bytes → restore; and a builtins-heavy
loop with the shared-context fallback builtins against plain ones (ratio: x slower).

``python -m bench sandbox [--quick]`` (or ``python -m bench.sandbox``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from bench.common import CHEAPER, SLOWER, cpu_seconds, minor_faults, own_cpu_seconds, print_tables, ratio
from statek_bus.authoring.tools import tool
from statek_bus.runtime.coderunner import ExecRequest, ExecUnit, SandboxSession, ThreadCodeRunner
from statek_bus.runtime.procrunner import ProcessCodeRunner
from statek_bus.runtime.tierrunner import DataTier
from statek_bus.runtime.workspace import (
    Workspace,
    WorkspaceData,
    decode_stored_workspace,
    decode_workspace,
    encode_workspace,
)
from statek_bus.sandbox.fallback import FallbackBuiltins
from statek_bus.sandbox.restricted import SandboxPolicy, compile_block, sandbox_globals
from statek_bus.wire.values import TypeRegistry

__all__ = ["run"]

POLICY = SandboxPolicy()
LOOPS = {
    "for loop": "for i in range(N):\n    x += i",
    "while loop": "i = 0\nwhile i < N:\n    i += 1",
    "comprehension": "y = [i for i in range(N)]",
    "function call": "def f(a):\n    return a\nfor i in range(N):\n    f(i)",
    "str.format": "for i in range(N):\n    s = '{} {}'.format(i, x)",
}


_VS_PLAIN = ratio("plain exec", SLOWER)
_VS_THREADS = ratio("in-process", SLOWER)
_VS_CPU = ratio("in-process CPU", CHEAPER)


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _loop_rows(n: int, repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    far = time.monotonic() + 3600
    for case, body in LOOPS.items():
        plain = compile(body, "<plain>", "exec")
        block = compile_block(body, POLICY)

        def run_plain(code: Any = plain) -> None:
            exec(code, {"N": n, "x": 0})

        def run_sandboxed(statements: Any = block.statements) -> None:
            ns = sandbox_globals(POLICY, deadline=lambda: far)
            ns.update(N=n, x=0)
            for s in statements:
                exec(s.code, ns)

        a, b = _best(run_plain, repeat) / n * 1e9, _best(run_sandboxed, repeat) / n * 1e9
        rows.append(
            {"case": case, "plain ns/iter": a, "sandboxed ns/iter": b, "overhead ns": b - a, _VS_PLAIN: b / a}
        )
    tick = sandbox_globals(POLICY, deadline=lambda: far)["__statek_tick__"]

    def ticks() -> None:
        for _ in range(n):
            tick()

    rows.append({"case": "tick() alone", "sandboxed ns/iter": _best(ticks, repeat) / n * 1e9})
    return rows


WORKSPACE = (
    "import math, json\n"
    + "".join(f"def f{i}(x):\n    return x * {i} + math.sqrt({i})\n" for i in range(15))
    + "class Vec:\n    def __init__(self, x):\n        self.x = x\n"
    + "sq = lambda v: v * v\ndouble = lambda v: v * 2\ncube = lambda v: v ** 3\n"
    + "".join(f"v{i} = {{'n': {i}, 'tags': ('a', 'b'), 'when': None}}\n" for i in range(190))
    + "".join(f"o{i} = Vec({i})\n" for i in range(10))
)


def _workspace_rows(repeat: int) -> list[dict[str, Any]]:
    registry = TypeRegistry()
    ns = sandbox_globals(POLICY)
    base = set(ns)
    ws = Workspace()
    for s in compile_block(WORKSPACE, POLICY).statements:
        exec(s.code, ns)
        ws.record(s)
    data, _ = ws.snapshot(ns, base_names=base, registry=registry)
    raw = encode_workspace(data)
    sources = [f"def g{i}(a):\n    return [a * k for k in range(10)]\n" for i in range(repeat * 20)]
    it = iter(sources)
    timings = {
        "compile_block, 2-line def, uncached": lambda: compile_block(next(it), POLICY),
        "compile_block, cached": lambda: compile_block(sources[0], POLICY),
        "snapshot (20 defs, 200 values)": lambda: ws.snapshot(ns, base_names=base, registry=registry),
        "encode + decode bytes": lambda: decode_workspace(encode_workspace(data)),
        "restore into fresh namespace": lambda: Workspace.restore(
            data, sandbox_globals(POLICY), policy=POLICY, registry=registry
        ),
    }
    rows = [{"case": case, "µs/op": _best(fn, repeat * 10) * 1e6} for case, fn in timings.items()]
    rows.append({"case": "encoded workspace size", "bytes": len(raw)})
    return rows


def _stored_rows(quick: bool) -> list[dict[str, Any]]:
    """A worker's large workspace as the executor takes it in and stores it again: every value
    decoded (what it did) against each kept in its stored bytes (``decode_stored_workspace``)."""
    scale = 10 if quick else 1
    cases = {
        f"{30 // scale} MB of [[], ...]": b",".join([b"[]"] * (10_000_000 // scale)),
        f"{32 // scale} MB of 4,299-digit ints": b",".join([b"9" * 4299] * (7400 // scale)),
    }
    rows = []
    for case, values in cases.items():
        body = b'{"values":{"x":[' + values + b']},"definitions":[]}'
        decoded = _best(
            lambda b=body: encode_workspace(msgspec.convert(msgspec.json.decode(b), WorkspaceData)), 1
        )
        kept = _best(lambda b=body: encode_workspace(decode_stored_workspace(b)), 3)
        rows.append(
            {
                "case": case,
                "decoded ms": decoded * 1e3,
                "kept in bytes ms": kept * 1e3,
                ratio("decoded"): decoded / kept,
            }
        )
    return rows


@tool
def _add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _session() -> Any:
    from statek_bus.authoring.futures import REGISTRY, StepRuntime
    from statek_bus.authoring.tools import SYSTEM_TOOLS, JobContext

    env = StepRuntime("bench", None, None, None)
    ctx = JobContext(job_id="bench", agent="a", params={}, namespace={}, extras={"env": env})
    tools = {t.name: t for t in (*SYSTEM_TOOLS, _add)}
    return SandboxSession(
        policy=POLICY, trusted_policy=POLICY, tools=tools, job=ctx, workspace=None,
        shared_vars={"n": 1}, registry=REGISTRY,
    )  # fmt: skip


async def _step(runner: Any, code: str) -> None:
    unit = ExecUnit(kind="code", code=code, site="0.0")
    await runner.run(ExecRequest(session=_session(), units=[unit], deadline_seconds=10))


async def _steps(runner: Any, code: str, steps: int, in_flight: int) -> float:
    """Seconds per step, ``steps`` steps with ``in_flight`` at once."""
    sem = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with sem:
            await _step(runner, code)

    await one()  # warm
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(steps)))
    return (time.perf_counter() - t0) / steps


async def _process_rows(steps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    process = ProcessCodeRunner(workers=8)
    thread = ThreadCodeRunner(threads=8)
    await asyncio.to_thread(process.wait_started)
    rows: list[dict[str, Any]] = []
    tools = "x = 0\nfor i in range(10):\n    x = _add(x, i)"
    tier = DataTier(process, thread)
    try:
        for case, code, per in (("trivial step", "y = n + 1", 1), ("10 tool calls, per call", tools, 10)):
            for in_flight in (1, 8):
                a = await _steps(thread, code, steps, in_flight) / per
                b = await _steps(process, code, steps, in_flight) / per
                row = {
                    "case": f"{case}, {in_flight} in flight", "in-process µs": a * 1e6,
                    "process µs": b * 1e6, _VS_THREADS: b / a,
                }  # fmt: skip
                if per == 1:
                    row["data tier µs"] = await _steps(tier, code, steps, in_flight) * 1e6
                rows.append(row)
        t0 = time.perf_counter()
        for _ in range(steps):
            sock, _, _ = process._server.spawn()
            sock.close()
        rows.append(
            {"case": "fork from the fork server", "process µs": (time.perf_counter() - t0) / steps * 1e6}
        )
        costs = await _cost_rows(process, thread, tier, steps)
    finally:
        await process.aclose()
        await thread.aclose()
    rows.append({"case": "lock-down of one worker (in a fork)", "process µs": _lockdown_cost(steps) * 1e6})
    rows.append(
        {"case": "fork + exit of a bare interpreter (floor)", "process µs": _bare_fork_cost(steps) * 1e6}
    )
    return rows, costs


async def _cost_rows(
    process: ProcessCodeRunner, thread: ThreadCodeRunner, tier: DataTier, steps: int
) -> list[dict[str, Any]]:
    """CPU per trivial step in each process, one step at a time, beside the in-process runner's and
    the data tier's (the same step, proven plain data, in the executor with its guard)."""
    me = os.getpid()
    assert process._server._proc is not None
    server = process._server._proc.pid

    async def measure(runner: Any, steps: int) -> dict[str, float]:
        for _ in range(5):
            await _step(runner, "y = n + 1")
        await asyncio.sleep(0.5)  # the spares forked meanwhile count before, not during
        before = (own_cpu_seconds(me), own_cpu_seconds(server), cpu_seconds(server), minor_faults(server))
        for _ in range(steps):
            await _step(runner, "y = n + 1")
        await asyncio.sleep(0.5)  # the spares that replace the used workers count too
        after = (own_cpu_seconds(me), own_cpu_seconds(server), cpu_seconds(server), minor_faults(server))
        d = [(b - a) / steps for a, b in zip(before, after, strict=True)]
        return {"executor": d[0], "server": d[1], "workers": d[2] - d[1], "faults": d[3]}

    # CPU is read in clock ticks (10 ms): the cheap runners take 20x the steps, so a tick is not all
    base = await measure(thread, steps * 20)
    cost = await measure(process, steps)
    data = await measure(tier, steps * 20)
    assert tier.counts["tier"] >= steps * 20, tier.counts  # the step really ran in the tier
    floor = max(base["executor"], 1e-6)
    rows = [{"runner": "in-process (threads of the executor)", "total CPU ms": floor * 1e3,
             "executor ms": floor * 1e3, _VS_CPU: 1.0}]  # fmt: skip
    total = cost["executor"] + cost["server"] + cost["workers"]
    rows.append({
        "runner": "process (a fresh worker per step)", "total CPU ms": total * 1e3,
        "executor ms": cost["executor"] * 1e3, "fork server ms": cost["server"] * 1e3,
        "worker ms": cost["workers"] * 1e3, "worker page faults": cost["faults"],
        _VS_CPU: total / floor if floor > 0 else None,  # quick runs: under one clock tick in-process
    })  # fmt: skip
    tier_total = data["executor"] + data["server"] + data["workers"]
    rows.append({
        "runner": "data tier (proven plain data, in the executor)", "total CPU ms": tier_total * 1e3,
        "executor ms": data["executor"] * 1e3, "fork server ms": data["server"] * 1e3,
        "worker ms": data["workers"] * 1e3, "worker page faults": data["faults"],
        _VS_CPU: tier_total / floor if floor > 0 else None,
    })  # fmt: skip
    return rows


_BARE_FORKS = """
import os, sys, time
n = int(sys.argv[1])
t0 = time.perf_counter()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print((time.perf_counter() - t0) / n)
"""


def _bare_fork_cost(n: int) -> float:
    """Seconds per fork + exit + wait of a bare interpreter (``python -I``, nothing imported): the
    floor of any design that gives each step a fresh process on this machine."""
    import subprocess

    out = subprocess.run([sys.executable, "-I", "-c", _BARE_FORKS, str(n)], capture_output=True, check=True)
    return float(out.stdout)


def _lockdown_cost(n: int) -> float:
    import os

    from statek_bus.sandbox.isolation import Limits, address_space_cap, lock_down, prepare, seal_server

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # measure in a child: prepare() and seal_server() change the process for good
        prepared = prepare()
        sealed = seal_server(prepared)
        total = 0.0
        r2, w2 = os.pipe()
        for _ in range(n):
            cap = address_space_cap(Limits())
            child = os.fork()
            if child == 0:
                t0 = time.perf_counter()
                lock_down(Limits(), prepared, cap, sealed)
                os.write(w2, str(time.perf_counter() - t0).encode().ljust(32))
                os._exit(0)
            total += float(os.read(r2, 32))
            os.waitpid(child, 0)
        os.write(w, str(total / n).encode().ljust(32))
        os._exit(0)
    result = float(os.read(r, 32))
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return result


def _no_shared_variable(name: str) -> object:
    raise KeyError(name)


def _fallback_rows(n: int, repeat: int) -> list[dict[str, Any]]:
    """A builtins-heavy loop with plain builtins and with a shared context's :class:`FallbackBuiltins`
    (why only a bound job's namespace gets them)."""
    block = compile_block("for i in range(N):\n    x = len(s) + abs(i)", POLICY)
    far = time.monotonic() + 3600

    def loop(fallback: bool) -> Callable[[], None]:
        def go() -> None:
            ns = sandbox_globals(POLICY, deadline=lambda: far)
            if fallback:
                ns["__builtins__"] = FallbackBuiltins(ns["__builtins__"], _no_shared_variable)
            ns.update({"N": n, "s": "abc"})
            for stmt in block.statements:
                exec(stmt.code, ns)

        return go

    plain, fallback = (_best(loop(f), repeat) / n * 1e9 for f in (False, True))
    return [
        {
            "case": "len()+abs() loop, fallback builtins",
            "plain ns/iter": plain,
            "sandboxed ns/iter": fallback,
            "overhead ns": fallback - plain,
            _VS_PLAIN: fallback / plain,
        }
    ]


async def run(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """Tables: the process boundary against in-process (time, then CPU per step by process), then
    loop, compile, fallback-builtins and workspace costs."""
    n, repeat = (20_000, 3) if quick else (200_000, 7)
    rows, costs = await _process_rows(50 if quick else 300)
    rows += await asyncio.to_thread(
        lambda: _loop_rows(n, repeat) + _fallback_rows(n, repeat) + _workspace_rows(repeat)
    )
    stored = await asyncio.to_thread(_stored_rows, quick)
    return {
        "sandbox: time per step and piece": rows,
        "sandbox: CPU per trivial step by process": costs,
        "sandbox: a worker's large workspace taken in and stored again by the executor": stored,
    }


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print_tables(f"sandbox{' (quick)' if quick else ''}", asyncio.run(run(quick)))
