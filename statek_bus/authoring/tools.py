"""Tools: Python functions an agent's model may call, inline from its code or as formal tool calls.

``@tool`` turns a function into a :class:`Tool`. Its description for the model comes from the
signature and the docstring (summary line plus an ``Args:`` section); a string argument passed
where the annotation wants another type is *bound by name* (an ISO date/time string becomes that
value, otherwise a variable of the job's workspace with that name is used). A tool runs as plain,
unrestricted Python: it is the application's own code. During a step it can read the job it runs
for with :func:`current_job`, and its ``print`` output goes to the job console.

A formal tool call never crashes the step: an exception becomes the call's result text
``<Type>: <message>``. The system tools every job gets are ``docstr``, ``brief``, ``panic``,
``python_cli`` (DIRECT style) and ``get_pending_notifications``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time
from types import MappingProxyType
from typing import Any

from statek_bus.sandbox.replay import refuse_during_replay
from statek_bus.wire.difficulty import DIFFICULTIES, Difficulty
from statek_bus.wire.messages import ToolDescription

__all__ = [
    "SYSTEM_TOOLS",
    "JobContext",
    "Tool",
    "ToolHandle",
    "await_result",
    "brief",
    "current_job",
    "describe",
    "docstr",
    "exit_job",
    "get_pending_notifications",
    "panic",
    "python_cli",
    "select_tools",
    "tool",
    "unwrap_tool",
]

_DIFFICULTY_NAMES = {"L": "low", "M": "medium", "H": "high"}


@dataclasses.dataclass
class JobContext:
    """The job a step runs for, as tools see it (:func:`current_job`)."""

    job_id: str
    """The job id."""
    agent: str
    """The agent role."""
    params: dict[str, Any]
    """The job's parameters."""
    namespace: Mapping[str, Any]
    """The job's workspace namespace (for binding arguments by name); in a worker process's step,
    a read-only view that asks the worker for each name."""
    notifications: list[str] = dataclasses.field(default_factory=list)
    """Notifications waiting for the job (not consumed by reading them)."""
    difficulty: str = "M"
    """Current task difficulty, ``L``, ``M`` or ``H`` (raised by :func:`panic`)."""
    difficulty_changed: bool = False
    """``panic`` ran in this step."""
    loop: asyncio.AbstractEventLoop | None = None
    """The executor's event loop, for tools that are coroutines."""
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Application extras (a client, the chat style...)."""
    error_handlers: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    """(tool name, context) registered in this step by tools with an ``error_handler``."""


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("statek_job", default=None)


def current_job() -> JobContext:
    """The job the calling tool runs for; ``RuntimeError`` outside a step."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("no job context: this tool runs only inside a job step")
    return ctx


def exit_job(value: Any) -> None:
    """End the current job with ``value`` as its exit status (what ``exit(value)`` does in code).

    For tools such as a dialog agent's ``answer``: the step stops after the calling statement.
    ``None`` does nothing, as a bare ``exit()`` does not end a job.
    """
    hook = current_job().extras.get("exit")
    if hook is None:
        raise RuntimeError("exit_job is only available while the job's code runs")
    hook(value)


def bind_job(ctx: JobContext | None) -> contextvars.Token[JobContext | None]:
    """Make ``ctx`` the current job of this thread/task (returns the reset token)."""
    return _current.set(ctx)


def unbind_job(token: contextvars.Token[JobContext | None]) -> None:
    """Undo :func:`bind_job`."""
    _current.reset(token)


# ==================================================================================================
# Docstrings
# ==================================================================================================

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]+:\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _parse_doc(doc: str | None) -> tuple[str, dict[str, str], str]:
    """(summary, {arg: description}, full cleaned docstring)."""
    text = inspect.cleandoc(doc or "")
    if not text:
        return "", {}, ""
    summary = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in text.splitlines():
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            continue
        if in_args:
            if not line.strip():
                continue
            if _SECTION.match(line) and not line.startswith((" ", "\t")):
                in_args = False
                continue
            m = _ARG_LINE.match(line)
            if m and (not line.startswith("        ") or current is None):
                current = m.group(1)
                args[current] = m.group(3).strip()
            elif current is not None:
                args[current] = (args[current] + " " + line.strip()).strip()
    return summary, args, text


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    set: "array",
    dict: "object",
}


