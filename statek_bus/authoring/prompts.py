"""System prompts with difficulty-scoped sections (STATEK's prompt format, §1.9).

A prompt is an intro followed by sections. A section starts with a title in one of these forms:

- ``--- TITLE ---``, ``*** TITLE ***`` or a ``##`` to ``######`` heading; a title prefixed with
  difficulty letters, ``MH:Advanced tools`` or ``L: Basics``, is kept only at those difficulties
  (``L`` low, ``M`` medium, ``H`` high);
- an XML box: ``<TAG difficulty="H">`` on a line of its own, the section's text, then ``</TAG>``;
  the attribute ``difficulty`` (or ``target_difficulties``) holds the letters (``"MH"``, ``"L,M"``,
  ``"high"``); a bad label is a ``ValueError`` naming it (STATEK's behaviour). The box ends at its
  closing tag: text after it belongs to the intro's continuation, not to the box.

A section without a restriction is kept at every difficulty. With no ``PROMPT_STYLE`` the kept text
is left as written (the prefix or attribute removed), so a prompt without restrictions renders
unchanged. A :class:`PromptStyle` (metadata ``PROMPT_STYLE``: ``XML``, ``DASHED``, ``ASTERISK`` or
``MARKDOWN``) renders every kept title in that one form.

:func:`fill_placeholders` fills ``{name}`` placeholders; a placeholder on a line starting with
``#`` is rendered as a block comment (every line of its value starts with ``# ``), as STATEK does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from statek_bus.wire.difficulty import DIFFICULTIES, difficulty_named

__all__ = [
    "PromptSection",
    "PromptStyle",
    "Template",
    "fill_placeholders",
    "parse_difficulty",
    "parse_levels",
    "parse_sections",
    "render_prompt",
]

_TITLE = re.compile(r"^(?P<lead>-{3}\s+|\*{3}\s+|#{2,6}\s+)(?P<title>.*?)(?P<trail>\s+-{3}|\s+\*{3})?\s*$")
_PREFIX = re.compile(r"^(?P<levels>[LMH]{1,3})\s*:\s*(?P<rest>.*)$")
_XML_OPEN = re.compile(
    r"^\s*<(?P<tag>[A-Za-z_][\w.-]*)(?P<attrs>(?:\s+[\w-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*)\s*>\s*$"
)
_XML_ATTR = re.compile(r"([\w-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_LEVEL_ATTRS = ("difficulty", "target_difficulties")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class PromptStyle(enum.StrEnum):
    """How section titles are rendered (metadata ``PROMPT_STYLE``)."""

    XML = "XML"
    DASHED = "DASHED"
    ASTERISK = "ASTERISK"
    MARKDOWN = "MARKDOWN"

    @classmethod
    def of(cls, value: object) -> PromptStyle | None:
        """The style ``value`` names (any case; ``None`` or ``""``: as written); ``ValueError`` otherwise."""
        if value is None or value == "":
            return None
        try:
            return cls(str(value).strip().upper())
        except ValueError:
            raise ValueError(f"unknown PROMPT_STYLE {value!r}; expected one of {', '.join(cls)}") from None


def parse_difficulty(value: object, default: str = "M") -> str:
    """``L``, ``M`` or ``H`` from ``L/M/H`` or ``low/medium/high`` (any case); ``ValueError`` otherwise."""
    if value is None or value == "":
        return default
    found = difficulty_named(str(value))
    if found is None:
        raise ValueError(f"unknown difficulty {value!r}; expected L, M, H, low, medium or high")
    return str(found)


def parse_levels(value: str) -> frozenset[str]:
    """The difficulties an attribute or label names: ``"MH"``, ``"L,M"``, ``"high"``; ``ValueError`` otherwise."""
    text = value.strip()
    named = difficulty_named(text)
    if named is not None:
        return frozenset({str(named)})
    parts = [p for p in re.split(r"[\s,;|]+", text) if p]
    if len(parts) == 1 and re.fullmatch(r"[LMHlmh]+", parts[0]):
        parts = list(parts[0])
    levels = {difficulty_named(p) for p in parts}
    if not parts or None in levels:
        raise ValueError(
            f"invalid difficulty label {value!r}; expected letters of L, M, H or low/medium/high"
        )
    return frozenset(str(d) for d in levels if d is not None)


@dataclass(frozen=True)
class PromptSection:
    """One section: its title, its text (title line included, prefix removed) and the difficulties keeping it."""

    text: str
    """The section as written (the restriction removed)."""
    levels: frozenset[str]
    """Difficulties at which it is kept."""
    title: str = ""
    """The title (the XML tag of a box)."""
    body: str = ""
    """The text under the title."""


def _is_title(line: str) -> re.Match[str] | None:
    m = _TITLE.match(line)
    if m is None:
        return None
    lead = m.group("lead").strip()
    trail = (m.group("trail") or "").strip()
    if lead in ("---", "***") and trail != lead:
        return None  # a bare rule or emphasis, not a title
    return m


def _xml_open(line: str) -> tuple[str, frozenset[str]] | None:
    m = _XML_OPEN.match(line)
    if m is None:
        return None
    levels: frozenset[str] = frozenset(DIFFICULTIES)
    for name, dq, sq in _XML_ATTR.findall(m.group("attrs") or ""):
        if name.lower() in _LEVEL_ATTRS:
            levels = parse_levels(dq or sq)
    return m.group("tag"), levels


def parse_sections(prompt: str) -> tuple[str, list[PromptSection]]:
    """The intro and the sections of ``prompt``; ``ValueError`` for a bad difficulty in an XML box."""
    intro: list[str] = []
    sections: list[tuple[str, list[str], frozenset[str], str]] = []  # title, lines, levels, box tag
    box: str | None = None
    for line in prompt.splitlines():
        if box is not None:
            if line.strip() == f"</{box}>":
                sections[-1][1].append(f"</{box}>")
                box = None
            else:
                sections[-1][1].append(line)
            continue
        opened = _xml_open(line)
        if opened is not None and f"</{opened[0]}>" in prompt:
            tag, levels = opened
            sections.append((tag, [f"<{tag}>"], levels, tag))
            box = tag
            continue
        m = _is_title(line)
        if m is not None:
            title = m.group("title")
            p = _PREFIX.match(title)
            levels = frozenset(p.group("levels")) if p else frozenset(DIFFICULTIES)
            if p:
                line = line.replace(title, p.group("rest"), 1)
                title = p.group("rest")
            sections.append((title.strip(), [line], levels, ""))
        elif sections:
            sections[-1][1].append(line)
        else:
            intro.append(line)
    out = []
    for title, lines, levels, tag in sections:
        body = lines[1:-1] if tag and lines[-1] == f"</{tag}>" else lines[1:]
        out.append(PromptSection("\n".join(lines), levels, title, "\n".join(body)))
    return "\n".join(intro), out


def _styled(section: PromptSection, style: PromptStyle) -> str:
    body = section.body.strip("\n")
    if style is PromptStyle.XML:
        return f"<{section.title.replace(' ', '_')}>\n{body}\n</{section.title.replace(' ', '_')}>"
    head = {
        PromptStyle.DASHED: f"--- {section.title} ---",
        PromptStyle.ASTERISK: f"*** {section.title} ***",
        PromptStyle.MARKDOWN: f"## {section.title}",
    }[style]
    return f"{head}\n{body}" if body else head


def render_prompt(prompt: str, difficulty: str, style: object = None) -> str:
    """``prompt`` with the sections that do not apply at ``difficulty`` left out.

    Args:
        prompt: the prompt text.
        difficulty: ``L``, ``M`` or ``H``.
        style: a :class:`PromptStyle` (or its name) to render every title in; ``None``: as written.
    """
    chosen = PromptStyle.of(style)
    intro, sections = parse_sections(prompt)
    if chosen is None and all(
        s.levels == frozenset(DIFFICULTIES) and not s.text.startswith("<") for s in sections
    ):
        return prompt
    kept = [s.text if chosen is None else _styled(s, chosen) for s in sections if difficulty in s.levels]
    return "\n".join([intro, *kept]) if intro else "\n".join(kept)


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``{name}`` of ``values`` filled; others are left as written.

    On a line starting with ``#`` the value is a block comment: each of its lines gets ``# ``.
    """
    if "{" not in text:
        return text
    return Template(text).fill(values)


