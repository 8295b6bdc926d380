"""The durable workspace: values and definitions survive a "restart" (encode → bytes → fresh namespace)."""

from __future__ import annotations

import dataclasses
import enum
import io
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.runtime.workspace import (
    DefinitionSource,
    Workspace,
    WorkspaceData,
    WorkspaceRef,
    decode_workspace,
    delete_workspace,
    encode_workspace,
    load_workspace,
    save_workspace,
    workspace_blob_name,
)
from statek_bus.sandbox.restricted import SandboxPolicy, SandboxViolation, compile_block, sandbox_globals
from statek_bus.wire.subjects import token
from statek_bus.wire.values import TypeRegistry


@dataclasses.dataclass
class Point:
    """A dataclass the agent module declares."""

    x: int
    y: int


class Item(msgspec.Struct):
    """A Struct the agent module declares."""

    name: str
    qty: int


class Colour(enum.Enum):
    """An Enum the agent module declares."""

    RED = "red"


class Level(enum.IntEnum):
    """An int enum the agent module declares."""

    LOW = 1


class Mode(enum.StrEnum):
    """A str enum the agent module declares."""

    FAST = "fast"


REGISTRY = TypeRegistry([Point, Item, Colour, Level, Mode])
POLICY = SandboxPolicy()


def tool(x: int) -> int:
    """A tool the engine injects; never persisted."""
    return x


class Job:
    """What the engine does around the workspace, step after step, with a restart in between."""

    def __init__(self, data: WorkspaceData | None = None) -> None:
        self.ns = sandbox_globals(POLICY)
        self.ns["tool"] = tool
        self.base = set(self.ns)
        self.ws = (
            Workspace.restore(data, self.ns, policy=POLICY, registry=REGISTRY)
            if data is not None
            else Workspace()
        )

    def step(self, source: str) -> Any:
        """Run a block; returns the last echoed value."""
        echoed = None
        for statement in compile_block(source, POLICY).statements:
            if statement.echo:
                echoed = eval(statement.code, self.ns)
            else:
                exec(statement.code, self.ns)
            self.ws.record(statement)
        return echoed

    def snapshot(self) -> tuple[WorkspaceData, list[str]]:
        return self.ws.snapshot(self.ns, base_names=self.base, registry=REGISTRY)

    def restart(self) -> Job:
        """Snapshot, go through bytes, restore into a fresh namespace."""
        data, _ = self.snapshot()
        return Job(decode_workspace(encode_workspace(data)))


