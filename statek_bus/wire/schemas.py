"""JSON Schema of every wire message, generated from the msgspec types in :mod:`statek_bus.wire.messages`
(and :mod:`statek_bus.wire.shared_context`, and the stored records of :mod:`statek_bus.wire.knowledge`).

``statek-bus schemas export`` writes one file per message into ``schemas/``; a test fails when
the checked-in files differ from what the code generates.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from statek_bus.wire import knowledge, messages, options, shared_context
from statek_bus.wire.errors import ErrorBody

__all__ = ["all_schemas", "export"]


def _message_types() -> dict[str, type]:
    found: dict[str, type] = {"ErrorBody": ErrorBody}
    for module in (messages, options, shared_context, knowledge):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
                found[name] = obj
    return dict(sorted(found.items()))


def _clean_descriptions(node: Any) -> Any:
    """``node`` with every ``description`` passed through :func:`inspect.cleandoc`.

    msgspec copies class docstrings into ``description``, and its releases disagree on the
    whitespace: 0.19-0.22 keep a docstring's continuation-line indentation, 0.23 strips it. The
    checked-in schemas must not depend on which release a machine resolved, so the text is
    normalised here, once, the way Python's own ``help()`` does.
    """
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    return node


def all_schemas() -> dict[str, dict[str, Any]]:
    """``{message name: JSON Schema}`` for every wire message, independent of the msgspec release."""
    return {name: _clean_descriptions(msgspec.json.schema(kind)) for name, kind in _message_types().items()}


def export(out: Path) -> list[Path]:
    """Write ``<out>/<Message>.json`` for every message; remove stale files; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    schemas = all_schemas()
    written = []
    for name, schema in schemas.items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    for stale in out.glob("*.json"):
        if stale.stem not in schemas:
            stale.unlink()
    return written
