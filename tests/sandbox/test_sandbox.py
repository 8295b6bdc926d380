"""Restricted mode: escape attempts refused, ordinary model code working, runaway code stopped."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from statek_bus.sandbox.restricted import (
    DEFAULT_ALLOWED_IMPORTS,
    SandboxPolicy,
    SandboxViolation,
    StepTimeout,
    compile_block,
    sandbox_globals,
    set_deadline,
)

POLICY = SandboxPolicy(hidden_names=frozenset({"secret"}))


def add(a: int, b: int) -> int:
    """A tool the engine would put in the namespace (a host function, with host globals)."""
    return a + b


def secret() -> str:
    """A hidden tool: present in the namespace, never referable by model code."""
    return "s3cret"


def run(
    source: str,
    policy: SandboxPolicy = POLICY,
    *,
    deadline: Callable[[], float] | None = None,
    namespace: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the engine does: compile, then run each statement in a sandbox namespace with tools."""
    ns = namespace if namespace is not None else sandbox_globals(policy, deadline=deadline)
    ns.setdefault("add", add)
    ns.setdefault("secret", secret)
    for statement in compile_block(source, policy).statements:
        if statement.echo:
            ns["_"] = eval(statement.code, ns)
        else:
            exec(statement.code, ns)
    return ns


def expires_in(seconds: float) -> Callable[[], float]:
    at = time.monotonic() + seconds
    return lambda: at


