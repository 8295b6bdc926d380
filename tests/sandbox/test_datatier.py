"""The data tier's proof, unit by unit: which blocks are inside its subset, which values may be in
scope, and what its guard stops before CPython runs it (:mod:`statek_bus.sandbox.datatier`)."""

from __future__ import annotations

from typing import Any

import pytest

from statek_bus.sandbox import datatier, tierguard
from statek_bus.sandbox.policy import SandboxPolicy

POLICY = SandboxPolicy()

REFUSED = {
    # ints, floats and tuples hash predictably: computed keys hashed in one C call can collide
    "a set display": "s = {1, 2, 3}",
    "set()": "s = set([1, 2])",
    "dict()": "d = dict(zip('ab', range(2)))",
    "attribute": "x = 'a'.upper()",
    "attribute read": "n = n.real",
    "for loop": "for i in range(3):\n    pass",
    "while loop": "while False:\n    pass",
    "comprehension": "x = [i for i in range(3)]",
    "generator": "x = sum(i for i in range(3))",
    "lambda": "f = lambda: 1",
    "def": "def f():\n    return 1",
    "class": "class C:\n    pass",
    "import": "import math",
    "from import": "from math import pi",
    "subscript store": "x = [1]\nx[0] = 2",
    "attribute store": "n.x = 1",
    "dunder name": "x = __builtins__",
    "private name": "_x = 1",
    "private read": "y = _secret",
    "non-whitelisted call": "x = type(1)",
    "tool call": "x = add(1, 2)",
    "call of a value": "x = n(1)",
    "double-star kwargs": "x = dict(**{'a': 1})",
    "key=": "x = sorted([1], key=len)",
    "min key=": "x = min([1], key=abs)",
    "whitelisted name as a value": "p = print",
    "whitelisted name as an argument": "print(len)",
    "assignment to a whitelisted name": "len = 3",
    "format spec width 10**9": "x = f'{n:1000000000}'",
    "format spec precision": "x = f'{n:.5000f}'",
    "computed format spec": "w = 5\nx = f'{n:{w}}'",
    "try": "try:\n    x = 1\nexcept Exception as e:\n    x = e",
    "with": "with n:\n    pass",
    "raise": "raise ValueError('x')",
    "assert": "assert n",
    "global": "global n",
    "del": "del n",
    "walrus": "print(y := 1)",
    "star assignment": "a, *b = [1, 2]",
    "nested target": "(a, (b, c)) = (1, (2, 3))",
    "complex constant": "x = 1j",
    "bytes constant": "x = b'a'",
    "ellipsis": "x = ...",
    "print to a named file keyword": "print(1, **{})",
    "syntax error": "x = (",
    "process check refuses it": "x = eval",
    "a long block": "x = 1\n" * 5000,
    "nesting past the parser's stack": "x = " + "**".join(["1"] * 6000),  # CPython: MemoryError
    "a chained in": "x = 'a' in 'ab' in 'abc'",
    "a block of too many nodes": "x = [" + ", ".join(["d[k]"] * 600) + "]",  # planning: 5-10 us a node
    "in within a chain": "x = 1 < 2 in [2]",
    # True in a worker, whose compiler folds 'ab' * 2 into the constant; False in the tier
    "is between values": "a = 'ab' * 2\nprint(a is 'abab')",
    "is not between values": "b = [1]\nx = b is not b",
}


@pytest.mark.parametrize("code", list(REFUSED.values()), ids=list(REFUSED))
def test_each_refused_construct_goes_to_the_process(code: str) -> None:
    assert datatier.plan(code, POLICY) is None
    assert datatier.refusal(code, POLICY) is not None


ELIGIBLE = [
    "result = n * 2\nexit(str(result))",
    "x = [1, 2, 3]\ny = {'a': (1, 2), 'b': [3]}\nz = x[1:] + [*x, *y['a']]\nprint(z, sep=', ', end='!')",
    "a, b = divmod(17, 5)\nif a > b and not b == 0:\n    c = f'{a:>5} {b!r} {3.14159:.2f}'\nelse:\n    c = None\nc",
    "t = 0\nt += 5\nt -= 1\ns = 'x'\ns *= 3",
    "m = max(3, 4, default=None) if n else min([1, 2])\nr = round(2.675, 2)\nh = hex(255) + bin(3) + oct(8)",
    "e = list(enumerate('ab', start=1))\nz = list(zip(['a', 'b'], range(2)))\nk = sorted(z, reverse=True)",
    "pass\nx = any([0, 1]) or all([])\ny = chr(ord('a') + 1)\nq = int('ff', 16) + int(float('2.5'))",
]