VALUES: dict[str, Any] = {
    "none": None,
    "bools": [True, False],
    "int": 12345678901234567890,
    "float": 1.5,
    "inf": float("-inf"),
    "str": "héllo",
    "list": [1, "a", None],
    "dict": {"a": {"b": [1, 2]}},
    "int_keys": {1: "one", (2, 3): "tuple key"},
    "tag_key": {"$t": "not a tag"},
    "datetime": datetime(2026, 11, 21, 10, 0, tzinfo=UTC),
    "naive_datetime": datetime(2026, 11, 21, 10, 0, 5, 123),
    "date": date(2026, 1, 2),
    "time": time(10, 30, 15),
    "timedelta": timedelta(days=1, seconds=3.5),
    "timedelta max": timedelta.max,  # its seconds as a float rounded past it: OverflowError
    "timedelta far": timedelta(days=10**6, microseconds=1),  # came back without its microsecond
    "decimal": Decimal("1.10"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "tuple": (1, (2, "x")),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "bytes": b"\x00\xffdata",
    "bytearray": bytearray(b"\x00\xffdata"),  # came back bytes
    "nested": {"when": [date(2026, 1, 1), {Decimal("2.5"): (b"x", frozenset({1}))}]},
    "dataclass": Point(1, 2),
    "struct": Item(name="bolt", qty=3),
    "enum": Colour.RED,
    "int_enum": Level.LOW,  # was stored as the int 1: a registered IntEnum came back an int
    "str_enum": Mode.FAST,
    "registered_nested": [Point(0, 0), {"item": Item(name="nut", qty=1)}],
}


@pytest.mark.parametrize("name", VALUES.keys())
def test_every_supported_type_round_trips(name: str) -> None:
    job = Job()
    job.ns[name] = VALUES[name]
    data, dropped = job.snapshot()
    assert dropped == []
    restored = Job(decode_workspace(encode_workspace(data)))
    assert restored.ns[name] == VALUES[name]
    assert type(restored.ns[name]) is type(VALUES[name])


@pytest.mark.parametrize(
    "raw",
    [
        {"$t": "tuple", "v": "ab"},  # was ('a', 'b'): a text's weight decoded into one element a character
        {"$t": "set", "v": "ab"},
        {"$t": "frozenset", "v": {"a": 1}},
        {"$t": "dict", "v": [[1]]},
        {"$t": "float", "v": "1.5"},
    ],
)
def test_a_tagged_value_to_json_never_makes_is_refused(raw: Any) -> None:
    from statek_bus.wire.values import from_json

    with pytest.raises(ValueError, match="malformed"):
        from_json(raw)


def test_a_dict_subclass_is_stored_as_its_own_entries() -> None:
    """Not as its ``items()`` or ``in`` say: those could forge a tagged value the next step decodes."""
    from statek_bus.wire.values import from_json, to_json

    class Forged(dict[str, Any]):
        def items(self) -> Any:
            return [("$t", "tuple"), ("v", "ab")]

        def __contains__(self, key: object) -> bool:
            return False

    assert to_json(Forged(k=1)) == {"k": 1}
    assert from_json(to_json(Forged({"$t": "tuple", "v": "ab"}))) == {"$t": "tuple", "v": "ab"}


_M = 2**61 - 1  # hash(_M * i) == 0 for every int i


@pytest.mark.parametrize(
    "raw",
    [
        {"$t": "set", "v": [_M * i for i in range(1, 18)]},
        {"$t": "frozenset", "v": [{"$t": "tuple", "v": [_M * i, 1]} for i in range(1, 18)]},
        {"$t": "dict", "v": [[_M * i, 0] for i in range(1, 18)]},
    ],
)
def test_a_set_or_dict_of_keys_of_one_hash_is_refused_before_it_is_built(raw: Any) -> None:
    """Building one is quadratic: 40,000 such ints a worker sent as a tool's argument took the
    executor 6 s to decode."""
    from statek_bus.wire.values import from_json

    with pytest.raises(ValueError, match="more than 16 keys of one hash"):
        from_json(raw)
    few = {"$t": "set", "v": [_M * i for i in range(1, 17)]}
    assert from_json(few) == {_M * i for i in range(1, 17)}


def test_a_big_int_is_stored_as_hex_and_a_stored_decimal_one_still_decodes() -> None:
    """Decimal digits cost time quadratic in their length to convert: 7,400 ints of 4,300 digits
    took 1.4 s to encode on every step of the job that kept them."""
    from statek_bus.wire.values import from_json, to_json

    big = 10**4299 - 7
    assert to_json(2**64 - 1) == 2**64 - 1 and to_json(-(2**63)) == -(2**63)  # JSON numbers still
    assert to_json(big) == {"$t": "int", "v": hex(big)} and from_json(to_json(big)) == big
    assert from_json(to_json(-big)) == -big and from_json([big]) == [big]


def test_a_subclass_is_stored_by_its_base_class_methods() -> None:
    """Its own ``__iter__``/``__str__``/``isoformat`` could store what no decoder takes back."""
    from statek_bus.wire.values import from_json, to_json

    class Lying(set[Any]):
        def __iter__(self) -> Any:
            return iter([[1], [2]])

    class Odd(Decimal):
        def __str__(self) -> str:
            return "nope"

    class When(datetime):
        def isoformat(self, *args: Any, **kwargs: Any) -> str:
            return "garbage"

    class Empty(list[Any]):
        def __iter__(self) -> Any:
            return next(iter([]))  # StopIteration

    class Small(int):
        def bit_length(self) -> int:
            return 0  # a 4,000-digit JSON number then, the quadratic form

    class Text(str):
        def __str__(self) -> str:
            return "other"

    values = [Lying({1, 2}), Odd("1.5"), When(2026, 12, 3, tzinfo=UTC)]
    assert from_json(to_json(values)) == [{1, 2}, Decimal("1.5"), datetime(2026, 12, 3, tzinfo=UTC)]
    big = 10**4000
    assert to_json([Empty([1]), Small(big), Text("t")]) == [[1], {"$t": "int", "v": hex(big)}, "t"]
    assert type(to_json(Text("t"))) is str


def test_an_unregistered_int_enum_is_stored_as_its_int() -> None:
    import http

    from statek_bus.wire.values import to_json

    assert to_json(http.HTTPStatus.OK) == 200 and type(to_json(http.HTTPStatus.OK)) is int


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "raw",
    [
        {"$t": "uuid", "v": 1},  # AttributeError
        {"$t": "timedelta", "v": 1e20},  # OverflowError
        {"$t": "timedelta", "v": "1"},  # TypeError
        {"$t": "decimal", "v": "x"},  # InvalidOperation
        {"$t": "decimal", "v": "1e1000000"},  # 11 bytes; int() of it takes 25 s
        {"$t": "enum", "v": 1},  # KeyError: no class
        {"$t": "obj", "cls": "m:C", "v": 1},
        {"$t": "date", "v": 20261204},
        _deep(5_000),
    ],
    ids=["uuid", "timedelta", "timedelta text", "decimal", "decimal exponent", "enum", "obj", "date", "deep"],
)
def test_any_malformed_stored_value_is_a_value_error(raw: Any) -> None:
    """Whatever a worker or a caller sends: a ValueError the caller handles, never another
    exception that became a 500 or an internal error of the step."""
    from statek_bus.wire.values import from_json

    with pytest.raises(ValueError):
        from_json(raw)