# Each refused statically (before anything runs) or by a runtime guard; all raise SandboxViolation.
ESCAPES = {
    "class-walk-bases": "().__class__.__bases__[0].__subclasses__()",
    "class-walk-mro": "[].__class__.__mro__[-1].__subclasses__()",
    "object-subclasses": "object.__subclasses__()",
    "str-class": "str.__class__",
    "mro-plain-name": "str.mro()",
    "mro-reference": "m = int.mro",
    "type-call": "type(1)",
    "type-reference": "t = type",
    "getattr-computed": "getattr(1, '__cl' + 'ass__')",
    "dir-and-getattr": "[getattr(add, n) for n in dir(add)]",
    "format-attr-walk": "'{0.__class__.__mro__}'.format(1)",
    "format-map-globals": "'{x.__globals__}'.format_map({'x': add})",
    "format-built-template": "t = '{0.' + '_' * 2 + 'class__}'\nt.format(1)",
    "format-unbound-str-method": "f = str.format\nf('{0.__class__}', 1)",
    "format-nested-spec": "'{0:{1.__class__}}'.format(1, 2)",
    "format-index-lookup": "'{0[0]}'.format([1])",
    "format-via-map": "list(map(str.format, ['{0.real}'], [1]))",
    "fstring-dunder": "x = 1\nf'{x.__class__}'",
    "generator-frame": "g = (i for i in [1])\ng.gi_frame.f_globals",
    "generator-function-frame": "def gen():\n    yield 1\nfr = gen().gi_frame",
    "coroutine-frame": "async def co():\n    pass\nc = co\nc.cr_frame",
    "async-gen-frame": "x = 1\nx.ag_frame",
    "traceback-frames": "try:\n    1 / 0\nexcept Exception as e:\n    e.__traceback__.tb_frame.f_back.f_globals",
    "traceback-plain-attrs": "def f(tb):\n    return tb.tb_frame.f_back",
    "code-object": "def f():\n    pass\nf.__code__.co_consts",
    "co-attribute": "x = 1\nx.co_code",
    "cell-contents": "x = 1\nx.cell_contents",
    "tool-globals": "add.__globals__['__builtins__']",
    "print-self": "print.__self__",
    "builtins-via-dict": "{}.__class__.__base__",
    "builtins-name": "__builtins__['open']",
    "vars": "vars()",
    "globals": "globals()['add']",
    "locals": "locals()",
    "import-os": "import os",
    "import-subprocess": "import subprocess",
    "import-sys": "import sys",
    "import-importlib": "import importlib",
    "import-ctypes": "import ctypes",
    "import-pickle": "import pickle",
    "import-builtins": "import builtins",
    "import-as-alias": "import os as json",
    "from-os-import": "from os import system",
    "from-submodule": "from os.path import join",
    "submodule-of-allowed": "import collections.abc",
    "relative-import": "from . import x",
    "star-import": "from json import *",
    "private-name-import": "from json import _default_decoder",
    "dunder-import": "__import__('os')",
    "exec": "exec('1')",
    "eval": "eval('1')",
    "compile": "compile('1', 'x', 'exec')",
    "open": "open('/etc/passwd')",
    "decorator-eval": "@eval\ndef f():\n    pass",
    "decorator-dunder": "@print.__self__.eval\ndef f():\n    pass",
    "decorator-getattr": "@getattr\ndef f():\n    pass",
    "lambda-smuggle-import": "f = lambda: __import__('os')",
    "lambda-code": "(lambda: 0).__code__",
    "super-dunder": "class A:\n    def f(self):\n        return super().__getattribute__('x')",
    "super-class": "class A:\n    def f(self):\n        return super().__class__",
    "help": "help()",
    "breakpoint": "breakpoint()",
    "input": "input()",
    "memoryview": "memoryview(b'x')",
    "walrus-dunder": "(__x__ := 1)",
    "dunder-assign": "__statek_tick__ = None",
    "global-dunder": "def f():\n    global __builtins__",
    "except-dunder-name": "try:\n    pass\nexcept Exception as __e:\n    pass",
    "import-as-dunder": "import math as __m",
    "dunder-argument": "def f(__x):\n    pass",
    "dunder-keyword": "add(__a=1)",
    "private-attribute": "x = 1\nx._y",
    "class-dunder-method": "class A:\n    def __getattribute__(self, n):\n        pass",
    "class-del-method": "class A:\n    def __del__(self):\n        pass",
    "module-level-dunder-def": "def __init__():\n    pass",
    "metaclass": "class A(metaclass=print):\n    pass",
    "match-class-dunder": "match 1:\n    case int(__class__=c):\n        pass",
    "match-class-private": "match 1:\n    case int(_x=c):\n        pass",
    "system-exit": "raise SystemExit(0)",
    "base-exception": "raise BaseException('escape the engine')",
    "keyboard-interrupt": "raise KeyboardInterrupt",
    "hidden-tool-call": "secret()",
    "hidden-tool-reference": "f = secret",
    "hidden-tool-in-lambda": "f = lambda: secret()",
    "attrgetter-dunder": "import operator\noperator.attrgetter('__class__')(1)",
    "attrgetter-built-name": "import operator\nn = '_' + '_class__'\noperator.attrgetter(n)(1)",
    "attrgetter-frame": "import operator\ng = (i for i in [1])\noperator.attrgetter('gi_frame.f_globals')(g)",
    "attrgetter-format": "import operator\noperator.attrgetter('format')('{0.__class__}')(1)",
    "methodcaller-reduce": "import operator\noperator.methodcaller('__reduce_ex__', 2)(1)",
    "methodcaller-format": "import operator\noperator.methodcaller('format', 1)('{0.__class__}')",
    "patch-host-class": "import collections\ncollections.Counter.most_common = None",
    "patch-host-class-augassign": "import fractions\nfractions.Fraction.x += 1",
    "delete-host-attr": "import collections\ndel collections.Counter.most_common",
    "patch-module": "import json\njson.dumps = None",
    "patch-tool": "add.calls = 0",
    "update-wrapper-host": "import functools, collections\nfunctools.update_wrapper(collections.Counter, add)",
    "total-ordering-host": "import functools, json\nfunctools.total_ordering(json.JSONEncoder)",
    "syntax-error": "def (:",
    "return-outside-function": "return 1",
    "oversized": "x = 1\n" * 40_000,
    "too-many-nodes": "x = [" + "1," * 21_000 + "]",
    "nested-too-deeply": "x = " + "1+" * 9_000 + "1",
    "unary-nested-too-deeply": "x = " + "-" * 5_000 + "1",
}


