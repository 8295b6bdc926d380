"""Cost of restricted mode: the tick, instrumented loops, compiling, and workspace snapshot/restore.

Rows compare the same code compiled plainly (``compile``) and through :func:`compile_block` with a
deadline set, per iteration or per call; plus ``compile_block`` uncached and cached, and a
workspace of 20 definitions and 200 values through snapshot → bytes → restore.

``python -m bench.sandbox [--quick]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import print_table
from statek_bus.runtime.workspace import Workspace, decode_workspace, encode_workspace
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
        rows.append({"case": case, "plain ns/iter": a, "sandboxed ns/iter": b, "overhead ns": b - a})
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


async def run(quick: bool) -> list[dict[str, Any]]:
    """Rows: per-iteration loop costs, then compile and workspace costs."""
    n, repeat = (20_000, 3) if quick else (200_000, 7)
    return await asyncio.to_thread(lambda: _loop_rows(n, repeat) + _workspace_rows(repeat))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print_table(f"sandbox{' (quick)' if quick else ''}", asyncio.run(run(quick)))
