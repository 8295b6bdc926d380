"""The ``statek-bus`` command line.

Each area registers its own subcommands (``register(subparsers)`` in a module of this package):
:mod:`.mesh` (``up``, ``serve``, ``status``, ``schemas``, ``demo``), :mod:`.states`
(``states ...``) and :mod:`.jobs` (``submit``, ``jobs ...``). A command returns an exit code;
a :class:`~statek_bus.wire.errors.StatekError` or a launcher error prints one clear line and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from statek_bus.mesh.provision import ProvisionError
from statek_bus.mesh.settings import SettingsError
from statek_bus.ops.launcher import LauncherError
from statek_bus.wire.errors import StatekError

__all__ = ["main", "run_async"]

_AREAS = ("statek_bus.cli.mesh", "statek_bus.cli.states", "statek_bus.cli.jobs", "statek_bus.cli.demo")

Command = Callable[[argparse.Namespace], int]


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop where available (about 20 % less CPU than asyncio's loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statek-bus", description="Durable code-first LLM agent jobs and a States API on NATS."
    )
    parser.add_argument(
        "--log-level", default=None, help="Python logging level (default: STATEK_LOG_LEVEL or INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # an area not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``statek-bus``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    command: Command = args.func
    try:
        return command(args)
    except (StatekError, LauncherError, ProvisionError, SettingsError) as exc:
        print(f"statek-bus: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
