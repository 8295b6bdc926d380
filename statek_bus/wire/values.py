"""The tagged value encoding: Python values ⇄ JSON, without pickle.

Plain JSON values encode as themselves, so a ``nats req`` user can send ``shared_vars`` by hand.
Other values become a one-key-plus-payload object tagged with ``"$t"``:

======================  =============================================================
``datetime``            ``{"$t": "datetime", "v": "2026-11-21T10:00:00+00:00"}``
``date`` / ``time``     ``{"$t": "date", "v": "2026-11-21"}`` / ``{"$t": "time", ...}``
``timedelta``           ``{"$t": "timedelta", "v": 1.5}`` (seconds; ``"us": <int>`` in their place
                        when a float of seconds would lose a microsecond, past ~140 years)
``Decimal``             ``{"$t": "decimal", "v": "1.10"}``
``UUID``                ``{"$t": "uuid", "v": "..."}``
``bytes``               ``{"$t": "bytes", "v": "<base64>"}``
``bytearray``           ``{"$t": "bytearray", "v": "<base64>"}`` (it came back ``bytes``)
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
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import msgspec

__all__ = ["TAG", "Revive", "TypeRegistry", "UnencodableValueError", "checked_keys", "from_json", "to_json"]

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


def checked_keys(keys: list[Any]) -> list[Any]:
    """``keys``, once no more than :data:`_MAX_SHARED_HASH` of them share a hash (in linear time:
    a hash, an int, hashes to itself)."""
    counts: dict[int, int] = {}
    for h in map(hash, keys):
        seen = counts.get(h, 0) + 1
        if seen > _MAX_SHARED_HASH:
            raise ValueError(f"more than {_MAX_SHARED_HASH} keys of one hash")
        counts[h] = seen
    return keys


class _NoEncoding(Exception):
    """Raised inside :func:`to_json` by the value with no encoding; each container it unwinds
    through adds where the value sat in it (``child``: the value that failed one level down), so
    a path is only written when one is reported, never a key's ``repr`` for every element."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.child = value
        self.pieces: list[str] = []

    def within(self, container: Any, piece: str) -> _NoEncoding:
        self.pieces.append(piece)
        self.child = container
        return self


def _key_text(key: Any) -> str:
    try:
        text = repr(key)
    except Exception:  # an int over 4,300 digits has no decimal repr
        text = f"<{type(key).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def to_json(value: Any, registry: TypeRegistry | None = None, path: str = "value") -> Any:
    """Encode ``value`` as a JSON-able structure; :class:`UnencodableValueError` names the path.

    Only the base classes' own methods are called (a subclass's could store what no decoder takes
    back, or run code of the model's where values are encoded for the executor).
    """
    try:
        return _encode(value, registry or _EMPTY)
    except _NoEncoding as failed:
        raise UnencodableValueError(path + "".join(reversed(failed.pieces)), failed.value) from None


