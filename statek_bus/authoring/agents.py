"""Agents: what a job runs. Code-first agents (the model writes Python) and handler agents.

- :class:`Agent` holds a role, a system prompt, tools and metadata (``MODEL``, ``CHAT_STYLE``,
  ``LLM_TOOLS_SCOPE``, ``TEMPERATURE``, ``SCRIPT``...). Tools whose name starts with ``_`` are
  internal: callable from code, never described to the model.
- :class:`SupervisedAgent` adds warmup code, parsed by :meth:`SupervisedAgent.update_warmup_def`:
  blocks are separated by a ``# ----------`` line (10 dashes or more), a ``#STATEK: key = literal``
  line sets block metadata (``hidden = True``), and a line ending in ``#STATEK: as tool`` is run
  as a formal tool call. Each warmup block takes one step.
- :class:`HandlerAgent` runs plain async Python: ``@agent.on_create`` and ``@agent.on_event``
  handlers (seed 002's shape) with a :class:`HandlerContext` (``ctx.state`` bound to the job and
  agent, ``ctx.job``, ``ctx.send_message``). One job's handlers never run concurrently.

The executor imports the user's module (``--agents module:attr``) and registers each agent's
:meth:`~Agent.description` in ``statek_agents``, so submission validates roles without user code.
"""

from __future__ import annotations

import ast
import copy as _copy
import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from statek_bus.authoring.library import LIBRARY_TOOLS, example_names
from statek_bus.authoring.messaging import check_send_message
from statek_bus.authoring.prompts import Template, render_prompt
from statek_bus.authoring.referenced import referenced_locals
from statek_bus.authoring.shared_context import CONTEXT_TOOLS
from statek_bus.authoring.tools import SYSTEM_TOOLS, Tool, as_tool
from statek_bus.authoring.waiting import WAIT_TOOLS
from statek_bus.wire.messages import AgentDescription, ParamDescription
from statek_bus.wire.options import JobOptions

__all__ = [
    "Agent",
    "HandlerAgent",
    "HandlerContext",
    "HandlerEvent",
    "SupervisedAgent",
    "WarmupBlock",
    "WarmupCall",
    "job_warmup",
    "parse_warmup",
]

_SPLIT = re.compile(r"^\s*#\s*-{10,}\s*$")
_META = re.compile(r"^\s*#\s*STATEK\s*:(.*)$")
_AS_TOOL = re.compile(r"#\s*STATEK\s*:\s*as\s+tool\s*$")
_MAX_PLANS = 64
"""Prepared prompts kept per agent (one per chat style and difficulty in use)."""


@dataclass(frozen=True)
class _PromptPlan:
    """A prompt prepared for one chat style and difficulty: what no job changes."""

    template: Template
    """The prompt with the sections of other difficulties left out and the placeholders that
    depend only on the agent (its tool texts) filled; the others are its slots."""


@dataclass(frozen=True)
class WarmupCall:
    """A warmup line run as a formal tool call (``call(...)  #STATEK: as tool``)."""

    name: str
    """Tool name."""
    args: tuple[Any, ...] = ()
    """Positional literal arguments."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword literal arguments."""


@dataclass(frozen=True)
class WarmupBlock:
    """One warmup block: runs in its own step."""

    code: str
    """The Python source (tool-call lines removed)."""
    calls: tuple[WarmupCall, ...] = ()
    """Lines marked ``#STATEK: as tool``, run as formal tool calls before the code."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """``#STATEK: key = literal`` values."""

    @property
    def hidden(self) -> bool:
        """Left out of the model's history; may call hidden tools."""
        return bool(self.metadata.get("hidden", False))


def _parse_call(expr: str) -> WarmupCall:
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"invalid '#STATEK: as tool' line {expr.strip()!r}: {exc.msg}") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"'#STATEK: as tool' needs a call like name(...), got {expr.strip()!r}")
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    except ValueError:
        raise ValueError(f"'#STATEK: as tool' arguments must be literals: {expr.strip()!r}") from None
    if any(k.arg is None for k in node.keywords):
        raise ValueError(f"'#STATEK: as tool' does not take **kwargs: {expr.strip()!r}")
    return WarmupCall(name=node.func.id, args=args, kwargs=kwargs)