@pytest.mark.parametrize("source", ESCAPES.values(), ids=ESCAPES.keys())
def test_escape_is_refused(source: str) -> None:
    with pytest.raises(SandboxViolation):
        run(source)


def test_there_are_at_least_forty_escapes() -> None:
    assert len(ESCAPES) >= 40


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import os", "import 'os' is not allowed (line 1)"),
        ("import collections.abc", "import 'collections.abc' is not available in the sandbox"),
        ("from json import _default_decoder", "import '_default_decoder' is not allowed"),
        ("from . import x", "relative imports are not allowed"),
        ("x = 1\nopen('f')", "call to 'open' is not allowed (line 2)"),
        ("f = eval", "name 'eval' is not allowed"),
        ("x = 1\nx.__class__", "dunder attribute '__class__' is not allowed"),
        ("x = 1\nx._X__context", "private attribute '_X__context' is not allowed"),
        ("x = 1\nx.gi_frame", "attribute 'gi_frame' is not allowed"),
        ("secret()", "tool 'secret' is not exposed to this job"),
        ("x = 1\n" * 40_000, "source is 240000 bytes; limit is 200000"),
        ("x = [" + "1," * 21_000 + "]", "source has 21006 AST nodes; limit is 20000"),
        ("def (:", "invalid Python syntax"),
        ("'{0.__class__}'.format(1)", "format field '{0.__class__}' is not allowed"),
        ("import json\njson.dumps = 1", "module 'json' is read-only"),
    ],
)
def test_violation_messages_name_the_construct(source: str, message: str) -> None:
    with pytest.raises(SandboxViolation) as info:
        run(source)
    assert message in str(info.value)


def test_static_refusal_runs_nothing() -> None:
    ns = sandbox_globals(POLICY)
    with pytest.raises(SandboxViolation):
        run("x = 1\nimport os", namespace=ns)
    assert "x" not in ns


@pytest.mark.parametrize(
    "source",
    [
        "import statistics\nstatistics.sys",
        "import fractions\nfractions.sys.modules",
        "import json\njson.codecs.open('/etc/passwd')",
        "import json\njson.decoder",
        "import calendar\ncalendar.setfirstweekday(3)",
        "from json import decoder",
        "from collections import abc",
        "from collections import UserString",
        "import collections\ncollections.UserString('{0.__class__}').format(1)",
        "import json\njson.scanner",
    ],
)
def test_shim_modules_hide_other_modules(source: str) -> None:
    with pytest.raises((AttributeError, ImportError)):
        run(source)


def test_shim_module_data_is_copied_per_namespace() -> None:
    import calendar

    run("import calendar\ncalendar.mdays[2] = 99")
    assert calendar.mdays[2] == 28
    assert run("import calendar\nd = calendar.mdays[2]")["d"] == 28


def test_builtins_are_a_whitelist() -> None:
    for name in ["exit", "quit", "id", "OSError", "ExceptionGroup", "__build_class__"[2:-2]]:
        with pytest.raises(NameError):
            run(f"x = {name}")


