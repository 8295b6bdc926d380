"""Restricted mode: check, instrument and split model-written Python before it runs.

Model code runs in the executor's own process, so the sandbox is a *language* sandbox (the later
process runner adds CPU and memory limits). Three layers, each closing what the one before leaves:

1. **Static check** (:func:`compile_block`, on the AST, before any code runs). Refused, each with a
   ``SandboxViolation`` naming the construct and line:

   * imports outside the allow-list (STATEK's default, :data:`DEFAULT_ALLOWED_IMPORTS`), relative
     and star imports, submodules not listed themselves, ``_private`` names from a module;
   * every name starting ``__`` and every attribute starting ``_`` (``__class__``, ``__globals__``,
     ``_x``), the one exception being ``super().__init__``-style calls of the dunder methods a model
     class may define (:data:`SAFE_DUNDER_METHODS`);
   * the reflective builtins (``eval``, ``exec``, ``compile``, ``open``, ``getattr``, ``type``,
     ``globals``, ``vars``, ``dir``, ``breakpoint``, …: :data:`DENIED_NAMES`) and hidden tools;
   * frame, code, generator and traceback attributes whose names are *not* underscored
     (``gi_frame``, ``f_globals``, ``tb_frame``, ``co_*``, …) and ``mro``: :data:`DENIED_ATTRIBUTES`;
   * class keywords (``metaclass=``), match-class patterns reading private attributes;
   * sources over ``max_bytes`` or ``max_nodes`` AST nodes.

2. **Runtime guards**, for what a static check cannot see:

   * ``str.format``/``format_map`` walk attributes named inside the *template* (``"{0.__class__}"``),
     which may be built at run time; every ``.format``/``.format_map`` read is routed through a
     guard that refuses templates whose fields contain ``.`` or ``[``;
   * assigning to or deleting attributes of classes, modules and functions the model did not make
     (``collections.Counter.most_common = ...`` would patch the host) is refused;
   * ``import`` yields read-only shim modules: public, non-module attributes only (``statistics.sys``
     and ``json.codecs.open`` are gone), module-level data copied per namespace, and
     ``operator.attrgetter``/``methodcaller`` and ``functools.wraps``/``update_wrapper``/
     ``total_ordering`` replaced by checked versions;
   * builtins are a whitelist (:data:`SAFE_BUILTINS`); ``print`` is the plain one for the engine to
     override, ``exit`` is the engine's; ``BaseException``/``SystemExit`` are absent, so model code
     cannot raise past an ``except Exception``.

3. **Instrumentation** (both modes): ``__statek_tick__()`` starts every loop body, function body and
   ``except`` body, lambdas call it, comprehension iterables are wrapped in ``__statek_iter__``, and
   ``itertools.count/cycle/repeat``, two-argument ``iter`` and ``time.sleep`` honour the deadline.
   Past the deadline every tick raises :class:`StepTimeout`, so an ``except Exception`` that
   swallows one re-raises at its first line. Every variable read becomes ``__statek_read__(name)``
   and a call with bare-name arguments ``__statek_call__(f, a, ...)``, so reading a not-ready
   future (:mod:`statek_bus.futures`) suspends the job at that statement, while a function that
   declares ``takes_futures`` (``get_all``) receives futures unresolved. The injected names are
   dunders: model code cannot name them, and the check runs before instrumentation.

Not covered in-process (left to the process runner): long single C calls (``sum(range(10**15))``,
``10**10**8``, catastrophic regexes) and memory bombs (``"x" * 10**12``).
"""

from __future__ import annotations

import ast
import builtins
import copy
import enum
import functools
import importlib
import itertools
import string
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_ALLOWED_IMPORTS",
    "DENIED_ATTRIBUTES",
    "DENIED_NAMES",
    "MODEL_MODULE",
    "SAFE_BUILTINS",
    "SAFE_DUNDER_METHODS",
    "CompiledBlock",
    "CompiledStatement",
    "SandboxPolicy",
    "SandboxViolation",
    "StepTimeout",
    "compile_block",
    "module_name",
    "read_value",
    "register_future_type",
    "sandbox_globals",
    "set_deadline",
]


class SandboxViolation(Exception):
    """Model code tried something restricted mode forbids; ``str(exc)`` is shown to the model."""


class StepTimeout(Exception):
    """Raised inside model code once the step's wall-clock deadline has passed (at every tick)."""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


