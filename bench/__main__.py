"""``python -m bench [--quick] [name ...]``: run benchmarks and print their tables."""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any

from bench.common import print_tables, progress

ALL = [
    "floor", "states", "submission", "provider", "executor", "pools", "waits", "inbox", "sandbox", "peer", "llm",
    "storage", "knowledge",
]


def _run(coro: Any) -> Any:
    """Run a bench on uvloop where available, as the services run (the client competes for CPU)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")] or ALL
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"(bench {name} not present)")
                continue
            raise
        progress(f"bench {name}{' (quick)' if quick else ''}: running")
        rows = _run(module.run(quick))
        print_tables(f"{name}{' (quick)' if quick else ''}", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
