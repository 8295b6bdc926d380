"""The stored records of shared contexts (STATEK's ``init_shared_context``), in ``statek_context``.

Wire records like those of :mod:`statek_bus.wire.messages` (JSON, typed, schemas exported with
them), in a module of their own so that one stays under the size the house allows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from statek_bus.wire.messages import _Record

__all__ = ["ContextVariable", "SharedContextRecord"]


class ContextVariable(_Record, kw_only=True):
    """One variable of a shared context (model-written: bounded, tagged JSON, never pickled)."""

    category: str
    """``PREFERENCE``, ``ENTITY``, ``VOCABULARY`` or a user category."""
    value: Any = None
    """Tagged JSON (:mod:`statek_bus.wire.values`)."""
    description: str = ""
    """What the variable holds, as its writer described it."""
    created_at: datetime
    """When it was last written (UTC); on reads across contexts the newest wins."""
    job_id: str = ""
    """The job that wrote it."""


class SharedContextRecord(_Record, kw_only=True):
    """A shared context as stored in ``statek_context`` (key ``ctx.<token(spec)>...``)."""

    specs: list[str]
    """The specifiers the context is bound to (sorted)."""
    vars: dict[str, ContextVariable] = {}
    """Variables by name."""
