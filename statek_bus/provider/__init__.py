"""The provider: the only part of statek-bus that talks to LLM APIs or holds their keys.

``services/provider.py`` wires :class:`Provider` into the ``statek-provider`` micro service
(``statek.llm.complete``, ``statek.llm.models``). Modules, one concern each:

- :mod:`.routing`: model strings, ``L:a,M:b,H:c`` difficulty mapping, metadata validation;
- :mod:`.params`: model-string parameters, reasoning levels from the provider config,
  ``<P>_RESPONSE_FORMAT_FILE``;
- :mod:`.scripted`: the scripted model (``scripted/<name>`` with ``SCRIPT`` / ``SCRIPT_FILE``);
- :mod:`.llm`: loading and calling litellm, reading its responses, mapping its errors;
- :mod:`.retry`: backoff with full jitter, ``Retry-After``;
- :mod:`.limits`: per-model concurrency and rate limits;
- :mod:`.pricing`: the CSV price table that overrides litellm's price map;
- :mod:`.redaction`: keeping keys out of replies, errors and logs;
- :mod:`.calls`: callers' deadlines and call identities (no call for a caller gone, none twice);
- :mod:`.plans`: what a call depends on besides its conversation (route, arguments, script,
  price), worked out once per model, metadata, temperature and provider config;
- :mod:`.engine`: :class:`Provider`, composing the above.

Importing this package does not import litellm; :class:`Provider` loads it in the background.
"""

from __future__ import annotations

from statek_bus.provider.calls import CallLedger, Deadline
from statek_bus.provider.engine import Provider
from statek_bus.provider.limits import Limits, ModelLimiter, ModelLoad, RateLimiter
from statek_bus.provider.llm import LiteLLM
from statek_bus.provider.pricing import ModelPrice, PriceTable, PriceTableError
from statek_bus.provider.redaction import Redactor, secret_env_names
from statek_bus.provider.retry import RetriesExhausted, RetryPolicy, Transient, parse_retry_after, retry_call
from statek_bus.provider.routing import AGENT_KEYS, PROVIDER_KEYS, SCRIPTED_PREFIX, Difficulty, Route, route
from statek_bus.provider.scripted import ScriptReply, ScriptToolCall, parse_script

__all__ = [
    "AGENT_KEYS",
    "PROVIDER_KEYS",
    "SCRIPTED_PREFIX",
    "CallLedger",
    "Deadline",
    "Difficulty",
    "Limits",
    "LiteLLM",
    "ModelLimiter",
    "ModelLoad",
    "ModelPrice",
    "PriceTable",
    "PriceTableError",
    "Provider",
    "RateLimiter",
    "Redactor",
    "RetriesExhausted",
    "RetryPolicy",
    "Route",
    "ScriptReply",
    "ScriptToolCall",
    "Transient",
    "parse_retry_after",
    "parse_script",
    "retry_call",
    "route",
    "secret_env_names",
]
