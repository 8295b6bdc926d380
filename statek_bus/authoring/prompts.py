"""System prompts with difficulty-scoped sections (STATEK's prompt format, §1.9).

A prompt is an intro followed by sections. A section starts with a title line in one of the forms
``--- TITLE ---``, ``*** TITLE ***`` or a ``##`` to ``######`` heading. A title prefixed with
difficulty letters, ``MH:Advanced tools`` or ``L: Basics``, is kept only at those difficulties
(``L`` low, ``M`` medium, ``H`` high); a section without a prefix is kept at every difficulty. The
kept text is left as written (the prefix removed), so a prompt with no prefixed section renders
unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from statek_bus.wire.difficulty import DIFFICULTIES, difficulty_named

__all__ = ["PromptSection", "parse_difficulty", "parse_sections", "render_prompt"]

_TITLE = re.compile(r"^(?P<lead>-{3}\s+|\*{3}\s+|#{2,6}\s+)(?P<title>.*?)(?P<trail>\s+-{3}|\s+\*{3})?\s*$")
_PREFIX = re.compile(r"^(?P<levels>[LMH]{1,3})\s*:\s*(?P<rest>.*)$")


def parse_difficulty(value: object, default: str = "M") -> str:
    """``L``, ``M`` or ``H`` from ``L/M/H`` or ``low/medium/high`` (any case); ``ValueError`` otherwise."""
    if value is None or value == "":
        return default
    found = difficulty_named(str(value))
    if found is None:
        raise ValueError(f"unknown difficulty {value!r}; expected L, M, H, low, medium or high")
    return str(found)


@dataclass(frozen=True)
class PromptSection:
    """One section: its text (title line included, prefix removed) and the difficulties keeping it."""

    text: str
    """The section as it will be rendered."""
    levels: frozenset[str]
    """Difficulties at which it is kept."""


def _is_title(line: str) -> re.Match[str] | None:
    m = _TITLE.match(line)
    if m is None:
        return None
    lead = m.group("lead").strip()
    trail = (m.group("trail") or "").strip()
    if lead in ("---", "***") and trail != lead:
        return None  # a bare rule or emphasis, not a title
    return m


def parse_sections(prompt: str) -> tuple[str, list[PromptSection]]:
    """The intro and the sections of ``prompt``."""
    intro: list[str] = []
    sections: list[tuple[list[str], frozenset[str]]] = []
    for line in prompt.splitlines():
        m = _is_title(line)
        if m is not None:
            title = m.group("title")
            p = _PREFIX.match(title)
            levels = frozenset(p.group("levels")) if p else frozenset(DIFFICULTIES)
            if p:
                line = line.replace(title, p.group("rest"), 1)
            sections.append(([line], levels))
        elif sections:
            sections[-1][0].append(line)
        else:
            intro.append(line)
    return "\n".join(intro), [PromptSection("\n".join(lines), levels) for lines, levels in sections]


def render_prompt(prompt: str, difficulty: str) -> str:
    """``prompt`` with the sections that do not apply at ``difficulty`` left out."""
    intro, sections = parse_sections(prompt)
    if all(s.levels == frozenset(DIFFICULTIES) for s in sections):
        return prompt
    kept = [s.text for s in sections if difficulty in s.levels]
    return "\n".join([intro, *kept]) if intro else "\n".join(kept)
