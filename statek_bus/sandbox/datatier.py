"""The data tier: model code that provably touches only data runs in the executor, without a fork.

A worker process per step (:mod:`statek_bus.runtime.procrunner`) costs a fork and its page faults,
which is most of a trivial step's CPU. Much model code is plain arithmetic on the job's own data
(``result = n * 2`` then ``exit(str(result))``). This module *proves*, statically, that a block is
of that kind, and gives the guarded namespace it then runs in; anything it cannot prove goes to a
worker process exactly as before. It is a language-level sandbox in the manner of Starlark: a strict
subset of CPython's AST, run by CPython itself, so the semantics are CPython's.

**What is eligible** (:func:`plan`, on the AST, before anything runs; cached per source):
``Module``, ``Expr``, ``Assign`` (to names, or tuples/lists of names), ``AugAssign`` (to a name),
``If``, ``Pass``; expressions: names (never starting with ``_``), constants (``None``, bool, int,
float, str), ``BinOp``, ``UnaryOp``, ``BoolOp``, ``Compare``, ``IfExp``, list/tuple/set/dict
displays, ``*x`` inside displays and call arguments, subscripts that read (index or slice),
f-strings whose format spec is a short constant with numbers up to 1000, and calls of the
callables in :data:`CALLABLES` by name, with the keywords :data:`KEYWORDS` allows (no ``**``).
Nothing else: no attribute, loop, comprehension, lambda, definition, ``try``, ``with``, ``raise``,
``import``, ``global``, ``del``, walrus or item assignment. A whitelisted name is only ever called,
never read as a value or assigned. The block must also pass the process path's own static check
(:func:`~statek_bus.sandbox.check.check_tree`), so the tier never accepts what a worker refuses.

**What may be in scope** (:func:`plain_value`): only data of the exact types ``None``, bool, int,
float, str, list, tuple, set, frozenset and dict, nested at most :data:`MAX_DEPTH` deep (the runtime
sends a workspace holding a set or a dict with non-text keys to a worker before decoding it). A future,
a job handle, a function or class replayed from an earlier step, an instance of an application
class, a ``str`` subclass: not in the namespace. The runtime keeps such values, and a workspace's
``import`` statements, in their stored form outside the namespace when the step never names them
(reads, assigns or calls), and stores them again as they were; a step that names one is not eligible.

**Why a host object is unreachable.** The tier's namespace holds the job's data, the guarded
callables (in ``__builtins__``, reachable only by being called: reading one as a value is
refused), ``print``/``exit`` and the guard's own helpers, whose names start with ``__`` (model
code cannot name a dunder). With no attribute access there is no ``__class__``, ``__globals__``,
frame or method; with no ``try`` no exception object is ever bound; with no definitions no code
object exists; every value the code can hold is data it built from constants and its own data
with CPython's builtins.

**Why no step can stall or blow up the executor.** There are no loops, so a block runs each
statement once. Every value the code makes goes through :class:`Guard`, which knows its expanded
*weight* (one per element, plus string characters / 8 and int bits / 64; a reference that occurs
twice is counted twice, so a shared DAG weighs what its repr would). An operation whose result
would exceed :data:`MAX_WEIGHT` (or an int :data:`MAX_INT_BITS`) is stopped *before* it runs
(``"a" * 10**9``, ``10**10**10``, ``[[0]*1000]*1000``), and the weight of every operand is charged
to a per-step budget (:data:`STEP_BUDGET`), so the work of one step is bounded too (``str``,
``==``, ``sorted`` of big values, many times over). The weight of a value is memoised by id, and
the guard holds every measured object for the step, so an id is never reused. The argument that
memoised weights stay true: with no item assignment, no methods and no in-place operation on a
mutable value (``a += b`` on a list is refused at run time; on immutables it is what CPython does),
nothing the code holds can change after it is made, and so no value can contain itself.

**When the guard trips** it raises :class:`TierAbort` (a ``BaseException``: an ordinary error
line is never made of it) and the runtime runs the whole request in a worker process from the
start. That is always safe: the tier calls no tool and commits nothing (``print`` only writes the
step's console buffer), so the user sees exactly what the process sandbox gives. The runtime side
is :mod:`statek_bus.runtime.tierrunner`.
"""

from __future__ import annotations

import ast
import builtins
import functools
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from statek_bus.sandbox.check import check_size, check_tree
from statek_bus.sandbox.policy import MODEL_MODULE, SandboxPolicy, SandboxViolation
from statek_bus.sandbox.restricted import CompiledStatement, is_echo