@pytest.mark.parametrize("code", ELIGIBLE)
def test_plain_data_code_is_eligible(code: str) -> None:
    assert datatier.refusal(code, POLICY) is None
    plan = datatier.plan(code, POLICY)
    assert plan is not None


def test_a_plan_names_what_it_needs_from_scope() -> None:
    plan = datatier.plan("result = n * 2\nexit(str(result))", POLICY)
    assert plan is not None
    assert plan.needs == {"n"} and plan.assigned == {"result"} and plan.calls == {"exit", "str"}


class Sneaky(str):
    """A str subclass: an application object, not data."""


@pytest.mark.parametrize(
    "value",
    [Sneaky("x"), [1, Sneaky("x")], {"a": object()}, print, range(3), 1j, b"x", 2**5000],
    ids=["str subclass", "nested subclass", "object", "function", "range", "complex", "bytes", "huge int"],
)
def test_only_plain_data_may_be_in_scope(value: Any) -> None:
    assert not datatier.plain_value(value)


def test_plain_data_is_accepted_and_depth_is_bounded() -> None:
    assert datatier.plain_value({"a": [1, 2.5, None, True, (1, "x"), {3}, frozenset({4})], 5: "k"})
    deep: Any = 0
    for _ in range(datatier.MAX_DEPTH + 2):
        deep = [deep]
    assert not datatier.plain_value(deep)


def _run(code: str, **scope: Any) -> Any:
    """Run ``code`` the way the tier does (its rewrite, its namespace); the namespace after it."""
    plan = datatier.plan(code, POLICY)
    assert plan is not None, datatier.refusal(code, POLICY)
    out: list[Any] = []
    ns = tierguard.namespace(tierguard.Guard(), print_fn=lambda *a, **k: out.append(a), exit_fn=lambda v=None: None)
    ns.update(scope)
    for stmt in plan.statements:
        if stmt.echo:
            out.append(eval(stmt.code, ns))
        else:
            exec(stmt.code, ns)
    ns["__out__"] = out
    return ns


BOMBS = {
    "str repetition": "a = 'a' * 10**9",
    "int power": "b = 10**10**10",
    "int shift": "b = 1 << 10**9",
    "int product": "x = 10**1000\ny = x * x * x * x",
    "nested repetition": "a = [[0] * 1000] * 1000",
    "shared DAG": "a = [0] * 999\nb = [a] * 999",
    "round digits": "r = round(1, -10**18)",
    "percent format": "s = '%0999999999d' % 1",
    "range length": "r = range(10**7)",
    "list of a long string": "s = 'ab' * 100000\nl = list(s)",
    "int from a long string": "i = int('9' * 5000)",
    "sum with a list start": "s = sum([[1]] * 10, [])",
    "in-place on a list": "a = [1]\na += [2]",
    "concatenation": "s = 'x' * 1500000\nt = s + s",
    "budget": "a = [0] * 100000\n" + "b = a == a\n" * 30,
    "str of a big DAG": "a = [0] * 100\nb = [a] * 100\nc = [b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b]\nd = str(c)",
    "print of many": "a = 'x' * 1000000\nprint(a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a)",
    "starred": "r = range(900000)\nx = [*r, *r]",
    "membership walks of a range": "r = range(900000)\n" + "b = 'a' in r\n" * 5,
    "enumerate with a huge start": "e = list(enumerate('ab' * 50000, 2**4000))",
    "one big tuple as many dict keys": (
        "t = tuple(range(40000))\nd = {" + ", ".join(f"t: {i}" for i in range(11)) + "}"
    ),
    # ints of one hash (hash(m * i) == 0): every lookup, copy and == of the dict walks all its keys
    "keys of one hash": (
        "m = 2**61 - 1\nd = {" + ", ".join(f"m * {i}: 0" for i in range(1, 50)) + "}\nx = [d == d, d == d]"
    ),
    "tuple keys of one hash": (
        "m = 2**61 - 1\nd = {" + ", ".join(f"(m * {i}, 1): 0" for i in range(1, 50)) + "}"
    ),
    # CPython searches a text of a few thousand characters by brute force: 0.2 ms a search here
    "substring searches": (
        "p = 'a' * 600 + 'b' + 'a' * 599\nh = 'a' * 2400\nx = [" + ", ".join(["p in h"] * 300) + "]"
    ),
    "negated substring searches": (
        "p = 'a' * 600 + 'b' + 'a' * 599\nh = 'a' * 2400\nx = [" + ", ".join(["p not in h"] * 300) + "]"
    ),
    # a pattern under 100 characters: brute force up to 30,000 characters (60 ms for these 100)
    "short-pattern searches": (
        "p = 'a' * 49 + 'b' + 'a' * 49\nh = 'a' * 29999\nx = [" + ", ".join(["p in h"] * 100) + "]"
    ),
    # 4 bytes a character: 3.2 MB (22 MB at its peak) weighed as the 800 KB of an ASCII text
    "powers of a huge exponent": "x = [" + ", ".join(["(-1) ** (2**4095)"] * 200) + "]",  # 1,500: 48 ms
    "an emoji text": "a = chr(128512) * 799990\nb = a[1:]",
    "a list of emoji texts": "a = [chr(128512) * 10000] * 19\nb = a + a",  # weighed at C speed (_flat)
}

