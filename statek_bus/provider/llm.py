"""The litellm side of the provider: loading it, calling it, and reading its answers and errors.

litellm takes seconds to import and, unless told otherwise, fetches its price map from the network
while importing. :class:`LiteLLM` imports it once, in a worker thread, after the service is
registered (so ``$SRV.PING`` answers at once), with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (the
bundled map, no network), its debug output, message logging and callbacks off, and our log
redaction on its loggers. Nothing else in statek-bus imports litellm.

litellm is an optional extra (``statek-bus[litellm]``): without it the provider still serves the
scripted model, logs one line at startup, and answers any other model with a 400 on ``$.model``
naming the extra (:data:`MISSING_LITELLM`).

Each attempt is one ``litellm.acompletion`` with litellm's own retries off (``max_retries=0``,
``num_retries=0``): :mod:`.retry` owns the policy. :func:`classify` says which failures are
transient; :func:`to_error` maps the rest to the project's error tree:

=======================================  ==============================================
failure                                  reply
=======================================  ==============================================
unknown provider / no key in env         400 on ``$.model``, naming the variable
401 / 403 (key rejected)                 400 on ``$.model``, naming the variable
404 (no such model)                      400 on ``$.model``
context window exceeded, 413             413
other 4xx (400, 422, content policy)     400 with the provider's message
408 / 429 / 5xx / timeout / connection   retried; then 503 with the last reason
malformed response                       503 naming what is missing
=======================================  ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import threading
import time
import warnings
from typing import Any

from statek_bus.mesh.service import freeze_startup_heap
from statek_bus.provider.redaction import Redactor, install_log_redaction
from statek_bus.provider.retry import RetriesExhausted, Transient, is_retryable_status, parse_retry_after
from statek_bus.provider.routing import Route
from statek_bus.wire.errors import BadRequestError, PayloadTooLargeError, ServiceUnavailableError, StatekError
from statek_bus.wire.messages import ChatMessage, CompleteReply, CompleteRequest, LLMUsage, ToolCall

__all__ = [
    "KEY_ENV",
    "MISSING_LITELLM",
    "LiteLLM",
    "build_kwargs",
    "classify",
    "key_env",
    "litellm_cost",
    "preflight",
    "to_error",
    "to_messages",
    "to_reply",
]

log = logging.getLogger(__name__)

KEY_ENV: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "xai": "XAI_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "cerebras": "CEREBRAS_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
    "cohere": "COHERE_API_KEY",
    "cohere_chat": "COHERE_API_KEY",
    "azure": "AZURE_API_KEY",
}
"""Key variable of common providers (litellm's names), shown by ``statek.llm.models``."""

MISSING_LITELLM = (
    "litellm is not installed in this provider, so it serves only scripted/* models: "
    "install the extra with pip install 'statek-bus[litellm]'"
)
"""The message of the error a model other than ``scripted/*`` gets when litellm is absent."""

_SECRET_VAR = re.compile(r"KEY|TOKEN|SECRET|CREDENTIAL", re.IGNORECASE)
_PREFIX = re.compile(r"^\s*(?:litellm\.)?\w*(?:Error|Exception)\s*(?::|-)\s*")
_MAX_MESSAGE = 500


class LiteLLM:
    """litellm, imported once in a worker thread and configured for a service."""

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None
        self.load_seconds: float | None = None
        """How long the import took (``None`` until loaded)."""

    @property
    def loaded(self) -> bool:
        """Whether litellm is imported and configured."""
        return self._task is not None and self._task.done() and not self._task.cancelled()

    @property
    def usable(self) -> bool:
        """Loaded, and either working or cleanly absent (the extra not installed: scripted models only).

        An import that failed for another reason (no usable temp dir on a read-only root, say) is
        not usable: ``/readyz`` says so instead of the provider answering 500 to every call.
        """
        if not self.loaded or self._task is None:
            return False
        exc = self._task.exception()
        return exc is None or (isinstance(exc, BadRequestError) and str(exc) == MISSING_LITELLM)

    def start(self) -> None:
        """Begin loading in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._load())

    async def module(self) -> Any:
        """The configured ``litellm`` module, waiting for the import if it is under way.

        Raises:
            BadRequestError: litellm is not installed (:data:`MISSING_LITELLM`, on ``$.model``).
        """
        self.start()
        assert self._task is not None
        return await asyncio.shield(self._task)

    async def _load(self) -> Any:
        started = time.perf_counter()
        try:
            mod = await _import_once()
        except ModuleNotFoundError as exc:
            if exc.name != "litellm":
                raise
            log.info("%s", MISSING_LITELLM)
            raise BadRequestError(MISSING_LITELLM, field="$.model") from None
        _configure(mod)
        freeze_startup_heap()  # litellm's ~400,000 objects live as long as the process
        self.load_seconds = time.perf_counter() - started
        log.info("litellm loaded in %.1fs", self.load_seconds)
        return mod

    async def aclose(self) -> None:
        """Close litellm's cached HTTP clients and stop its logging worker (this event loop's)."""
        if self._task is None:
            return
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            return
        if self._task.cancelled() or self._task.exception() is not None:
            return  # nothing was loaded (litellm absent or its import failed): nothing to close
        mod = self._task.result()
        with contextlib.suppress(Exception):
            cleanup = importlib.import_module("litellm.llms.custom_httpx.async_client_cleanup")
            await cleanup.close_litellm_async_clients()
        with contextlib.suppress(Exception):
            mod.in_memory_llm_clients_cache.flush_cache()
        with contextlib.suppress(Exception):
            worker = importlib.import_module("litellm.litellm_core_utils.logging_worker")
            await worker.GLOBAL_LOGGING_WORKER.stop()


# One import per process, in a daemon thread: a stopping service (or a test's event loop) never
# waits for it, and every loop that asks gets the same module when it is ready.
_import_lock = threading.Lock()
_import_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
_import_outcome: list[Any] = []  # [module] or [exception] once the import has finished
_import_thread: threading.Thread | None = None


async def _import_once() -> Any:
    global _import_thread
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    with _import_lock:
        if not _import_outcome:
            _import_waiters.append((loop, future))
            if _import_thread is None:
                log.info("loading litellm (bundled price map, no network)")
                _import_thread = threading.Thread(
                    target=_import_in_thread, name="litellm-import", daemon=True
                )
                _import_thread.start()
            outcome = None
        else:
            outcome = _import_outcome[0]
    if outcome is None:
        outcome = await future
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _import_in_thread() -> None:
    try:
        # Must be set before the first import: otherwise litellm downloads its price map.
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        outcome: Any = importlib.import_module("litellm")
    except BaseException as exc:
        outcome = exc
    with _import_lock:
        _import_outcome.append(outcome)
        waiters = list(_import_waiters)
        _import_waiters.clear()
    for loop, future in waiters:
        with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
            loop.call_soon_threadsafe(_resolve, future, outcome)


def _resolve(future: asyncio.Future[Any], outcome: Any) -> None:
    if not future.done():
        future.set_result(outcome)


def _configure(mod: Any) -> None:
    mod.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
    mod.turn_off_message_logging = True  # no prompt or reply text in litellm's logging objects
    mod.set_verbose = False
    for name in ("callbacks", "success_callback", "failure_callback", "_async_success_callback"):
        if isinstance(getattr(mod, name, None), list):
            getattr(mod, name).clear()
    install_log_redaction()
    _warm_up(mod)


_KNOWN_WARNINGS = (r".*`ReadOnly` qualifier",)
"""Third-party warnings pydantic emits while building litellm's schemas (its ``ReadOnly``
TypedDicts). litellm ignores them with a global filter at import; a test runner that resets
filters per test (pytest) loses that filter, so the warm-up below silences them itself."""


def _warm_up(mod: Any) -> None:
    # Build litellm's response models once, here, with only the known warnings silenced, so the
    # first real call does not emit them (under pytest's filterwarnings=error it would fail).
    with warnings.catch_warnings():
        for pattern in _KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        mod.ModelResponse(
            choices=[
                {
                    "message": {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    }
                }
            ],
            usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        )


def key_env(litellm: Any, model: str) -> tuple[str | None, bool]:
    """The key variable ``model`` needs and whether it is set (``(None, True)`` if none is needed)."""
    try:
        provider = litellm.get_llm_provider(model)[1]
    except Exception:
        return None, False
    missing = _missing_keys(litellm, model)
    if missing:
        return missing[0], False
    name = KEY_ENV.get(provider)
    return name, True


def _missing_keys(litellm: Any, model: str) -> list[str]:
    try:
        found = litellm.validate_environment(model)
    except Exception:
        return []
    return [k for k in found.get("missing_keys") or [] if _SECRET_VAR.search(k)]


def preflight(litellm: Any, route: Route) -> None:
    """Check, before any network call, that litellm knows the model's provider and has its key.

    Raises:
        BadRequestError: on ``$.model``; ``details["missing_env"]`` lists missing variables.
    """
    try:
        provider = litellm.get_llm_provider(route.model)[1]
    except Exception:
        raise BadRequestError(
            f"model {route.model!r} names no provider litellm knows; use a litellm model string such as "
            "openai/gpt-4o-mini or openrouter/openai/gpt-5-mini, or scripted/<name>",
            field="$.model",
        ) from None
    if route.mock_response is not None:
        return
    missing = _missing_keys(litellm, route.model)
    if missing:
        raise BadRequestError(
            f"model {route.model!r} needs {' and '.join(missing)} in the provider service's environment "
            f"(provider {provider}); set it where the provider runs, never in a job",
            field="$.model",
            details={"missing_env": missing},
        )


def to_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Our chat messages in the OpenAI shape litellm takes."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id or f"call_{i}_{n}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for n, c in enumerate(m.tool_calls)
            ]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            msg["name"] = m.name
        if m.reasoning is not None:  # the provider left only this model's own reasoning in
            msg["reasoning_content"] = m.reasoning
        out.append(msg)
    return out


def build_kwargs(route: Route, req: CompleteRequest, timeout: float) -> dict[str, Any]:
    """The ``litellm.acompletion`` arguments of one attempt."""
    kwargs: dict[str, Any] = {
        "model": route.model,
        "messages": to_messages(req.messages),
        "timeout": timeout,
        "max_retries": 0,  # the provider's retry policy is the only one
        "num_retries": 0,
        "drop_params": True,  # e.g. temperature for models that take none: dropped, not a 400
        # litellm 1.106 imports its MCP gateway whenever tools are given, which needs the optional
        # `mcp` package; we never send MCP tools, so skip that path (a litellm private kwarg).
        "_skip_mcp_handler": True,
    }
    if req.tools:
        kwargs["tools"] = req.tools
    if route.temperature is not None:
        kwargs["temperature"] = route.temperature
    if route.max_tokens is not None:
        kwargs["max_tokens"] = route.max_tokens
    if route.reasoning_effort is not None:
        kwargs["reasoning_effort"] = route.reasoning_effort
    if route.mock_response is not None:
        kwargs["mock_response"] = route.mock_response
    kwargs.update(route.params)  # checked against params.ALLOWED_PARAMS: nothing that routes or authenticates
    return kwargs


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _malformed(model: str, what: str) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"model {model!r} returned a malformed response: {what}")


def to_reply(response: Any, model: str) -> CompleteReply:
    """Read a litellm ``ModelResponse`` (text, tool calls, reasoning, token counts; cost 0).

    Raises:
        ServiceUnavailableError: the response lacks choices or a message, or a tool call is unusable.
    """
    choices = _get(response, "choices")
    if not isinstance(choices, list) or not choices:
        raise _malformed(model, "no choices")
    message = _get(choices[0], "message")
    if message is None:
        raise _malformed(model, "the first choice has no message")
    content = _get(message, "content")
    if content is not None and not isinstance(content, str):
        raise _malformed(model, f"message content is {type(content).__name__}, not text")
    calls: list[ToolCall] = []
    for n, raw in enumerate(_get(message, "tool_calls") or []):
        function = _get(raw, "function")
        name = _get(function, "name")
        if not isinstance(name, str) or not name:
            raise _malformed(model, f"tool call {n} has no function name")
        arguments = _get(function, "arguments")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
        except ValueError:
            raise _malformed(model, f"tool call {name!r} has arguments that are not JSON") from None
        if isinstance(arguments, dict):
            parsed = arguments
        if not isinstance(parsed, dict):
            raise _malformed(model, f"tool call {name!r} has arguments that are not a JSON object")
        calls.append(ToolCall(name=name, arguments=parsed, id=_get(raw, "id") or f"call_{n}"))
    reasoning = _get(message, "reasoning_content")
    usage = _get(response, "usage")
    details = _get(usage, "prompt_tokens_details")
    cached = _int(_get(details, "cached_tokens")) or _int(_get(usage, "cache_read_input_tokens"))
    return CompleteReply(
        text=content or "",
        tool_calls=calls,
        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
        usage=LLMUsage(
            input_tokens=_int(_get(usage, "prompt_tokens")),
            output_tokens=_int(_get(usage, "completion_tokens")),
            cached_tokens=cached,
        ),
        model=model,
    )


def litellm_cost(litellm: Any, response: Any, model: str) -> float | None:
    """Cost of ``response`` from litellm's price map, or ``None`` for an unpriced model."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    if not isinstance(cost, int | float):
        try:
            cost = litellm.completion_cost(completion_response=response, model=model)
        except Exception:
            return None
    return float(cost) if isinstance(cost, int | float) and cost >= 0 else None


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _headers(exc: BaseException) -> dict[str, str]:
    for source in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if source:
            with contextlib.suppress(Exception):
                found = {str(k): str(v) for k, v in dict(source).items()}
                if found:
                    return found
    return {}


