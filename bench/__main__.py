"""``python -m bench [--quick] [name ...]``: run benchmarks and print their tables."""

from __future__ import annotations

import asyncio
import importlib
import sys

from bench.common import print_table

ALL = ["floor", "states", "submission", "provider", "executor", "waits", "sandbox"]


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
        rows = asyncio.run(module.run(quick))
        print_table(f"{name}{' (quick)' if quick else ''}", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