def parse_warmup(source: str) -> list[WarmupBlock]:
    """Split warmup source into blocks; ``ValueError`` for a malformed ``#STATEK:`` line."""
    blocks: list[WarmupBlock] = []
    chunks: list[list[str]] = [[]]
    for line in source.splitlines():
        if _SPLIT.match(line):
            chunks.append([])
        else:
            chunks[-1].append(line)
    for chunk in chunks:
        code_lines: list[str] = []
        calls: list[WarmupCall] = []
        meta: dict[str, Any] = {}
        for line in chunk:
            if _AS_TOOL.search(line):
                calls.append(_parse_call(_AS_TOOL.sub("", line)))
                continue
            m = _META.match(line)
            if m:
                key, sep, value = m.group(1).partition("=")
                if not sep or not key.strip().isidentifier():
                    raise ValueError(f"malformed #STATEK line {line.strip()!r}: expected 'key = literal'")
                try:
                    meta[key.strip()] = ast.literal_eval(value.strip())
                except (ValueError, SyntaxError):
                    raise ValueError(f"malformed #STATEK value in {line.strip()!r}: not a literal") from None
                continue
            code_lines.append(line)
        code = "\n".join(code_lines).strip("\n")
        if code.strip() or calls:
            blocks.append(WarmupBlock(code=code, calls=tuple(calls), metadata=meta))
    return blocks


@functools.lru_cache(maxsize=256)
def _job_blocks(code: str) -> tuple[WarmupBlock, ...]:
    return tuple(
        WarmupBlock(
            code=b.code, calls=b.calls, metadata={k: v for k, v in b.metadata.items() if k != "hidden"}
        )
        for b in parse_warmup(code)
    )


def job_warmup(options: JobOptions | None) -> list[WarmupBlock]:
    """The warmup blocks of a job's own ``warmup_code`` (none without): never hidden, so they run as
    untrusted code in the sandbox, as model code does (the code came from a client)."""
    if options is None or not options.warmup_code:
        return []
    return list(_job_blocks(options.warmup_code))