def test_an_unencodable_value_under_a_huge_int_key_is_named() -> None:
    """The path is written only when reported: a key's repr of over 4,300 digits raised ValueError."""
    from statek_bus.wire.values import UnencodableValueError, to_json

    with pytest.raises(
        UnencodableValueError, match=r"^shared\[<int>\]\[0\]: cannot encode a value of type object"
    ):
        to_json({10**5000: [object()]}, path="shared")
    with pytest.raises(UnencodableValueError, match=r"^v\['a'\]\.key: cannot encode"):
        to_json({"a": {object(): 1}}, path="v")
    with pytest.raises(UnencodableValueError, match=r"^v\[1\]\{\}: cannot encode"):
        to_json([0, {frozenset({1}), object}], path="v")


def test_a_value_restored_after_the_definitions_takes_only_what_from_json_takes() -> None:
    """Where from_json refused a value, the second try (for model-class instances) took a text as
    a tuple of its characters and built a set of 17 keys of one hash."""
    data = WorkspaceData(
        values={
            "forged": {"$t": "tuple", "v": "ab"},
            "collide": {"$t": "set", "v": [_M * i for i in range(1, 18)]},
            "n": 1,
        }
    )
    job = Job(data)
    assert job.ns["n"] == 1 and "forged" not in job.ns and "collide" not in job.ns, job.ns
    assert [e.split(":")[0] for e in job.ws.restore_errors] == ["forged", "collide"], job.ws.restore_errors