class Template:
    """A text with ``{name}`` placeholders, split once into literal runs and slots.

    :meth:`fill` joins the parts, so a prompt filled on every step costs a join, not a regular
    expression pass per line; :meth:`partial` fills the values known ahead (an agent's tool texts)
    into the literal runs. Filling is :func:`fill_placeholders`'s: an unknown name stays as written,
    a slot on a line starting with ``#`` gets its value as a block comment.
    """

    __slots__ = ("names", "parts")

    def __init__(self, text: str, *, _parts: tuple[str | tuple[str, bool], ...] | None = None) -> None:
        parts: list[str | tuple[str, bool]] = list(_parts) if _parts is not None else _split(text)
        self.parts = tuple(parts)
        self.names = frozenset(p[0] for p in self.parts if isinstance(p, tuple))
        """The placeholder names the text holds."""

    def partial(self, values: Mapping[str, str]) -> Template:
        """This template with ``values`` filled in; the other slots stay slots."""
        merged: list[str | tuple[str, bool]] = []
        for part in self.parts:
            if isinstance(part, tuple) and part[0] in values:
                part = _slot_text(part, values[part[0]])
            if isinstance(part, str) and merged and isinstance(merged[-1], str):
                merged[-1] += part
            else:
                merged.append(part)
        return Template("", _parts=tuple(merged))

    def fill(self, values: Mapping[str, str]) -> str:
        """The text with the slots of ``values`` filled and the others written as ``{name}``."""
        return "".join(
            part if isinstance(part, str) else _slot_text(part, values.get(part[0])) for part in self.parts
        )


def _slot_text(slot: tuple[str, bool], value: str | None) -> str:
    name, comment = slot
    if value is None:
        return "{" + name + "}"
    if comment:
        return "\n# ".join(value.splitlines()) if value else ""
    return value


def _split(text: str) -> list[str | tuple[str, bool]]:
    parts: list[str | tuple[str, bool]] = []
    literal: list[str] = []
    for i, line in enumerate(text.split("\n")):
        if i:
            literal.append("\n")
        comment = line.lstrip().startswith("#")
        at = 0
        for m in _PLACEHOLDER.finditer(line):
            literal.append(line[at : m.start()])
            parts.append("".join(literal))
            literal = []
            parts.append((m.group(1), comment))
            at = m.end()
        literal.append(line[at:])
    parts.append("".join(literal))
    return [p for p in parts if p != ""]