def _message(exc: BaseException, redact: Redactor) -> str:
    text = str(exc) or type(exc).__name__
    for _ in range(3):
        text = _PREFIX.sub("", text, count=1)
    text = redact(" ".join(text.split()))
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names & {"APIConnectionError", "Timeout", "APITimeoutError", "TimeoutException", "NetworkError"}
    )


def classify(exc: BaseException, redact: Redactor | None = None) -> Transient | None:
    """Whether a failed attempt may be retried: 408, 429, 5xx, timeouts, connection errors."""
    redact = redact or Redactor()
    status = _status(exc)
    if _is_connection_error(exc):
        kind = (
            "timeout"
            if "imeout" in type(exc).__name__ or isinstance(exc, TimeoutError)
            else "connection error"
        )
        return Transient(f"{kind}: {_message(exc, redact)}")
    if status is not None and is_retryable_status(status):
        return Transient(f"{status}: {_message(exc, redact)}", retry_after=parse_retry_after(_headers(exc)))
    return None


def to_error(exc: BaseException, model: str, redact: Redactor | None = None) -> BaseException:
    """The :class:`StatekError` a client sees for a failed call (other exceptions pass through)."""
    redact = redact or Redactor()
    if isinstance(exc, StatekError):
        return exc
    if isinstance(exc, RetriesExhausted):
        return ServiceUnavailableError(
            f"model {model!r} is unavailable: {exc.detail}", details={"attempts": exc.attempts}
        )
    status = _status(exc)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if status is None and not names & {"APIError", "OpenAIError", "APIStatusError"}:
        return exc  # not the provider's answer: a 500 with a trace id, logged redacted
    message = _message(exc, redact)
    if "ContextWindowExceededError" in names or status == 413:
        return PayloadTooLargeError(f"model {model!r}: the request is too large for the model: {message}")
    if status in (401, 403):
        return BadRequestError(
            f"model {model!r}: the provider rejected the credentials in the provider service's "
            f"environment ({status}): {message}",
            field="$.model",
        )
    if status == 404:
        return BadRequestError(
            f"model {model!r}: the provider does not serve this model: {message}", field="$.model"
        )
    if status is not None and 400 <= status < 500:
        return BadRequestError(f"model {model!r}: the provider refused the request ({status}): {message}")
    return ServiceUnavailableError(
        f"model {model!r}: provider error ({status or 'unknown status'}): {message}"
    )