__all__ = [
    "CALLABLES",
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_RANGE",
    "MAX_ROUND_DIGITS",
    "MAX_SCOPE_WEIGHT",
    "MAX_SOURCE",
    "MAX_SPEC_NUMBER",
    "MAX_WEIGHT",
    "STEP_BUDGET",
    "Guard",
    "Plan",
    "TierAbort",
    "namespace",
    "plain_value",
    "plan",
    "refusal",
]

MAX_WEIGHT = 100_000
"""Largest weight of one value (elements + string characters / 8 + int bits / 64)."""
MAX_INT_BITS = 4096
"""Largest int, in bits: far below CPython's int/str conversion limit (4,300 digits), so no
conversion in the tier depends on the interpreter's ``int_max_str_digits`` setting, and the
quadratic cost of printing one stays small (an int weighs ``1 + limbs + limbs**2 / 16``, 64-bit
limbs, so a value full of big ints is as cheap to print as one full of small ones)."""
MAX_TEXT = MAX_WEIGHT * 8
"""Longest text (``str``, ``repr``, an f-string, one ``print``) an operation may produce, as an upper bound."""
MAX_SCOPE_WEIGHT = 1_000_000
"""Largest weight of all the job's variables together: a bigger workspace is a worker's to restore
and snapshot, not the executor's."""
STEP_BUDGET = 500_000
"""Weight of all operands of all operations of one step (the work one step may do; measured at
~20-200 ns of CPU a unit, so a step that spends it all takes well under 0.1 s of a thread)."""
MAX_DEPTH = 48
"""Deepest nesting of containers, in scope or made."""
MAX_ROUND_DIGITS = 400
"""Largest ``abs(ndigits)`` of ``round``."""
MAX_RANGE = 1_000_000
"""Longest ``range``."""
MAX_SPEC_NUMBER = 1000
"""Largest width or precision in an f-string's format spec."""
_MAX_SPEC_CHARS = 24
_PLANS = 512
"""Sources whose plan (or refusal) is cached."""
MAX_SOURCE = 20_000
"""Longest block the tier considers, in characters (plain-data code is short; a longer block goes
to a worker without being parsed here, and no long source is held by the cache)."""

CALLABLES = frozenset(
    {
        "print", "exit", "len", "str", "repr", "int", "float", "bool", "abs", "round", "min", "max",
        "sum", "sorted", "list", "tuple", "range", "enumerate", "zip", "any", "all",
        "divmod", "chr", "ord", "hex", "bin", "oct",
    }
)  # fmt: skip
"""The callables model code may call in the tier (each is a guarded version of the builtin;
``print`` and ``exit`` are the step's own). Nothing that hashes many computed keys in one C call
(``set``, ``dict``, a set display): ints, floats and tuples of them hash predictably, so such keys
can be made to collide and the build becomes quadratic while it holds the GIL."""

_ANY = frozenset({"*"})
KEYWORDS: dict[str, frozenset[str]] = {
    "print": frozenset({"sep", "end", "file", "flush"}),  # file/flush are ignored, as in the worker
    "int": frozenset({"base"}),
    "round": frozenset({"ndigits"}),
    "min": frozenset({"default"}),
    "max": frozenset({"default"}),
    "sum": frozenset({"start"}),
    "sorted": frozenset({"reverse"}),
    "enumerate": frozenset({"start"}),
    "zip": frozenset({"strict"}),
    "dict": _ANY,
}
"""Keyword arguments each callable accepts in the tier (``key=`` never: it would pass a callable)."""