class Agent:
    """A code-first agent: the model writes Python that runs in the job's workspace.

    Args:
        role: the name jobs are submitted to.
        system_prompt: the prompt; ``{tools}``, ``{brief_tools}``, ``{detailed_tools}``,
            ``{shared_var_names}`` and ``{<param>}`` placeholders are filled per job.
        tools: tools (``@tool`` functions or plain functions) the model may call.
        metadata: ``MODEL`` (required), ``CHAT_STYLE``, ``LLM_TOOLS_SCOPE``, ``TEMPERATURE``,
            ``SCRIPT``/``SCRIPT_FILE`` for the scripted model, ``DEFAULT_DIFFICULTY``...
        description: what the agent does (shown by ``statek.agents.list``).
        params: job parameters the agent declares.
        types: dataclasses/Structs/Enums its workspace may hold (besides those of its module).
        send_message: callable ``(body, media=None)`` receiving dialog prose (MD_DIALOG/DIRECT),
            split into a body and a media reference; checked here
            (:func:`~statek_bus.authoring.messaging.check_send_message`).
    """

    kind = "code"

    def __init__(
        self,
        role: str,
        system_prompt: str = "",
        tools: Iterable[Callable[..., Any] | Tool] = (),
        metadata: dict[str, Any] | None = None,
        description: str = "",
        *,
        params: Sequence[ParamDescription] = (),
        types: Sequence[type] = (),
        send_message: Callable[..., Any] | None = None,
    ) -> None:
        if not role:
            raise ValueError("an agent needs a role")
        self.role = role
        self.prompt = system_prompt
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.description_text = description or str(self.metadata.get("DESCRIPTION", ""))
        self.params = list(params)
        self.types = list(types)
        self.send_message = check_send_message(send_message) if send_message is not None else None
        self.tools: list[Tool] = []
        self.internal_tools: list[Tool] = []
        self._all_tools: tuple[tuple[Any, ...], tuple[Tool, ...]] | None = None
        self._plans: dict[tuple[Any, ...], _PromptPlan] = {}
        for t in tools:
            self.add_tool(t)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.role}>"

    @property
    def model(self) -> str | None:
        """``MODEL`` metadata."""
        value = self.metadata.get("MODEL")
        return str(value) if value is not None else None

    @property
    def chat_style(self) -> str:
        """``CHAT_STYLE`` metadata (default ``CONSOLE``)."""
        return str(self.metadata.get("CHAT_STYLE") or "CONSOLE").upper()

    def update_system_prompt(self, prompt: str) -> bool:
        """Replace the system prompt (STATEK's name); returns whether it changed."""
        changed, self.prompt = prompt != self.prompt, prompt
        return changed

    def update_metadata(self, metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into the agent's (STATEK's name); returns whether anything changed."""
        merged = {**self.metadata, **metadata}
        changed, self.metadata = merged != self.metadata, merged
        return changed

    def update_description(self, description: str) -> bool:
        """Replace the description (STATEK's name); returns whether it changed."""
        changed, self.description_text = description != self.description_text, description
        return changed

    def add_tool(self, fn: Callable[..., Any] | Tool) -> Tool:
        """Add a tool; a name starting with ``_`` makes it internal (not described)."""
        t = as_tool(fn)
        (self.internal_tools if t.name.startswith("_") else self.tools).append(t)
        return t

    def _tools_key(self) -> tuple[Any, ...]:
        # Tools are read-only once built, so identity says everything about them; holding the
        # objects (not their ids) in the key means a freed tool's id cannot alias a new one.
        return (
            tuple(self.tools),
            tuple(self.internal_tools),
            SYSTEM_TOOLS,
            CONTEXT_TOOLS,
            LIBRARY_TOOLS,
            WAIT_TOOLS,
        )

    def all_tools(self) -> list[Tool]:
        """Every tool in a job's namespace: the agent's (first, they win on a name clash), then system
        tools, the knowledge tools of :mod:`statek_bus.authoring.library`, then the waiting tools of
        :mod:`statek_bus.authoring.waiting`."""
        key = self._tools_key()
        cached = self._all_tools
        if cached is None or cached[0] != key:
            seen: dict[str, Tool] = {}
            for t in [
                *self.tools,
                *self.internal_tools,
                *SYSTEM_TOOLS,
                *CONTEXT_TOOLS,
                *LIBRARY_TOOLS,
                *WAIT_TOOLS,
            ]:
                seen.setdefault(t.name, t)
            cached = self._all_tools = (key, tuple(seen.values()))
        return list(cached[1])

    def visible_tools(self, chat_style: str | None = None) -> list[Tool]:
        """Tools described to the model (not hidden, not internal, matching the chat style)."""
        style = (chat_style or self.chat_style).upper()
        return [
            t
            for t in self.all_tools()
            if not t.hidden and not t.name.startswith("_") and (t.target is None or style in t.target)
        ]

    def system_prompt(
        self,
        *,
        params: dict[str, Any] | None = None,
        shared_var_names: Iterable[str] = (),
        chat_style: str | None = None,
        difficulty: str = "M",
    ) -> str:
        """The prompt for ``difficulty`` (see :mod:`statek_bus.authoring.prompts`) with its placeholders filled.

        Unknown ``{keys}`` and literal braces are left as they are (STATEK raised ``KeyError``).
        What depends only on the agent (the sections kept at ``difficulty``, the tool texts for
        ``chat_style``) is computed once and reused while the prompt and the tools stay the same;
        only ``{shared_var_names}`` and ``{<param>}`` are filled per call.
        """
        if not self.prompt:
            return ""
        style = (chat_style or self.chat_style).upper()
        key = (
            self.prompt,
            style,
            difficulty,
            self._tools_key(),
            str(self.metadata.get("PROMPT_STYLE") or ""),
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:  # prompts or tools replaced many times: start again
                self._plans.clear()
            plan = self._plans[key] = self._plan(style, difficulty)
        names = plan.template.names
        if not names:
            return plan.template.fill({})
        values: dict[str, str] = {}
        if "shared_var_names" in names:
            values["shared_var_names"] = ", ".join(shared_var_names)
        if params:
            for name in names:
                if name not in values and name in params:
                    values[name] = str(params[name])
        return plan.template.fill(values)

    def _plan(self, style: str, difficulty: str) -> _PromptPlan:
        """The prompt at ``difficulty`` and the agent-only placeholder values it uses."""
        template = Template(render_prompt(self.prompt, difficulty, self.metadata.get("PROMPT_STYLE")))
        names = template.names
        fixed: dict[str, str] = {}
        if names & {"tools", "brief_tools", "detailed_tools"}:
            tools = self.visible_tools(style)
            if names & {"tools", "brief_tools"}:
                fixed["tools"] = fixed["brief_tools"] = "\n".join(t.brief_text() for t in tools)
            if "detailed_tools" in names:
                fixed["detailed_tools"] = "\n\n".join(t.detailed_text() for t in tools)
        return _PromptPlan(template=template.partial(fixed))

    def warmup_blocks(self) -> list[WarmupBlock]:
        """Warmup blocks run before the first LLM call (none for a plain agent)."""
        return []

    def get_examples(self) -> list[str]:
        """Names of this agent's examples (``examples/<role>/``) in the knowledge version being served."""
        return example_names(self.role)

    def derived(
        self,
        *,
        prompt: str | None = None,
        metadata: dict[str, Any] | None = None,
        extra_tools: Iterable[Tool] = (),
        warmup: str | None = None,
    ) -> Agent:
        """A copy of this agent with a prompt file's prompt and metadata (merged over its own), donor
        tools added after its own (its own win a name clash), or a warmup def; this agent is unchanged.

        Raises:
            ValueError: ``warmup`` for an agent without warmup (not a :class:`SupervisedAgent`).
        """
        if warmup is not None and not isinstance(self, SupervisedAgent):
            raise ValueError(f"agent {self.role!r} is not a SupervisedAgent: it has no warmup to replace")
        copy = _copy.copy(self)
        copy.metadata = {**self.metadata, **(metadata or {})}
        if prompt is not None:
            copy.prompt = prompt
        if metadata and "DESCRIPTION" in metadata:
            copy.description_text = str(metadata["DESCRIPTION"])
        own = {t.name for t in (*self.tools, *self.internal_tools)}
        copy.tools, copy.internal_tools = list(self.tools), list(self.internal_tools)
        for t in extra_tools:
            if t.name not in own:
                own.add(t.name)
                (copy.internal_tools if t.name.startswith("_") else copy.tools).append(t)
        copy._all_tools, copy._plans = None, {}
        if warmup is not None and isinstance(copy, SupervisedAgent):
            copy.update_warmup_def(warmup)
        return copy

    def description(self) -> AgentDescription:
        """What the executor registers in ``statek_agents``."""
        meta = {k: v for k, v in self.metadata.items() if k not in ("SCRIPT", "DESCRIPTION")}
        return AgentDescription(
            role=self.role,
            description=self.description_text or (self.prompt.strip().splitlines() or [""])[0][:200],
            kind="code",
            tools=[t.description() for t in self.visible_tools()],
            params=self.params,
            model=self.model,
            metadata=_jsonable(meta),
        )


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        out[k] = v if isinstance(v, str | int | float | bool | type(None) | list | dict) else str(v)
    return out


class SupervisedAgent(Agent):
    """A code-first agent with warmup code (see :meth:`update_warmup_def`)."""

    def __init__(self, *args: Any, warmup: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warmup_code = ""
        self._blocks: list[WarmupBlock] = []
        if warmup:
            self.update_warmup_def(warmup)

    def update_warmup_def(self, code: str) -> bool:
        """Replace the warmup code; returns whether it changed. ``ValueError`` if malformed."""
        blocks = parse_warmup(code)
        changed = code != self.warmup_code
        self.warmup_code, self._blocks = code, blocks
        return changed

    def warmup_blocks(self) -> list[WarmupBlock]:
        """The parsed warmup blocks."""
        return list(self._blocks)

    @property
    def referenced_locals(self) -> list[str]:
        """Names the warmup reads but never binds (nor are tools or builtins), in order of first use:
        the shared variables a job of this agent must start with."""
        tools = {t.name for t in self.all_tools()}
        return referenced_locals(self.warmup_code, exclude=tools)


# ==================================================================================================
# Handler agents
# ==================================================================================================


@dataclass(frozen=True)
class EventContent:
    """The content of a handler event (``event.content.content`` is the text)."""

    content: str
    """The message text."""
    type: str = "text"
    """Content type."""
    author: str = "user"
    """Who sent it."""


@dataclass(frozen=True)
class HandlerEvent:
    """An event delivered to ``@agent.on_event``: a message or notification sent to the job."""

    kind: str
    """``message`` or ``notification``."""
    content: EventContent
    """The content."""
    at: Any = None
    """When it was sent (UTC datetime)."""


@dataclass
class HandlerContext:
    """What a handler gets as ``ctx``."""

    job: Any
    """The job (:class:`~statek_bus.wire.messages.Job`)."""
    state: Any
    """The States API bound to (job id, agent role): ``create``, ``get``, ``update``."""
    agent: str
    """The agent role."""
    send_message: Callable[[str], Awaitable[None]]
    """Send a chat message from the agent (recorded in the job's chat log)."""
    client: Any = None
    """An :class:`~statek_bus.client.core.AsyncStatekClient` on the executor's connection."""


CreateHandler = Callable[[HandlerContext, dict[str, Any]], Awaitable[Any]]
EventHandler = Callable[[HandlerContext, HandlerEvent], Awaitable[Any]]


class HandlerAgent:
    """An agent made of async handlers instead of model-written code.

    Args:
        role: the name jobs are submitted to.
        description: what it does.
        params: declared job parameters.
    """

    kind = "handler"

    def __init__(self, role: str, description: str = "", *, params: Sequence[ParamDescription] = ()):
        if not role:
            raise ValueError("an agent needs a role")
        self.role = role
        self.description_text = description
        self.params = list(params)
        self.types: list[type] = []
        self.create_handler: CreateHandler | None = None
        self.event_handler: EventHandler | None = None

    def __repr__(self) -> str:
        return f"<HandlerAgent {self.role}>"

    def on_create(self, fn: CreateHandler) -> CreateHandler:
        """Register ``async def handler(ctx, params)``, run once when a job starts."""
        self.create_handler = fn
        return fn

    def on_event(self, fn: EventHandler) -> EventHandler:
        """Register ``async def handler(ctx, event)``, run for each message sent to the job."""
        self.event_handler = fn
        return fn

    def description(self) -> AgentDescription:
        """What the executor registers in ``statek_agents``."""
        return AgentDescription(
            role=self.role, description=self.description_text, kind="handler", params=self.params
        )


AnyAgent = Agent | HandlerAgent
"""Any agent the executor serves."""
