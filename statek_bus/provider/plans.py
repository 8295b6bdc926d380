"""Call plans: what a call's answer depends on besides its conversation, worked out once.

A model call's route (:func:`~.routing.route`: the model, its difficulty, the metadata checked),
its extra litellm arguments (:func:`~.params.request_params`, the response format), the parsed
inline ``SCRIPT``, the model's price and its metric series depend only on the request's
``model``, ``temperature``, ``metadata`` and ``provider_config``, which an agent sends the same on
every call. :class:`PlanCache` keeps the :class:`Plan` of recent combinations, keyed on their
JSON (so two requests share a plan exactly when those four fields say the same), at most
:data:`PLAN_CACHE_SIZE` of them and :data:`PLAN_CACHE_BYTES` of keys. A request whose plan cannot
be made (a bad model, metadata or config) is refused as before, and nothing is kept for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from statek_bus.mesh import metrics
from statek_bus.provider.pricing import ModelPrice
from statek_bus.provider.routing import Route
from statek_bus.provider.scripted import ScriptReply
from statek_bus.wire.messages import CompleteRequest, LLMUsage

__all__ = ["PLAN_CACHE_BYTES", "PLAN_CACHE_SIZE", "PLAN_KEY_MAX_BYTES", "ModelSeries", "Plan", "PlanCache"]

PLAN_CACHE_SIZE = 1024
"""Plans kept (the least recently used goes first)."""
PLAN_CACHE_BYTES = 4 * 1024 * 1024
"""Bytes of keys (the four fields' JSON) kept at most; the parsed plans are of the same order."""
PLAN_KEY_MAX_BYTES = 64 * 1024
"""A plan whose key is longer (a long inline ``SCRIPT``) is made for its call and not kept."""

_encoder = msgspec.json.Encoder()


class ModelSeries:
    """A model's LLM metric series (``statek_llm_*``), their labels looked up once.

    Args:
        model: the model that answers (``scripted/<name>`` or a litellm model string).
    """

    __slots__ = ("_cached", "_cost", "_error", "_input", "_ok", "_output", "_seconds")

    def __init__(self, model: str) -> None:
        self._ok = metrics.LLM_CALLS.labels(model=model, outcome="ok")
        self._error = metrics.LLM_CALLS.labels(model=model, outcome="error")
        self._seconds = metrics.LLM_SECONDS.labels(model=model)
        self._input = metrics.LLM_TOKENS.labels(model=model, kind="input")
        self._output = metrics.LLM_TOKENS.labels(model=model, kind="output")
        self._cached = metrics.LLM_TOKENS.labels(model=model, kind="cached")
        self._cost = metrics.LLM_COST.labels(model=model)

    def answered(self, seconds: float, usage: LLMUsage) -> None:
        """Count one call answered in ``seconds`` with ``usage``."""
        self._ok.inc()
        self._seconds.observe(seconds)
        for series, amount in (
            (self._input, usage.input_tokens),
            (self._output, usage.output_tokens),
            (self._cached, usage.cached_tokens),
            (self._cost, usage.cost),
        ):
            if amount:  # adding nothing would only take the series' lock
                series.inc(amount)

    def failed(self) -> None:
        """Count one call that ended in an error."""
        self._error.inc()


@dataclass(frozen=True)
class Plan:
    """Everything of one call that does not depend on its conversation (all validated)."""

    route: Route
    """Where it goes, ``params`` resolved into the call's extra litellm arguments."""
    script: tuple[ScriptReply, ...] | None
    """The parsed inline ``SCRIPT`` of a scripted model (``None``: none, or a ``SCRIPT_FILE``)."""
    price: ModelPrice | None
    """The model's row in the price table, if it has one."""
    series: ModelSeries
    """The model's metric series."""


class PlanCache:
    """Plans by the request fields they depend on (see the module docstring).

    Args:
        build: makes the plan of a request (raises its 400 when it cannot be made).
        size: plans kept at most.
        max_bytes: bytes of keys kept at most.
    """

    def __init__(
        self,
        build: Callable[[CompleteRequest], Plan],
        *,
        size: int = PLAN_CACHE_SIZE,
        max_bytes: int = PLAN_CACHE_BYTES,
    ) -> None:
        self._build = build
        self.size = size
        self.max_bytes = max_bytes
        self._plans: OrderedDict[bytes, Plan] = OrderedDict()
        self._bytes = 0
        self.built = 0
        """Plans made so far (for tests and STATS)."""

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, req: CompleteRequest) -> Plan:
        """The plan of ``req``: a kept one, or a new one (kept when its key is short enough)."""
        key = _key(req)
        if key is not None:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = self._build(req)
        self.built += 1
        if key is not None and len(key) <= PLAN_KEY_MAX_BYTES:
            self._plans[key] = plan
            self._bytes += len(key)
            while len(self._plans) > self.size or self._bytes > self.max_bytes:
                old, _ = self._plans.popitem(last=False)
                self._bytes -= len(old)
        return plan


def _key(req: CompleteRequest) -> bytes | None:
    """The JSON of the fields a plan depends on (``None``: not JSON, e.g. from an in-process caller)."""
    fields: tuple[Any, ...] = (req.model, req.temperature, req.metadata, req.provider_config)
    try:
        return _encoder.encode(fields)
    except (TypeError, ValueError, msgspec.EncodeError):
        return None
