"""The tagged value encoding: Python values ⇄ JSON, without pickle.

Plain JSON values encode as themselves, so a ``nats req`` user can send ``shared_vars`` by hand.
Other values become a one-key-plus-payload object tagged with ``"$t"``:

======================  =============================================================
``datetime``            ``{"$t": "datetime", "v": "2026-11-21T10:00:00+00:00"}``
``date`` / ``time``     ``{"$t": "date", "v": "2026-11-21"}`` / ``{"$t": "time", ...}``
``timedelta``           ``{"$t": "timedelta", "v": 1.5}`` (seconds)
``Decimal``             ``{"$t": "decimal", "v": "1.10"}``
``UUID``                ``{"$t": "uuid", "v": "..."}``
``bytes``               ``{"$t": "bytes", "v": "<base64>"}``
``tuple`` / ``set``     ``{"$t": "tuple", "v": [...]}`` / ``{"$t": "set"|"frozenset", ...}``
non-finite float        ``{"$t": "float", "v": "nan"|"inf"|"-inf"}``
int over 64 bits        ``{"$t": "int", "v": "0x1f..."}`` (hex: linear to convert, unlike decimal)
odd ``dict``            ``{"$t": "dict", "v": [[k, v], ...]}`` (non-str keys, or a ``"$t"`` key)
dataclass / Struct      ``{"$t": "obj", "cls": "module:Qualname", "v": {field: value}}``
``Enum`` member         ``{"$t": "enum", "cls": "module:Qualname", "v": value}``
======================  =============================================================

Objects and enums decode only into classes a :class:`TypeRegistry` knows (the ones the agent
module declares): stored data can never name an arbitrary class to import or instantiate.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
import types
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import msgspec

__all__ = ["TAG", "TypeRegistry", "UnencodableValueError", "from_json", "to_json"]

TAG = "$t"


class UnencodableValueError(TypeError):
    """A value has no tagged encoding; ``path`` says where it is (``shared_vars['event'].items[2]``)."""

    def __init__(self, path: str, value: Any) -> None:
        super().__init__(f"{path}: cannot encode a value of type {type(value).__name__}")
        self.path = path


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class TypeRegistry:
    """The dataclasses, msgspec Structs and Enums that may be encoded and revived by name."""

    def __init__(self, classes: list[type] | None = None) -> None:
        self._by_name: dict[str, type] = {}
        for cls in classes or []:
            self.register(cls)

    def register(self, cls: type) -> type:
        """Allow ``cls`` (usable as a decorator)."""
        self._by_name[_class_name(cls)] = cls
        return cls

    @classmethod
    def from_module(cls, module: types.ModuleType) -> TypeRegistry:
        """Every dataclass, Struct and Enum defined in ``module``."""
        reg = cls()
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == module.__name__ and _is_registrable(obj):
                reg.register(obj)
        return reg

    def classes(self) -> list[type]:
        """Every registered class, in registration order."""
        return list(self._by_name.values())

    def knows(self, kind: type) -> bool:
        """Whether ``kind`` is registered."""
        return self._by_name.get(_class_name(kind)) is kind

    def lookup(self, name: str) -> type:
        """The registered class called ``name``; ``ValueError`` when unknown."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"class {name} is not registered for decoding") from None


def _is_registrable(kind: type) -> bool:
    return dataclasses.is_dataclass(kind) or issubclass(kind, msgspec.Struct | enum.Enum)


_EMPTY = TypeRegistry()
_NON_FINITE = ("nan", "inf", "-inf")
_NATIVE_INT_BITS = 64
"""Ints up to this many bits are JSON numbers; larger ones are tagged hex (``{"$t": "int"}``):
JSON's decimal digits cost time quadratic in their length to convert (7,400 ints of 4,300 digits
took 1.4 s to encode, every step of a job that kept them)."""
_MAX_SHARED_HASH = 16
"""Most keys of one hash a decoded set or dict may have: ints and tuples hash predictably, and
a set whose keys all share one hash takes time quadratic in its size to build (40,000 ints of
hash 0, sent by a worker, took the executor 6 s)."""


def _spread(keys: list[Any]) -> list[Any]:
    """``keys``, once no more than :data:`_MAX_SHARED_HASH` of them share a hash (in linear time:
    a hash, an int, hashes to itself)."""
    counts: dict[int, int] = {}
    for h in map(hash, keys):
        seen = counts.get(h, 0) + 1
        if seen > _MAX_SHARED_HASH:
            raise ValueError(f"more than {_MAX_SHARED_HASH} keys of one hash")
        counts[h] = seen
    return keys


