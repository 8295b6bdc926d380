"""Replaying a workspace's definitions without side effects.

Restoring a workspace re-executes the source of every stored ``def``/``class``/``import`` (see
:mod:`statek_bus.runtime.workspace`), so class bodies, decorators and default values run again on every
step. While they replay, every tool, ``exit`` and future read is refused with
:class:`ReplayRefused`: the definition is then not restored, and the step's console shows
``Warning: could not restore <names>: ReplayRefused: ...``. So a replay never calls a tool twice,
never ends the job and never waits (``class Mailer: status = send_email(...)`` sends once, in the
step that defined it). Functions and methods that call tools when *called* are unaffected: the
real tools are back in the namespace before any model code runs.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["REPLAYING", "ReplayRefused", "refuse_during_replay", "replaying"]

REPLAYING: contextvars.ContextVar[bool] = contextvars.ContextVar("statek_replaying", default=False)
"""True while stored definitions replay (futures refuse to resolve)."""


class ReplayRefused(Exception):
    """A tool, ``exit`` or a future was used while the workspace's definitions replayed."""


def _refused(what: str) -> ReplayRefused:
    return ReplayRefused(
        f"{what} cannot run while stored definitions are replayed "
        "(class bodies, decorators and defaults re-run on every step; call it from a function instead)"
    )


def refuse_during_replay(what: str) -> None:
    """Raise :class:`ReplayRefused` for ``what`` if definitions are replaying now."""
    if REPLAYING.get():
        raise _refused(what)


def _stub(name: str) -> Callable[..., Any]:
    def stub(*_: Any, **__: Any) -> Any:  # also refuses if a replayed default argument kept it
        raise _refused(f"{name}()")

    stub.__name__ = stub.__qualname__ = name
    return stub


@contextlib.contextmanager
def replaying(namespace: dict[str, Any], names: Iterable[str]) -> Iterator[None]:
    """Within the block, ``names`` of ``namespace`` are refusing stubs and futures do not resolve.

    Afterwards the originals are put back (unless a replayed definition rebound the name).
    """
    saved = {n: namespace[n] for n in names if n in namespace}
    stubs = {n: _stub(n) for n in saved}
    namespace.update(stubs)
    token = REPLAYING.set(True)
    try:
        yield
    finally:
        REPLAYING.reset(token)
        for name, original in saved.items():
            if namespace.get(name) is stubs[name]:
                namespace[name] = original
