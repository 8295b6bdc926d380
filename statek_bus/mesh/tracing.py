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
with none set, nothing would be recorded, so a span is then only the incoming ``traceparent``
passed on, as without OpenTelemetry (the trace id propagates the same; no OpenTelemetry context
is made per request); a tracer provider set later is used from the next span on.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Mapping
from types import TracebackType
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
_UNSET: tuple[type, ...] = ()  # the provider types of a process that set none (nothing is recorded)
_FROM_ENV = False  # OTEL_PYTHON_TRACER_PROVIDER names a provider (OpenTelemetry loads it when asked)
_recorded = False  # a provider was set: spans are recorded from then on (it cannot be unset)
_loaded = False


def _load() -> None:
    global _otel, _PROPAGATOR, _UNSET, _FROM_ENV, _loaded
    if _loaded:
        return
    _loaded = True
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the [otel] extra is not installed: headers pass through unchanged
        return
    _otel, _PROPAGATOR = trace, TraceContextTextMapPropagator()
    _UNSET = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    _FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _recording() -> bool:
    """Whether spans go to a tracer provider someone set (not OpenTelemetry's default no-op one).

    Asked on every span and every inject, so it avoids ``get_tracer_provider()`` while none is
    set (its environment lookup raises and catches a ``KeyError`` each time, ~2 µs): it reads the
    global that ``set_tracer_provider`` fills, and asks the API only when that is not there.
    """
    global _recorded
    if _recorded:
        return True
    if _otel is None:
        return False
    provider = getattr(_otel, "_TRACER_PROVIDER", _otel)  # _otel: this API keeps it elsewhere
    if provider is None and not _FROM_ENV:
        return False
    if provider is None or provider is _otel:
        provider = _otel.get_tracer_provider()
    _recorded = type(provider) not in _UNSET
    return _recorded


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


def span(
    name: str,
    headers: Mapping[str, str] | None = None,
    *,
    kind: SpanKind = "internal",
    attributes: Mapping[str, str | int] | None = None,
) -> contextlib.AbstractContextManager[None]:
    """Run the block as span ``name``: a child of the ``traceparent`` in ``headers`` when it has a
    valid one, else of the current trace (a new trace when there is none and OpenTelemetry is on).

    Everything the block logs, publishes or requests carries the resulting trace.
    """
    return _Span(name, headers, kind, attributes)


class _Span:
    """:func:`span`'s context manager (a class: entered once per request, so it is kept cheap)."""

    __slots__ = ("_attributes", "_headers", "_kind", "_name", "_otel_span", "_token")

    def __init__(
        self,
        name: str,
        headers: Mapping[str, str] | None,
        kind: SpanKind,
        attributes: Mapping[str, str | int] | None,
    ) -> None:
        self._name, self._headers, self._kind, self._attributes = name, headers, kind, attributes
        self._otel_span: contextlib.AbstractContextManager[object] | None = None
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> None:
        _load()
        incoming = _valid(self._headers.get(TRACEPARENT_HEADER)) if self._headers else None
        self._token = _CURRENT.set(incoming or _CURRENT.get())
        if _otel is None or _PROPAGATOR is None or not _recording():
            return
        try:
            if incoming is None and not _otel.get_current_span().get_span_context().is_valid:
                incoming = _CURRENT.get()  # a trace carried by a span made before a provider was set
            parent = _PROPAGATOR.extract({TRACEPARENT_HEADER: incoming}) if incoming else None
            tracer = _otel.get_tracer("statek_bus")
            cm = tracer.start_as_current_span(
                self._name,
                context=parent,
                kind=_otel.SpanKind[_KINDS[self._kind]],
                attributes=dict(self._attributes or {}),
            )
            cm.__enter__()
        except BaseException:
            _CURRENT.reset(self._token)
            raise
        self._otel_span = cm

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._otel_span is not None:
                self._otel_span.__exit__(exc_type, exc, tb)
        finally:
            if self._token is not None:
                _CURRENT.reset(self._token)