DEFAULT_ALLOWED_IMPORTS: frozenset[str] = _words(
    "datetime calendar time re math decimal fractions statistics collections itertools functools "
    "operator json"
)
"""STATEK's ``python_sandbox_allowed_imports`` default."""

MODEL_MODULE = "statek_model"
"""``__name__`` of the sandbox namespace, hence ``__module__`` of every class and function it defines."""

DENIED_NAMES: frozenset[str] = _words(
    "eval exec compile open getattr setattr delattr hasattr globals locals vars dir type breakpoint "
    "input memoryview help copyright credits license BaseException SystemExit KeyboardInterrupt "
    "GeneratorExit"
)
"""Names model code may not reference at all (most are also absent from the builtins)."""

DENIED_ATTRIBUTES: frozenset[str] = _words(
    "gi_frame gi_code gi_yieldfrom gi_running gi_suspended cr_frame cr_code cr_await cr_running "
    "cr_origin cr_suspended ag_frame ag_code ag_await ag_running f_back f_builtins f_code f_globals "
    "f_lasti f_lineno f_locals f_trace f_trace_lines f_trace_opcodes tb_frame tb_lasti tb_lineno "
    "tb_next cell_contents mro func_globals func_code im_func im_self"
)
"""Introspection attributes without a leading underscore (plus every ``co_*``)."""

SAFE_DUNDER_METHODS: frozenset[str] = frozenset(
    f"__{n}__"
    for n in _words(
        "init repr str eq ne lt le gt ge hash bool len contains iter next reversed getitem setitem "
        "delitem call enter exit add radd iadd sub rsub isub mul rmul imul truediv rtruediv itruediv "
        "floordiv rfloordiv mod rmod pow rpow neg pos abs invert and rand or ror xor rxor lshift rshift "
        "matmul int float index round format"
    )
)
"""Dunder methods a model class may define (and call through ``super()``)."""

SAFE_BUILTINS: frozenset[str] = _words(
    "abs all any ascii bin bool bytearray bytes callable chr classmethod complex dict divmod enumerate "
    "filter float format frozenset hash hex int isinstance issubclass iter len list map max min next "
    "object oct ord pow print property range repr reversed round set slice sorted staticmethod str sum "
    "super tuple zip NotImplemented Ellipsis Exception ArithmeticError AssertionError AttributeError "
    "FloatingPointError ImportError IndexError KeyError LookupError ModuleNotFoundError NameError "
    "NotImplementedError OverflowError RecursionError RuntimeError StopIteration StopAsyncIteration "
    "TimeoutError TypeError UnboundLocalError UnicodeError UnicodeDecodeError UnicodeEncodeError "
    "ValueError ZeroDivisionError ArithmeticError"
)
"""Builtins restricted code sees (plus the guarded ``__import__`` and the class builder)."""

_TICK, _ITER, _FMT, _WRITE, _CLOCK, _READ, _CALL = (
    "__statek_tick__",
    "__statek_iter__",
    "__statek_fmt__",
    "__statek_w__",
    "__statek_clock__",
    "__statek_read__",
    "__statek_call__",
)
_FORMAT_METHODS = frozenset({"format", "format_map"})
_MODULE_DENY: dict[str, frozenset[str]] = {
    "calendar": frozenset({"main", "setfirstweekday"}),
    "collections": frozenset({"UserString"}),  # its .format forwards to str.format from host code
    "time": frozenset({"tzset"}),
}


@dataclass(frozen=True)
class SandboxPolicy:
    """What restricted mode allows; one per job (hidden tools differ per agent)."""

    allowed_imports: frozenset[str] = DEFAULT_ALLOWED_IMPORTS
    """Importable modules; a dotted entry (``"os.path"``) allows that submodule only."""
    max_bytes: int = 200_000
    """Largest source accepted, in UTF-8 bytes."""
    max_nodes: int = 20_000
    """Largest source accepted, in AST nodes."""
    hidden_names: frozenset[str] = frozenset()
    """Hidden tools: present in the namespace for warmup code, never referable by model code."""
    restricted: bool = True
    """False is STATEK's ``off`` mode: no checks or limits, but still instrumented for timeouts."""


