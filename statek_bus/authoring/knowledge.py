"""Knowledge: prompt files, warmup defs, examples and documents, parsed, and what they make of agents.

STATEK reads four directories (§1.9, §1.13); statek-bus parses the same files, wherever they come
from (a published ``statek_knowledge`` version, see :mod:`statek_bus.jobs.knowledge`):

- ``prompts/<role>.md``: ``# KEY: value`` lines before a ``# System Prompt`` header are metadata
  (keys upper-cased; merged over the agent's own, ``DESCRIPTION`` replaces its description);
  everything after the header is the prompt. A file without the header is an error.
- ``warmups/<role>.py``: that agent's warmup code (the syntax of
  :meth:`~statek_bus.authoring.agents.SupervisedAgent.update_warmup_def`).
- ``examples/<role>/**/*.md``: ``# key: value`` metadata outside code fences (``name``,
  ``seq_id``, ``difficulty``/``task_difficulty``); then code (```` ```python ```` fences, or plain
  lines in a file without fences) alternating with console output (lines starting ``> ``, or plain
  text in a file with fences); a ``# ----------`` line ends the warmup part. Text before the first
  code block is an error. Examples are sorted by ``seq_id``; those without one go last.
- ``documents/**/*.{txt,md}``: ``# ord_no:``, ``# topic:`` and ``# title:`` headers (required) and
  ``# audience: a,b`` (optional: the roles that may read it), then the body.

Every error names the file and the line (:class:`KnowledgeError`). Files are data, never code run
here: a warmup def is code the job runs in its sandbox, as the agent's own warmup would be.

A :class:`KnowledgeView` is one version applied to the served agents: each agent with a prompt
file or warmup def becomes a :meth:`~statek_bus.authoring.agents.Agent.derived` copy, and
``EXTRA_RESOURCES: (LM:assistant,researcher),(H:helpdesk)`` adds donor agents' tools and examples
from the lowest difficulty of their group up (:meth:`KnowledgeView.at`).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from statek_bus.authoring.agents import Agent, AnyAgent, parse_warmup
from statek_bus.authoring.postprocess import agent_post_processors
from statek_bus.authoring.prompts import PromptStyle, parse_difficulty, parse_levels, parse_sections
from statek_bus.jobs.knowledge import RawFile
from statek_bus.wire.difficulty import DIFFICULTIES, Difficulty

__all__ = [
    "Document",
    "Example",
    "ExamplePart",
    "Knowledge",
    "KnowledgeError",
    "KnowledgeView",
    "PromptDef",
    "build_knowledge",
    "parse_document",
    "parse_example",
    "parse_extra_resources",
    "parse_prompt_file",
]

_META = re.compile(r"^#\s*([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")
_HEADER = re.compile(r"^#\s*System\s+Prompt\s*$", re.IGNORECASE)
_SPLIT = re.compile(r"^\s*#\s*-{10,}\s*$")
_FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")
_PY = {"python", "py", "python3"}
_MAX_VIEWS = 256
"""Agents with donor tools kept per version (one per role, difficulty and job ``extra_resources``)."""
_GROUP = re.compile(r"\(\s*([A-Za-z]+)\s*:\s*([^()]*)\)")


class KnowledgeError(ValueError):
    """A knowledge file that cannot be used: the message names the file and the line."""

    def __init__(self, where: str, line: int | None, message: str) -> None:
        self.where, self.line = where, line
        super().__init__(f"{where}: line {line}: {message}" if line else f"{where}: {message}")


@dataclass(frozen=True)
class PromptDef:
    """A parsed prompt file."""

    role: str
    """The agent it applies to (the file's name)."""
    system: str
    """The prompt: everything after the ``# System Prompt`` header."""
    metadata: dict[str, Any]
    """``# KEY: value`` lines before the header (keys upper-cased; a JSON list or object is parsed)."""


@dataclass(frozen=True)
class ExamplePart:
    """One part of an example: code, or the console output it printed."""

    kind: str
    """``code`` or ``console``."""
    text: str
    """The lines, joined."""


@dataclass(frozen=True)
class Example:
    """A parsed example."""

    role: str
    """The agent whose examples directory holds it."""
    path: str
    """Its path under ``examples/``."""
    name: str
    """``# name:`` (default: the file's stem)."""
    seq_id: int | None
    """``# seq_id:``: the sort order."""
    difficulty: str | None
    """``# difficulty:``: showing it raises the job to this difficulty."""
    warmup: tuple[ExamplePart, ...]
    """The parts before a ``# ----------`` line."""
    parts: tuple[ExamplePart, ...]
    """The example itself."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Every ``# key: value`` line (keys lower-cased)."""


@dataclass(frozen=True)
class Document:
    """A parsed document."""

    path: str
    """Its path under ``documents/``."""
    ord_no: str
    """``# ord_no:``: its order in its topic."""
    topic: str
    """``# topic:``."""
    title: str
    """``# title:``."""
    audience: frozenset[str] | None
    """``# audience:``: the roles that may read it (``None``: every role)."""
    lines: tuple[str, ...]
    """The body."""


def _value(raw: str) -> Any:
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0]


