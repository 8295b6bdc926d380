"""STATEK's ``FULL_AGENT_TRACE`` and ``STATEK_LOGS_PATH``: what a step sent, received and ran, for people.

With ``full_agent_trace`` on, each step collects trace entries (:func:`add`): ``llm.request`` (the
model, the messages, the tool names), ``llm.response`` (text, usage), ``llm.parsed_tool_calls``,
``tool.request``/``tool.output``/``tool.error`` per formal tool call, and
``python_cli.request``/``python_cli.output``/``python_cli.error``. Values under a key naming a
secret (api_key, authorization, cookie, password, secret, or ending in token) are replaced by
``[REDACTED]`` before anything leaves the step. After the commit the executor's :class:`Tracer`:

- publishes each entry as a ``trace`` :class:`~statek_bus.wire.messages.JobEvent` on the job's event
  subject, so it lands in the job-log stream: ``statek-bus jobs watch <id>`` follows it from any
  machine, ``nats sub statek.events.jobs.<id>`` too;
- appends it as one JSON line to ``full_agent_trace_path`` (this executor's file, rotated at
  ``full_agent_trace_max_bytes`` with ``full_agent_trace_backup_count`` old files, as STATEK did).

With ``logs_path`` set, the executor also appends every committed step's events (and its trace
entries) to ``<logs_path>/<role>_<job id>.log``. Each executor writes the steps it ran: in a mesh
the per-job file of one machine holds that machine's steps; the stream holds them all.

A trace entry is published after the commit with its own ``Nats-Msg-Id``; an executor that dies
between the commit and the publish loses that step's trace (the step itself is never lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import re
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client

from statek_bus.authoring.tools import JobContext
from statek_bus.mesh.settings import Settings
from statek_bus.runtime.chat import LogItem
from statek_bus.runtime.engine_state import step_events
from statek_bus.wire.messages import JobEvent, JobRecord, encode
from statek_bus.wire.subjects import MSG_ID_HEADER, job_events_subject, token

__all__ = ["TRACE_KEY", "Tracer", "add", "add_calls", "begin", "redact", "tracing"]

TRACE_KEY = "trace"
"""``JobContext.extras`` key of the step's trace entries (present only while tracing)."""
# STATEK's list, except that a count such as ``input_tokens`` or ``max_tokens`` is no secret:
# "token" counts only at the end of a key (``token``, ``access_token``, ``X-Auth-Token``).
_SECRET = re.compile(r"api_?key|authorization|cookie|passw(or)?d|secret|token$", re.IGNORECASE)
_ERROR_LINE = re.compile(r"^[A-Z]\w*(Error|Exception|Violation|Refused|Crash): ", re.MULTILINE)
_MAX_TEXT = 64 * 1024
"""Longest string kept in a trace entry (longer ones are cut with a note)."""
_MAX_EVENT = 512 * 1024
"""Largest trace event published (NATS's default max_payload is 1 MiB); a larger one keeps only its size."""

log = logging.getLogger(__name__)


