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
   future (:mod:`statek_bus.authoring.futures`) suspends the job at that statement, while a function that
   declares ``takes_futures`` (``get_all``) receives futures unresolved. The injected names are
   dunders: model code cannot name them, and the check runs before instrumentation.

Not covered in-process (left to the process runner): long single C calls (``sum(range(10**15))``,
``10**10**8``, catastrophic regexes) and memory bombs (``"x" * 10**12``).

This module is the front door: :func:`compile_block` and :func:`sandbox_globals`, re-exporting the
public names of the modules behind it: :mod:`~statek_bus.sandbox.policy` (the policy, its lists and
errors), :mod:`~statek_bus.sandbox.check` (layer 1), :mod:`~statek_bus.sandbox.runtime` (layer 2) and
:mod:`~statek_bus.sandbox.instrument` (layer 3).
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statek_bus.sandbox.check import check_size, check_tree
from statek_bus.sandbox.instrument import instrument
from statek_bus.sandbox.policy import (
    CALL,
    CLOCK,
    DEFAULT_ALLOWED_IMPORTS,
    DENIED_ATTRIBUTES,
    DENIED_NAMES,
    FMT,
    ITER,
    MODEL_MODULE,
    READ,
    SAFE_BUILTINS,
    SAFE_DUNDER_METHODS,
    TICK,
    WRITE,
    SandboxPolicy,
    SandboxViolation,
    StepTimeout,
)
from statek_bus.sandbox.runtime import (
    Clock,
    Importer,
    call_with,
    format_guard,
    module_name,
    read_value,
    register_future_type,
    write_guard,
)

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
    "imports_only",
    "is_echo",
    "module_name",
    "read_value",
    "register_future_type",
    "sandbox_globals",
    "set_deadline",
]


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
# Compilation: check, instrument, split into statements
# --------------------------------------------------------------------------------------------------


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


def _segment(lines: list[str], stmt: ast.stmt) -> str:
    """The source of top-level statement ``stmt``, cut from ``lines`` (:func:`_lines`).

    What ``ast.get_source_segment`` gives, without its split of the whole source on every call, a
    loop in Python over each character: a block of many statements cost the square of its size
    (2,000 one-line statements of a 60 kB block: seconds of the step's CPU budget).
    """
    decorators: list[ast.expr] | None = getattr(stmt, "decorator_list", None)
    start: int
    col: int
    if decorators:  # a decorated top-level definition starts at column 0 of its first decorator's line
        start, col = min(d.lineno for d in decorators), 0
    else:
        start, col = stmt.lineno, stmt.col_offset
    end, end_col = stmt.end_lineno or stmt.lineno, stmt.end_col_offset or 0
    if start == end:  # offsets count UTF-8 bytes
        return lines[start - 1].encode()[col:end_col].decode(errors="replace")
    first = lines[start - 1].encode()[col:].decode(errors="replace")
    return (
        first + "".join(lines[start : end - 1]) + lines[end - 1].encode()[:end_col].decode(errors="replace")
    )


def _lines(source: str) -> list[str]:
    """``source`` split the way the tokenizer counts lines (``\\n``, ``\\r\\n``, ``\\r`` only).

    ``str.splitlines`` also splits at form feeds, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028/U+2029:
    a comment holding one would shift every later line against the AST's line numbers.
    """
    return io.StringIO(source, newline="").readlines()


def _same_statement(text: str, stmt: ast.stmt) -> bool:
    """Whether ``text`` parses to exactly ``stmt`` (what a stored definition will replay)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return len(tree.body) == 1 and ast.dump(tree.body[0]) == ast.dump(stmt)


def is_echo(stmt: ast.stmt) -> bool:
    """Whether a top-level statement is an expression whose value the console shows (a ``print``
    call shows what it prints instead)."""
    return isinstance(stmt, ast.Expr) and not (
        isinstance(stmt.value, ast.Call)
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
        check_size(source, policy)
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError) as exc:
        raise SandboxViolation(f"invalid Python syntax: {exc}") from None
    if policy.restricted:
        check_tree(tree, policy)
    lines = _lines(source)
    meta = [
        (
            _segment(lines, s),
            min([s.lineno, *(d.lineno for d in getattr(s, "decorator_list", ()))]),
            _binds(s),
            is_echo(s),
        )
        for s in tree.body
    ]
    for stmt, (text, *_rest) in zip(tree.body, meta, strict=True):
        if _rest[1] is not None and not _same_statement(text, stmt):
            # The stored source of a definition must replay as the very statement that ran.
            raise SandboxViolation(f"definition at line {stmt.lineno} cannot be isolated from its block")
    tree = instrument(tree, restricted=policy.restricted)
    out: list[CompiledStatement] = []
    for stmt, (text, lineno, binds, echo) in zip(tree.body, meta, strict=True):
        try:
            if isinstance(stmt, ast.Expr) and echo:
                code = compile(ast.Expression(body=stmt.value), filename, "eval")
            else:
                code = compile(ast.Module(body=[stmt], type_ignores=[]), filename, "exec")
        except (SyntaxError, ValueError) as exc:
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
# Namespace
# --------------------------------------------------------------------------------------------------


def imports_only(source: str) -> bool:
    """Whether a stored definition is only ``import`` statements (replaying it binds modules and
    runs no code of the job's)."""
    # a job's stored imports come back every step: they are parsed once, as compiled blocks are
    # (up to the same size); a stored statement's text starts at its first token, so anything
    # else is told apart without a parse
    if not source.startswith(("import", "from")):
        return False
    return _imports_only(source) if len(source) <= _CACHED_SOURCE_MAX else _imports_only.__wrapped__(source)


@functools.lru_cache(maxsize=256)
def _imports_only(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return bool(tree.body) and all(isinstance(node, ast.Import | ast.ImportFrom) for node in tree.body)


def sandbox_globals(policy: SandboxPolicy, *, deadline: Callable[[], float] | None = None) -> dict[str, Any]:
    """A fresh namespace for model code under ``policy``.

    Args:
        policy: restricted builtins and guards when ``policy.restricted``, the real builtins otherwise.
        deadline: returns the step's deadline as a :func:`time.monotonic` value; None = no limit.
            Change it later with :func:`set_deadline`.

    The engine adds tools, ``print`` and ``exit``; every injected name of its own is a dunder.
    """
    clock = Clock(deadline)
    if policy.restricted:
        safe = _safe_builtins().copy()  # a dict of the step's own: model code may rebind a name in it
        safe["__import__"] = Importer(policy, clock)
        safe["iter"] = clock.iter
    else:
        safe = dict(vars(builtins))
    return {
        "__builtins__": safe,
        "__name__": MODEL_MODULE,
        READ: read_value,
        CALL: call_with,
        TICK: clock.tick,
        ITER: clock.iterate,
        FMT: format_guard,
        WRITE: write_guard,
        CLOCK: clock,
    }


@functools.cache
def _safe_builtins() -> dict[str, Any]:
    """The whitelisted builtins, looked up once (every restricted step copies this dict)."""
    real = vars(builtins)
    return {**{n: real[n] for n in SAFE_BUILTINS}, "__build_class__": real["__build_class__"]}


def set_deadline(namespace: dict[str, Any], deadline: Callable[[], float] | None) -> None:
    """Change the deadline of a namespace made by :func:`sandbox_globals` (None = no limit)."""
    clock: Clock = namespace[CLOCK]
    clock.set_deadline(deadline)