def test_a_value_that_fails_to_decode_is_dropped_with_a_warning_and_the_rest_restored() -> None:
    """An ``InvalidOperation`` or ``OverflowError`` lost every value and definition of the job."""
    data = WorkspaceData(
        values={
            "bad": {"$t": "decimal", "v": "nope"},
            "huge": {"$t": "timedelta", "v": 1e308},
            "n": 1,
        }
    )
    job = Job(data)
    assert job.ns["n"] == 1 and "bad" not in job.ns and "huge" not in job.ns
    assert [e.split(":")[0] for e in job.ws.restore_errors] == ["bad", "huge"], job.ws.restore_errors


def test_function_and_class_defined_in_one_step_work_after_restart() -> None:
    job = Job()
    job.step(
        "class Account:\n"
        "    def __init__(self, owner):\n"
        "        self.owner = owner\n"
        "        self.balance = 0\n"
        "    def deposit(self, amount):\n"
        "        self.balance += amount\n"
        "        return self.balance\n"
        "def greet(name):\n"
        "    '''Say hello.'''\n"
        "    return f'hello {name}'\n"
    )
    later = job.restart()
    assert later.step("greet('ada')") == "hello ada"
    assert later.step("a = Account('ada')\na.deposit(5)\na.deposit(7)") == 12
    assert later.ns["greet"].__doc__ == "Say hello."


def test_lambda_import_and_from_import_persist() -> None:
    job = Job()
    job.step("import math\nfrom datetime import date as d\ndouble = lambda v: v * 2")
    later = job.restart()
    assert later.step("math.sqrt(16), d(2026, 1, 2).year, double(21)") == (4.0, 2026, 42)


def test_closure_over_persisted_values() -> None:
    job = Job()
    job.step(
        "rate = 3\ndef price(x):\n    return x * rate\ncounts = {'n': 0}\ndef bump():\n    counts['n'] += 1"
    )
    later = job.restart()
    later.step("bump()\nbump()\nrate = 4")
    assert later.step("price(2), counts['n']") == (8, 2)
    again = later.restart()
    assert again.step("price(2), counts['n']") == (8, 2)


def test_instances_of_model_classes_persist_without_running_init() -> None:
    job = Job()
    job.step(
        "made = []\n"
        "class Vec:\n"
        "    def __init__(self, x, y):\n"
        "        made.append(1)\n"
        "        self.x, self.y = x, y\n"
        "    def norm2(self):\n"
        "        return self.x ** 2 + self.y ** 2\n"
        "    def __eq__(self, other):\n"
        "        return (self.x, self.y) == (other.x, other.y)\n"
        "class Path:\n"
        "    def __init__(self, *points):\n"
        "        self.points = list(points)\n"
        "        self.meta = {'when': None, 'tags': ('a',)}\n"
        "v = Vec(3, 4)\n"
        "path = Path(Vec(0, 0), Vec(1, 1))\n"
        "by_name = {'origin': Vec(0, 0)}\n"
    )
    data, dropped = job.snapshot()
    assert dropped == []
    assert data.values["v"] == {"$t": "mobj", "cls": "Vec", "v": {"x": 3, "y": 4}}
    later = job.restart()
    assert later.step("v.norm2(), len(made), isinstance(v, Vec)") == (25, 4, True)
    assert later.step("[p.norm2() for p in path.points], path.meta['tags']") == ([0, 2], ("a",))
    assert later.step("by_name['origin'] == Vec(0, 0)") is True


def test_unpersistable_values_are_dropped_and_named() -> None:
    job = Job()
    job.step(
        "gen = (i for i in range(3))\n"
        "it = iter([1, 2])\n"
        "def make(k):\n"
        "    return lambda x: x * k\n"
        "triple = make(3)\n"
        "ok = 1\n"
        "class Box:\n"
        "    pass\n"
        "box = Box()\n"
        "box.fn = make\n"
    )
    job.ns["handle"] = io.StringIO("a tool returned a file-like")
    data, dropped = job.snapshot()
    assert dropped == ["box", "gen", "handle", "it", "triple"]
    assert set(data.values) == {"ok"}
    later = Job(data)
    assert later.step("ok, make(2)(5)") == (1, 10)
    with pytest.raises(NameError):
        later.step("gen")