LEGITIMATE = """
import math, json, re, statistics, itertools, functools, operator, collections
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

squares = [i * i for i in range(10) if i % 2]
lookup = {k: v for k, v in zip("abc", range(3))}
uniq = {x % 3 for x in range(10)}
total = sum(x for x in range(5))
nested = [[j for j in range(i)] for i in range(3)]

class Shape:
    '''A base class.'''
    sides = 0
    def __init__(self, name):
        self.name = name
    def __repr__(self):
        return f"{type_name(self)}({self.name!r})"
    def describe(self):
        return "{} has {} sides".format(self.name, self.sides)

def type_name(obj):
    return "Shape"

class Square(Shape):
    sides = 4
    def __init__(self, side):
        super().__init__("square")
        self.side = side
    @property
    def area(self):
        return self.side ** 2
    @staticmethod
    def unit():
        return Square(1)
    @classmethod
    def of(cls, side):
        return cls(side)
    def __eq__(self, other):
        return isinstance(other, Square) and other.side == self.side
    def __lt__(self, other):
        return self.side < other.side
    def __len__(self):
        return self.sides

sq = Square.of(3)
Square.extra = "class attributes of model classes are writable"
sq.colour = "red"

def counter():
    n = 0
    def bump():
        nonlocal n
        n += 1
        return n
    return bump

bump = counter()
bump()
bumped = bump()

def fact(n):
    return 1 if n <= 1 else n * fact(n - 1)

try:
    1 / 0
except ZeroDivisionError as exc:
    caught = str(exc)
finally:
    cleaned = True

double = lambda v: v * 2
pct = f"{0.4567:.1%} {sq!r} {'x'!r:>5}"
fmt = "{0:>5}|{name}|{0}".format(7, name="n")
fmt_map = "{a}-{b}".format_map({"a": 1, "b": 2})
unbound = str.format("{}", 5)
parsed = json.loads(json.dumps({"a": [1, 2]}))
m = re.match(r"(\\d+)-(\\d+)", "12-34").groups()
mean = statistics.mean([1, 2, 3, 4])
when = datetime(2024, 1, 31) + timedelta(days=1)
money = Decimal("1.10") + Decimal("2.20")
half = Fraction(1, 2) + Fraction(1, 3)
firsts = list(itertools.islice(itertools.count(10, 5), 3))
cycled = list(itertools.islice(itertools.cycle("ab"), 5))
repeated = list(itertools.repeat("z", 3))
reduced = functools.reduce(operator.add, [1, 2, 3])
reals = list(map(operator.attrgetter("real"), [1, 2]))
upper = operator.methodcaller("upper")("abc")
formatted = operator.methodcaller("format", 3)("<{}>")
common = collections.Counter("abracadabra").most_common(1)
sentinel = list(iter([0, 1, 2, 3].pop, 0))
byhand = iter([1, 2])

@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def wrapper_factory(fn):
    @functools.wraps(fn)
    def wrapped(*a):
        return fn(*a)
    return wrapped

wrapped_fact = wrapper_factory(fact)

@functools.total_ordering
class Version:
    def __init__(self, n):
        self.n = n
    def __eq__(self, other):
        return self.n == other.n
    def __lt__(self, other):
        return self.n < other.n

match {"kind": "point", "x": 1}:
    case {"kind": "point", "x": x_value}:
        matched = x_value

_private_name = "single-underscore names are allowed"
if (walrus := len(squares)) > 2:
    pass

def gen():
    yield from range(3)

generated = list(gen())
"""


def test_legitimate_code_runs() -> None:
    ns = run(LEGITIMATE)
    assert ns["squares"] == [1, 9, 25, 49, 81]
    assert ns["lookup"] == {"a": 0, "b": 1, "c": 2}
    assert ns["uniq"] == {0, 1, 2}
    assert ns["total"] == 10
    assert ns["nested"] == [[], [0], [0, 1]]
    sq = ns["sq"]
    assert (sq.area, sq.describe(), repr(sq), len(sq)) == (9, "square has 4 sides", "Shape('square')", 4)
    assert ns["Square"].unit() < sq and ns["Square"](3) == sq
    assert ns["bumped"] == 2
    assert ns["fact"](10) == 3_628_800
    assert ns["caught"] == "division by zero" and ns["cleaned"]
    assert ns["double"](21) == 42
    assert ns["pct"] == "45.7% Shape('square')   'x'"
    assert (ns["fmt"], ns["fmt_map"], ns["unbound"]) == ("    7|n|7", "1-2", "5")
    assert ns["parsed"] == {"a": [1, 2]} and ns["m"] == ("12", "34")
    assert ns["mean"] == 2.5 and ns["when"].day == 1 and str(ns["money"]) == "3.30"
    assert str(ns["half"]) == "5/6"
    assert ns["firsts"] == [10, 15, 20] and ns["cycled"] == list("ababa") and ns["repeated"] == ["z"] * 3
    assert (ns["reduced"], ns["reals"], ns["upper"], ns["formatted"]) == (6, [1, 2], "ABC", "<3>")
    assert ns["common"] == [("a", 5)] and ns["sentinel"] == [3, 2, 1]
    assert ns["fib"](30) == 832_040 and ns["wrapped_fact"](5) == 120
    assert ns["wrapped_fact"].__name__ == "fact"
    assert ns["Version"](1) <= ns["Version"](2)
    assert ns["matched"] == 1 and ns["walrus"] == 5 and ns["generated"] == [0, 1, 2]


