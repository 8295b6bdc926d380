"""Service logging: plain text for a terminal, one JSON object per line for a log pipeline.

``STATEK_LOG_FORMAT=json`` makes every record a JSON object with ``time``, ``level``, ``logger``,
``message``, the ``instance`` of the service, and — on every line logged while a job's step runs —
``job_id``, ``step``, ``agent`` and ``trace_id`` (a context variable set by the runtime with
:func:`job_context`, so no call site passes them by hand). A line logged while a traced request
is answered carries its ``trace_id`` too (:mod:`statek_bus.mesh.tracing`). An exception adds ``exc``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from statek_bus.mesh.tracing import current_trace_id

__all__ = ["JsonFormatter", "configure_logging", "job_context"]

_JOB: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("statek_log_job", default=None)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def job_context(
    job_id: str, step: int, agent: str | None = None, trace_id: str | None = None
) -> Iterator[None]:
    """Attach a job's identity to every record logged inside the ``with`` block (this task only)."""
    token = _JOB.set({"job_id": job_id, "step": step, "agent": agent, "trace_id": trace_id})
    try:
        yield
    finally:
        _JOB.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; job fields when a :func:`job_context` is active.

    Args:
        instance: the service instance id (or process name) put on every line.
    """

    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance
        """Put on every line as ``instance``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.instance:
            out["instance"] = self.instance
        job = _JOB.get()
        if job is not None:
            out.update({k: v for k, v in job.items() if v is not None})
        if "trace_id" not in out and (trace_id := current_trace_id()) is not None:
            out["trace_id"] = trace_id  # a request's trace (mesh.tracing), job or not
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str = "text", instance: str = "") -> None:
    """Set the root logger's level and its one handler's format (``text`` or ``json``)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = next((h for h in root.handlers if getattr(h, "statek", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.statek = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter(instance) if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