def parse_prompt_file(path: str, text: str) -> PromptDef:
    """Parse ``prompts/<path>``; :class:`KnowledgeError` without a ``# System Prompt`` header."""
    where = f"prompts/{path}"
    lines = text.splitlines()
    metadata: dict[str, Any] = {}
    for n, line in enumerate(lines, 1):
        if _HEADER.match(line.strip()):
            system = "\n".join(lines[n:]).strip("\n")
            try:
                parse_sections(system)
            except ValueError as exc:
                raise KnowledgeError(where, _line_of(lines, n, exc), str(exc)) from None
            return PromptDef(role=_stem(path), system=system, metadata=metadata)
        m = _META.match(line.strip())
        if m:
            metadata[m.group(1).upper()] = _value(m.group(2))
    raise KnowledgeError(
        where, None, "no '# System Prompt' header: metadata lines go before it, the prompt after it"
    )


def _line_of(lines: list[str], offset: int, exc: Exception) -> int | None:
    """The line of ``lines`` (from ``offset``) holding the quoted value of ``exc``'s message."""
    quoted = re.search(r"'([^']+)'", str(exc))
    if quoted:
        for n, line in enumerate(lines[offset:], offset + 1):
            if quoted.group(1) in line:
                return n
    return None


def parse_warmup_def(path: str, text: str) -> str:
    """Check ``warmups/<path>`` (Python syntax, ``#STATEK:`` lines) and return its code."""
    where = f"warmups/{path}"
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise KnowledgeError(where, exc.lineno, f"invalid Python: {exc.msg}") from None
    try:
        parse_warmup(text)
    except ValueError as exc:
        raise KnowledgeError(where, _line_of(text.splitlines(), 0, exc), str(exc)) from None
    return text


