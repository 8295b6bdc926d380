"""What restricted mode allows: the policy, its allow- and deny-lists, its errors, its injected names.

The leaf every other ``sandbox_*`` module builds on; :mod:`statek_bus.sandbox.restricted` re-exports the public
names and explains the policy (and why).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CALL",
    "CLOCK",
    "DEFAULT_ALLOWED_IMPORTS",
    "DENIED_ATTRIBUTES",
    "DENIED_NAMES",
    "FMT",
    "FORMAT_METHODS",
    "GUARDED_ATTRIBUTES",
    "ITER",
    "MODEL_MODULE",
    "READ",
    "SAFE_BUILTINS",
    "SAFE_DUNDER_METHODS",
    "TICK",
    "WRITE",
    "SandboxPolicy",
    "SandboxViolation",
    "StepTimeout",
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

# The names instrumentation injects into model code and :func:`~statek_bus.sandbox.restricted.sandbox_globals`
# binds. All dunders: model code cannot name them, and the check runs before instrumentation.
TICK, ITER, FMT, WRITE, CLOCK, READ, CALL = (
    "__statek_tick__",
    "__statek_iter__",
    "__statek_fmt__",
    "__statek_w__",
    "__statek_clock__",
    "__statek_read__",
    "__statek_call__",
)
FORMAT_METHODS = frozenset({"format", "format_map"})
"""``str`` methods that read attributes named inside their template; every read of one is guarded."""
GUARDED_ATTRIBUTES = FORMAT_METHODS | {"register"}
"""Attribute reads routed through the run-time guard: the format methods, and ``register`` (an
abstract base class's ``register`` changes ``isinstance`` for every later job of the process)."""


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
