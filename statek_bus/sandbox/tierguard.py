"""The data tier's guard: the namespace a tier step runs in, and the checks that bound it.

:mod:`statek_bus.sandbox.datatier` proves a block is plain-data code and rewrites it so that every
value it makes and every operand it uses passes through a :class:`Guard`; the argument why that
bounds what one step can build and spend is that module's docstring. Here: the guard (weights,
memoised by id; the step's budget; the checks made *before* an operation runs), the guarded
callables, and :func:`namespace`, the globals of one step.
"""

from __future__ import annotations

import builtins
import functools
import math
import operator
import sys
from collections.abc import Callable
from typing import Any

from statek_bus.sandbox.datatier import (
    AUG,
    CALLABLES,
    CHARGE,
    CONTAINERS,
    KEY,
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_RANGE,
    MAX_ROUND_DIGITS,
    MAX_SPEC_NUMBER,
    MAX_TEXT,
    MAX_WEIGHT,
    OP,
    OP_NAMES,
    STAR,
    STEP_BUDGET,
    TEXT,
    VALUE,
    TierAbort,
)
from statek_bus.sandbox.policy import MODEL_MODULE

__all__ = ["Guard", "namespace", "text_weight"]

_MAX_COLLISIONS = 8
"""Most distinct dict-display keys (not text) of one hash in a step."""
_SEARCH_SPAN = 4096
"""``p in h`` on texts is O(len(p) * len(h)) in CPython up to about this many characters of ``h``
(0.2 ns a pair: 240 us for 1,200 in 2,400), linear past it: charged ``len(p) * min(len(h), span) / 512``."""
_SHORT_PATTERN, _SHORT_PATTERN_SPAN = 100, 30_000
"""A pattern under 100 characters is searched by brute force in a text of up to 30,000 (CPython
3.11's ``fastsearch``): 100 searches of 99 characters in 29,999 took 60 ms."""

_OPS: dict[str, Callable[[Any, Any], Any]] = {n: getattr(operator, n) for n in OP_NAMES.values()}
_IN_PLACE: dict[str, Callable[[Any, Any], Any]] = {
    n: getattr(operator, "i" + n.rstrip("_")) for n in OP_NAMES.values()
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
        self._hashes: dict[int, list[Any]] = {}  # hash -> the distinct dict-display keys of it (not text)

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
            return text_weight(value), 0, 2 + n * (4 if value.isascii() else 10)
        if kind is bool or value is None:
            return 1, 0, 5
        if kind is float:
            return 1, 0, 24
        found = self._memo.get(id(value))
        if found is not None:
            return found[1], found[2], found[3]
        if depth > MAX_DEPTH:
            raise self.abort("depth")
        flat = _flat(value) if kind in CONTAINERS and len(value) > 16 else None
        if flat is not None:
            weight, deepest, text = flat
            if weight > MAX_WEIGHT:
                raise self.abort("weight")
        elif kind in CONTAINERS:
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
        if kind in (*CONTAINERS, dict):
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
    def key(self, value: Any) -> Any:
        """A dict display's key: charged, and, unless it is text (whose hash is keyed per process),
        counted by its hash: ints and tuples hash predictably (``hash(m * i) == 0`` for
        ``m = 2**61 - 1``), and a dict whose keys share a hash makes every lookup, copy and ``==``
        walk them all (2,000 such keys and 40 ``d == d`` took 0.6 s). Every dict the tier holds with
        keys that are not text was made by a display of this step, so no hash ever has more than
        :data:`_MAX_COLLISIONS` distinct keys."""
        self.charged(value)
        if type(value) is not str:
            seen = self._hashes.setdefault(hash(value), [])
            if not any(k == value for k in seen):
                if len(seen) >= _MAX_COLLISIONS:
                    raise self.abort("keys of one hash")
                seen.append(value)
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
        if type(value) not in (*CONTAINERS, dict, str, *_LAZY):
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
        if name == "in":  # operands charged already; CPython searches texts under ~4,000 by brute force
            if type(left) is str and type(right) is str:
                span = _SHORT_PATTERN_SPAN if len(left) < _SHORT_PATTERN else _SEARCH_SPAN
                self.charge(min(len(left), len(right)) * min(len(right), span) // 512)
            return left in right
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
            if name == "pow":  # a step a bit of the exponent, whatever the result: (-1) ** (2**4095)
                self.charge(br)
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
            per_char = 1 if type(seq) is str and seq.isascii() else 4  # at most 4 bytes a character
            if count > 0 and type(seq) is str and 1 + count * len(seq) * per_char // 8 > MAX_WEIGHT:
                raise self.abort("weight")
            if count > 0 and type(seq) in (list, tuple) and count * self.weight(seq) > MAX_WEIGHT:
                raise self.abort("weight")
        elif name in ("add", "or_", "sub", "and_", "xor") and wl + wr > MAX_WEIGHT:
            raise self.abort("weight")


_NUMERIC_TYPES = frozenset({int, bool})
_FLAT_SCALARS = frozenset({float, bool, type(None)})


def text_weight(text: str) -> int:
    """What a text weighs: 1 + its bytes / 8. An ASCII character is a byte; any other text is
    stored at 1, 2 or 4 bytes a character (:func:`sys.getsizeof`, which reads it off the object:
    an emoji text weighed a quarter of the memory it took, 22 MB for a budget that allows 4)."""
    return 1 + (len(text) if text.isascii() else sys.getsizeof(text)) // 8


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
        ascii_only = all(map(str.isascii, value))
        size = chars if ascii_only else sum(map(sys.getsizeof, value))
        return 1 + n + size // 8, 0, 2 + n * 4 + chars * (4 if ascii_only else 10)
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
        KEY: guard.key,
        STAR: guard.star,
        TEXT: guard.formatted,
        "print": _call(guard, print_fn, checks.print),
        "exit": _call(guard, exit_fn, checks.exit),
    }