def test_redefinition_replaces_the_earlier_definition() -> None:
    job = Job()
    job.step("def f():\n    return 1\nimport math\nimport math, json")
    job.step("def f():\n    return 2\nimport math")
    data, _ = job.snapshot()
    assert [(d.names, d.source) for d in data.definitions] == [
        (["math", "json"], "import math, json"),
        (["f"], "def f():\n    return 2"),
        (["math"], "import math"),
    ]
    assert Job(data).step("f(), json.dumps(1)") == (2, "1")


def test_subclass_recorded_before_its_redefined_base_still_replays() -> None:
    job = Job()
    job.step("class A:\n    v = 1\nclass B(A):\n    pass")
    job.step("class A:\n    v = 2")
    data, _ = job.snapshot()
    assert [d.names for d in data.definitions] == [["B"], ["A"]]
    later = Job(data)
    assert later.ws.restore_errors == []
    assert later.step("B.v, A.v") == (2, 2)


def test_definitions_see_values_at_replay() -> None:
    job = Job()
    job.step("k = 5\ndef f(x=k):\n    return x\nclass C:\n    size = k * 2")
    assert job.restart().step("f(), C.size") == (5, 10)


def test_names_rebound_or_deleted_after_definition() -> None:
    job = Job()
    job.step("def f():\n    return 1\ndef g():\n    return 2\nimport math")
    job.step("f = 'now data'\ndel g")
    data, _ = job.snapshot()
    assert [d.names for d in data.definitions] == [["f"], ["math"]]
    later = Job(data)
    assert later.ns["f"] == "now data"
    assert "g" not in later.ns


def test_module_imported_inside_a_compound_statement_persists() -> None:
    job = Job()
    job.step("try:\n    import json\nexcept ImportError:\n    json = None")
    assert job.restart().step("json.dumps([1])") == "[1]"


def test_engine_names_and_dunders_are_not_persisted() -> None:
    job = Job()
    job.step("x = tool(1)")
    data, _ = job.snapshot()
    assert set(data.values) == {"x"}
    assert not any("tool" in d.names for d in data.definitions)


def test_restore_applies_the_sandbox_policy() -> None:
    job = Job()
    job.step("x = 1\ndef f():\n    return x")
    data, _ = job.snapshot()
    tampered = WorkspaceData(
        values=data.values,
        definitions=[*data.definitions, DefinitionSource(names=["os"], source="import os")],
    )
    ns = sandbox_globals(POLICY)
    with pytest.raises(SandboxViolation):
        Workspace.restore(tampered, ns, policy=POLICY, registry=REGISTRY)
    assert "x" not in ns and "f" not in ns
    walk = WorkspaceData(
        definitions=[DefinitionSource(names=["f"], source="def f():\n    return ().__class__")]
    )
    with pytest.raises(SandboxViolation):
        Workspace.restore(walk, sandbox_globals(POLICY), policy=POLICY, registry=REGISTRY)


def test_a_definition_that_fails_at_replay_is_reported_and_the_rest_restored() -> None:
    data = WorkspaceData(
        values={"x": 1},
        definitions=[
            DefinitionSource(names=["f"], source="def f(a=undefined_name):\n    return a"),
            DefinitionSource(names=["g"], source="def g():\n    return x"),
            DefinitionSource(names=["h"], source="h = lambda: 1 / 0\nh()"),
        ],
    )
    job = Job(data)
    assert job.step("g()") == 1
    assert job.ws.restore_errors == [
        "h: ZeroDivisionError: division by zero",
        "f: NameError: name 'undefined_name' is not defined",
    ]