def test_hidden_tools_stay_callable_without_the_hidden_policy() -> None:
    assert run("x = secret()", SandboxPolicy())["x"] == "s3cret"


def test_tools_are_callable() -> None:
    assert run("x = add(2, 40)")["x"] == 42


def test_default_allow_list_is_statek_default() -> None:
    assert {
        "datetime",
        "calendar",
        "time",
        "re",
        "math",
        "decimal",
        "fractions",
        "statistics",
    } < DEFAULT_ALLOWED_IMPORTS
    assert {"collections", "itertools", "functools", "operator", "json"} < DEFAULT_ALLOWED_IMPORTS
    assert len(DEFAULT_ALLOWED_IMPORTS) == 13


def test_dotted_allow_entry_allows_only_that_submodule() -> None:
    policy = SandboxPolicy(allowed_imports=frozenset({"os.path"}))
    assert run("import os.path\nj = os.path.join('a', 'b')", policy)["j"] == "a/b"
    with pytest.raises(AttributeError):
        run("import os.path\nos.system", policy)
    with pytest.raises(SandboxViolation):
        run("import os", policy)


# --- splitting ------------------------------------------------------------------------------------


def test_statements_are_split_with_sources_binds_and_echo() -> None:
    source = (
        "import math, json as j\n"
        "from datetime import date as d, time\n"
        "x = 1; y = 2\n"
        "@staticmethod\n"
        "def f(a):\n"
        "    return a\n"
        "class K:\n"
        "    pass\n"
        "g = h = lambda: 1\n"
        "n: int = 3\n"
        "print(x)\n"
        "x + y\n"
    )
    block = compile_block(source, POLICY)
    got = [(s.lineno, s.source, s.is_definition, s.binds, s.echo) for s in block.statements]
    assert got == [
        (1, "import math, json as j", True, ("math", "j"), False),
        (2, "from datetime import date as d, time", True, ("d", "time"), False),
        (3, "x = 1", False, (), False),
        (3, "y = 2", False, (), False),
        (4, "@staticmethod\ndef f(a):\n    return a", True, ("f",), False),
        (7, "class K:\n    pass", True, ("K",), False),
        (9, "g = h = lambda: 1", True, ("g", "h"), False),
        (10, "n: int = 3", False, (), False),
        (11, "print(x)", False, (), False),
        (12, "x + y", False, (), True),
    ]
    assert [s.source for s in block.definitions] == [s[1] for s in got if s[2]]


def test_echo_statements_evaluate_to_their_value() -> None:
    ns = run("x = 20\nx + 22")
    assert ns["_"] == 42


def test_tracebacks_keep_block_line_numbers() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        run("x = 1\n\n\ndef f():\n    return 1 / 0\nf()")
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [(fr.filename, fr.lineno) for fr in frames[-2:]] == [("<model>", 6), ("<model>", 5)]


def test_compile_is_cached_but_blocks_are_fresh() -> None:
    a = compile_block("x = 1", POLICY)
    b = compile_block("x = 1", POLICY)
    assert a.statements[0].code is b.statements[0].code
    a.statements.clear()
    assert len(b.statements) == 1


# --- timeouts -------------------------------------------------------------------------------------