def redact(value: Any, _depth: int = 0) -> Any:
    """``value`` with every entry under a secret-looking key replaced, and long strings cut."""
    if _depth > 32:
        return "[...]"
    if isinstance(value, dict):
        return {
            str(k): "[REDACTED]" if _SECRET.search(str(k)) else redact(v, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + f"... ({len(value)} characters)"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def begin(ctx: JobContext) -> None:
    """Collect trace entries for this step."""
    ctx.extras[TRACE_KEY] = []


def tracing(ctx: JobContext) -> bool:
    """Whether this step is traced (check it before building an entry's data)."""
    return isinstance(ctx.extras.get(TRACE_KEY), list)


def add(ctx: JobContext, event: str, /, **data: Any) -> None:
    """Record one trace entry named ``event`` (nothing when the step is not traced)."""
    entries = ctx.extras.get(TRACE_KEY)
    if isinstance(entries, list):
        entries.append((event, redact(data)))


def add_calls(ctx: JobContext, item: LogItem) -> None:
    """The formal tool calls (and ``python_cli`` calls) of ``item`` that ran this step, as entries."""
    if not isinstance(ctx.extras.get(TRACE_KEY), list):
        return
    for call in item.calls:
        kind = "python_cli" if call.name == "python_cli" else "tool"
        request: dict[str, Any] = {"id": call.id, "name": call.name}
        if kind == "python_cli":
            request["code"] = call.arguments.get("code", "")
        else:
            request["arguments"] = call.arguments
        add(ctx, f"{kind}.request", **request)
        output = call.result or ""
        failed = _ERROR_LINE.search(output) is not None
        add(ctx, f"{kind}.error" if failed else f"{kind}.output", id=call.id, name=call.name, output=output)


class Tracer:
    """Publishes and files a committed step's trace (see the module docstring).

    Args:
        nc: the executor's connection.
        settings: ``full_agent_trace``, its file settings, and ``logs_path``.
    """

    def __init__(self, nc: Client, settings: Settings) -> None:
        self.nc = nc
        self.enabled = settings.full_agent_trace
        self.logs_path = Path(settings.logs_path) if settings.logs_path else None
        self._file: logging.Logger | None = None
        if self.enabled and settings.full_agent_trace_path:
            handler = logging.handlers.RotatingFileHandler(
                settings.full_agent_trace_path,
                maxBytes=settings.full_agent_trace_max_bytes,
                backupCount=settings.full_agent_trace_backup_count,
                encoding="utf-8",
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._file = logging.getLogger(f"statek_bus.trace.{id(self)}")
            self._file.propagate = False
            self._file.setLevel(logging.INFO)
            self._file.addHandler(handler)
        if self.logs_path is not None:
            self.logs_path.mkdir(parents=True, exist_ok=True)

    @property
    def active(self) -> bool:
        """Anything to do after a commit."""
        return self.enabled or self.logs_path is not None

    async def committed(self, record: JobRecord, step: int, entries: list[tuple[str, Any]]) -> None:
        """Publish and file what step ``step`` of ``record`` traced; failures are logged, never raised."""
        try:
            events = [
                JobEvent(
                    job_id=record.id, kind="trace", at=record.updated_at, step=step, name=n, text=n, data=d
                )
                for n, d in entries
            ]
            subject = job_events_subject(record.id)
            for i, ev in enumerate(events):
                headers = {MSG_ID_HEADER: f"{token(record.id)}:{step}:t{i}"}
                body = encode(ev)
                if len(body) > _MAX_EVENT:  # a message over max_payload would be refused: say so instead
                    events[i] = ev = msgspec.structs.replace(ev, data={"truncated": True, "bytes": len(body)})
                    body = encode(ev)
                await self.nc.publish(subject, body, headers=headers)
            lines = [json.dumps(_jsonable(ev), ensure_ascii=False) for ev in events]
            if self._file is not None:
                for line in lines:
                    self._file.info(line)
            if self.logs_path is not None:
                own = [json.dumps(_jsonable(ev), ensure_ascii=False) for ev in step_events(record)]
                await asyncio.to_thread(self._append, record, [*own, *lines])
        except Exception:
            log.warning("job %s: its trace of step %s was not written", record.id, step, exc_info=True)

    def _append(self, record: JobRecord, lines: list[str]) -> None:
        assert self.logs_path is not None
        name = f"{token(record.agent)}_{token(record.id)}.log"
        with open(self.logs_path / name, "a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)

    def close(self) -> None:
        """Close the trace file."""
        if self._file is not None:
            for handler in list(self._file.handlers):
                handler.close()
                self._file.removeHandler(handler)


def _jsonable(ev: JobEvent) -> Any:
    out: dict[str, Any] = msgspec.to_builtins(ev)
    return {k: v for k, v in out.items() if v is not None}