class TierAbort(BaseException):
    """The tier gives the step up: it runs in a worker process from the start instead.

    A ``BaseException`` so that nothing turns it into the model's error line.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ==================================================================================================
# Eligibility: the AST subset
# ==================================================================================================


@dataclass(frozen=True)
class Plan:
    """A block the tier may run: its rewritten statements and the names it needs from scope."""

    statements: tuple[CompiledStatement, ...]
    """The rewritten, compiled top-level statements (same filename and line numbers as the worker's)."""
    needs: frozenset[str]
    """Names read that the block does not assign itself: they must be the job's variables."""
    assigned: frozenset[str]
    """Names the block assigns."""
    calls: frozenset[str]
    """Whitelisted callables it calls."""


_STATEMENTS = (ast.Expr, ast.Assign, ast.AugAssign, ast.If, ast.Pass)
_EXPRESSIONS = (
    ast.Name, ast.Constant, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.List,
    ast.Tuple, ast.Set, ast.Dict, ast.Starred, ast.Subscript, ast.Slice, ast.JoinedStr,
    ast.FormattedValue, ast.Call,
)  # fmt: skip
_PLUMBING = (
    ast.Load, ast.Store, ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.keyword, ast.Module,
)  # fmt: skip
_CONSTANTS = (type(None), bool, int, float, str)


class _Refused(Exception):
    """The block is outside the subset (internal to :func:`plan`)."""


class _Subset(ast.NodeVisitor):
    """Checks the subset; collects names read, assigned and called."""

    def __init__(self) -> None:
        self.loads: set[str] = set()
        self.stores: set[str] = set()
        self.calls: set[str] = set()
        self._callee: set[int] = set()
        self._starred_ok: set[int] = set()

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, (*_STATEMENTS, *_EXPRESSIONS, *_PLUMBING)):
            raise _Refused(type(node).__name__)
        super().generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._target(target)
        self.visit(node.value)

    def _target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._store(target.id)
        elif isinstance(target, ast.Tuple | ast.List) and all(isinstance(e, ast.Name) for e in target.elts):
            for e in target.elts:
                assert isinstance(e, ast.Name)
                self._store(e.id)
        else:
            raise _Refused("assignment target")

    def _store(self, name: str) -> None:
        if name.startswith("_") or name in CALLABLES:
            raise _Refused(f"assignment to {name}")
        self.stores.add(name)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if not isinstance(node.target, ast.Name):
            raise _Refused("augmented assignment target")
        self._load(node.target.id)
        self._store(node.target.id)
        self.visit(node.value)

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            raise _Refused("name store")
        if id(node) in self._callee:
            self.calls.add(node.id)
            return
        if node.id in CALLABLES:
            raise _Refused(f"{node.id} as a value")
        self._load(node.id)

    def _load(self, name: str) -> None:
        if name.startswith("_"):
            raise _Refused(f"name {name}")
        self.loads.add(name)

    def visit_Constant(self, node: ast.Constant) -> None:
        if type(node.value) not in _CONSTANTS:
            raise _Refused("constant")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in CALLABLES:
            raise _Refused("call")
        allowed = KEYWORDS.get(func.id, frozenset())
        for k in node.keywords:
            if k.arg is None or (allowed is not _ANY and k.arg not in allowed) or k.arg.startswith("_"):
                raise _Refused("keyword")
        self._callee.add(id(func))
        self._starred_ok.update(id(a) for a in node.args)
        self.generic_visit(node)

    def _display(self, node: ast.List | ast.Tuple | ast.Set) -> None:
        if not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
            raise _Refused("display store")
        self._starred_ok.update(id(e) for e in node.elts)
        self.generic_visit(node)

    visit_List = visit_Tuple = _display

    def visit_Set(self, node: ast.Set) -> None:
        raise _Refused("set display: its elements are hashed in one C call (see CALLABLES)")

    def visit_Starred(self, node: ast.Starred) -> None:
        if id(node) not in self._starred_ok or not isinstance(node.ctx, ast.Load):
            raise _Refused("starred")
        self.visit(node.value)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load):
            raise _Refused("subscript store")
        self.generic_visit(node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> None:
        spec = node.format_spec
        if spec is not None:
            if not (
                isinstance(spec, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in spec.values)
            ):
                raise _Refused("computed format spec")
            text = "".join(str(v.value) for v in spec.values if isinstance(v, ast.Constant))
            numbers = [int(n) for n in re.findall(r"\d+", text)]
            if len(text) > _MAX_SPEC_CHARS or any(n > MAX_SPEC_NUMBER for n in numbers):
                raise _Refused("format spec")
        self.visit(node.value)


_OP_NAMES = {
    ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "truediv", ast.FloorDiv: "floordiv",
    ast.Mod: "mod", ast.Pow: "pow", ast.LShift: "lshift", ast.RShift: "rshift", ast.BitOr: "or_",
    ast.BitXor: "xor", ast.BitAnd: "and_", ast.MatMult: "matmul",
}  # fmt: skip

OP = "__tier_op__"
"""``__tier_op__(name, a, b)``: a guarded binary operation."""
AUG = "__tier_aug__"
"""``__tier_aug__(name, a, b)``: a guarded augmented assignment's operation (in place only on immutables)."""
VALUE = "__tier_value__"
"""``__tier_value__(x)``: a value just made (a display, a subscript, an f-string): measured and charged."""
CHARGE = "__tier_charge__"
"""``__tier_charge__(x)``: an operand whose weight is charged (comparisons, subscript and dict-display keys)."""
STAR = "__tier_star__"
"""``__tier_star__(x)``: a value unpacked by ``*x`` (or by ``**x`` in a dict display)."""
TEXT = "__tier_text__"
"""``__tier_text__(x)``: a value formatted into an f-string."""


def _helper(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


class _Rewrite(ast.NodeTransformer):
    """Routes every value-making node through the guard (run only on a block :class:`_Subset` passed)."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = ast.Constant(_OP_NAMES[type(node.op)])
        return ast.copy_location(_helper(OP, name, node.left, node.right), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        assert isinstance(node.target, ast.Name)
        target = node.target.id
        value = _helper(
            AUG, ast.Constant(_OP_NAMES[type(node.op)]), ast.Name(id=target, ctx=ast.Load()), node.value
        )
        return ast.copy_location(
            ast.Assign(targets=[ast.Name(id=target, ctx=ast.Store())], value=value), node
        )

    def _made(self, node: ast.expr) -> ast.AST:
        self.generic_visit(node)
        if isinstance(getattr(node, "ctx", None), ast.Store):
            return node
        return ast.copy_location(_helper(VALUE, node), node)

    visit_List = visit_Tuple = visit_Set = visit_JoinedStr = _made

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        """Each key hashed and each ``**`` copied is charged (``{**d, **d, ...}`` makes a small dict)."""
        self.generic_visit(node)
        node.values = [
            v if k is not None else _helper(STAR, v) for k, v in zip(node.keys, node.values, strict=True)
        ]
        node.keys = [k if k is None else _helper(CHARGE, k) for k in node.keys]
        return ast.copy_location(_helper(VALUE, node), node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.slice, ast.Slice):
            node.slice = _helper(CHARGE, node.slice)
        return ast.copy_location(_helper(VALUE, node), node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        node.left = _helper(CHARGE, node.left)
        node.comparators = [_helper(CHARGE, c) for c in node.comparators]
        return node

    def visit_Starred(self, node: ast.Starred) -> ast.AST:
        self.generic_visit(node)
        node.value = _helper(STAR, node.value)
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        node.value = _helper(TEXT, self.visit(node.value), ast.Constant(node.conversion))
        return node


def refusal(source: str, policy: SandboxPolicy) -> str | None:
    """Why ``source`` is outside the tier's subset (None: it is inside). For tests and logs."""
    if len(source) > MAX_SOURCE:
        return "source length"
    try:
        _build(source, policy)
    except _Refused as exc:
        return str(exc) or "refused"
    return None


def plan(source: str, policy: SandboxPolicy) -> Plan | None:
    """The tier's plan for ``source`` under ``policy``, or None when the block is outside the subset
    (or the process path's own check refuses it: the worker then reports that refusal). Plans and
    refusals are cached per source, so a block is parsed here once."""
    if len(source) > MAX_SOURCE:
        return None
    return _cached(source, policy)


@functools.lru_cache(maxsize=_PLANS)
def _cached(source: str, policy: SandboxPolicy) -> Plan | None:
    try:
        return _build(source, policy)
    except _Refused:
        return None


def _build(source: str, policy: SandboxPolicy) -> Plan:
    try:
        if policy.restricted:
            check_size(source, policy)
        tree = ast.parse(source, "<model>")
        if policy.restricted:
            check_tree(tree, policy)
        subset = _Subset()
        subset.visit(tree)
    except (SyntaxError, ValueError, SandboxViolation, RecursionError, MemoryError) as exc:
        # CPython's parser raises MemoryError for nesting past its stack (``1**1**...``, 6,000 terms)
        raise _Refused(type(exc).__name__) from None
    echoes = [is_echo(s) for s in tree.body]
    rewritten = _Rewrite().visit(tree)
    for stmt, echo in zip(rewritten.body, echoes, strict=True):
        if echo:  # the engine formats an echoed value: charged like an f-string's
            stmt.value = _helper(TEXT, stmt.value, ast.Constant(ord("r")))
    rewritten = ast.fix_missing_locations(rewritten)
    statements: list[CompiledStatement] = []
    for stmt, echo in zip(rewritten.body, echoes, strict=True):
        if echo:
            assert isinstance(stmt, ast.Expr)
            code = compile(ast.Expression(body=stmt.value), "<model>", "eval")
        else:
            code = compile(ast.Module(body=[stmt], type_ignores=[]), "<model>", "exec")
        statements.append(CompiledStatement(code, "", stmt.lineno, False, (), echo))
    return Plan(
        statements=tuple(statements),
        needs=frozenset(subset.loads - subset.stores),
        assigned=frozenset(subset.stores),
        calls=frozenset(subset.calls),
    )


# ==================================================================================================
# Values in scope
# ==================================================================================================

_SCALARS = (type(None), bool, int, float, str)
_CONTAINERS = (list, tuple, set, frozenset)


def plain_value(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain data of the exact types the tier accepts, at most :data:`MAX_DEPTH` deep."""
    kind = type(value)
    if kind in _SCALARS:
        return kind is not int or value.bit_length() <= MAX_INT_BITS
    if depth >= MAX_DEPTH:
        return False
    if kind in _CONTAINERS:
        return all(plain_value(v, depth + 1) for v in value)
    if kind is dict:
        return all(plain_value(k, depth + 1) and plain_value(v, depth + 1) for k, v in value.items())
    return False


# ==================================================================================================
# The guard
# ==================================================================================================

_OPS: dict[str, Callable[[Any, Any], Any]] = {n: getattr(operator, n) for n in _OP_NAMES.values()}
_IN_PLACE: dict[str, Callable[[Any, Any], Any]] = {
    n: getattr(operator, "i" + n.rstrip("_")) for n in _OP_NAMES.values()
}
_IMMUTABLE = (type(None), bool, int, float, str, tuple, frozenset)
_LAZY = (range, enumerate, zip)
_NO_TEXT = MAX_TEXT + 1  # an iterator's text holds an executor heap address: formatting one gives up
_NUMBERS = (bool, int, float)


def _internal(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A guard's own bookkeeping: any failure in it is the tier's, never the model's error."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TierAbort:
            raise
        except Exception as exc:
            raise TierAbort(f"guard: {type(exc).__name__}") from None

    return guarded


class Guard:
    """One step's guard: weights of the values the code holds, and the work it has done.

    Args:
        budget: weight of operands the step may spend (:data:`STEP_BUDGET`).
    """

    def __init__(self, budget: int = STEP_BUDGET) -> None:
        self.budget = budget
        self.spent = 0
        """Weight charged so far."""
        self._memo: dict[int, tuple[Any, int, int, int]] = {}  # id -> (object held, weight, depth, text)
        self._lazy: dict[int, tuple[Any, int, int]] = {}  # id -> (iterator held, length, materialised weight)

    # --- measuring ---------------------------------------------------------------------------------
    def abort(self, reason: str) -> TierAbort:
        """The exception that gives the step up."""
        return TierAbort(reason)

    def charge(self, weight: int) -> None:
        """Spend ``weight`` of the step's budget."""
        self.spent += weight
        if self.spent > self.budget:
            raise self.abort("step budget")

    def measure(self, value: Any, depth: int = 0) -> tuple[int, int, int]:
        """(weight, depth, an upper bound of its repr's length); aborts past the caps."""
        kind = type(value)
        if kind is int:
            bits = value.bit_length()
            if bits > MAX_INT_BITS:
                raise self.abort("int size")
            limbs = bits // 64
            return 1 + limbs + limbs * limbs // 16, 0, bits // 3 + 3
        if kind is str:
            n = len(value)
            return 1 + n // 8, 0, 2 + n * (4 if value.isascii() else 10)
        if kind is bool or value is None:
            return 1, 0, 5
        if kind is float:
            return 1, 0, 24
        found = self._memo.get(id(value))
        if found is not None:
            return found[1], found[2], found[3]
        if depth > MAX_DEPTH:
            raise self.abort("depth")
        flat = _flat(value) if kind in _CONTAINERS and len(value) > 16 else None
        if flat is not None:
            weight, deepest, text = flat
            if weight > MAX_WEIGHT:
                raise self.abort("weight")
        elif kind in _CONTAINERS:
            weight, deepest, text = 1, 0, 2
            for v in value:
                w, d, t = self.measure(v, depth + 1)
                weight, deepest, text = weight + w, max(deepest, d), text + t + 2
                if weight > MAX_WEIGHT:
                    raise self.abort("weight")
        elif kind is dict:
            weight, deepest, text = 1, 0, 2
            for k, v in value.items():
                wk, dk, tk = self.measure(k, depth + 1)
                wv, dv, tv = self.measure(v, depth + 1)
                weight, deepest, text = weight + wk + wv, max(deepest, dk, dv), text + tk + tv + 4
                if weight > MAX_WEIGHT:
                    raise self.abort("weight")
        elif kind is range:  # its repr holds its three ints, which may be big
            bounds = [self.measure(x, depth + 1) for x in (value.start, value.stop, value.step)]
            weight, deepest, text = 1 + sum(b[0] for b in bounds), -1, 23 + sum(b[2] for b in bounds)
        elif kind in _LAZY:  # its repr holds its heap address: any text of it is a worker's to make
            weight, deepest, text = 1, -1, _NO_TEXT
        else:
            raise self.abort(f"value of type {kind.__name__}")
        deepest += 1
        if deepest > MAX_DEPTH:
            raise self.abort("depth")
        self._memo[id(value)] = (value, weight, deepest, text)
        return weight, deepest, text

    def weight(self, value: Any) -> int:
        """The expanded weight of ``value``."""
        return self.measure(value)[0]

    def text(self, value: Any) -> int:
        """An upper bound of the length of ``str(value)``."""
        if type(value) is str:
            return len(value)
        return self.measure(value)[2]

    def _items(self, value: Any) -> tuple[int, int]:
        """(length, weight once materialised as a list) of an iterable argument."""
        kind = type(value)
        if kind in _LAZY:
            held = self._lazy.get(id(value))
            if held is None:
                raise self.abort("unknown iterator")
            return held[1], held[2]
        if kind is str:
            return len(value), 2 * len(value) + 1
        if kind in (*_CONTAINERS, dict):
            return len(value), self.weight(value)
        return 0, self.weight(value)  # not iterable: the builtin raises its own TypeError

    def _materialised(self, value: Any) -> int:
        length, weight = self._items(value)
        if weight > MAX_WEIGHT:
            raise self.abort("weight")
        self.charge(weight)
        return length

    def _lazy_made(self, made: Any, length: int, weight: int) -> Any:
        if weight > MAX_WEIGHT * 4:
            raise self.abort("weight")
        self._lazy[id(made)] = (made, length, weight)
        self.measure(made)
        return made

    # --- helpers the rewritten code calls ----------------------------------------------------------
    @_internal
    def value(self, value: Any) -> Any:
        """A value just made: measured (aborts past the caps) and charged."""
        self.charge(self.weight(value))
        return value

    @_internal
    def charged(self, value: Any) -> Any:
        """An operand: its weight is charged (an iterator's or a range's once materialised: ``x in r``
        walks it)."""
        self.charge(self._items(value)[1] if type(value) in _LAZY else self.weight(value))
        if self.text(value) > MAX_TEXT:  # a key that is missing is repr'd into the error line
            raise self.abort("text")
        return value

    @_internal
    def star(self, value: Any) -> Any:
        """A value about to be unpacked by ``*`` (anything but a container, a string or an iterator of
        the tier's is the worker's to report: CPython's error line would name the tier's wrapper)."""
        if type(value) not in (*_CONTAINERS, dict, str, *_LAZY):
            raise self.abort("starred non-iterable")
        self._materialised(value)
        return value

    @_internal
    def formatted(self, value: Any, conversion: int = -1) -> Any:
        """A value about to be formatted into an f-string (its width is at most :data:`MAX_SPEC_NUMBER`);
        ``!r`` and ``!a`` are priced as the repr they make (a string's repr may be 10 times as long)."""
        text = self.measure(value)[2] if conversion in (ord("r"), ord("a")) else self.text(value)
        size = text + MAX_SPEC_NUMBER
        if size > MAX_TEXT:
            raise self.abort("text")
        self.charge(size // 8)
        return value

    def binop(self, name: str, left: Any, right: Any) -> Any:
        """``left <op> right``, once its result is known to be small enough."""
        self._predict(name, left, right)
        return self.value(_OPS[name](left, right))

    def augmented(self, name: str, left: Any, right: Any) -> Any:
        """``left <op>= right``: in place for immutables (what CPython does), refused for mutables."""
        self._mutable(left)
        self._predict(name, left, right)
        return self.value(_IN_PLACE[name](left, right))

    @_internal
    def _mutable(self, left: Any) -> None:
        if type(left) not in _IMMUTABLE:
            raise self.abort("in-place operation on a mutable value")

    @_internal
    def _predict(self, name: str, left: Any, right: Any) -> None:
        wl, wr = self.weight(left), self.weight(right)
        self.charge(wl + wr)
        tl, tr = type(left), type(right)
        ints = tl in (int, bool) and tr in (int, bool)
        if ints:
            bl, br = abs(left).bit_length(), abs(right).bit_length()
            if name == "pow" and right > 0 and bl > 1 and right * math.log2(abs(left)) > MAX_INT_BITS:
                raise self.abort("int size")
            if name == "lshift" and right > 0 and bl + right > MAX_INT_BITS:
                raise self.abort("int size")
            if name == "mul" and bl + br > MAX_INT_BITS:
                raise self.abort("int size")
            return
        if name == "mod" and tl is str:
            raise self.abort("str % formatting")
        if name == "mul":
            count, seq = (
                (left, right) if tl in (int, bool) else (right, left) if tr in (int, bool) else (0, None)
            )
            if count > 0 and type(seq) is str and 1 + count * len(seq) // 8 > MAX_WEIGHT:
                raise self.abort("weight")
            if count > 0 and type(seq) in (list, tuple) and count * self.weight(seq) > MAX_WEIGHT:
                raise self.abort("weight")
        elif name in ("add", "or_", "sub", "and_", "xor") and wl + wr > MAX_WEIGHT:
            raise self.abort("weight")


_NUMERIC_TYPES = frozenset({int, bool})
_FLAT_SCALARS = frozenset({float, bool, type(None)})


def _flat(value: Any) -> tuple[int, int, int] | None:
    """(weight, height of its elements, text bound) of a container of scalars of one kind, at C speed
    (an upper bound of what the element walk gives), or None: walk it."""
    kinds = set(map(type, value))
    n = len(value)
    if kinds <= _NUMERIC_TYPES:
        bits = max(map(int.bit_length, value), default=0)
        if bits > MAX_INT_BITS:
            return None  # the walk aborts on it
        limbs = bits // 64
        return 1 + n * (1 + limbs + limbs * limbs // 16), 0, 2 + n * (bits // 3 + 5)
    if kinds <= _FLAT_SCALARS:
        return 1 + n, 0, 2 + n * 26
    if kinds == {str}:
        chars = sum(map(len, value))
        per_char = 4 if all(map(str.isascii, value)) else 10
        return 1 + n + chars // 8, 0, 2 + n * 4 + chars * per_char
    return None


def _call(guard: Guard, real: Callable[..., Any], check: Callable[..., None] | None) -> Callable[..., Any]:
    """A guarded callable: ``check`` runs first (it may abort), then the real one; its result is measured."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if check is not None:  # each check is _internal already
            check(*args, **kwargs)
        else:
            _charged_args(guard, args, kwargs)
        result = real(*args, **kwargs)
        return guard.value(result)

    return call


def _charge_args(guard: Guard, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for a in (*args, *kwargs.values()):
        guard.charge(guard.weight(a))


_charged_args = _internal(_charge_args)


class _Checks:
    """Pre-checks of the guarded callables: each aborts when the real call could be too big."""

    def __init__(self, guard: Guard) -> None:
        self.g = guard

    @_internal
    def print(self, *args: Any, sep: Any = " ", end: Any = "\n", **_: Any) -> None:
        g = self.g
        sep_len = g.text(sep) if sep is not None else 1
        size = sum(g.text(a) for a in args) + sep_len * len(args) + (g.text(end) if end is not None else 1)
        if size > MAX_TEXT:
            raise g.abort("text")
        g.charge(size // 8 + len(args))

    @_internal
    def exit(self, *args: Any, **kwargs: Any) -> None:
        _charge_args(self.g, args, kwargs)

    @_internal
    def text(self, *args: Any, **kwargs: Any) -> None:
        if args:
            size = self.g.text(args[0])
            if size > MAX_TEXT:
                raise self.g.abort("text")
            self.g.charge(size // 8)

    @_internal
    def int(self, *args: Any, **kwargs: Any) -> None:
        _charge_args(self.g, args, kwargs)
        if args and type(args[0]) is str:
            base = args[1] if len(args) > 1 else kwargs.get("base", 10)
            per_char = 4 if base == 10 else 6
            if len(args[0]) * per_char > MAX_INT_BITS:
                raise self.g.abort("int size")

    @_internal
    def round(self, *args: Any, **kwargs: Any) -> None:
        _charge_args(self.g, args, kwargs)
        digits: Any = args[1] if len(args) > 1 else kwargs.get("ndigits")
        if type(digits) in (int, bool) and abs(digits) > MAX_ROUND_DIGITS:
            raise self.g.abort("round digits")

    @_internal
    def iterable(self, *args: Any, **kwargs: Any) -> None:
        """``list``/``tuple``/``set``/``dict``/``min``/``max``/``any``/``all``: each argument materialised."""
        for a in args:
            self.g._materialised(a)
        for v in kwargs.values():
            self.g.charge(self.g.weight(v))

    @_internal
    def sum(self, *args: Any, **kwargs: Any) -> None:
        start = args[1] if len(args) > 1 else kwargs.get("start", 0)
        if type(start) not in _NUMBERS:
            raise self.g.abort("sum start")
        self.iterable(*args[:1])

    @_internal
    def sorted(self, *args: Any, **kwargs: Any) -> None:
        for a in args:
            length = self.g._materialised(a)
            self.g.charge(self.g.weight(a) * max(1, math.ceil(math.log2(length + 1))))


def _lazy_range(guard: Guard) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        made = range(*args, **kwargs)
        return _ranged(guard, made)

    return make


@_internal
def _ranged(guard: Guard, made: range) -> range:
    try:
        length = len(made)
    except OverflowError:
        raise guard.abort("range length") from None
    if length > MAX_RANGE:
        raise guard.abort("range length")
    bits = max(abs(made.start).bit_length(), abs(made.stop).bit_length())
    return guard._lazy_made(made, length, length * (2 + bits // 64) + 1)  # type: ignore[no-any-return]


def _lazy_enumerate(guard: Guard) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        made = enumerate(*args, **kwargs)
        return _enumerated(guard, made, args, kwargs)

    return make


@_internal
def _enumerated(guard: Guard, made: enumerate[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    start = args[1] if len(args) > 1 else kwargs.get("start", 0)
    _charge_args(guard, args[1:], kwargs)
    length, weight = guard._items(args[0])
    per_item = 3 + abs(start).bit_length() // 64
    return guard._lazy_made(made, length, weight + per_item * length + 1)


def _lazy_zip(guard: Guard) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        made = zip(*args, **kwargs)  # noqa: B905 - the model's own strict= passes through
        return _zipped(guard, made, args)

    return make


@_internal
def _zipped(guard: Guard, made: zip[Any], args: tuple[Any, ...]) -> Any:
    sizes = [guard._items(a) for a in args]
    length = min((n for n, _ in sizes), default=0)
    weight = sum(w for _, w in sizes) + (len(args) + 1) * length + 1
    return guard._lazy_made(made, length, weight)


def namespace(guard: Guard, *, print_fn: Callable[..., Any], exit_fn: Callable[..., Any]) -> dict[str, Any]:
    """The tier's globals for one step: guarded callables as builtins, the guard's helpers, and the
    step's own ``print`` and ``exit`` (also guarded). The job's variables are added by the caller."""
    checks = _Checks(guard)
    real = vars(builtins)
    plain = {
        n: _call(guard, real[n], None)
        for n in ("len", "float", "bool", "abs", "divmod", "chr", "ord", "hex", "bin", "oct")
    }
    safe: dict[str, Any] = {
        **plain,
        "str": _call(guard, str, checks.text),
        "repr": _call(guard, repr, checks.text),
        "int": _call(guard, int, checks.int),
        "round": _call(guard, round, checks.round),
        "sum": _call(guard, sum, checks.sum),
        "sorted": _call(guard, sorted, checks.sorted),
        "range": _lazy_range(guard),
        "enumerate": _lazy_enumerate(guard),
        "zip": _lazy_zip(guard),
        **{n: _call(guard, real[n], checks.iterable) for n in ("min", "max", "list", "tuple", "any", "all")},
    }
    assert set(safe) == CALLABLES - {"print", "exit"}
    return {
        "__builtins__": safe,
        "__name__": MODEL_MODULE,
        OP: guard.binop,
        AUG: guard.augmented,
        VALUE: guard.value,
        CHARGE: guard.charged,
        STAR: guard.star,
        TEXT: guard.formatted,
        "print": _call(guard, print_fn, checks.print),
        "exit": _call(guard, exit_fn, checks.exit),
    }