def test_restoring_twice_gives_equal_namespaces() -> None:
    job = Job()
    job.step(
        "import math\n"
        "class Vec:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n"
        "def f(v):\n"
        "    return v.x * 2\n"
        "sq = lambda n: n * n\n"
        "items = [Vec(1), Vec(2)]\n"
        "when = {'d': date_value} if False else None\n"
        "s = {1, 2}\n"
    )
    job.ns["when"] = datetime(2026, 1, 1)
    data, _ = job.snapshot()
    one, two = Job(data), Job(data)
    assert set(one.ns) == set(two.ns)
    assert one.snapshot() == two.snapshot() == (data, [])
    for name in ("s", "when"):
        assert one.ns[name] == two.ns[name]
    assert one.step("[f(v) for v in items], sq(3)") == two.step("[f(v) for v in items], sq(3)") == ([2, 4], 9)


def test_restore_on_an_instance_fills_that_instance() -> None:
    job = Job()
    job.step("def f():\n    return 1\nx = 2")
    data, _ = job.snapshot()
    ns = sandbox_globals(POLICY)
    ws = Workspace()
    assert ws.restore(data, ns, policy=POLICY, registry=REGISTRY) is ws
    assert ws.snapshot(ns, base_names=set(sandbox_globals(POLICY)), registry=REGISTRY) == (data, [])
    fresh = Workspace.restore(data, sandbox_globals(POLICY), policy=POLICY, registry=REGISTRY)
    assert fresh is not ws and fresh.definitions == ws.definitions


def test_workspace_structs_encode_as_json() -> None:
    data = WorkspaceData(values={"a": 1}, definitions=[DefinitionSource(names=["f"], source="f = lambda: 1")])
    raw = encode_workspace(data)
    assert msgspec.json.decode(raw) == {
        "values": {"a": 1},
        "definitions": [{"names": ["f"], "source": "f = lambda: 1"}],
    }
    assert decode_workspace(raw) == data
    ref = WorkspaceRef(inline=data, size=len(raw))
    assert msgspec.json.decode(msgspec.json.encode(ref), type=WorkspaceRef) == ref
    with pytest.raises(msgspec.ValidationError):
        decode_workspace(b'{"values": [], "definitions": []}')


async def test_small_workspace_stays_inline(nc: Client, settings: Settings, uid: str) -> None:
    js = nc.jetstream()
    data = WorkspaceData(values={"x": 1})
    ref = await save_workspace(js, f"job-{uid}", 1, data, inline_max=1024)
    assert ref == WorkspaceRef(inline=data, blob=None, size=len(encode_workspace(data)))
    assert await load_workspace(js, ref) == data
    assert await load_workspace(js, WorkspaceRef()) == WorkspaceData()


async def test_large_workspace_goes_to_the_object_store_and_back(
    nc: Client, settings: Settings, uid: str
) -> None:
    js = nc.jetstream()
    await provision(js, settings)
    job = Job()
    job.step("def f(n):\n    return n + 1\nbig = [{'i': i, 'text': 'x' * 50} for i in range(20_000)]")
    data, _ = job.snapshot()
    job_id = f"job/{uid} with spaces"
    ref = await save_workspace(js, job_id, 7, data, inline_max=settings.workspace_inline_max)
    assert ref.inline is None
    assert ref.blob == workspace_blob_name(job_id, 7) == f"ws/{token(job_id)}/7"
    assert ref.size == len(encode_workspace(data)) > settings.workspace_inline_max
    loaded = await load_workspace(js, ref)
    # each value kept in its stored bytes (the executor decodes only what a step names), which
    # encode again as they were
    assert all(isinstance(v, msgspec.Raw) for v in loaded.values.values())
    assert encode_workspace(loaded) == encode_workspace(data)
    assert decode_workspace(encode_workspace(loaded)) == data
    later = Job(loaded)
    assert later.step("f(len(big)), big[-1]['i']") == (20_001, 19_999)
    again = await save_workspace(js, job_id, 7, data, inline_max=1)  # a redelivered step overwrites
    assert again == ref
    await delete_workspace(js, ref)
    await delete_workspace(js, ref)  # already gone: not an error
