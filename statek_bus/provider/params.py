"""Model-string parameters, the provider config (reasoning levels) and response-format files.

A model string may end in a parameter segment, as STATEK's do: ``openai/gpt-4o/temperature=0.2&rl=50``
(:func:`split_model_params`). ``rl=N`` (or ``reasoning_level=N``, 0..100) picks a payload from the
provider config; every other ``key=value`` becomes a litellm argument of the call. Only the
sampling and reasoning arguments in :data:`ALLOWED_PARAMS` pass: an argument such as ``api_base`` or
``api_key`` would send the provider's key elsewhere, so it is a 400 naming it, wherever it comes
from (a model string, the operator's config, or a job's own ``provider_config``).

The provider config (setting ``provider_config``, env ``STATEK_PROVIDER_CONFIG``: a JSON file, read
by the provider at start) has STATEK's shape::

    {"openrouter": {"openai": {"gpt-5-mini": {"reasoning": {
        "reasoning_level": [{"range": {"from": 1, "to": 100}, "payload": {"reasoning_effort": "high"}}],
        "ignore_parameters": ["temperature"]}}}}}

Keys are case-insensitive; the path is the model string's segments (provider, family, model), and
the deepest node on it holding ``reasoning`` wins. A job's ``provider_config`` (same shape) is
merged over the operator's, per key. The range whose bounds hold ``N`` gives the payload, which is
deep-merged into the call's arguments; its ``ignore_parameters`` are removed from them. ``rl=N``
with ``N > 0`` and no matching range is a 400. The checks of the shape live in
:func:`statek_bus.wire.provider_config.check_provider_config`, which submission runs on a job's
config too.

``<P>_RESPONSE_FORMAT_FILE`` (in the provider's environment; ``P`` the model string's provider,
upper case, e.g. ``OPENAI_RESPONSE_FORMAT_FILE`` or ``SCRIPTED_RESPONSE_FORMAT_FILE``) names a JSON
schema sent as ``response_format``; the reply's text is then read as JSON and its ``python_code``
taken as the text, as STATEK does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.provider_config import check_provider_config

__all__ = [
    "ALLOWED_PARAMS",
    "ResponseFormats",
    "load_provider_config",
    "merge_config",
    "python_code_of",
    "request_params",
    "split_model_params",
]

ALLOWED_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
        "n",
        "logit_bias",
        "reasoning_effort",
        "reasoning",
        "thinking",
        "verbosity",
        "parallel_tool_calls",
        "tool_choice",
        "response_format",
        "extra_body",
    }
)
"""litellm arguments a model string or provider config may set; nothing that routes or authenticates."""

_LEVEL_KEYS = ("rl", "reasoning_level")


def _literal(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def split_model_params(model: str, field: str) -> tuple[str, dict[str, Any]]:
    """``(model, params)`` of ``model[/k=v&...]``; a malformed parameter segment is a 400 on ``field``."""
    parts = model.split("/")
    at = next((i for i, part in enumerate(parts) if "=" in part), None)
    if at is None:
        return model, {}
    head, tail = "/".join(parts[:at]), "/".join(parts[at:])  # a value may hold "/" (a URL)
    params: dict[str, Any] = {}
    for pair in tail.split("&"):
        key, eq, value = pair.partition("=")
        key = key.strip().lower()
        if not eq or not key.isidentifier() or not value.strip():
            raise BadRequestError(
                f"model {model!r}: parameter {pair!r} is not key=value (e.g. .../temperature=0.2&rl=50)",
                field=field,
            )
        if key in params:
            raise BadRequestError(f"model {model!r} sets parameter {key!r} twice", field=field)
        params[key] = _literal(value.strip())
    if not head:
        raise BadRequestError(f"model {model!r} has parameters but no model", field=field)
    return head, params


def _level(params: dict[str, Any], field: str) -> int | None:
    found = [(k, params.pop(k)) for k in _LEVEL_KEYS if k in params]
    if not found:
        return None
    if len(found) == 2 and found[0][1] != found[1][1]:
        raise BadRequestError("rl and reasoning_level disagree; give one", field=field)
    value = found[0][1]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise BadRequestError(f"reasoning level must be an integer in 0..100, not {value!r}", field=field)
    return value


def merge_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base`` (dicts merge per key, anything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def _reasoning_node(config: Mapping[str, Any], model: str) -> dict[str, Any] | None:
    node: Any = config
    found: dict[str, Any] | None = None
    for segment in model.lower().split("/"):
        if not isinstance(node, Mapping) or segment not in node:
            break
        node = node[segment]
        if isinstance(node, Mapping) and isinstance(node.get("reasoning"), Mapping):
            found = dict(node["reasoning"])
    return found


def request_params(
    model: str, params: Mapping[str, Any], config: Mapping[str, Any], *, field: str = "$.model"
) -> dict[str, Any]:
    """The litellm arguments a call to ``model`` gets from its model-string ``params`` and ``config``.

    Raises:
        BadRequestError: a parameter outside :data:`ALLOWED_PARAMS`, a bad reasoning level, or a
            level above 0 that the config has no payload for.
    """
    rest = dict(params)
    level = _level(rest, field)
    for key in rest:
        _allowed(key, field)
    if level is None:
        return rest
    node = _reasoning_node(config, model)
    ranges = (node or {}).get("reasoning_level") or []
    payload: dict[str, Any] | None = None
    for entry in ranges:
        bounds = entry["range"]
        if bounds["from"] <= level <= bounds["to"]:
            payload = dict(entry.get("payload") or {})
            break
    if payload is None:
        if level == 0:
            return rest
        raise BadRequestError(
            f"reasoning level {level} for {model!r}: the provider config has no matching "
            "reasoning_level range (STATEK_PROVIDER_CONFIG, or the job's provider_config)",
            field=field,
        )
    for key in payload:
        _allowed(key, "$.provider_config")
    merged = merge_config(rest, payload)
    for key in (node or {}).get("ignore_parameters") or []:
        merged.pop(str(key).lower(), None)
    return merged


def _allowed(key: str, field: str) -> None:
    if key not in ALLOWED_PARAMS:
        raise BadRequestError(
            f"parameter {key!r} is not one the provider passes on; allowed: {', '.join(sorted(ALLOWED_PARAMS))}",
            field=field,
        )


def load_provider_config(path: str) -> dict[str, Any]:
    """The operator's provider config from the JSON file ``path`` ("" : none), checked.

    Raises:
        ValueError: unreadable, not JSON, or not of the documented shape (at start, naming the file).
    """
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"STATEK_PROVIDER_CONFIG {path!r}: {exc}") from None
    try:
        return check_provider_config(raw, "STATEK_PROVIDER_CONFIG")
    except BadRequestError as exc:
        raise ValueError(f"STATEK_PROVIDER_CONFIG {path!r}: {exc.message}") from None


class ResponseFormats:
    """``<P>_RESPONSE_FORMAT_FILE`` schemas, read once per provider name.

    Args:
        environ: where the variables are read (the provider's environment by default).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self._cache: dict[str, dict[str, Any] | None] = {}

    def for_model(self, model: str) -> dict[str, Any] | None:
        """The ``response_format`` for ``model`` (``None``: its provider has no file)."""
        provider = model.split("/", 1)[0].upper() if "/" in model else ""
        if not provider:
            return None
        if provider not in self._cache:
            self._cache[provider] = self._load(f"{provider}_RESPONSE_FORMAT_FILE")
        return self._cache[provider]

    def _load(self, name: str) -> dict[str, Any] | None:
        path = self.environ.get(name, "")
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                schema = json.load(fh)
        except (OSError, ValueError) as exc:
            raise BadRequestError(f"{name} of the provider cannot be read: {type(exc).__name__}") from None
        if not isinstance(schema, dict):
            raise BadRequestError(f"{name} of the provider must hold a JSON object")
        if schema.get("type") in ("json_schema", "json_object", "text"):  # a response_format already
            return schema
        return {"type": "json_schema", "json_schema": {"name": "python_response", "schema": schema}}


def python_code_of(text: str) -> str:
    """The ``python_code`` of a JSON reply to a response-format request (the text itself otherwise)."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    code = data.get("python_code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else text
