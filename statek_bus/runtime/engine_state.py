"""The engine's part of a job record (``JobRecord.engine``) and the events a committed step derives.

:class:`EngineState` is committed in the same compare-and-set as the step: the chat log, the
per-run counters, and, while the job is SUSPENDED, its whole continuation (:class:`Wait`). A
waiting job is nothing but this record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from statek_bus.authoring.console import format_value
from statek_bus.authoring.futures import SubTask, SubTaskDone
from statek_bus.runtime.chat import LogItem
from statek_bus.wire.messages import JobEvent, JobRecord, JobStatus

__all__ = ["EngineState", "StepTrace", "Wait", "load_state", "step_events", "store_state"]


class StepTrace(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the last committed step produced, so its events can be re-published after a crash."""

    step: int
    """The step."""
    statuses: list[JobStatus] = []
    """Statuses the job passed through, in order."""
    log_from: int = 0
    """Index of the first chat-log item this step appended."""
    ran: int | None = None
    """Index of the chat-log item whose code this step ran."""
    console_from: int = 0
    """First console line of that item this step printed (a resumed item keeps its earlier lines)."""
    then_ran: int | None = None
    """Index of the reply whose code the step ran after its model call (it appended that reply)."""
    subtask: bool = False
    """This step completed the job's sub-task (its parent is notified after the commit)."""


class Wait(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a SUSPENDED job waits for and where it resumes (the whole continuation: no memory elsewhere)."""

    item: int
    """Chat-log index of the item whose code suspended."""
    unit: int = 0
    """Unit (tool call or code block) of that item that suspended."""
    statement: int = 0
    """Top-level statement that suspended: re-run first when the job resumes."""
    block: int | None = None
    """Warmup block index, when a warmup block suspended."""
    future: Any = None
    """The awaited future (tagged JSON, :func:`statek_bus.authoring.futures.encode_future`)."""
    jobs: list[str] = []
    """Jobs whose DONE can make it ready (their completion wakes this job)."""
    due: list[datetime] = []
    """Timers in it (UTC); the earliest one still ahead is armed as a scheduled message."""
    checked_at: datetime | None = None
    """When readiness was last checked: due times after it still need a wake-up."""


class EngineState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The engine's part of a job record (``JobRecord.engine``)."""

    log: list[LogItem] = []
    """The chat log."""
    warmup_next: int = 0
    """The next warmup block to run."""
    turns: int = 0
    """LLM turns in this run."""
    exceptions: int = 0
    """Runtime errors in this run."""
    consecutive: int = 0
    """Steps in a row whose code failed."""
    tokens: int = 0
    """Tokens used in this run (provider-reported, else bytes / 4)."""
    token_extension: int = 0
    """Extra token budget granted by difficulty escalation."""
    difficulty: str = "M"
    """Current difficulty (``L``, ``M``, ``H``)."""
    notifications: list[str] = []
    """Notifications waiting for a safe point."""
    workspace: dict[str, Any] | None = None
    """Reference to the saved workspace (inline data or an object-store key)."""
    error_handlers: list[dict[str, Any]] = []
    """``{"tool", "context"}`` of tools with an error handler that ran; called once on an error end."""
    handler_started: bool = False
    """Handler agents: ``on_create`` has run."""
    last: StepTrace | None = None
    """What the last step did."""
    calls: int = 0
    """LLM calls of this job itself (its usage also sums its children's)."""
    wait: Wait | None = None
    """Set while SUSPENDED: the continuation."""
    memo: dict[str, Any] = {}
    """Values fixed when a suspended statement first ran (timers' due times), by call site."""
    held: list[str] = []
    """User messages that arrived while SUSPENDED; they join the chat when the code resumes."""
    post_fired: list[str] = []
    """Post-processors (by key) that already acted in this job (:mod:`statek_bus.authoring.postprocess`)."""
    subtasks: dict[str, SubTask] = {}
    """Sub-tasks this job started, by handler id (completion written by the child)."""
    pending_subtasks: list[str] = []
    """Completed sub-task ids waiting for the next safe point."""
    subtask_done: SubTaskDone | None = None
    """This job's own sub-task completion, once reported."""
    perm: dict[str, Any] = {}
    """The persistent per-job context (``perm_ctx_set``, the shared-context binding), tagged JSON by key."""
    child_usage: dict[str, list[float]] = {}
    """Per child: the usage totals already summed into this job's usage (keeps reports idempotent)."""
    library: dict[str, Any] = {}
    """What the knowledge tools remember (``last_example_id``, ``last_topic_id``)."""
    knowledge: str = ""
    """The knowledge version the last step ran with (:mod:`statek_bus.runtime.knowledge`)."""


def load_state(record: JobRecord) -> EngineState:
    """The engine state stored in ``record``."""
    return msgspec.convert(record.engine, EngineState) if record.engine else EngineState()


def store_state(record: JobRecord, state: EngineState) -> None:
    """Put ``state`` into ``record.engine``."""
    record.engine = msgspec.to_builtins(state)


def step_events(record: JobRecord, state: EngineState | None = None) -> list[JobEvent]:
    """The events of the step that produced ``record`` (derivable again after a crash).

    Status changes first (a SUSPENDED the step ended in, and a DONE, carrying the exit value,
    last), then the warmup code and
    tool results and console lines of the code the step ran, then the chat entries it appended,
    the tool results and console lines of the reply it ran after its model call right after that
    reply's own entry.
    ``state``: ``record``'s engine state when the caller has it decoded already.
    """
    state = state or load_state(record)
    trace = state.last
    if trace is None:
        return []
    at = record.updated_at
    out: list[JobEvent] = []
    jid, step = record.id, trace.step

    def ev(kind: Any, **kw: Any) -> None:
        out.append(JobEvent(job_id=jid, kind=kind, at=at, step=step, **kw))

    ending = trace.statuses[-1:] if trace.statuses[-1:] == [JobStatus.SUSPENDED] else []
    leading = [st for st in trace.statuses[: len(trace.statuses) - len(ending)] if st is not JobStatus.DONE]
    for status in leading:
        ev("status", status=status)
    if trace.ran is not None and trace.ran < len(state.log):
        ran = state.log[trace.ran]
        resumed = trace.console_from > 0
        if ran.kind == "warmup" and not ran.hidden and ran.source.strip() and not resumed:
            ev("chat", role="assistant", text=ran.source)
        for c in ran.calls:
            ev("chat", role="tool", text=f"{c.name}: {c.result or ''}")
        for line in ran.console[trace.console_from :]:  # earlier lines went out with the earlier step
            ev("console", text=line)
    for i, item in enumerate(state.log[trace.log_from :], start=trace.log_from):
        if i == trace.then_ran:
            ev("chat", role="assistant", text=item.text or format_value([c.name for c in item.calls]))
            for c in item.calls:
                ev("chat", role="tool", text=f"{c.name}: {c.result or ''}")
            for line in item.console:
                ev("console", text=line)
        elif item.kind == "user":
            ev("chat", role="user", text=item.text)
        elif item.kind == "llm":
            ev("chat", role="assistant", text=item.text or format_value([c.name for c in item.calls]))
        elif item.kind in ("system", "notification", "difficulty"):
            ev("chat", role="system", text=item.text)
    for last in ending:  # the step suspended after what its code printed
        ev("status", status=last)
    if JobStatus.DONE in trace.statuses:
        ev("status", status=JobStatus.DONE, exit_status=record.exit_status)
    return out