@dataclass(frozen=True)
class CompiledStatement:
    """One top-level statement, compiled on its own so the engine can run, suspend and resume per statement."""

    code: types.CodeType
    """``exec``-mode code, or ``eval``-mode when :attr:`echo` is set; line numbers are the block's."""
    source: str
    """The statement's source text (decorators included); what the workspace stores for definitions."""
    lineno: int
    """First line of the statement in the block."""
    is_definition: bool
    """``def``/``class``/``import`` or a name bound to a lambda: persisted as source, not as a value."""
    binds: tuple[str, ...]
    """Names a definition binds (empty otherwise)."""
    echo: bool = False
    """An expression statement (not a bare ``print(...)``): the engine echoes its value unless None."""


@dataclass
class CompiledBlock:
    """A checked, instrumented code block split into top-level statements."""

    statements: list[CompiledStatement]
    """The statements in source order."""
    source: str = ""
    """The block as given."""
    filename: str = "<model>"
    """The filename used in code objects and tracebacks."""
    definitions: list[CompiledStatement] = field(default_factory=list)
    """The statements that are definitions, in order."""


# --------------------------------------------------------------------------------------------------
# Static check
# --------------------------------------------------------------------------------------------------


class _Checker(ast.NodeVisitor):
    def __init__(self, policy: SandboxPolicy) -> None:
        self.policy = policy
        self._methods: set[int] = set()

    def fail(self, node: ast.AST, message: str) -> None:
        line = getattr(node, "lineno", None)
        raise SandboxViolation(f"{message} (line {line})" if line else message)

    def name(self, node: ast.AST, name: str | None, *, call: bool = False) -> None:
        if name is None:
            return
        if name.startswith("__"):
            self.fail(node, f"dunder name '{name}' is not allowed")
        if name in self.policy.hidden_names:
            self.fail(node, f"tool '{name}' is not exposed to this job")
        if name in DENIED_NAMES:
            self.fail(node, f"call to '{name}' is not allowed" if call else f"name '{name}' is not allowed")

    def attribute(self, node: ast.AST, attr: str) -> None:
        if attr.startswith("__"):
            self.fail(node, f"dunder attribute '{attr}' is not allowed")
        if attr.startswith("_"):
            self.fail(node, f"private attribute '{attr}' is not allowed")
        if attr in DENIED_ATTRIBUTES or attr.startswith("co_"):
            self.fail(node, f"attribute '{attr}' is not allowed")

    def module(self, node: ast.AST, name: str) -> None:
        allowed = self.policy.allowed_imports
        if name in allowed:
            return
        if name.split(".")[0] in allowed:
            self.fail(node, f"import '{name}' is not available in the sandbox")
        self.fail(node, f"import '{name}' is not allowed")

    def visit_Name(self, node: ast.Name) -> None:
        self.name(node, node.id)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name):
            self.name(node, node.func.id, call=True)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        v = node.value
        is_super = (
            isinstance(v, ast.Call)
            and isinstance(v.func, ast.Name)
            and v.func.id == "super"
            and not v.args
            and not v.keywords
        )
        if not (is_super and node.attr in SAFE_DUNDER_METHODS):
            self.attribute(node, node.attr)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.module(node, alias.name)
            self.name(node, alias.asname)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.fail(node, "relative imports are not allowed")
        self.module(node, node.module or "")
        for alias in node.names:
            if alias.name == "*":
                self.fail(node, "star imports are not allowed; import the names you need")
            if alias.name.startswith("_"):
                self.fail(node, f"import '{alias.name}' is not allowed")
            self.name(node, alias.asname or alias.name)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if not (id(node) in self._methods and node.name in SAFE_DUNDER_METHODS):
            self.name(node, node.name)
        self.generic_visit(node)

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.name(node, node.name)
        if node.keywords:
            self.fail(node, "class keyword arguments (metaclass=...) are not allowed")
        self._methods.update(
            id(s) for s in node.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
        )
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.name(node, node.arg)
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None and node.arg.startswith("__"):
            self.fail(node, f"dunder name '{node.arg}' is not allowed")
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self.name(node, node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        for n in node.names:
            self.name(node, n)

    visit_Nonlocal = visit_Global

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self.name(node, node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self.name(node, node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.name(node, node.rest)
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            self.attribute(node, attr)
        self.generic_visit(node)


# --------------------------------------------------------------------------------------------------
# Instrumentation
# --------------------------------------------------------------------------------------------------


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


class _Instrumenter(ast.NodeTransformer):
    def __init__(self, restricted: bool) -> None:
        self.restricted = restricted

    # Futures: every variable read goes through ``__statek_read__`` (a not-ready future suspends the
    # job there), except a bare name passed straight to a call: those calls become
    # ``__statek_call__(f, a, ...)``, which resolves the futures among the arguments unless ``f``
    # takes futures (``get_all``/``get_any``), so combinators receive them unresolved.
    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id != "super":
            return ast.copy_location(_call(_READ, node), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        raw = any(isinstance(a, ast.Name) for a in node.args) or any(
            isinstance(k.value, ast.Name) for k in node.keywords
        )
        if not raw or (isinstance(node.func, ast.Name) and node.func.id == "super"):
            self.generic_visit(node)
            return node
        func = node.func if isinstance(node.func, ast.Name) else self.visit(node.func)
        node.args = [a if isinstance(a, ast.Name) else self.visit(a) for a in node.args]
        for k in node.keywords:
            if not isinstance(k.value, ast.Name):
                k.value = self.visit(k.value)
        node.args = [func, *node.args]
        node.func = ast.copy_location(ast.Name(id=_CALL, ctx=ast.Load()), node.func)
        return node

    @staticmethod
    def _ticked(body: list[ast.stmt], at: int = 0) -> list[ast.stmt]:
        tick = ast.copy_location(ast.Expr(_call(_TICK)), body[min(at, len(body) - 1)])
        return [*body[:at], tick, *body[at:]]

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While) -> ast.AST:
        self.generic_visit(node)
        node.body = self._ticked(node.body)
        return node

    visit_For = visit_AsyncFor = visit_While = _loop

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self.generic_visit(node)
        first = node.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        node.body = self._ticked(node.body, 1 if has_doc and len(node.body) > 1 else 0)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.generic_visit(node)
        node.body = self._ticked(node.body)
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self.generic_visit(node)
        node.body = ast.copy_location(ast.BoolOp(op=ast.Or(), values=[_call(_TICK), node.body]), node.body)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        if not node.is_async:
            node.iter = ast.copy_location(_call(_ITER, node.iter), node.iter)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if not self.restricted:
            return node
        if isinstance(node.ctx, ast.Load) and node.attr in _FORMAT_METHODS:
            return ast.copy_location(_call(_FMT, node.value, ast.Constant(node.attr)), node)
        if isinstance(node.ctx, ast.Store | ast.Del):
            node.value = ast.copy_location(_call(_WRITE, node.value), node.value)
        return node


def _binds(stmt: ast.stmt) -> tuple[str, ...] | None:
    """Names bound by a definition statement, or None when ``stmt`` is not one."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return (stmt.name,)
    if isinstance(stmt, ast.Import):
        return tuple(a.asname or a.name.split(".")[0] for a in stmt.names)
    if isinstance(stmt, ast.ImportFrom):
        return tuple(a.asname or a.name for a in stmt.names if a.name != "*")
    lambda_names = isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets)
    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Lambda) and lambda_names:
        return tuple(t.id for t in stmt.targets if isinstance(t, ast.Name))
    if (
        isinstance(stmt, ast.AnnAssign)
        and isinstance(stmt.value, ast.Lambda)
        and isinstance(stmt.target, ast.Name)
    ):
        return (stmt.target.id,)
    return None


def _segment(source: str, lines: list[str], stmt: ast.stmt) -> str:
    decorators = getattr(stmt, "decorator_list", None)
    if not decorators:
        return ast.get_source_segment(source, stmt) or ""
    # A decorated top-level definition starts at column 0 of its first decorator's line.
    first = min(d.lineno for d in decorators)
    end = stmt.end_lineno or stmt.lineno
    text = "".join(lines[first - 1 : end])
    tail = lines[end - 1].encode()[: stmt.end_col_offset or 0].decode(errors="replace")
    return text[: len(text) - len(lines[end - 1])] + tail


def _is_print(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Name)
        and stmt.value.func.id == "print"
    )


def _compile(source: str, policy: SandboxPolicy, filename: str) -> tuple[CompiledStatement, ...]:
    try:
        return _compile_checked(source, policy, filename)
    except RecursionError:
        raise SandboxViolation("code is nested too deeply") from None


_compile_cached = functools.lru_cache(maxsize=256)(_compile)
_CACHED_SOURCE_MAX = 20_000  # definitions are small and replayed every step; big blocks run once


def _compile_checked(source: str, policy: SandboxPolicy, filename: str) -> tuple[CompiledStatement, ...]:
    if policy.restricted:
        size = len(source.encode("utf-8", errors="surrogatepass"))
        if size > policy.max_bytes:
            raise SandboxViolation(f"source is {size} bytes; limit is {policy.max_bytes}")
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError) as exc:
        raise SandboxViolation(f"invalid Python syntax: {exc}") from None
    if policy.restricted:
        nodes = sum(1 for _ in ast.walk(tree))
        if nodes > policy.max_nodes:
            raise SandboxViolation(f"source has {nodes} AST nodes; limit is {policy.max_nodes}")
        _Checker(policy).visit(tree)
    lines = source.splitlines(keepends=True)
    meta = [
        (
            _segment(source, lines, s),
            min([s.lineno, *(d.lineno for d in getattr(s, "decorator_list", ()))]),
            _binds(s),
            isinstance(s, ast.Expr) and not _is_print(s),
        )
        for s in tree.body
    ]
    tree = ast.fix_missing_locations(_Instrumenter(policy.restricted).visit(tree))
    out: list[CompiledStatement] = []
    for stmt, (text, lineno, binds, echo) in zip(tree.body, meta, strict=True):
        try:
            if isinstance(stmt, ast.Expr) and echo:
                code = compile(ast.Expression(body=stmt.value), filename, "eval")
            else:
                code = compile(ast.Module(body=[stmt], type_ignores=[]), filename, "exec")
        except SyntaxError as exc:
            raise SandboxViolation(f"invalid Python syntax: {exc}") from None
        out.append(CompiledStatement(code, text, lineno, binds is not None, binds or (), echo))
    return tuple(out)


def compile_block(source: str, policy: SandboxPolicy, *, filename: str = "<model>") -> CompiledBlock:
    """Check ``source`` against ``policy``, instrument it and compile each top-level statement.

    Results for small sources are cached (the workspace replays the same definitions every step).

    Raises:
        SandboxViolation: syntax errors, size limits and (restricted mode) every refused construct.
    """
    compiler = _compile_cached if len(source) <= _CACHED_SOURCE_MAX else _compile
    statements = list(compiler(source, policy, filename))
    return CompiledBlock(statements, source, filename, [s for s in statements if s.is_definition])


# --------------------------------------------------------------------------------------------------
# Runtime: deadline, guards, shim modules, builtins
# --------------------------------------------------------------------------------------------------


def _no_deadline() -> float:
    return float("inf")


class _Clock:
    """The deadline shared by every tick of one namespace; :func:`set_deadline` swaps it."""

    __slots__ = ("deadline", "tick")

    def __init__(self, deadline: Callable[[], float] | None) -> None:
        self.deadline = deadline or _no_deadline
        monotonic = time.monotonic

        def tick() -> None:
            if monotonic() > self.deadline():
                raise StepTimeout("the step ran past its wall-clock limit")

        self.tick = tick

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        tick = self.tick
        for item in iterable:
            tick()
            yield item

    def sleep(self, seconds: float) -> None:
        remaining = self.deadline() - time.monotonic()
        if seconds > remaining:
            time.sleep(max(0.0, remaining))
            raise StepTimeout("the step ran past its wall-clock limit")
        time.sleep(seconds)

    def count(self, start: Any = 0, step: Any = 1) -> Iterator[Any]:
        return self.iterate(itertools.count(start, step))

    def cycle(self, iterable: Iterable[Any]) -> Iterator[Any]:
        return self.iterate(itertools.cycle(iterable))

    def repeat(self, obj: Any, times: int | None = None) -> Iterator[Any]:
        return itertools.repeat(obj, times) if times is not None else self.iterate(itertools.repeat(obj))

    def iter(self, obj: Any, *sentinel: Any) -> Iterator[Any]:
        return self.iterate(iter(obj, *sentinel)) if sentinel else iter(obj)


def set_deadline(namespace: dict[str, Any], deadline: Callable[[], float] | None) -> None:
    """Change the deadline of a namespace made by :func:`sandbox_globals` (None = no limit)."""
    clock: _Clock = namespace[_CLOCK]
    clock.deadline = deadline or _no_deadline


_FORMATTER = string.Formatter()


def _check_template(template: str) -> None:
    if len(template) <= 256:  # literal templates repeat: parse each once
        _check_short_template(template)
    else:
        _parse_template(template)


@functools.lru_cache(maxsize=1024)
def _check_short_template(template: str) -> None:
    _parse_template(template)


def _parse_template(template: str) -> None:
    try:
        fields = list(_FORMATTER.parse(template))
    except ValueError:
        return  # malformed: the real call raises the same error
    for _, name, spec, _ in fields:
        if name and ("." in name or "[" in name):
            raise SandboxViolation(f"format field '{{{name}}}' is not allowed: no attribute or index lookups")
        if spec:
            _parse_template(spec)


def _format_guard(obj: Any, name: str) -> Any:
    """``obj.format`` / ``obj.format_map``, refusing templates that walk attributes."""
    method = getattr(obj, name)
    if isinstance(obj, str):
        _check_template(obj)
    elif isinstance(obj, type) and issubclass(obj, str):

        def checked(template: Any, /, *args: Any, **kwargs: Any) -> Any:
            if isinstance(template, str):
                _check_template(template)
            return method(template, *args, **kwargs)

        return checked
    return method


_PROTECTED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    functools.partial,
)


def _write_guard(obj: Any) -> Any:
    """``obj`` itself, unless it is a class, module or function the model did not make."""
    if isinstance(obj, _ShimModule):
        raise SandboxViolation(f"module '{vars(obj)[_REAL_NAME]}' is read-only")
    if isinstance(obj, _PROTECTED) and getattr(obj, "__module__", None) != MODEL_MODULE:
        kind = "class" if isinstance(obj, type) else type(obj).__name__
        name = getattr(obj, "__qualname__", None) or repr(obj)
        raise SandboxViolation(f"cannot set or delete attributes of {kind} '{name}'")
    return obj


def _checked_attr(name: str) -> None:
    for part in name.split("."):
        if part.startswith("_") or part in DENIED_ATTRIBUTES or part.startswith("co_"):
            raise SandboxViolation(f"attribute '{part}' is not allowed")


def _attrgetter(*names: str) -> Callable[[Any], Any]:
    for n in names:
        _checked_attr(n)

    def one(obj: Any, name: str) -> Any:
        for part in name.split("."):
            obj = _format_guard(obj, part) if part in _FORMAT_METHODS else getattr(obj, part)
        return obj

    if len(names) == 1:
        return lambda obj: one(obj, names[0])
    return lambda obj: tuple(one(obj, n) for n in names)


def _methodcaller(name: str, /, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    _checked_attr(name)
    get = _attrgetter(name)
    return lambda obj: get(obj)(*args, **kwargs)


def _update_wrapper(wrapper: Any, wrapped: Any, *args: Any, **kwargs: Any) -> Any:
    return functools.update_wrapper(_write_guard(wrapper), wrapped, *args, **kwargs)


def _wraps(wrapped: Any, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    return lambda wrapper: _update_wrapper(wrapper, wrapped, *args, **kwargs)


def _total_ordering(cls: Any) -> Any:
    return functools.total_ordering(_write_guard(cls))


_GUARDED: dict[tuple[str, str], Any] = {
    ("operator", "attrgetter"): _attrgetter,
    ("operator", "methodcaller"): _methodcaller,
    ("functools", "update_wrapper"): _update_wrapper,
    ("functools", "wraps"): _wraps,
    ("functools", "total_ordering"): _total_ordering,
}
_CLOCKED = {("time", "sleep"), ("itertools", "count"), ("itertools", "cycle"), ("itertools", "repeat")}
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, tuple, enum.Enum)


_REAL_NAME = "__statek_module__"


class _ShimModule(types.ModuleType):
    """A read-only stand-in for an allowed module, holding only its public, non-module attributes.

    Its ``__name__`` is not the real one: ``from json import decoder`` falls back to
    ``sys.modules["<__name__>.decoder"]`` when the attribute is missing, which would hand out the
    real submodule.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        _write_guard(self)

    def __delattr__(self, name: str) -> None:
        _write_guard(self)


@functools.lru_cache(maxsize=64)
def _module_plan(name: str) -> tuple[tuple[str, Any, bool], ...]:
    """(attribute, value, copy per namespace?) for the public attributes a shim of ``name`` exposes."""
    module = importlib.import_module(name)
    deny = _MODULE_DENY.get(name, frozenset())
    plan: list[tuple[str, Any, bool]] = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or attr in deny or isinstance(value, types.ModuleType):
            continue
        mutable = not (callable(value) or isinstance(value, _IMMUTABLE))
        if mutable:
            try:
                copy.deepcopy(value)
            except Exception:
                continue
        plan.append((attr, _GUARDED.get((name, attr), value), mutable))
    return tuple(plan)


class _Importer:
    """The guarded ``__import__`` of one namespace, with its own shim modules."""

    def __init__(self, policy: SandboxPolicy, clock: _Clock) -> None:
        self.allowed = policy.allowed_imports
        self.clock = clock
        self.shims: dict[str, _ShimModule] = {}

    def shim(self, name: str) -> _ShimModule:
        found = self.shims.get(name)
        if found is not None:
            return found
        attrs = {a: copy.deepcopy(v) if c else v for a, v, c in _module_plan(name)}
        for module, attr in _CLOCKED:
            if module == name:
                attrs[attr] = getattr(self.clock, "sleep" if attr == "sleep" else attr)
        for sub in self.allowed:
            head, _, tail = sub.rpartition(".")
            if head == name:
                attrs[tail] = self.shim(sub)
        shim = _ShimModule(f"<sandboxed {name}>", getattr(importlib.import_module(name), "__doc__", None))
        vars(shim).update(attrs, **{_REAL_NAME: name})
        self.shims[name] = shim
        return shim

    def __call__(
        self,
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        if level:
            raise SandboxViolation("relative imports are not allowed")
        if name not in self.allowed:
            root_ok = name.split(".")[0] in self.allowed
            raise SandboxViolation(
                f"import '{name}' is " + ("not available in the sandbox" if root_ok else "not allowed")
            )
        if fromlist or "." not in name:
            return self.shim(name)
        root, _, _ = name.partition(".")
        if root in self.allowed:
            return self.shim(root)
        # Only a submodule is allowed (``"os.path"``): ``import os.path`` binds a bare ``os`` holding it.
        bare = _ShimModule(f"<sandboxed {root}>")
        vars(bare).update({name.split(".")[1]: self.shim(".".join(name.split(".")[:2])), _REAL_NAME: root})
        return bare


_FUTURE_TYPES: set[type] = set()


def register_future_type(cls: type) -> type:
    """Make instances of ``cls`` futures: reading one calls its ``__statek_resolve__()`` (usable as a decorator)."""
    _FUTURE_TYPES.add(cls)
    return cls


def _read(value: Any, _types: set[type] = _FUTURE_TYPES) -> Any:
    """``__statek_read__``: a variable's value, a future resolved (or the job suspended)."""
    if type(value) in _types:
        return value.__statek_resolve__()
    return value


read_value = _read
"""Resolve ``value`` if it is a future (what every variable read does); other values pass through."""


def _call_with(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``__statek_call__``: ``fn(*args, **kwargs)``, futures among the arguments resolved unless ``fn``
    declares ``takes_futures``."""
    types_ = _FUTURE_TYPES
    if type(fn) in types_:
        fn = fn.__statek_resolve__()
    if (
        types_
        and (any(type(a) in types_ for a in args) or any(type(v) in types_ for v in kwargs.values()))
        and not getattr(fn, "takes_futures", False)
    ):
        args = tuple(_read(a) for a in args)
        kwargs = {k: _read(v) for k, v in kwargs.items()}
    return fn(*args, **kwargs)


def module_name(module: types.ModuleType) -> str:
    """The importable name of ``module``, a shim from the sandbox's ``import`` or a real module."""
    return str(vars(module).get(_REAL_NAME, module.__name__))


def sandbox_globals(policy: SandboxPolicy, *, deadline: Callable[[], float] | None = None) -> dict[str, Any]:
    """A fresh namespace for model code under ``policy``.

    Args:
        policy: restricted builtins and guards when ``policy.restricted``, the real builtins otherwise.
        deadline: returns the step's deadline as a :func:`time.monotonic` value; None = no limit.
            Change it later with :func:`set_deadline`.

    The engine adds tools, ``print`` and ``exit``; every injected name of its own is a dunder.
    """
    clock = _Clock(deadline)
    if policy.restricted:
        real = vars(builtins)
        safe: dict[str, Any] = {n: real[n] for n in SAFE_BUILTINS}
        safe["__build_class__"] = real["__build_class__"]
        safe["__import__"] = _Importer(policy, clock)
        safe["iter"] = clock.iter
    else:
        safe = dict(vars(builtins))
    return {
        "__builtins__": safe,
        "__name__": MODEL_MODULE,
        _READ: _read,
        _CALL: _call_with,
        _TICK: clock.tick,
        _ITER: clock.iterate,
        _FMT: _format_guard,
        _WRITE: _write_guard,
        _CLOCK: clock,
    }