def parse_example(role: str, path: str, text: str) -> Example:
    """Parse ``examples/<role>/<path>``; :class:`KnowledgeError` for text before the first code block."""
    where = f"examples/{role}/{path}"
    lines = text.splitlines()
    fenced = any(_FENCE.match(line) for line in lines)
    meta: dict[str, str] = {}
    sections: list[list[tuple[str, list[str]]]] = [[]]
    fence: str | None = None

    def add(kind: str, line: str, n: int) -> None:
        parts = sections[-1]
        if kind == "console" and not parts and not any(sections[:-1]):
            raise KnowledgeError(where, n, "text before the first code block")
        if parts and parts[-1][0] == kind:
            parts[-1][1].append(line)
        else:
            parts.append((kind, [line]))

    for n, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip() == "```":
                fence = None
            else:
                add("code" if fence in _PY else "console", line, n)
            continue
        m = _FENCE.match(line)
        if m:
            fence = m.group(1).lower() or "text"
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if _SPLIT.match(line):
            sections.append([])
            continue
        meta_m = _META.match(stripped)
        if meta_m:
            meta[meta_m.group(1).lower()] = meta_m.group(2)
            continue
        if stripped.startswith(">"):
            add("console", stripped[1:].removeprefix(" "), n)
        else:
            add("console" if fenced else "code", line, n)
    if fence is not None:
        raise KnowledgeError(where, len(lines), "a code fence is not closed")
    difficulty = meta.get("difficulty") or meta.get("task_difficulty")
    try:
        level = parse_difficulty(difficulty) if difficulty else None
    except ValueError as exc:
        raise KnowledgeError(where, _line_of(lines, 0, exc), str(exc)) from None
    seq = meta.get("seq_id")
    if seq is not None and not re.fullmatch(r"-?\d+", seq):
        raise KnowledgeError(
            where, _line_of(lines, 0, ValueError(f"'{seq}'")), f"seq_id {seq!r} is not an integer"
        )

    def parts(section: list[tuple[str, list[str]]]) -> tuple[ExamplePart, ...]:
        return tuple(ExamplePart(kind, "\n".join(body).strip("\n")) for kind, body in section)

    warmup, body = (sections[0], sections[1:]) if len(sections) > 1 else ([], sections)
    return Example(
        role=role,
        path=path,
        name=meta.get("name") or _stem(path),
        seq_id=int(seq) if seq is not None else None,
        difficulty=level,
        warmup=parts(warmup),
        parts=tuple(p for s in body for p in parts(s)),
        metadata=meta,
    )


_DOC_REQUIRED = ("ord_no", "topic", "title")


def parse_document(path: str, text: str) -> Document:
    """Parse ``documents/<path>``; :class:`KnowledgeError` for a missing required header."""
    lines = text.splitlines()
    headers: dict[str, str] = {}
    body_from = len(lines)
    for n, line in enumerate(lines):
        m = _META.match(line.strip())
        if m and m.group(1).lower() in (*_DOC_REQUIRED, "audience"):
            headers[m.group(1).lower()] = m.group(2)
        elif line.strip():
            body_from = n
            break
    missing = [h for h in _DOC_REQUIRED if not headers.get(h)]
    if missing:
        raise KnowledgeError(f"documents/{path}", 1, f"Missing required headers: {', '.join(missing)}")
    audience = headers.get("audience")
    roles = frozenset(r.strip() for r in audience.split(",") if r.strip()) if audience else None
    return Document(
        path=path,
        ord_no=headers["ord_no"],
        topic=headers["topic"],
        title=headers["title"],
        audience=roles or None,
        lines=tuple(lines[body_from:]),
    )


def parse_extra_resources(value: object, *, agent: str = "") -> list[tuple[Difficulty, tuple[str, ...]]]:
    """``(LM:assistant,researcher),(H:helpdesk)`` as (lowest difficulty, donor roles) groups.

    Raises:
        ValueError: bad syntax or a bad difficulty label, naming the agent.
    """
    text = str(value or "").strip()
    if not text:
        return []
    whose = f"agent {agent!r}: " if agent else ""
    groups: list[tuple[Difficulty, tuple[str, ...]]] = []
    pos = 0
    for m in _GROUP.finditer(text):
        if text[pos : m.start()].strip(" ,"):
            break
        try:
            levels = parse_levels(m.group(1))
        except ValueError as exc:
            raise ValueError(f"{whose}EXTRA_RESOURCES {text!r}: {exc}") from None
        roles = tuple(r.strip() for r in m.group(2).split(",") if r.strip())
        if not roles:
            raise ValueError(f"{whose}EXTRA_RESOURCES {text!r}: a group names no role")
        groups.append((min((Difficulty(x) for x in levels), key=DIFFICULTIES.index), roles))
        pos = m.end()
    if not groups or text[pos:].strip(" ,"):
        raise ValueError(
            f"{whose}EXTRA_RESOURCES {text!r} is malformed; expected groups like (LM:assistant,researcher),(H:helpdesk)"
        )
    return groups


