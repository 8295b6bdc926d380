"""SIGINT and SIGTERM as structured cancellation, for the commands that own processes.

A long-running command (``up``, ``demo``, ``serve``) enters :class:`StopSignals` first thing on
the event loop, so a signal never lands as a ``KeyboardInterrupt`` in the middle of a spawn or a
cleanup. While it starts, the command runs inside :meth:`StopSignals.cancelling`: the first
signal cancels that scope (anyio, level-triggered, so nothing half-started keeps running) and the
command's cleanup, which shields itself, stops what was started. Once it serves, the first signal
only sets :attr:`StopSignals.requested` and the command stops gracefully (services drain); a second
signal runs the registered :meth:`StopSignals.on_force` callbacks (kill now) and cancels whatever
still waits.

Child processes are started in their own session (a terminal's Ctrl-C reaches only the command,
which stops them in order) and, on Linux, with a parent-death signal, so even a command killed
with SIGKILL leaves nothing running.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

import anyio

__all__ = ["StopSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT/SIGTERM handlers for the lifetime of an ``async with`` block on the running loop."""

    def __init__(self) -> None:
        self.requested = anyio.Event()
        """Set by the first signal."""
        self.count = 0
        """How many signals arrived."""
        self.signum: int | None = None
        """The first signal's number."""
        self._scopes: list[tuple[anyio.CancelScope, int]] = []
        self._force: list[Callable[[], None]] = []

    async def __aenter__(self) -> StopSignals:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)

    @contextmanager
    def cancelling(self, on_signal: int = 1) -> Iterator[anyio.CancelScope]:
        """A cancel scope that the ``on_signal``-th signal cancels (at once if it already came).

        After the block, ``scope.cancelled_caught`` says whether a signal cut it short.
        """
        with anyio.CancelScope() as scope:
            entry = (scope, on_signal)
            if self.count >= on_signal:
                scope.cancel()
            self._scopes.append(entry)
            try:
                yield scope
            finally:
                self._scopes.remove(entry)

    def on_force(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (synchronously, on the loop) when a second signal arrives."""
        self._force.append(callback)

    async def wait(self) -> None:
        """Wait for the first signal."""
        await self.requested.wait()

    def _on_signal(self, sig: int) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = sig
        self.requested.set()
        for scope, on_signal in list(self._scopes):
            if self.count >= on_signal:
                scope.cancel()
        if self.count > 1:
            for callback in list(self._force):
                callback()