def _schema_of(annotation: Any) -> dict[str, Any]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _schema_of(options[0]) if len(options) == 1 else {}
    if origin in (datetime, date, time):
        return {"type": "string", "format": {datetime: "date-time", date: "date", time: "time"}[origin]}
    kind = _JSON_TYPES.get(origin)
    return {"type": kind} if kind else {}


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


# ==================================================================================================
# Tool
# ==================================================================================================


class Tool:
    """A function the model may call; see the module docstring.

    Args:
        fn: the function (sync or async).
        name: tool name (default: the function's name).
        system: a system tool (every job gets it).
        hidden: callable from trusted code only; left out of prompts and tool payloads.
        target: chat styles the tool is offered in (``None``: all).
        error_handler: ``handler(context, error=None)``, called once if the job later ends with an
            error; ``context`` is this tool's return value (JSON-encodable) from the call that
            registered it. Exceptions it raises are logged and swallowed.
        futures: called from model code, the tool receives futures unresolved (``get_all``).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        system: bool = False,
        hidden: bool = False,
        target: Iterable[str] | None = None,
        error_handler: Callable[..., Any] | None = None,
        futures: bool = False,
    ) -> None:
        if error_handler is not None and not callable(error_handler):
            raise TypeError(f"error_handler of tool {name or fn.__name__!r} must be callable")
        self.error_handler = error_handler
        self.takes_futures = futures
        self.fn = fn
        self.name = name or fn.__name__
        self.system = system
        self.hidden = hidden
        self.target = frozenset(str(t).upper() for t in target) if target is not None else None
        self.summary, arg_docs, self.doc = _parse_doc(fn.__doc__)
        self.arg_docs: Mapping[str, str] = MappingProxyType(arg_docs)  # shared: read-only to everyone
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolved forward references: fall back to no hints
            hints = {}
        self.hints: Mapping[str, Any] = MappingProxyType(hints)
        params = self.signature.parameters.values()
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional: tuple[int, tuple[bool, ...]] | None = (
            (
                sum(1 for p in params if p.default is inspect.Parameter.empty),
                tuple(_text_as_is(hints.get(p.name)) for p in params),
            )
            if all(p.kind in positional for p in params)
            else None
        )
        """When every parameter is positional: how many are required, and for each whether a text
        argument passes unconverted. A call within that span, whose texts all pass, binds to its
        own arguments: no ``Signature.bind``."""
        self.__doc__ = fn.__doc__
        self.__name__ = self.name
        self.__wrapped__ = fn
        self.handle = ToolHandle(self)
        """What model code holds for this tool; one per tool, shared by every job like the tool
        itself (it is read-only and reaches nothing the tool's call does not), so a step does not
        build one per tool."""
        self._frozen = True

    # A tool object is shared by every job of the process and reachable from model code: it must
    # not be possible to rebind ``add.fn`` for everybody, so a tool is read-only once built.
    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"tool {self.name!r} is read-only")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"tool {self.name!r} is read-only")

    def __repr__(self) -> str:
        return f"<tool {self.name}>"

    # --- calling -----------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the tool with arguments bound by name; a coroutine is run on the executor's loop."""
        refuse_during_replay(f"{self.name}()")  # also when reached through an alias, not by its name
        if self._binds_as_given(args, kwargs):
            result = self.fn(*args)  # what binding would pass: nothing to map, no text to convert
        else:
            bound = self._bind(args, kwargs)
            result = self.fn(*bound.args, **bound.kwargs)
        if inspect.isawaitable(result):
            result = await_result(result)
        if self.error_handler is not None:
            ctx = _current.get()
            if ctx is not None:
                ctx.error_handlers.append((self.name, result))
        return result

    def _binds_as_given(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        span = self._positional
        if span is None or kwargs or not span[0] <= len(args) <= len(span[1]):
            return False
        as_is = span[1]
        return all(as_is[i] or not isinstance(a, str) for i, a in enumerate(args))

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        bound = self.signature.bind(*args, **kwargs)
        ctx = _current.get()
        for pname, value in list(bound.arguments.items()):
            if isinstance(value, str):
                bound.arguments[pname] = self._bind_str(pname, value, ctx)
        return bound

    def _bind_str(self, pname: str, value: str, ctx: JobContext | None) -> Any:
        hint = self.hints.get(pname)
        if hint is None or hint is str or hint is Any:
            return value
        allowed = set(typing.get_args(hint)) | {typing.get_origin(hint) or hint}
        if str in allowed:
            return value
        for kind in (datetime, date, time):
            if kind in allowed:
                try:
                    return kind.fromisoformat(value)
                except ValueError:
                    pass
        if ctx is not None and value in ctx.namespace:
            return ctx.namespace[value]
        return value

    # --- describing --------------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """JSON Schema of the arguments (``_private``, ``*args`` and ``**kwargs`` left out)."""
        props: dict[str, Any] = {}
        required: list[str] = []
        for p in self._visible_params():
            schema = _schema_of(self.hints.get(p.name, p.annotation))
            if p.name in self.arg_docs:
                schema = {**schema, "description": self.arg_docs[p.name]}
            props[p.name] = schema
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
        return {"type": "object", "properties": props, "required": required}

    def _visible_params(self) -> list[inspect.Parameter]:
        return [
            p
            for p in self.signature.parameters.values()
            if not p.name.startswith("_") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def description(self) -> ToolDescription:
        """The wire description registered with the agent."""
        return ToolDescription(name=self.name, description=self.summary, parameters=self.parameters())

    def spec(self) -> dict[str, Any]:
        """OpenAI-style function tool spec."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.summary, "parameters": self.parameters()},
        }

    def brief_text(self, types: bool = False) -> str:
        """``name(a, b=1)`` plus the summary line, indented."""
        parts = []
        for p in self._visible_params():
            text = p.name
            if types and p.name in self.hints:
                text += f": {_type_name(self.hints[p.name])}"
            if p.default is not inspect.Parameter.empty:
                text += f"={p.default!r}"
            parts.append(text)
        head = f"{self.name}({', '.join(parts)})"
        return f"{head}\n    {self.summary}" if self.summary else head

    def detailed_text(self) -> str:
        """Python-syntax documentation: ``def name(sig) -> ret:`` plus the docstring."""
        sig = str(self.signature).replace("typing.", "")
        body = "\n".join("    " + line if line else "" for line in self.doc.splitlines())
        quote = '    """'
        return (
            f"def {self.name}{sig}:\n{quote}\n{body}\n{quote}" if self.doc else f"def {self.name}{sig}: ..."
        )


def _text_as_is(hint: Any) -> bool:
    """Whether :meth:`Tool._bind_str` leaves a text argument for a parameter of ``hint`` as it is."""
    if hint is None or hint is str or hint is Any:
        return True
    # compared one by one: the arguments of a hint need not be hashable (``Callable[[int], str]``)
    return (typing.get_origin(hint) or hint) is str or any(a is str for a in typing.get_args(hint))


class ToolHandle:
    """What model code holds for a tool in an in-process namespace: callable, nothing else.

    A :class:`Tool` carries its function (``fn``, ``__wrapped__``) and through it the tool module's
    globals; the handle exposes only the name, the summary and the call, so no attribute walk from
    model code reaches a host function.
    """

    __slots__ = ("_tool",)
    _tool: Tool

    def __init__(self, tool: Tool) -> None:
        object.__setattr__(self, "_tool", tool)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the tool."""
        return self._tool(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a tool is read-only")

    def __repr__(self) -> str:
        return f"<tool {self._tool.name}>"

    @property
    def name(self) -> str:
        """The tool's name."""
        return self._tool.name

    @property
    def summary(self) -> str:
        """Its one-line description."""
        return self._tool.summary

    @property
    def hidden(self) -> bool:
        """Callable from trusted code only."""
        return self._tool.hidden

    @property
    def takes_futures(self) -> bool:
        """Receives futures unresolved."""
        return self._tool.takes_futures

    @property
    def arg_docs(self) -> Mapping[str, str]:
        """Argument descriptions (read-only)."""
        return self._tool.arg_docs

    @property
    def hints(self) -> Mapping[str, str]:
        """Argument types by name, as text (read-only). The hint objects stay with the tool: a
        ``typing`` alias such as ``Mapping[str, int]`` passes an attribute write on to the class
        behind it, which every job of the process shares."""
        return MappingProxyType({name: _type_name(hint) for name, hint in self._tool.hints.items()})


def unwrap_tool(obj: Any) -> Any:
    """The :class:`Tool` behind a :class:`ToolHandle` (anything else unchanged)."""
    return obj._tool if type(obj) is ToolHandle else obj


def await_result(awaitable: Any) -> Any:
    """Wait for ``awaitable`` from a tool's thread, on the executor's loop (a new loop outside a step)."""
    ctx = _current.get()
    loop = ctx.loop if ctx else None
    if loop is None or not loop.is_running():
        return asyncio.run(awaitable)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("an async tool cannot be awaited from the event loop thread")
    return asyncio.run_coroutine_threadsafe(awaitable, loop).result()


@typing.overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@typing.overload
def tool(
    *,
    name: str | None = None,
    system: bool = False,
    hidden: bool = False,
    target: Iterable[str] | None = None,
    error_handler: Callable[..., Any] | None = None,
    futures: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    system: bool = False,
    hidden: bool = False,
    target: Iterable[str] | None = None,
    error_handler: Callable[..., Any] | None = None,
    futures: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make ``fn`` a :class:`Tool` (usable bare, ``@tool``, or with options, ``@tool(hidden=True)``)."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            system=system,
            hidden=hidden,
            target=target,
            error_handler=error_handler,
            futures=futures,
        )

    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Callable[..., Any] | Tool) -> Tool:
    """``obj`` as a Tool (a plain function becomes one with default options)."""
    return obj if isinstance(obj, Tool) else Tool(obj)


# ==================================================================================================
# System tools
# ==================================================================================================


def _resolve(what: Any) -> Any:
    if isinstance(what, str):
        ctx = _current.get()
        if ctx is not None and what in ctx.namespace:
            return ctx.namespace[what]
        raise NameError(f"name '{what}' is not defined")
    return what


def _signature_text(fn: Any, name: str, detailed: bool) -> str:
    """``name(sig)`` of a callable that is not a Tool, without evaluating anything it carries.

    Annotations stay the text (or object) they were written as: :func:`typing.get_type_hints` would
    evaluate string annotations of model code, unchecked and uninstrumented, in this process.
    """
    try:
        sig = inspect.signature(fn, follow_wrapped=False, eval_str=False)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params: list[str] = []
    star = False
    for p in sig.parameters.values():
        if not detailed and (p.name.startswith("_") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
            continue
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star = "*" + text, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        elif p.kind is p.KEYWORD_ONLY and not star and detailed:
            params.append("*")
            star = True
        if detailed and p.annotation is not inspect.Parameter.empty:
            text += ": " + _annotation_text(p.annotation)
        if p.default is not inspect.Parameter.empty:
            text += "=" + _safe_repr(p.default)
        params.append(text)
    ret = ""
    if detailed and sig.return_annotation is not inspect.Signature.empty:
        ret = " -> " + _annotation_text(sig.return_annotation)
    return f"{name}({', '.join(params)}){ret}"


def _annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return str.__str__(annotation)  # shown as written, never evaluated
    if isinstance(annotation, type):
        qualname = type.__dict__["__qualname__"].__get__(annotation)
        return str(qualname)
    text = object.__repr__(annotation) if type(annotation).__module__ == "statek_model" else repr(annotation)
    return text.replace("typing.", "")


def _safe_repr(value: Any) -> str:
    if value is None or type(value) in (bool, int, float, str):
        return repr(value)
    return f"<{type(value).__name__}>"  # never run a model-defined __repr__ from a describer


def _doc_of(obj: Any) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return doc if type(doc) is str else None  # a property or descriptor could compute anything


def _callable_text(fn: Any, name: str, detailed: bool) -> str:
    summary, _, doc = _parse_doc(_doc_of(fn))
    if detailed:
        head = "def " + _signature_text(fn, name, True)
        if not doc:
            return head + ": ..."
        body = "\n".join("    " + line if line else "" for line in doc.splitlines())
        return f'{head}:\n    """\n{body}\n    """'
    head = _signature_text(fn, name, False)
    return f"{head}\n    {summary}" if summary else head


def describe(what: Any, method_name: str | None = None, *, detailed: bool) -> str:
    """The text ``docstr`` (``detailed``) or ``brief`` prints for ``what``.

    Model objects are described from their signature and docstring only: no annotation is
    evaluated and no model-defined ``__repr__``, descriptor or metaclass hook runs.
    """
    obj = unwrap_tool(_resolve(what))
    if isinstance(obj, Tool):
        return obj.detailed_text() if detailed else obj.brief_text()
    if not isinstance(obj, type) and not callable(obj):
        obj = type(obj)
    name = str(getattr(obj, "__name__", "")) if isinstance(getattr(obj, "__name__", None), str) else ""
    if method_name is not None:
        method_name = str.__str__(method_name) if isinstance(method_name, str) else str(method_name)
        member = inspect.getattr_static(obj, method_name, None)
        if member is None or method_name.startswith("_"):
            raise AttributeError(f"{name or type(obj).__name__} has no method {method_name!r}")
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        obj, name = member, method_name
    if isinstance(obj, type):
        lines = [f"class {name}:"]
        summary, _, doc = _parse_doc(_doc_of(obj))
        if detailed and doc:
            lines += ['    """', *("    " + ln for ln in doc.splitlines()), '    """']
        elif summary:
            lines.append(f"    {summary}")
        for mname, member in vars(obj).items():
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if mname.startswith("_") or not callable(member):
                continue
            text = _callable_text(member, mname, detailed)
            lines.append("\n".join("    " + ln for ln in text.splitlines()))
        return "\n".join(lines)
    return _callable_text(obj, name or type(obj).__name__, detailed)


@tool(system=True)
def docstr(what: Any, method_name: str | None = None) -> None:
    """Print the full documentation of a function, tool, class, object or method.

    Args:
        what: the function, class or object (or the name of a variable holding it).
        method_name: a method of ``what`` to document instead.
    """
    print(describe(what, method_name, detailed=True))


@tool(system=True)
def brief(what: Any, method_name: str | None = None) -> None:
    """Print a short signature and summary of a function, tool, class, object or method.

    Args:
        what: the function, class or object (or the name of a variable holding it).
        method_name: a method of ``what`` to describe instead.
    """
    print(describe(what, method_name, detailed=False))


@tool(system=True)
def panic() -> None:
    """Raise the task difficulty one level (a stronger model and a larger budget) and continue."""
    ctx = current_job()
    i = DIFFICULTIES.index(Difficulty(ctx.difficulty)) if ctx.difficulty in DIFFICULTIES else 1
    if i >= len(DIFFICULTIES) - 1:
        raise RuntimeError(f"Job is already at high difficulty: {_DIFFICULTY_NAMES['H']}")
    ctx.difficulty = str(DIFFICULTIES[i + 1])
    ctx.difficulty_changed = True
    print(f"# Difficulty increased to {_DIFFICULTY_NAMES[ctx.difficulty]}. Continue with the harder task.")


@tool(system=True, target=("DIRECT",))
def python_cli(code: str) -> None:
    """Run Python code in the job's workspace; its output is this call's result.

    Args:
        code: the Python source to run.
    """
    # A marker: the engine runs the code of a formal python_cli call itself (one per step).


@tool(system=True)
def get_pending_notifications() -> list[str]:
    """The notifications waiting for this job (reading them does not consume them)."""
    return list(current_job().notifications)


SYSTEM_TOOLS: tuple[Tool, ...] = (docstr, brief, panic, python_cli, get_pending_notifications)
"""The system tools, in the order they are offered."""


def select_tools(tools: Iterable[Tool], scope: str | None, chat_style: str) -> list[Tool]:
    """The tools sent to the provider as formal definitions, per ``LLM_TOOLS_SCOPE``.

    ``scope`` is ``SYSTEM``, ``APPLICATION`` or ``ALL``, optionally followed by ``+a,b`` (add) and
    ``-c`` (remove). ``None`` sends no definitions. Hidden tools and tools whose ``target`` excludes
    ``chat_style`` are never sent. ``ValueError`` for a bad category or an unknown name.
    """
    if not scope:
        return []
    pool = [t for t in tools if not t.hidden and (t.target is None or chat_style.upper() in t.target)]
    m = re.fullmatch(r"\s*(SYSTEM|APPLICATION|ALL)\s*((?:[+-]\s*[\w,\s]+)*)", scope.strip(), re.IGNORECASE)
    if m is None:
        raise ValueError(f"invalid LLM_TOOLS_SCOPE {scope!r}: expected SYSTEM, APPLICATION or ALL")
    category = m.group(1).upper()
    chosen = [
        t
        for t in pool
        if category == "ALL" or (category == "SYSTEM") == t.system  # APPLICATION: not system
    ]
    by_name = {t.name: t for t in pool}
    for sign, names in re.findall(r"([+-])\s*([\w,\s]+)", m.group(2) or ""):
        for n in (x.strip() for x in names.split(",") if x.strip()):
            if n not in by_name:
                raise ValueError(f"LLM_TOOLS_SCOPE names unknown tool {n!r}")
            if sign == "+" and by_name[n] not in chosen:
                chosen.append(by_name[n])
            elif sign == "-":
                if by_name[n] not in chosen:
                    raise ValueError(f"LLM_TOOLS_SCOPE removes {n!r}, which is not selected")
                chosen.remove(by_name[n])
    return chosen