def to_json(value: Any, registry: TypeRegistry | None = None, path: str = "value") -> Any:
    """Encode ``value`` as a JSON-able structure; :class:`UnencodableValueError` names the path."""
    reg = registry or _EMPTY
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _NATIVE_INT_BITS:
        return {TAG: "int", "v": hex(int.__index__(value))}  # linear both ways; decimal is quadratic
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {TAG: "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, list):
        return [to_json(v, reg, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        # the dict's own entries: a subclass's items()/__contains__ could forge a tagged value
        items = list(dict.items(value))
        if all(isinstance(k, str) and not str.__eq__(k, TAG) for k, _ in items):
            return {k: to_json(v, reg, f"{path}[{k!r}]") for k, v in items}
        return {
            TAG: "dict",
            "v": [[to_json(k, reg, f"{path}.key"), to_json(v, reg, f"{path}[{k!r}]")] for k, v in items],
        }
    if isinstance(value, enum.Enum):
        if not reg.knows(type(value)):
            raise UnencodableValueError(path, value)
        return {TAG: "enum", "cls": _class_name(type(value)), "v": to_json(value.value, reg, path)}
    # the base class's own methods: a subclass's could store what no decoder takes back
    if isinstance(value, datetime):
        return {TAG: "datetime", "v": datetime.isoformat(value)}
    if isinstance(value, date):
        return {TAG: "date", "v": date.isoformat(value)}
    if isinstance(value, time):
        return {TAG: "time", "v": time.isoformat(value)}
    if isinstance(value, timedelta):
        return {TAG: "timedelta", "v": timedelta.total_seconds(value)}
    if isinstance(value, Decimal):
        return {TAG: "decimal", "v": Decimal.__str__(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": uuid.UUID.__str__(value)}
    if isinstance(value, bytes | bytearray):
        return {TAG: "bytes", "v": base64.b64encode(memoryview(value)).decode("ascii")}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {TAG: "tuple", "v": [to_json(v, reg, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, set | frozenset):
        kind = "set" if isinstance(value, set) else "frozenset"
        members = set.__iter__(value) if isinstance(value, set) else frozenset.__iter__(value)
        return {TAG: kind, "v": [to_json(v, reg, f"{path}{{}}") for v in members]}
    kind_t = type(value)
    if reg.knows(kind_t) and (dataclasses.is_dataclass(value) or isinstance(value, msgspec.Struct)):
        names = (
            [f.name for f in dataclasses.fields(value)]
            if dataclasses.is_dataclass(value)
            else list(kind_t.__struct_fields__)
        )
        return {
            TAG: "obj",
            "cls": _class_name(kind_t),
            "v": {n: to_json(getattr(value, n), reg, f"{path}.{n}") for n in names},
        }
    raise UnencodableValueError(path, value)


def from_json(data: Any, registry: TypeRegistry | None = None) -> Any:
    """Decode what :func:`to_json` produced (or any plain JSON value)."""
    reg = registry or _EMPTY
    if isinstance(data, list):
        return [from_json(v, reg) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(TAG)
    if tag is None:
        return {k: from_json(v, reg) for k, v in data.items()}
    v: Any = data.get("v")
    match tag:
        case "datetime":
            return datetime.fromisoformat(v)
        case "date":
            return date.fromisoformat(v)
        case "time":
            return time.fromisoformat(v)
        case "timedelta":
            return timedelta(seconds=v)
        case "decimal":
            return Decimal(v)
        case "uuid":
            return uuid.UUID(v)
        case "bytes":
            return base64.b64decode(v)
        case "int" if type(v) is str:
            return int(v, 16)
        case "float" if v in _NON_FINITE:
            return float(v)
        case "tuple" if type(v) is list:
            return tuple(from_json(x, reg) for x in v)
        case "set" if type(v) is list:
            return set(_spread([from_json(x, reg) for x in v]))
        case "frozenset" if type(v) is list:
            return frozenset(_spread([from_json(x, reg) for x in v]))
        case "dict" if type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
            pairs = [(from_json(k, reg), from_json(x, reg)) for k, x in v]
            _spread([k for k, _ in pairs])
            return dict(pairs)
        case "int" | "float" | "tuple" | "set" | "frozenset" | "dict":  # what to_json never makes
            raise ValueError(f"malformed {tag!r} value")
        case "enum":
            return reg.lookup(data["cls"])(from_json(v, reg))
        case "obj":
            return reg.lookup(data["cls"])(**{k: from_json(x, reg) for k, x in v.items()})
    raise ValueError(f"unknown value tag {tag!r}")
