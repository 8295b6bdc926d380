"""Request routing: which model answers, with which options, from the request and agent metadata.

Agent metadata travels with every ``statek.llm.complete`` request. Keys are case-insensitive.
The provider *uses* :data:`PROVIDER_KEYS`; it *accepts and ignores* :data:`AGENT_KEYS` (the
executor consumes them, and an agent's metadata is passed whole); any other key is a 400 naming
it, with the closest known key as a hint, so a typo such as ``TEMPRATURE`` never passes silently.

Model strings are litellm's (``openai/gpt-4o-mini``, ``openrouter/openai/gpt-5-mini``...),
``scripted/<name>`` for the scripted model, or a difficulty mapping ``L:a,M:b,H:c`` (labels may be
grouped, ``LM:a,H:b``; every difficulty must be covered exactly once) resolved with metadata
``DIFFICULTY``, else ``DEFAULT_DIFFICULTY``, else medium.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from statek_bus.provider.params import split_model_params
from statek_bus.wire.difficulty import Difficulty, difficulty_named
from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.messages import CompleteRequest

__all__ = [
    "AGENT_KEYS",
    "PROVIDER_KEYS",
    "SCRIPTED_PREFIX",
    "Difficulty",
    "Route",
    "parse_difficulty",
    "parse_model_spec",
    "route",
]

SCRIPTED_PREFIX = "scripted/"
"""Model strings with this prefix are answered by the scripted model, never by litellm."""

PROVIDER_KEYS: dict[str, str] = {
    "MODEL": "model string or L:a,M:b,H:c mapping, used when the request's model is empty",
    "PROVIDER": "litellm provider prefixed to a model string that has none (e.g. openrouter)",
    "TEMPERATURE": "sampling temperature in [0, 1]",
    "DIFFICULTY": "the job's current difficulty (L/M/H or low/medium/high) for a model mapping",
    "DEFAULT_DIFFICULTY": "difficulty used when DIFFICULTY is absent (default M)",
    "SCRIPT": "scripted model: the list of replies",
    "SCRIPT_FILE": "scripted model: a .json file in the provider's STATEK_SCRIPT_DIR holding the replies",
    "SCRIPT_LATENCY": "scripted model: seconds each reply takes (0-600), waited without holding a thread",
    "MOCK_RESPONSE": "litellm's offline mock_response: this text is answered without a network call",
    "MAX_TOKENS": "upper bound on output tokens (a positive integer)",
    "REASONING_EFFORT": "litellm reasoning_effort for reasoning models (e.g. low, medium, high)",
}
"""Metadata keys the provider acts on, with what each does (shown in errors and docs)."""

AGENT_KEYS: frozenset[str] = frozenset(
    {
        "CHAT_STYLE",
        "LLM_TOOLS_SCOPE",
        "POST_PROCESSORS",
        "EXTRA_RESOURCES",
        "AUTO_LANG_RULE",
        "AUTO_LANG_HINT",
        "DESCRIPTION",
        "XML_BOX_CONSOLE",
    }
)
"""STATEK agent metadata keys that belong to the executor: accepted here and ignored."""

_KNOWN = frozenset(PROVIDER_KEYS) | AGENT_KEYS
_MAPPING_START = re.compile(r"^\s*[LMHlmh]+\s*:")
_MAPPING_ENTRY = re.compile(r"^\s*([LMHlmh]+)\s*:(.*)$")


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where one request goes and with which options (all validated)."""

    model: str
    """The model that answers: a litellm model string or ``scripted/<name>``."""
    temperature: float | None = None
    """Sampling temperature in [0, 1], if any."""
    difficulty: Difficulty | None = None
    """The difficulty that chose ``model`` from a mapping, if the model was a mapping."""
    script: Any = None
    """Raw ``SCRIPT`` metadata (validated by :mod:`.scripted`)."""
    script_file: str | None = None
    """``SCRIPT_FILE`` metadata."""
    script_latency: float = 0.0
    """``SCRIPT_LATENCY``: seconds the scripted model takes per reply, like a real model."""
    mock_response: str | None = None
    """``MOCK_RESPONSE``: litellm answers this text offline."""
    max_tokens: int | None = None
    """``MAX_TOKENS``."""
    reasoning_effort: str | None = None
    """``REASONING_EFFORT``."""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The model string's ``/k=v&...`` parameters; once the provider resolved them
    (:func:`~.params.request_params`), the extra litellm arguments of the call."""

    @property
    def scripted(self) -> bool:
        """Whether the scripted model answers."""
        return self.model.startswith(SCRIPTED_PREFIX)


def parse_difficulty(value: Any, field: str) -> Difficulty:
    """Parse ``L/M/H`` or ``low/medium/high`` (any case); anything else is a 400 on ``field``."""
    found = difficulty_named(value)
    if found is None:
        raise BadRequestError(
            f"{field} must be one of L, M, H (or low, medium, high), not {value!r}", field=field
        )
    return found


def parse_model_spec(spec: str, field: str) -> str | dict[Difficulty, str]:
    """A single model string, or the ``{difficulty: model}`` of an ``L:a,M:b,H:c`` mapping.

    Raises:
        BadRequestError: empty model, a mapping with a duplicate label, an empty entry, or one that
            leaves a difficulty uncovered.
    """
    text = spec.strip()
    if not text:
        raise BadRequestError("model must not be empty", field=field)
    if not _MAPPING_START.match(text) and "," not in text:
        if any(ch.isspace() for ch in text):
            raise BadRequestError(f"model {spec!r} must not contain whitespace", field=field)
        return text
    mapping: dict[Difficulty, str] = {}
    for entry in text.split(","):
        m = _MAPPING_ENTRY.match(entry)
        if m is None:
            raise BadRequestError(
                f"model mapping {spec!r}: entry {entry.strip()!r} is not LABELS:model (e.g. L:a,M:b,H:c)",
                field=field,
            )
        labels, model = m.group(1), m.group(2).strip()
        if not model:
            raise BadRequestError(f"model mapping {spec!r} has an entry without a model", field=field)
        for label in labels.strip().upper():
            level = Difficulty(label)
            if level in mapping:
                raise BadRequestError(f"model mapping {spec!r} names difficulty {label} twice", field=field)
            mapping[level] = model
    missing = [d.value for d in Difficulty if d not in mapping]
    if missing:
        raise BadRequestError(
            f"model mapping {spec!r} must cover L, M and H; missing {', '.join(missing)}", field=field
        )
    return mapping


def _normalise(metadata: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        upper = key.upper()
        if upper not in _KNOWN:
            close = difflib.get_close_matches(upper, sorted(_KNOWN), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BadRequestError(
                f"unknown metadata key {key!r}{hint}; the provider knows "
                f"{', '.join(sorted(PROVIDER_KEYS))} and ignores the agent keys {', '.join(sorted(AGENT_KEYS))}",
                field=f"$.metadata.{key}",
            )
        if upper in out:
            raise BadRequestError(
                f"metadata key {key!r} is given twice (keys are case-insensitive)", field=f"$.metadata.{key}"
            )
        out[upper] = value
    return out


def _temperature(value: Any, field: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequestError(f"{field} must be a number in [0, 1], not {value!r}", field=field) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequestError(f"{field} must be a number in [0, 1], not {value!r}", field=field)
    if not 0.0 <= value <= 1.0:
        raise BadRequestError(f"{field} must be in [0, 1], not {value}", field=field)
    return float(value)


def _string(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequestError(f"metadata {key} must be a non-empty string", field=f"$.metadata.{key}")
    return value.strip()


def _seconds(meta: dict[str, Any], key: str, limit: float) -> float:
    value = meta.get(key)
    if value is None:
        return 0.0
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequestError(
                f"metadata {key} must be a number of seconds", field=f"$.metadata.{key}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= limit:
        raise BadRequestError(f"metadata {key} must be seconds in [0, {limit:g}]", field=f"$.metadata.{key}")
    return float(value)


def _positive_int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadRequestError(f"metadata {key} must be a positive integer", field=f"$.metadata.{key}")
    return value


def route(req: CompleteRequest) -> Route:
    """Validate ``req``'s model and metadata and decide where it goes.

    The request's ``model`` wins over metadata ``MODEL`` (used only when ``model`` is empty); the
    request's ``temperature`` wins over metadata ``TEMPERATURE``; both must lie in [0, 1].

    Raises:
        BadRequestError: naming the offending field (``$.model``, ``$.temperature``,
            ``$.metadata.<KEY>``).
    """
    meta = _normalise(req.metadata)
    field = "$.model"
    spec = req.model
    if not spec.strip() and meta.get("MODEL") is not None:
        spec, field = _string(meta, "MODEL") or "", "$.metadata.MODEL"
    parsed = parse_model_spec(spec, field)
    difficulty: Difficulty | None = None
    if isinstance(parsed, dict):
        if "DIFFICULTY" in meta:
            difficulty = parse_difficulty(meta["DIFFICULTY"], "$.metadata.DIFFICULTY")
        elif "DEFAULT_DIFFICULTY" in meta:
            difficulty = parse_difficulty(meta["DEFAULT_DIFFICULTY"], "$.metadata.DEFAULT_DIFFICULTY")
        else:
            difficulty = Difficulty.MEDIUM
        model = parsed[difficulty]
    else:
        model = parsed
    model, params = split_model_params(model, field)
    provider = _string(meta, "PROVIDER")
    if provider and not model.startswith(SCRIPTED_PREFIX) and not model.startswith(f"{provider.lower()}/"):
        model = f"{provider.lower()}/{model}"

    temperature: float | None = None
    if req.temperature is not None:
        temperature = _temperature(req.temperature, "$.temperature")
    elif meta.get("TEMPERATURE") is not None:
        temperature = _temperature(meta["TEMPERATURE"], "$.metadata.TEMPERATURE")

    result = Route(
        model=model,
        temperature=temperature,
        difficulty=difficulty,
        script=meta.get("SCRIPT"),
        script_file=_string(meta, "SCRIPT_FILE"),
        script_latency=_seconds(meta, "SCRIPT_LATENCY", 600.0),
        mock_response=meta.get("MOCK_RESPONSE"),
        max_tokens=_positive_int(meta, "MAX_TOKENS"),
        reasoning_effort=_string(meta, "REASONING_EFFORT"),
        params=params,
    )
    _check_consistency(result)
    return result


def _check_consistency(r: Route) -> None:
    if r.scripted:
        if r.script is None and r.script_file is None:
            raise BadRequestError(
                f"the scripted model {r.model!r} needs metadata SCRIPT (a list of replies) or SCRIPT_FILE",
                field="$.metadata.SCRIPT",
            )
        if r.script is not None and r.script_file is not None:
            raise BadRequestError(
                "give metadata SCRIPT or SCRIPT_FILE, not both", field="$.metadata.SCRIPT_FILE"
            )
        if r.mock_response is not None:
            raise BadRequestError(
                "MOCK_RESPONSE applies to litellm models, not to the scripted model",
                field="$.metadata.MOCK_RESPONSE",
            )
        return
    for key, value in (
        ("SCRIPT", r.script),
        ("SCRIPT_FILE", r.script_file),
        ("SCRIPT_LATENCY", r.script_latency or None),
    ):
        if value is not None:
            raise BadRequestError(
                f"metadata {key} needs a scripted/<name> model, but the model is {r.model!r}",
                field=f"$.metadata.{key}",
            )
    if r.mock_response is not None and not isinstance(r.mock_response, str):
        raise BadRequestError("metadata MOCK_RESPONSE must be a string", field="$.metadata.MOCK_RESPONSE")