RUNAWAYS = {
    "while-true": "while True:\n    pass",
    "for-count": "import itertools\nfor i in itertools.count():\n    pass",
    "list-of-count": "import itertools\nlist(itertools.count())",
    "repeat-forever": "import itertools\nsum(itertools.repeat(1))",
    "cycle-forever": "import itertools\nmax(itertools.cycle([1]))",
    "comprehension-iter-sentinel": "[x for x in iter(int, 1)]",
    "comprehension-huge-range": "[x for x in range(10**12)]",
    "generator-expression": "import itertools\nsum(x for x in itertools.count())",
    "recursion-swallowing-errors": "def f():\n    try:\n        f()\n    except RecursionError:\n        f()\nf()",
    "lambda-recursion": "f = lambda n: n if n < 1 else f(n - 1) + f(n - 1)\nf(60)",
    "swallowing-step-timeout": "while True:\n    try:\n        while True:\n            pass\n    except Exception:\n        pass",
    "sleep": "import time\ntime.sleep(3600)",
    "model-generator": "def g():\n    while True:\n        yield 1\nlist(g())",
}


@pytest.mark.parametrize("source", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_runaway_code_is_stopped_by_the_deadline(source: str) -> None:
    with pytest.raises(StepTimeout):
        run(source, deadline=expires_in(0.05))


def test_unrestricted_mode_is_unchecked_but_still_instrumented() -> None:
    policy = SandboxPolicy(restricted=False)
    ns = run("import os\nsep = os.sep\nv = eval('1 + 1')\nc = ().__class__", policy)
    assert (ns["sep"], ns["v"], ns["c"]) == ("/", 2, tuple)
    with pytest.raises(StepTimeout):
        run("while True:\n    pass", policy, deadline=expires_in(0.05))


def test_set_deadline_changes_an_existing_namespace() -> None:
    ns = sandbox_globals(POLICY)
    run("n = 0\nfor i in range(1000):\n    n += i", namespace=ns)
    set_deadline(ns, lambda: time.monotonic() - 1)
    with pytest.raises(StepTimeout):
        run("for i in range(10):\n    pass", namespace=ns)
    set_deadline(ns, None)
    assert run("k = [i for i in range(3)]", namespace=ns)["k"] == [0, 1, 2]


def test_functions_defined_earlier_tick_against_the_new_deadline() -> None:
    ns = run("def spin():\n    while True:\n        pass")
    set_deadline(ns, expires_in(0.05))
    with pytest.raises(StepTimeout):
        run("spin()", namespace=ns)


def test_match_class_patterns_work_and_cannot_reach_str_format() -> None:
    from statek_bus.sandbox.restricted import SandboxPolicy, SandboxViolation, compile_block, sandbox_globals

    policy = SandboxPolicy()
    ns = sandbox_globals(policy)
    block = compile_block(
        "def kind(v):\n    match v:\n        case int(real=r):\n            return ('int', r)\n"
        "        case str():\n            return 'str'\n    return 'other'\nout = [kind(3), kind('a'), kind(1.5)]\n",
        policy,
    )
    for stmt in block.statements:
        exec(stmt.code, ns)
    assert ns["out"] == [("int", 3), "str", "other"]
    with pytest.raises(SandboxViolation, match="format"):
        compile_block("match 'x':\n    case str(format=f):\n        pass\n", policy)


def test_each_statements_source_is_cut_as_the_ast_places_it() -> None:
    """The cut works on the block's lines once (``ast.get_source_segment`` split the whole block
    again for every statement); it gives what that gives, whatever the line ends and characters."""
    import ast

    source = (
        "a = 'é€😀'; b = 2\r\n"
        "def f(x='ü'):\r    return x  # ✓\n"
        "c = [1,\n     2]\n"
        "if True: d = '\\x0c'\n"
        "@(lambda g: g)\n@(lambda g: g)\ndef h():\n    return 'ß'\n"
        "e = '\U0001d4b3'   ;   k = 3"
    )
    tree = ast.parse(source)
    cut = [s.source for s in compile_block(source, SandboxPolicy(restricted=False)).statements]
    expected = [ast.get_source_segment(source, s) for s in tree.body]
    expected[5] = "@(lambda g: g)\n@(lambda g: g)\n" + (expected[5] or "")  # decorators included
    assert cut == expected, cut
