"""The provider engine: one ``complete`` for every model, and the ``models`` listing.

A request flows: its plan (:mod:`~.plans`, kept per model, temperature, metadata and provider
config: :func:`~.routing.route` validates model and metadata and picks the model by difficulty,
then come the call's extra arguments, the parsed inline script and the price) → the scripted
model, answered in-process, or litellm: :func:`~.llm.preflight` (known provider, key present) →
per attempt, a slot of the model's :class:`~.limits.ModelLimiter` and one ``acompletion`` under a
timeout, unless the caller's deadline has passed (:mod:`~.calls`; a call whose identity was seen
answers from that call) → :func:`~.retry.retry_call` for transient failures → the reply with its
usage and cost (price table first, then litellm's map), every string of it redacted of keys (a
reply whose JSON holds no trace of one is sent as it is). Failures come out as the error tree's
classes (:func:`~.llm.to_error`), their text redacted of keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import msgspec

from statek_bus.mesh.settings import Settings
from statek_bus.provider.calls import CallLedger, Deadline
from statek_bus.provider.limits import Limits
from statek_bus.provider.llm import (
    LiteLLM,
    build_kwargs,
    classify,
    key_env,
    litellm_cost,
    preflight,
    to_error,
    to_reply,
)
from statek_bus.provider.params import (
    ResponseFormats,
    load_provider_config,
    merge_config,
    python_code_of,
    request_params,
)
from statek_bus.provider.plans import ModelSeries, Plan, PlanCache
from statek_bus.provider.pricing import PriceTable
from statek_bus.provider.redaction import Redactor, install_log_redaction
from statek_bus.provider.retry import RetryPolicy, retry_call
from statek_bus.provider.routing import SCRIPTED_PREFIX, Route, route
from statek_bus.provider.scripted import ScriptStore, parse_script, scripted_reply
from statek_bus.wire.errors import BadRequestError, InternalError
from statek_bus.wire.messages import (
    CompleteReply,
    CompleteRequest,
    Empty,
    LLMUsage,
    ModelInfo,
    ModelsReply,
    encode,
)
from statek_bus.wire.provider_config import check_provider_config

__all__ = ["Provider"]

log = logging.getLogger(__name__)

_TIMEOUT_GRACE = 5.0
"""Seconds past ``llm_timeout`` before our own guard cancels an attempt litellm did not time out."""


def _own_reasoning(req: CompleteRequest, model: str) -> CompleteRequest:
    """``req`` with only the reasoning ``model`` produced kept in its history (another model's
    reasoning is not replayed to this one)."""
    if all(m.reasoning is None or m.reasoning_model == model for m in req.messages):
        return req
    messages = [
        m
        if m.reasoning is None or m.reasoning_model == model
        else msgspec.structs.replace(m, reasoning=None, reasoning_model=None)
        for m in req.messages
    ]
    return msgspec.structs.replace(req, messages=messages)


def _call_key(req: CompleteRequest) -> str | None:
    """The ledger key of a call: its identity *and* its content, so a repeated identity with other
    content (a caller's bug, or one guessing another's id) is a call of its own, never another's reply."""
    if req.call_id is None:
        return None
    content = encode(msgspec.structs.replace(req, deadline_s=None))
    return f"{req.call_id}:{hashlib.sha256(content).hexdigest()}"