LAZY_TEXT = {
    "str": "s = str(zip('ab'))",
    "repr in a list": "s = repr([enumerate('')])",
    "print": "print(zip())",
    "f-string": "s = f'{enumerate([1])}'",
    "echo": "zip()",
    "a missing key": "d = {'a': 1}\nd[zip()]",
}


@pytest.mark.parametrize("code", list(LAZY_TEXT.values()), ids=list(LAZY_TEXT))
def test_the_text_of_an_iterator_is_the_workers_to_make(code: str) -> None:
    """An iterator's repr holds its heap address (``<zip object at 0x...>``): made in the tier, it
    would give model code an address of the executor's heap; a worker's is its own fork server's."""
    with pytest.raises(datatier.TierAbort):
        _run(code)


def test_every_double_star_in_a_dict_display_is_charged() -> None:
    """``{**d, **d, ...}`` makes one small dict, but copies ``d`` once per ``**``."""
    d = {f"k{i}": i for i in range(30_000)}
    code = "e = {" + ", ".join(["**d"] * 10) + "}"
    with pytest.raises(datatier.TierAbort):
        _run(code, d=d)
    assert _run("e = {**d, 'x': 1}", d=d)["e"] == {**d, "x": 1}


@pytest.mark.parametrize("code", list(BOMBS.values()), ids=list(BOMBS))
def test_the_guard_stops_a_bomb_before_cpython_runs_it(code: str) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(datatier.TierAbort):
            _run(code)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the guard stopped it"


def test_guarded_code_has_cpython_semantics() -> None:
    ns = _run(
        "x = [3, 1, 2]\ny = sorted(x) + list(range(2))\nt = 1\nt += 2\ns = 'ab' * 3\n"
        "d = {**{'a': 1}, 'b': 2}\nk = f'{t:03d}|{s!r:>10}|{1/3:.3f}'\nc = 1 < t <= 3 != 4\nx",
        n=5,
    )
    assert ns["y"] == [1, 2, 3, 0, 1] and ns["t"] == 3 and ns["s"] == "ababab"
    assert ns["d"] == {"a": 1, "b": 2} and ns["k"] == f"{3:03d}|{'ababab'!r:>10}|{1 / 3:.3f}" and ns["c"] is True
    assert ns["__out__"] == [[3, 1, 2]]


def test_membership_has_cpython_semantics() -> None:
    ns = _run(
        "a = 'b' in 'abc'\nb = 'z' not in 'abc'\nc = 2 in [1, 2]\nd = (1,) not in [(1,)]\ne = 'k' in {'k': 1}\n"
        "f = 3 in range(5)\ng = not 'a' in 'b'\nh = ('x' in 'xy') + 1\ni = '' in ''"
    )
    assert [ns[k] for k in "abcdefghi"] == [True, True, True, False, True, True, True, 2, True]
    with pytest.raises(TypeError, match="argument of type 'int' is not iterable"):
        _run("x = 1 in 2")
    with pytest.raises(TypeError, match="'in <string>' requires string as left operand, not int"):
        _run("x = 1 not in 'a'")


def test_an_error_from_the_model_is_cpythons_own() -> None:
    with pytest.raises(TypeError, match=r"unsupported operand type\(s\) for \+: 'int' and 'str'"):
        _run("x = 1 + 'a'")
    with pytest.raises(ZeroDivisionError):
        _run("x = 1 // 0")
    with pytest.raises(TypeError, match=r"len\(\) takes exactly one argument"):
        _run("x = len(1, 2)")


def test_a_guard_fault_is_the_tiers_never_the_models() -> None:
    # a value of a type the guard has no weight for (it cannot be in scope; here it is forced in)
    with pytest.raises(datatier.TierAbort):
        _run("y = [x]", x=object())
