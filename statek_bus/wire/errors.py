"""The one error tree of statek-bus, and its wire form.

::

    StatekError                      (base; never raised itself)
    ├── BadRequestError        400   malformed or invalid request; ``field`` names the culprit
    ├── NotFoundError          404   no such job / state / agent
    ├── ConflictError          409   stale revision, duplicate, illegal transition
    ├── PayloadTooLargeError   413   a request or value over its size cap; ``size`` and ``limit``
    ├── ServiceUnavailableError 503  a service or dependency is down (no responders, timeouts)
    └── InternalError          500   anything else; carries a ``trace_id`` that is also logged

On the wire (ADR-32) an error reply carries the headers ``Nats-Service-Error`` (the message) and
``Nats-Service-Error-Code`` (the numeric code) **and** a JSON body
``{"error": {"code": 404, "name": "not_found", "message": "...", ...}}`` so that ``nats req``
users see it too. :func:`error_reply` builds both from any exception (an unexpected one becomes a
500 with a trace id, never its repr); :func:`error_from_reply` turns them back into the same class.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, ClassVar

import msgspec

from statek_bus.wire.limits import MAX_ERROR_FIELD, MAX_ERROR_MESSAGE, MAX_ERROR_TEXT
from statek_bus.wire.subjects import ERROR_CODE_HEADER, ERROR_HEADER, TRACE_ID_HEADER

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ErrorBody",
    "ErrorDetail",
    "InternalError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "StatekError",
    "error_from_reply",
    "error_reply",
]

log = logging.getLogger(__name__)


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The ``error`` object of an error reply body."""

    code: int
    """Numeric status code: 400, 404, 409, 413, 500 or 503."""
    name: str
    """Stable snake_case name of the error class, e.g. ``not_found``."""
    message: str
    """Human-readable description, safe to show (never an exception repr)."""
    field: str | None = None
    """For 400: the request field that is wrong, as a dotted path (``$.state``, ``$.limit``)."""
    trace_id: str | None = None
    """For 500: the id under which the service logged the failure."""
    details: dict[str, Any] | None = None
    """Structured extras, e.g. ``{"current_revision": 7}`` for a stale update, ``{"size": ...}``."""


class ErrorBody(msgspec.Struct, kw_only=True):
    """The JSON body of every error reply."""

    error: ErrorDetail
    """The error itself."""


class StatekError(Exception):
    """Base of every statek-bus error; each subclass has one wire code."""

    code: ClassVar[int] = 500
    name: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        trace_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.trace_id = trace_id
        self.details = dict(details or {})

    def detail(self) -> ErrorDetail:
        """This error as the ``error`` object of a reply body (message and field cut to bounds)."""
        return ErrorDetail(
            code=self.code,
            name=self.name,
            message=_cut(self.message, MAX_ERROR_MESSAGE),
            field=None if self.field is None else _cut(self.field, MAX_ERROR_FIELD),
            trace_id=self.trace_id,
            details=self.details or None,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequestError(StatekError):
    """400: the request is malformed or a field is invalid; ``field`` names it."""

    code = 400
    name = "bad_request"


class NotFoundError(StatekError):
    """404: the job, state or agent does not exist."""

    code = 404
    name = "not_found"


class ConflictError(StatekError):
    """409: a stale ``expected_revision``, a duplicate, or a transition the record forbids."""

    code = 409
    name = "conflict"


class PayloadTooLargeError(StatekError):
    """413: a request or value exceeds its size cap; ``details`` has ``size`` and ``limit``."""

    code = 413
    name = "payload_too_large"


class ServiceUnavailableError(StatekError):
    """503: no service instance answered, or a dependency (JetStream, a provider) is down."""

    code = 503
    name = "service_unavailable"


class InternalError(StatekError):
    """500: an unexpected failure; the service logged it under ``trace_id``."""

    code = 500
    name = "internal"


_BY_CODE: dict[int, type[StatekError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        ServiceUnavailableError,
        InternalError,
    )
}
_body_encoder = msgspec.json.Encoder()
_body_decoder = msgspec.json.Decoder(ErrorBody)


def as_statek_error(exc: BaseException, *, context: str = "") -> StatekError:
    """Map any exception to a :class:`StatekError`; unexpected ones are logged with a trace id."""
    if isinstance(exc, StatekError):
        return exc
    trace_id = uuid.uuid4().hex[:16]
    log.error("unexpected error %s[trace_id=%s]", f"in {context} " if context else "", trace_id, exc_info=exc)
    return InternalError(f"internal error (trace_id {trace_id})", trace_id=trace_id)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an error never echoes unbounded input)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _header_value(text: str) -> str:
    """``text`` as one bounded header line: control characters (CR, LF...) become spaces."""
    return "".join(c if c.isprintable() else " " for c in _cut(text, MAX_ERROR_TEXT))


def error_reply(exc: BaseException, *, context: str = "") -> tuple[dict[str, str], bytes]:
    """Turn any exception into ADR-32 error headers plus the JSON error body, both bounded."""
    err = as_statek_error(exc, context=context)
    headers = {ERROR_HEADER: _header_value(err.message), ERROR_CODE_HEADER: str(err.code)}
    if err.trace_id:
        headers[TRACE_ID_HEADER] = err.trace_id
    return headers, _body_encoder.encode(ErrorBody(error=err.detail()))


def error_from_reply(headers: dict[str, str] | None, body: bytes) -> StatekError | None:
    """The error a reply carries, as its :class:`StatekError` class, or ``None`` for a success."""
    if not headers or ERROR_CODE_HEADER not in headers:
        return None
    try:
        code = int(headers[ERROR_CODE_HEADER])
    except ValueError:
        code = 500
    cls = _BY_CODE.get(code, InternalError if code >= 500 else BadRequestError)
    try:
        d = _body_decoder.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return cls(headers.get(ERROR_HEADER, "") or f"error {code}", trace_id=headers.get(TRACE_ID_HEADER))
    return cls(d.message, field=d.field, trace_id=d.trace_id, details=d.details)