def _encode(value: Any, reg: TypeRegistry) -> Any:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if value.bit_length() <= _NATIVE_INT_BITS else {TAG: "int", "v": hex(value)}
    if kind is float:
        return value if math.isfinite(value) else _non_finite(value)
    if kind is list:
        return _each(value, value, reg)
    if isinstance(value, dict):
        return _dict(value, reg)
    if isinstance(value, enum.Enum) and reg.knows(kind):  # before int and str: an IntEnum too
        try:
            return {TAG: "enum", "cls": _class_name(kind), "v": _encode(value.value, reg)}
        except _NoEncoding as failed:
            raise failed.within(value, "") from None
    if isinstance(value, int):  # a subclass (an unregistered IntEnum): as the int it is
        return _encode(int.__index__(value), reg)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):
        return _encode(float.__float__(value), reg)
    if isinstance(value, list):
        return _each(value, list(list.__iter__(value)), reg)
    if isinstance(value, enum.Enum):
        raise _NoEncoding(value)
    if isinstance(value, datetime):
        return {TAG: "datetime", "v": datetime.isoformat(value)}
    if isinstance(value, date):
        return {TAG: "date", "v": date.isoformat(value)}
    if isinstance(value, time):
        return {TAG: "time", "v": time.isoformat(value)}
    if isinstance(value, timedelta):
        return _timedelta(value)
    if isinstance(value, Decimal):
        return {TAG: "decimal", "v": Decimal.__str__(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": uuid.UUID.__str__(value)}
    if isinstance(value, bytes | bytearray):
        tag = "bytearray" if isinstance(value, bytearray) else "bytes"
        return {TAG: tag, "v": base64.b64encode(memoryview(value)).decode("ascii")}
    if isinstance(value, tuple) and not hasattr(kind, "_fields"):
        return {TAG: "tuple", "v": _each(value, list(tuple.__iter__(value)), reg)}
    if isinstance(value, set | frozenset):
        tag = "set" if isinstance(value, set) else "frozenset"
        members = set.__iter__(value) if isinstance(value, set) else frozenset.__iter__(value)
        try:
            return {TAG: tag, "v": [_encode(v, reg) for v in members]}
        except _NoEncoding as failed:
            raise failed.within(value, "{}") from None
    if reg.knows(kind) and (dataclasses.is_dataclass(value) or isinstance(value, msgspec.Struct)):
        names = (
            [f.name for f in dataclasses.fields(value)]
            if dataclasses.is_dataclass(value)
            else list(kind.__struct_fields__)
        )
        fields = {}
        for n in names:
            try:
                fields[n] = _encode(getattr(value, n), reg)
            except _NoEncoding as failed:
                raise failed.within(value, f".{n}") from None
        return {TAG: "obj", "cls": _class_name(kind), "v": fields}
    raise _NoEncoding(value)


def _timedelta(value: timedelta) -> dict[str, Any]:
    seconds = timedelta.total_seconds(value)
    try:
        if timedelta(seconds=seconds) == value:
            return {TAG: "timedelta", "v": seconds}
    except OverflowError:  # timedelta.max's seconds round up past it
        pass
    # past ~140 years a float of seconds loses the microseconds: the exact count of them
    return {TAG: "timedelta", "us": (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds}


def _non_finite(value: float) -> dict[str, str]:
    return {TAG: "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


def _each(container: Any, members: list[Any], reg: TypeRegistry) -> list[Any]:
    try:
        return [_encode(v, reg) for v in members]
    except _NoEncoding as failed:
        index = next((i for i, m in enumerate(members) if m is failed.child), "?")
        raise failed.within(container, f"[{index}]") from None


def _dict(value: dict[Any, Any], reg: TypeRegistry) -> Any:
    # the dict's own entries: a subclass's items()/__contains__ could forge a tagged value
    items = list(dict.items(value))
    if all(type(k) is str and k != TAG for k, _ in items):
        try:
            return {k: _encode(v, reg) for k, v in items}
        except _NoEncoding as failed:
            key = next((k for k, v in items if v is failed.child), "?")
            raise failed.within(value, f"[{_key_text(key)}]") from None
    pairs = []
    for k, v in items:
        try:
            key = _encode(k, reg)
        except _NoEncoding as failed:
            raise failed.within(value, ".key") from None
        try:
            pairs.append([key, _encode(v, reg)])
        except _NoEncoding as failed:
            raise failed.within(value, f"[{_key_text(k)}]") from None
    return {TAG: "dict", "v": pairs}


def from_json(data: Any, registry: TypeRegistry | None = None, *, revive: Revive | None = None) -> Any:
    """Decode what :func:`to_json` produced (or any plain JSON value); ``ValueError`` names what
    is malformed, whatever the stored form (a worker's or a caller's) holds. ``revive`` decodes a
    tag this codec does not know (given the tagged object and the decoder for its parts), at any
    depth; without it such a tag is a ``ValueError``."""
    try:
        return _decode(data, registry or _EMPTY, revive)
    except ValueError:
        raise
    except RecursionError:
        raise ValueError("value nested too deeply") from None
    except Exception as exc:  # a tag's payload of the wrong type or range; a class refusing it
        raise ValueError(f"malformed tagged value: {type(exc).__name__}: {exc}") from None


Revive = Callable[[dict[str, Any], Callable[[Any], Any]], Any]
"""``revive(tagged, decode)`` of :func:`from_json`: a value of a tag the codec does not know."""


_MAX_DECIMAL_EXPONENT = 10_000
"""Largest decimal exponent a stored Decimal may have: ``Decimal('1e1000000')`` is 11 bytes, and
``int()`` of it takes a trusted tool 25 s."""


def _decode(data: Any, reg: TypeRegistry, revive: Revive | None = None) -> Any:
    if isinstance(data, list):
        return [_decode(v, reg, revive) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(TAG)
    if tag is None:
        return {k: _decode(v, reg, revive) for k, v in data.items()}
    v: Any = data.get("v")
    match tag:
        case "datetime" if type(v) is str:
            return datetime.fromisoformat(v)
        case "date" if type(v) is str:
            return date.fromisoformat(v)
        case "time" if type(v) is str:
            return time.fromisoformat(v)
        case "timedelta" if type(data.get("us")) is int:
            return timedelta(microseconds=data["us"])
        case "timedelta" if type(v) in (int, float):
            return timedelta(seconds=v)
        case "decimal" if type(v) is str:
            number = Decimal(v)
            if number.is_finite() and abs(number.adjusted()) > _MAX_DECIMAL_EXPONENT:
                raise ValueError(f"decimal exponent over {_MAX_DECIMAL_EXPONENT}")
            return number
        case "uuid" if type(v) is str:
            return uuid.UUID(v)
        case "bytes" if type(v) is str:
            return base64.b64decode(v)
        case "bytearray" if type(v) is str:
            return bytearray(base64.b64decode(v))
        case "int" if type(v) is str:
            return int(v, 16)
        case "float" if v in _NON_FINITE:
            return float(v)
        case "tuple" if type(v) is list:
            return tuple(_decode(x, reg, revive) for x in v)
        case "set" if type(v) is list:
            return set(checked_keys([_decode(x, reg, revive) for x in v]))
        case "frozenset" if type(v) is list:
            return frozenset(checked_keys([_decode(x, reg, revive) for x in v]))
        case "dict" if type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
            pairs = [(_decode(k, reg, revive), _decode(x, reg, revive)) for k, x in v]
            checked_keys([k for k, _ in pairs])
            return dict(pairs)
        case "enum":
            return reg.lookup(data["cls"])(_decode(v, reg, revive))
        case "obj" if type(v) is dict:
            return reg.lookup(data["cls"])(**{k: _decode(x, reg, revive) for k, x in v.items()})
        case "datetime" | "date" | "time" | "timedelta" | "decimal" | "uuid" | "bytes" | "bytearray":
            raise ValueError(f"malformed {tag!r} value")
        case "int" | "float" | "tuple" | "set" | "frozenset" | "dict" | "obj":  # what to_json never makes
            raise ValueError(f"malformed {tag!r} value")
    if revive is not None:
        return revive(data, lambda x: _decode(x, reg, revive))
    raise ValueError(f"unknown value tag {tag!r}")
