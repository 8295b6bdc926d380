"""Traces: the W3C ``traceparent`` carried in NATS headers, OpenTelemetry spans where installed.

One trace shows a job end to end: the client's request carries ``traceparent``; the service
runner (:mod:`statek_bus.mesh.service`) continues it in a server span around each request; every
work message (:meth:`statek_bus.jobs.store.JobStore.enqueue`) carries the trace of whoever queued
it; the executor continues it in one span per step, and the step's ``statek.llm.complete``
request carries it to the provider. A request that arrives with a ``traceparent`` header (from
any NATS client, e.g. ``nats req -H traceparent:00-...``) is honoured: its trace id is the job's.

OpenTelemetry is optional (the ``[otel]`` extra: ``opentelemetry-api`` and ``-sdk``), imported
in this module only. Without it nothing is recorded and the incoming ``traceparent`` is passed on
as it came, so log lines (``trace_id``, :mod:`statek_bus.mesh.logs`) still name the caller's
trace. With it, spans go to whatever tracer provider the process has (set by the embedding
application, or by ``opentelemetry-instrument statek-bus serve ...`` with an exporter installed);
with none set, OpenTelemetry's no-op provider still propagates the caller's trace id.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Literal

from statek_bus.wire.subjects import TRACEPARENT_HEADER

if TYPE_CHECKING:
    from types import ModuleType

    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["SpanKind", "current_trace_id", "inject", "otel_enabled", "span", "trace_id_of"]

SpanKind = Literal["server", "client", "consumer", "internal"]
"""What a span stands for: a request answered, a request made, a work message run, or other work."""

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("statek_traceparent", default=None)

# OpenTelemetry is imported on the first span, not with this module: every process imports
# this module (through the logs), the sandbox's worker processes too, and those must stay as
# they were without it (with it imported, a worker whose model code overflows the C stack hung
# until its deadline instead of crashing at once). A process that never makes a span never loads it.
_otel: ModuleType | None = None
_PROPAGATOR: TraceContextTextMapPropagator | None = None
_loaded = False
_provider_set = False
_provider_from_env = False
_MISSING = object()
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
"""The variable naming a tracer provider to load on first use (the API reads it)."""


def _load() -> None:
    global _otel, _PROPAGATOR, _loaded, _provider_from_env
    if _loaded:
        return
    _loaded = True
    _provider_from_env = _PROVIDER_FROM_ENV in os.environ
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the [otel] extra is not installed: headers pass through unchanged
        return
    _otel, _PROPAGATOR = trace, TraceContextTextMapPropagator()


def otel_enabled() -> bool:
    """Whether OpenTelemetry is installed (spans are made and exported through it)."""
    _load()
    return _otel is not None


def _valid(value: str | None) -> str | None:
    """``value`` if it is a version-00 ``traceparent`` with non-zero ids, else None."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None or set(m.group(1)) == {"0"} or set(m.group(2)) == {"0"}:
        return None
    return m.group(0)


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a ``traceparent`` value (None when absent or malformed)."""
    valid = _valid(traceparent)
    return valid[3:35] if valid is not None else None


def current_trace_id() -> str | None:
    """The trace id of the request or step running in this task, if it has one."""
    return trace_id_of(_current_traceparent())


def _recording() -> bool:
    """Whether spans are made: OpenTelemetry is installed and the process has set a tracer provider.

    With the API's default provider (a proxy until an SDK is set) every span would be a no-op
    that only re-propagates the caller's ``traceparent``, which the header pass-through already
    does, at a fraction of the cost per request (contexts attached, tracers looked up). Once a
    provider is set it stays set, so a yes is kept. The API's own ``get_tracer_provider`` reads the
    environment on every call while none is set, so its global is read directly, falling back to
    that call should a later API release move it.
    """
    global _provider_set
    if _provider_set:
        return True
    _load()
    if _otel is None:
        return False
    current = getattr(_otel, "_TRACER_PROVIDER", _MISSING)
    if current is _MISSING or _provider_from_env:
        current = None if isinstance(_otel.get_tracer_provider(), _otel.ProxyTracerProvider) else True
    _provider_set = current is not None
    return _provider_set


def _current_traceparent() -> str | None:
    if _PROPAGATOR is not None and _recording():
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        if carrier.get(TRACEPARENT_HEADER):
            return carrier[TRACEPARENT_HEADER]
    return _CURRENT.get()


def inject(headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """``headers`` plus the current ``traceparent`` (a new dict; None when there is neither)."""
    traceparent = _current_traceparent()
    if traceparent is None:
        return headers
    return {**(headers or {}), TRACEPARENT_HEADER: traceparent}


_KINDS = {"server": "SERVER", "client": "CLIENT", "consumer": "CONSUMER", "internal": "INTERNAL"}


@contextlib.contextmanager
def span(
    name: str,
    headers: Mapping[str, str] | None = None,
    *,
    kind: SpanKind = "internal",
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[None]:
    """Run the block as span ``name``: a child of the ``traceparent`` in ``headers`` when it has a
    valid one, else of the current trace (a new trace when there is none and OpenTelemetry is on).

    Everything the block logs, publishes or requests carries the resulting trace.
    """
    incoming = _valid(headers.get(TRACEPARENT_HEADER)) if headers else None
    token = _CURRENT.set(incoming or _CURRENT.get())
    try:
        if not _recording() or _otel is None or _PROPAGATOR is None:
            yield
            return
        parent = _PROPAGATOR.extract({TRACEPARENT_HEADER: incoming}) if incoming else None
        tracer = _otel.get_tracer("statek_bus")
        with tracer.start_as_current_span(
            name, context=parent, kind=_otel.SpanKind[_KINDS[kind]], attributes=dict(attributes or {})
        ):
            yield
    finally:
        _CURRENT.reset(token)
