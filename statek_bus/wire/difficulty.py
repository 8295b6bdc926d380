"""Task difficulty: STATEK's three levels, named the same way in metadata, prompts and requests.

A job's difficulty selects prompt sections, the model of an ``L:a,M:b,H:c`` mapping and donor
resources; it only ever goes up (``panic()``, a harder example). Metadata and requests may spell
it ``L``/``M``/``H`` or ``low``/``medium``/``high``, in any case.
"""

from __future__ import annotations

import enum

__all__ = ["DIFFICULTIES", "Difficulty", "difficulty_named"]


class Difficulty(enum.StrEnum):
    """A task difficulty; the value is its one-letter label."""

    LOW = "L"
    MEDIUM = "M"
    HIGH = "H"


DIFFICULTIES: tuple[Difficulty, ...] = (Difficulty.LOW, Difficulty.MEDIUM, Difficulty.HIGH)
"""Difficulties, lowest first."""

_NAMES = {
    **{d.value: d for d in Difficulty},
    **{d.name: d for d in Difficulty},
}


def difficulty_named(value: object) -> Difficulty | None:
    """The difficulty ``value`` names (``L``, ``low``, ``M``, ``medium``, ``H``, ``high``; any case), else ``None``."""
    return _NAMES.get(value.strip().upper()) if isinstance(value, str) else None
