"""The data tier: model code that provably touches only data runs in the executor, without a fork.

A worker process per step (:mod:`statek_bus.runtime.procrunner`) costs a fork and its page faults,
which is most of a trivial step's CPU. Much model code is plain arithmetic on the job's own data
(``result = n * 2`` then ``exit(str(result))``). This module *proves*, statically, that a block is
of that kind, and rewrites it to run in the guarded namespace of
:mod:`statek_bus.sandbox.tierguard`; anything it cannot prove goes to a
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
float, str, list, tuple, set, frozenset and dict, nested at most :data:`MAX_DEPTH` deep; never a
future, a job handle, a replayed function or class, an application object or a ``str`` subclass.
The runtime decodes only the variables a step names, and gives the step up rather than decode one
that is a set or a dict with non-text keys, or not plain data; the rest stay in their stored form.

**Why a host object is unreachable.** The tier's namespace holds the job's data, the guarded
callables (in ``__builtins__``, reachable only by being called: reading one as a value is
refused), ``print``/``exit`` and the guard's own helpers, whose names start with ``__`` (model
code cannot name a dunder). With no attribute access there is no ``__class__``, ``__globals__``,
frame or method; with no ``try`` no exception object is ever bound; with no definitions no code
object exists; every value the code can hold is data it built from constants and its own data
with CPython's builtins.

**Why no step can stall or blow up the executor.** There are no loops, so a block runs each
statement once. Every value the code makes goes through the guard
(:class:`~statek_bus.sandbox.tierguard.Guard`), which knows its expanded
*weight* (one per element, plus a string's bytes / 8 and int bits / 64; a reference that occurs
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
import functools
import re
from dataclasses import dataclass
from typing import Any

from statek_bus.sandbox.check import check_size, check_tree
from statek_bus.sandbox.policy import SandboxPolicy, SandboxViolation
from statek_bus.sandbox.restricted import CompiledStatement, is_echo

__all__ = [
    "CALLABLES",
    "CONTAINERS",
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_NODES",
    "MAX_RANGE",
    "MAX_ROUND_DIGITS",
    "MAX_SCOPE_WEIGHT",
    "MAX_SOURCE",
    "MAX_SPEC_NUMBER",
    "MAX_WEIGHT",
    "OP_NAMES",
    "STEP_BUDGET",
    "Plan",
    "TierAbort",
    "plain_value",
    "plan",
    "refusal",
]

MAX_WEIGHT = 100_000
"""Largest weight of one value (elements + string bytes / 8 + int bits / 64)."""
MAX_INT_BITS = 4096
"""Largest int, in bits: far below CPython's int/str conversion limit (4,300 digits), so no
conversion in the tier depends on the interpreter's ``int_max_str_digits`` setting, and the
quadratic cost of printing one stays small (an int weighs ``1 + limbs + limbs**2 / 16``, 64-bit
limbs, so a value full of big ints is as cheap to print as one full of small ones)."""
MAX_TEXT = MAX_WEIGHT * 8
"""Longest text (``str``, ``repr``, an f-string, one ``print``) an operation may produce, as an upper bound."""
MAX_SCOPE_WEIGHT = 250_000
"""Largest weight of all the job's variables together (as stored, and as the step leaves them): a
bigger workspace is a worker's to restore and snapshot, not the executor's (decoding, checking and
storing this much again takes the tier up to ~0.1 s)."""
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
MAX_SOURCE = 8_000
"""Longest block the tier considers, in characters (plain-data code is short; a longer block goes
to a worker without being parsed here, and no long source is held by the cache)."""
MAX_NODES = 2_000
"""Most AST nodes of a block the tier plans: checking, rewriting and compiling one takes 5-10 us a
node, so a new block of 20,000 nodes each step (3,300 ``d[k]`` in one list) took 0.12 s of planning."""

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
_SINGLETONS = (None, True, False)


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


OP_NAMES = {
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
"""``__tier_charge__(x)``: an operand whose weight is charged (comparisons, subscripts)."""
KEY = "__tier_key__"
"""``__tier_key__(k)``: a dict display's key: charged, and counted by its hash unless it is text."""
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
        name = ast.Constant(OP_NAMES[type(node.op)])
        return ast.copy_location(_helper(OP, name, node.left, node.right), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        assert isinstance(node.target, ast.Name)
        target = node.target.id
        value = _helper(
            AUG, ast.Constant(OP_NAMES[type(node.op)]), ast.Name(id=target, ctx=ast.Load()), node.value
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
        node.keys = [k if k is None else _helper(KEY, k) for k in node.keys]
        return ast.copy_location(_helper(VALUE, node), node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.slice, ast.Slice):
            node.slice = _helper(CHARGE, node.slice)
        return ast.copy_location(_helper(VALUE, node), node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        sides = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):  # identity of anything but a singleton is CPython's
            if (
                isinstance(op, ast.Is | ast.IsNot)
                and not any(  # folding, and the tier folds nothing
                    isinstance(e, ast.Constant) and any(e.value is c for c in _SINGLETONS)
                    for e in sides[i : i + 2]
                )
            ):
                raise _Refused("is between values")
        self.generic_visit(node)
        node.left = _helper(CHARGE, node.left)
        node.comparators = [_helper(CHARGE, c) for c in node.comparators]
        if not any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            return node
        if len(node.ops) > 1:  # a search is charged by its two operands (Guard.binop): one at a time
            raise _Refused("a chained in")
        found = _helper(OP, ast.Constant("in"), node.left, node.comparators[0])
        negated = isinstance(node.ops[0], ast.NotIn)  # ``a not in b`` is ``not (a in b)`` in CPython
        return ast.copy_location(ast.UnaryOp(ast.Not(), found) if negated else found, node)

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
        if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
            raise _Refused("a block of too many nodes")
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
CONTAINERS = (list, tuple, set, frozenset)


def plain_value(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain data of the exact types the tier accepts, at most :data:`MAX_DEPTH` deep."""
    kind = type(value)
    if kind in _SCALARS:
        return kind is not int or value.bit_length() <= MAX_INT_BITS
    if depth >= MAX_DEPTH:
        return False
    if kind in CONTAINERS:
        return all(plain_value(v, depth + 1) for v in value)
    if kind is dict:
        return all(plain_value(k, depth + 1) and plain_value(v, depth + 1) for k, v in value.items())
    return False
