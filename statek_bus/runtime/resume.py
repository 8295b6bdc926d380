"""The engine's side of waiting: absorbing wake-ups, the continuation gate, recording a suspension.

A step of a SUSPENDED job first checks the awaited future (:func:`gate`). Unmet, the job stays
SUSPENDED and the step commits as a no-op (``step`` still advances, so the next wake-up's work
message has a fresh id). Met, the suspended item re-runs from the statement that suspended. What
arrived meanwhile is absorbed first (:func:`absorb_inbox`): user messages are held until the code
resumes (they join the chat after its output), notifications wait for the next safe point, and a
child's completion note is only a wake-up.
"""

from __future__ import annotations

import logging
from datetime import datetime

from statek_bus.authoring.agents import WarmupBlock
from statek_bus.authoring.context import PERM_KEY
from statek_bus.authoring.futures import (
    StepRuntime,
    SubTask,
    SubTaskState,
    decode_future,
    encode_future,
    poll,
    sources,
)
from statek_bus.authoring.tools import JobContext
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.runtime.chat import LoggedCall, LogItem
from statek_bus.runtime.coderunner import ExecResult
from statek_bus.runtime.engine_state import EngineState, Wait, load_state
from statek_bus.wire.messages import JobRecord, JobStatus
from statek_bus.wire.values import from_json

__all__ = [
    "SUBTASK_ROLE",
    "StoreJobs",
    "absorb_inbox",
    "bind_env",
    "deliver_subtasks",
    "gate",
    "subtask_message",
    "suspend_wait",
]

log = logging.getLogger(__name__)


class StoreJobs:
    """The runtime's :class:`~statek_bus.authoring.futures.JobSource`: other jobs, from the job store.

    Args:
        store: the job store the executor commits to.
    """

    def __init__(self, store: JobStore) -> None:
        self._store = store

    async def find(self, job_id: str) -> tuple[JobRecord, int] | None:
        """The job's record and revision, or ``None``."""
        return await self._store.find(job_id)

    def replies(self, record: JobRecord) -> list[str]:
        """The text of the job's LLM turns, read from its engine state (private to the runtime)."""
        return [i.dialog or i.text or "" for i in load_state(record).log if i.kind == "llm"]


SUBTASK_ROLE = "subtask:"
"""``role`` prefix of an inbox notification that reports a sub-task's completion (``subtask:<id>``)."""


def absorb_inbox(state: EngineState, record: JobRecord, step: int) -> None:
    """Move the record's inbox into the engine state (messages, notifications, sub-task reports)."""
    if state.wait is not None and record.status is not JobStatus.SUSPENDED:
        _abandon(state, step)  # cancelled (or ended) while waiting, then restarted: the wait is over
    for event in record.inbox:
        if event.kind == "message" and event.text is not None:
            if state.wait is not None:
                state.held.append(event.text)
            else:
                state.log.append(LogItem(kind="user", step=step, text=event.text))
        elif event.kind == "notification" and event.text is not None:
            role = event.role or ""
            if role.startswith(SUBTASK_ROLE):
                sid = role[len(SUBTASK_ROLE) :]
                if sid not in state.pending_subtasks:
                    state.pending_subtasks.append(sid)
            else:
                state.notifications.append(event.text)
        # kind "status": a child's completion note; it only woke the job


def _abandon(state: EngineState, step: int) -> None:
    wait = state.wait
    state.wait, state.memo = None, {}
    if wait is not None and wait.item < len(state.log):
        item = state.log[wait.item]
        item.executed, item.ran_at = True, step
        item.console = [*item.console, "Error: the job ended while this code was waiting"]


def bind_env(ctx: JobContext, env: StepRuntime | None, state: EngineState) -> None:
    """Give tools the job's notifications and the step runtime its state (memo, sub-tasks)."""
    ctx.notifications = [*state.notifications, *(subtask_message(state, s) for s in state.pending_subtasks)]
    ctx.extras[PERM_KEY] = dict(state.perm)
    if env is not None:
        env.memo = dict(state.memo)
        env.subtasks = dict(state.subtasks)
        env.subtask_done = state.subtask_done


async def gate(state: EngineState, env: StepRuntime | None) -> bool:
    """Whether the awaited future is ready now (the suspended statement may re-run)."""
    wait = state.wait
    if wait is None or env is None:
        return True
    checked = utcnow()
    try:
        ready, _ = await poll(decode_future(wait.future), env)
    except Exception:  # let the statement re-run and show the error to the model
        log.warning("checking the wait of a job failed; resuming it", exc_info=True)
        return True
    if not ready:
        wait.checked_at = checked
    return bool(ready)


def suspend_wait(
    state: EngineState,
    env: StepRuntime | None,
    result: ExecResult,
    item: int,
    block: WarmupBlock | None,
    started_at: datetime,
) -> None:
    """Record the continuation of a step whose code suspended."""
    jobs, due = sources(result.suspended)
    unit, statement = result.suspended_at
    state.wait = Wait(
        item=item,
        unit=unit,
        statement=statement,
        block=(state.wait.block if state.wait is not None else state.warmup_next - 1) if block else None,
        future=encode_future(result.suspended),
        jobs=sorted(jobs),
        due=due,
        checked_at=started_at,
    )
    if env is not None:
        state.memo = dict(env.memo)
        state.subtasks = env.subtasks


def subtask_message(state: EngineState, sid: str) -> str:
    """The notification text of a completed sub-task."""
    entry = state.subtasks.get(sid, SubTask())
    if entry.state is SubTaskState.ERROR:
        return f"[Error] sub-task id={sid} failed with {entry.error}"
    return f"[Notification] sub-task id={sid} completed successfully."


def deliver_subtasks(state: EngineState, step: int) -> None:
    """Put completed sub-tasks into the chat: the notice plus ``print(find_sub_task_handler(id=...))``."""
    n = sum(1 for i in state.log if i.kind == "notification" and i.calls)
    for sid in state.pending_subtasks:
        entry = state.subtasks.get(sid, SubTask())
        if entry.state is SubTaskState.ERROR:
            shown = f"RuntimeError: {entry.error}"
        else:
            value = from_json(entry.result)
            shown = "" if value is None else str(value)
        n += 1
        call = LoggedCall(
            id=f"STATEK-SUBTASK-{n:03d}",
            name="python_cli",
            arguments={"code": f"print(find_sub_task_handler(id={sid!r}))"},
            result=shown,
        )
        text = subtask_message(state, sid)
        state.log.append(LogItem(kind="notification", step=step, text=text, calls=[call], executed=True))
    state.pending_subtasks = []