@dataclass(frozen=True)
class Knowledge:
    """One parsed knowledge version."""

    version: str
    """Its content hash (``""``: nothing published)."""
    prompts: Mapping[str, PromptDef] = field(default_factory=dict)
    """Prompt files by role."""
    warmups: Mapping[str, str] = field(default_factory=dict)
    """Warmup defs by role."""
    examples: Mapping[str, tuple[Example, ...]] = field(default_factory=dict)
    """Examples by role, sorted by ``seq_id`` (those without last, then by path)."""
    documents: tuple[Document, ...] = ()
    """Documents sorted by topic order and ``ord_no``."""

    def topics(self) -> list[str]:
        """Topics in the order first encountered."""
        return list(dict.fromkeys(d.topic for d in self.documents))


def _ord(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def build_knowledge(version: str, files: Iterable[RawFile]) -> Knowledge:
    """Parse every file of a version; :class:`KnowledgeError` listing each bad file and line."""
    prompts: dict[str, PromptDef] = {}
    warmups: dict[str, str] = {}
    examples: dict[str, list[Example]] = {}
    documents: list[Document] = []
    errors: list[str] = []
    for f in files:
        try:
            text = f.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(f"{f.kind}/{f.path}: not UTF-8 text (byte {exc.start})")
            continue
        try:
            if f.kind == "prompts":
                p = parse_prompt_file(f.path, text)
                prompts[p.role] = p
            elif f.kind == "warmups":
                warmups[_stem(f.path)] = parse_warmup_def(f.path, text)
            elif f.kind == "examples":
                role, _, rest = f.path.partition("/")
                examples.setdefault(role, []).append(parse_example(role, rest, text))
            else:
                documents.append(parse_document(f.path, text))
        except KnowledgeError as exc:
            errors.append(str(exc))
    if errors:
        raise KnowledgeError("knowledge", None, "; ".join(errors))
    documents.sort(key=lambda d: (_ord(d.ord_no), d.path))
    return Knowledge(
        version=version,
        prompts=prompts,
        warmups=warmups,
        examples={
            role: tuple(sorted(exs, key=lambda e: (e.seq_id is None, e.seq_id or 0, e.path)))
            for role, exs in examples.items()
        },
        documents=tuple(documents),
    )


def _check_metadata(agent: Agent, where: str) -> None:
    """A prompt file's metadata that the executor reads is checked when the file is applied."""
    try:
        PromptStyle.of(agent.metadata.get("PROMPT_STYLE"))
        parse_difficulty(agent.metadata.get("DEFAULT_DIFFICULTY"))
        agent_post_processors(agent)
    except ValueError as exc:
        raise KnowledgeError(where, None, str(exc)) from None


class KnowledgeView:
    """One knowledge version applied to the served agents (immutable once built: a step holds one).

    Args:
        knowledge: the parsed version.
        agents: the agents as their module defines them, by role.

    Raises:
        ValueError: a warmup def for an agent without warmup, bad ``EXTRA_RESOURCES`` syntax, or a
            donor role no agent of this executor has (each naming the agent).
    """

    def __init__(self, knowledge: Knowledge, agents: Mapping[str, AnyAgent]) -> None:
        self.knowledge = knowledge
        self.agents: dict[str, AnyAgent] = {}
        for role, agent in agents.items():
            p, w = knowledge.prompts.get(role), knowledge.warmups.get(role)
            if isinstance(agent, Agent) and (p is not None or w is not None):
                try:
                    agent = agent.derived(
                        prompt=p.system if p else None, metadata=p.metadata if p else None, warmup=w
                    )
                except ValueError as exc:
                    raise KnowledgeError(f"warmups/{role}.py", None, str(exc)) from None
                if p is not None:
                    _check_metadata(agent, f"prompts/{role}.md")
            self.agents[role] = agent
        self._groups: dict[str, list[tuple[Difficulty, tuple[str, ...]]]] = {}
        for role, agent in self.agents.items():
            if not isinstance(agent, Agent):
                continue
            groups = parse_extra_resources(agent.metadata.get("EXTRA_RESOURCES"), agent=role)
            self._check_donors(role, groups, "EXTRA_RESOURCES")
            self._groups[role] = groups
        self._at: dict[tuple[str, str, str | None], Agent] = {}
        self._jobs: dict[str, list[tuple[Difficulty, tuple[str, ...]]]] = {}

    @property
    def version(self) -> str:
        """The knowledge version."""
        return self.knowledge.version

    def donors(self, role: str, difficulty: str, extra: str | None = None) -> list[Agent]:
        """The donor agents of ``role`` active at ``difficulty``, in ``EXTRA_RESOURCES`` order.

        Args:
            role: the receiver.
            difficulty: the job's difficulty.
            extra: the job's own ``extra_resources`` (instead of the agent's ``EXTRA_RESOURCES``).

        Raises:
            ValueError: ``extra`` is malformed or names a role this executor does not serve.
        """
        groups = self._groups.get(role, []) if extra is None else self._extra(role, extra)
        level = DIFFICULTIES.index(Difficulty(difficulty)) if difficulty in DIFFICULTIES else 1
        out: list[Agent] = []
        for lowest, roles in groups:
            if DIFFICULTIES.index(lowest) <= level:
                for r in roles:
                    donor = self.agents[r]
                    if isinstance(donor, Agent) and donor not in out and r != role:
                        out.append(donor)
        return out

    def _extra(self, role: str, extra: str) -> list[tuple[Difficulty, tuple[str, ...]]]:
        found = self._jobs.get(extra)
        if found is None:
            if len(self._jobs) >= _MAX_VIEWS:
                self._jobs.clear()
            found = parse_extra_resources(extra, agent=role)
            self._check_donors(role, found, "extra_resources")
            self._jobs[extra] = found
        return found

    def _check_donors(self, role: str, groups: list[tuple[Difficulty, tuple[str, ...]]], what: str) -> None:
        for _, donors in groups:
            for donor in donors:
                if not isinstance(self.agents.get(donor), Agent):
                    served = ", ".join(sorted(r for r, a in self.agents.items() if isinstance(a, Agent)))
                    raise ValueError(
                        f"agent {role!r}: {what} names role {donor!r}, which is not a "
                        f"code-first agent of this executor (served: {served})"
                    )

    def at(self, agent: Agent, difficulty: str, extra: str | None = None) -> Agent:
        """``agent`` (as this version makes it) with its donors' tools at ``difficulty``.

        Args:
            agent: the job's agent.
            difficulty: the job's difficulty.
            extra: the job's own ``extra_resources``, if it has them.
        """
        own = self.agents.get(agent.role)
        base = own if isinstance(own, Agent) else agent
        donors = self.donors(agent.role, difficulty, extra)
        if not donors:
            return base
        key = (agent.role, difficulty, extra)
        found = self._at.get(key)
        if found is None:
            if len(self._at) >= _MAX_VIEWS:
                self._at.clear()
            extra_tools = [t for d in donors for t in (*d.tools, *d.internal_tools)]
            found = self._at[key] = base.derived(extra_tools=extra_tools)
        return found

    def examples(self, role: str, difficulty: str, extra: str | None = None) -> list[Example]:
        """The examples a job of ``role`` sees: its own, then its active donors'."""
        out = list(self.knowledge.examples.get(role, ()))
        for donor in self.donors(role, difficulty, extra):
            out += self.knowledge.examples.get(donor.role, ())
        return out

    def documents(self, role: str) -> list[Document]:
        """The documents ``role`` may read (its audience, or every role's)."""
        return [d for d in self.knowledge.documents if d.audience is None or role in d.audience]
