"""Console formatting of values, the way STATEK shows them to the model.

Strings print raw at top level and quoted when nested, dicts and lists compactly, datetimes as
``datetime("YYYY-MM-DD HH:MM")``, collections cut after 25 items, objects as ``Cls(f=v, ...)``
with nested objects as ``<Object>``.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Iterable
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

__all__ = ["MAX_ITEMS", "error_line", "format_value"]

MAX_ITEMS = 25
"""Collections longer than this are cut in console output."""


def format_value(obj: Any, *, top: bool = True, max_items: int = MAX_ITEMS) -> str:
    """Render ``obj`` the way STATEK shows values to the model.

    Args:
        obj: the value.
        top: whether this is a top-level value (strings print raw only at top level).
        max_items: collections longer than this are cut with ``, ...] (n items total)``.
    """
    llm_repr = getattr(type(obj), "__llm_repr__", None)
    if llm_repr is not None:
        try:
            return str(llm_repr(obj))
        except Exception as exc:  # a broken __llm_repr__ must not break the console
            return error_line(exc)
    if isinstance(obj, str):
        return obj if top else _quote(obj)
    if obj is None or isinstance(obj, bool | int | float):
        return repr(obj)
    if isinstance(obj, Decimal | UUID):
        return str(obj) if top or isinstance(obj, Decimal) else _quote(str(obj))
    if isinstance(obj, datetime):
        return f'datetime("{obj:%Y-%m-%d %H:%M}")'
    if isinstance(obj, date):
        return f'date("{obj:%Y-%m-%d}")'
    if isinstance(obj, dtime):
        return f'time("{obj:%H:%M}")'
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__name__}.{obj.name}"
    if isinstance(obj, dict):
        items = [f"{format_value(k, top=False)}:{format_value(v, top=False)}" for k, v in _cut(obj.items())]
        return "{" + ",".join(items) + _tail(len(obj), "}")
    if isinstance(obj, list | tuple | set | frozenset):
        if isinstance(obj, list):
            opening, closing = "[", "]"
        elif isinstance(obj, tuple):
            opening, closing = "(", ",)" if len(obj) == 1 else ")"
        else:
            opening, closing = "{", "}"
        seq = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        body = ",".join(format_value(v, top=False) for v in _cut(seq))
        return opening + body + _tail(len(obj), closing)
    if isinstance(obj, bytes | bytearray):
        return repr(bytes(obj[:200]))
    kind: Any = type(obj)
    if kind.__str__ is not object.__str__ and kind.__repr__ is object.__repr__:
        return str(obj)
    fields = _fields(obj)
    if fields is not None:
        if not top:
            return "<Object>"
        inner = ",".join(f"{k}={_nested(v)}" for k, v in _cut(fields))
        return f"{type(obj).__name__}({inner})"
    return repr(obj)


def _nested(v: Any) -> str:
    return "<Object>" if _fields(v) is not None else format_value(v, top=False)


def _fields(obj: Any) -> list[tuple[str, Any]] | None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    if isinstance(obj, msgspec.Struct):
        return [(n, getattr(obj, n)) for n in obj.__struct_fields__]
    return None


def _cut(items: Iterable[Any]) -> list[Any]:
    return list(itertools.islice(items, MAX_ITEMS))


def _tail(n: int, closing: str) -> str:
    return f", ...{closing} ({n} items total)" if n > MAX_ITEMS else closing


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def error_line(exc: BaseException) -> str:
    """``<Type>: <message>``, the way a runtime error is shown to the model (never a repr)."""
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = repr(exc.args[0])
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
