"""The shape of a provider config (STATEK's ``ProviderConfig``), checked where it enters.

A provider config maps model-string segments to nodes (``provider`` → ``family`` → ``model``, at
most :data:`MAX_DEPTH` deep); a node may hold ``reasoning``::

    {"reasoning_level": [{"range": {"from": 0, "to": 100}, "payload": {...}}, ...],
     "ignore_parameters": ["temperature", ...]}

The operator's config (``STATEK_PROVIDER_CONFIG``) is checked when the provider starts; a job's own
``provider_config`` when it is submitted (a 400 naming the path) and again by the provider. How the
provider uses it is in :mod:`statek_bus.provider.params`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from statek_bus.wire.errors import BadRequestError

__all__ = ["MAX_DEPTH", "check_provider_config", "lower_keys"]

MAX_DEPTH = 3
"""Segments a config path may have (provider, family, model)."""


def lower_keys(value: Any) -> Any:
    """``value`` with every mapping key lower-cased (config keys are case-insensitive)."""
    if isinstance(value, Mapping):
        return {str(k).lower(): lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys(v) for v in value]
    return value


def _bad(field: str, what: str) -> BadRequestError:
    return BadRequestError(f"{field}: {what}", field=field)


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise _bad(field, f"must be an integer in 0..100, not {value!r}")
    return value


def _reasoning(node: Any, field: str) -> None:
    if not isinstance(node, dict):
        raise _bad(field, "must be an object with reasoning_level and ignore_parameters")
    unknown = set(node) - {"reasoning_level", "ignore_parameters"}
    if unknown:
        raise _bad(
            f"{field}.{sorted(unknown)[0]}", "unknown key (expected reasoning_level, ignore_parameters)"
        )
    levels = node.get("reasoning_level", [])
    if not isinstance(levels, list):
        raise _bad(f"{field}.reasoning_level", "must be a list of {range, payload}")
    for i, entry in enumerate(levels):
        where = f"{field}.reasoning_level[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"range", "payload"} or "range" not in entry:
            raise _bad(where, 'must be {"range": {"from": n, "to": m}, "payload": {...}}')
        bounds = entry["range"]
        if not isinstance(bounds, dict) or set(bounds) != {"from", "to"}:
            raise _bad(f"{where}.range", 'must be {"from": n, "to": m}')
        if _int(bounds["from"], f"{where}.range.from") > _int(bounds["to"], f"{where}.range.to"):
            raise _bad(f"{where}.range", "from must not exceed to")
        if not isinstance(entry.get("payload", {}), dict):
            raise _bad(f"{where}.payload", "must be an object")
    ignore = node.get("ignore_parameters", [])
    if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
        raise _bad(f"{field}.ignore_parameters", "must be a list of parameter names")


def _node(node: Any, field: str, depth: int) -> None:
    if not isinstance(node, dict):
        raise _bad(field, "must be an object")
    for key, child in node.items():
        if key == "reasoning":
            _reasoning(child, f"{field}.reasoning")
        elif depth >= MAX_DEPTH:
            raise _bad(
                f"{field}.{key}", f"a config path has at most {MAX_DEPTH} segments (provider/family/model)"
            )
        else:
            _node(child, f"{field}.{key}", depth + 1)


def check_provider_config(raw: Any, field: str) -> dict[str, Any]:
    """``raw`` as a provider config with lower-case keys.

    Raises:
        BadRequestError: not of the shape in the module docstring; ``field`` is the path of the fault.
    """
    config = lower_keys(raw)
    if not isinstance(config, dict):
        raise _bad(field, "must be an object keyed by provider")
    if "reasoning" in config:
        raise _bad(f"{field}.reasoning", 'belongs under a provider (e.g. {"openai": {"reasoning": ...}})')
    _node(config, field, 0)
    return config