class Provider:
    """Answers ``statek.llm.complete`` and ``statek.llm.models``; an async context manager.

    Args:
        settings: timeouts, retry policy, limits and the price table path.
        prices: a price table (default: loaded from ``settings.llm_price_table``).
        litellm: the litellm loader (default: a new one; loading starts on first use or
            :meth:`start_loading`).
        environ: where ``<P>_RESPONSE_FORMAT_FILE`` variables are read (default ``os.environ``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        prices: PriceTable | None = None,
        litellm: LiteLLM | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.prices = prices if prices is not None else PriceTable.load(settings.llm_price_table)
        self.litellm = litellm or LiteLLM()
        self.limits = Limits.from_settings(settings)
        self.policy = RetryPolicy.from_settings(settings)
        self.scripts = ScriptStore(root=settings.script_dir)
        self.redact = Redactor()
        self.calls = CallLedger()
        self._unpriced: set[str] = set()
        self.provider_config = load_provider_config(settings.provider_config)
        self.formats = ResponseFormats(environ)
        self.plans = PlanCache(self._plan)

    async def __aenter__(self) -> Provider:
        install_log_redaction(redactor=self.redact)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release litellm's connections."""
        await self.litellm.aclose()

    def start_loading(self) -> None:
        """Begin importing litellm in the background (call once the service answers PING)."""
        self.litellm.start()

    # --- endpoints ---------------------------------------------------------------------------------

    async def complete(self, req: CompleteRequest) -> CompleteReply:
        """Answer one completion request.

        Raises:
            BadRequestError: bad model, metadata, script, missing key, or the provider refused it.
            PayloadTooLargeError: the conversation does not fit the model.
            ServiceUnavailableError: the provider stayed unavailable through the retry policy, or
                its response was malformed.
        """
        deadline = Deadline(req.deadline_s)  # counted from receipt: queueing here counts against it
        plan = self.plans.get(req)
        r = plan.route
        req = _own_reasoning(req, r.model)
        started = time.perf_counter()
        try:
            if r.scripted:
                reply = await self._scripted(req, plan)
            else:
                # litellm gets arguments of its own: nothing it does to them reaches the kept plan
                own = dataclasses.replace(r, params=copy.deepcopy(r.params))
                reply = await self.calls.once(_call_key(req), lambda: self._litellm(req, own, deadline))
        except Exception:
            plan.series.failed()
            raise
        plan.series.answered(time.perf_counter() - started, reply.usage)
        return self._redacted(reply)

    def _plan(self, req: CompleteRequest) -> Plan:
        """What ``req``'s call depends on besides its conversation: the route, the extra arguments
        (model-string parameters, the provider configs, a response-format file), the parsed inline
        script and the price (kept in :attr:`plans`)."""
        r = route(req)
        config = self.provider_config
        if req.provider_config is not None:
            config = merge_config(config, check_provider_config(req.provider_config, "$.provider_config"))
        params = request_params(r.model, r.params, config)
        fmt = self.formats.for_model(r.model)
        if fmt is not None:
            params.setdefault("response_format", fmt)
        script = None
        if r.scripted and r.script_file is None:
            with contextlib.suppress(BadRequestError):  # raised by the call, counted as its model's error
                script = parse_script(r.script, "$.metadata.SCRIPT")
        return Plan(
            route=dataclasses.replace(r, params=params),
            script=script,
            price=self.prices.lookup(r.model),
            series=ModelSeries(r.model),
        )

    def _redacted(self, reply: CompleteReply) -> CompleteReply:
        """``reply`` with every string redacted of keys: whatever the upstream says, no reply of
        the provider carries a key (errors are redacted where they are built). A reply whose JSON
        holds no trace of one is returned as it is, without a walk over its strings."""
        if not self.redact.may_hold_secret(encode(reply)):
            return reply
        return msgspec.convert(self.redact.tree(msgspec.to_builtins(reply)), CompleteReply)

    async def models(self, req: Empty) -> ModelsReply:
        """The models this instance has served or prices, with their limits and key status."""
        names = {load.model for load in self.limits.loads()} | set(self.prices.models())
        litellm = (
            await self.litellm.module() if any(not n.startswith(SCRIPTED_PREFIX) for n in names) else None
        )
        out = [
            ModelInfo(
                name=f"{SCRIPTED_PREFIX}*",
                concurrency=self.limits.concurrency,
                rate=self.limits.rate,
                key_env=None,
                key_present=True,
            )
        ]
        for name in sorted(n for n in names if not n.startswith(SCRIPTED_PREFIX)):
            env, present = key_env(litellm, name)
            limiter = self.limits.for_model(name)
            out.append(
                ModelInfo(
                    name=name,
                    concurrency=limiter.concurrency,
                    rate=limiter.rate,
                    key_env=env,
                    key_present=present,
                )
            )
        return ModelsReply(models=out)

    # --- the two kinds of model --------------------------------------------------------------------

    async def _scripted(self, req: CompleteRequest, plan: Plan) -> CompleteReply:
        r = plan.route
        if r.script_file is not None:
            script, field = await self.scripts.load(r.script_file), "$.metadata.SCRIPT_FILE"
        else:
            script = plan.script or parse_script(r.script, "$.metadata.SCRIPT")  # or its 400
            field = "$.metadata.SCRIPT"
        reply = scripted_reply(req, r.model, script, field=field, params=r.params)
        if "response_format" in r.params:
            reply.text = python_code_of(reply.text)
        if r.script_latency:  # a model's latency, for benchmarks: a timer, no thread held
            await asyncio.sleep(r.script_latency)
        price = plan.price
        if price is not None:
            u = reply.usage
            reply.usage = LLMUsage(
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cached_tokens=u.cached_tokens,
                cost=price.cost(u.input_tokens, u.output_tokens, u.cached_tokens),
            )
        return reply

    async def _litellm(self, req: CompleteRequest, r: Route, deadline: Deadline) -> CompleteReply:
        litellm = await self.litellm.module()
        if not req.messages:
            raise BadRequestError("messages must hold at least one message", field="$.messages")
        preflight(litellm, r)
        kwargs = build_kwargs(r, req, self.settings.llm_timeout)
        limiter = self.limits.for_model(r.model)
        guard = self.settings.llm_timeout + _TIMEOUT_GRACE

        async def attempt() -> Any:
            async with limiter.slot():
                deadline.check(f"a call to {r.model}")  # after the queue, before every (re)try
                async with asyncio.timeout(guard):
                    return await litellm.acompletion(**kwargs)

        try:
            response = await retry_call(
                attempt,
                self.policy,
                lambda exc: classify(exc, self.redact),
                what=f"llm {r.model}" + (f" (job {req.job_id})" if req.job_id else ""),
            )
        except Exception as exc:
            mapped = to_error(exc, r.model, self.redact)
            if mapped is exc:
                raise self._internal(exc, r.model) from None
            raise mapped from None
        reply = to_reply(response, r.model)
        if "response_format" in r.params:
            reply.text = python_code_of(reply.text)
        reply.usage.cost = self._cost(litellm, response, r.model, reply.usage)
        return reply

    def _cost(self, litellm: Any, response: Any, model: str, usage: LLMUsage) -> float:
        price = self.prices.lookup(model)
        if price is not None:
            return price.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens)
        cost = litellm_cost(litellm, response, model)
        if cost is None:
            if model not in self._unpriced:
                self._unpriced.add(model)
                log.info("no price for %s in litellm's map or the price table: its cost counts as 0", model)
            return 0.0
        return cost

    def _internal(self, exc: BaseException, model: str) -> InternalError:
        trace_id = uuid.uuid4().hex[:16]
        log.error("unexpected error calling %s [trace_id=%s]", model, trace_id, exc_info=exc)
        return InternalError(f"internal error calling {model!r} (trace_id {trace_id})", trace_id=trace_id)
