"""Wake-ups: how a waiting job gets its next step queued, pushed by whatever it waits for.

Nothing scans waiting jobs. A SUSPENDED job is only its record (status, and the continuation in
its engine state); every wake-up publishes its current step to the work queue, with the id
``<job>:<step>`` every work message carries:

- **a child reaching DONE**: the executor that committed the child's DONE writes to the parent's
  record (compare-and-set): the child's usage summed in (idempotent: per child, the totals already
  added are kept) and, unless the parent is DONE, a completion note in its inbox. If the record it
  wrote over was SUSPENDED waiting for that child, it queues the parent's step.
- **a message or notification**: the sender queues the step of a SUSPENDED job; a message sent
  while a step ran is found by the executor after that step's commit (:mod:`statek_bus.jobs.inbox`).
- **a sub-task's completion**: like a child's DONE, plus the handler's result in the parent's
  state and a notification; a DONE parent restarts (STATEK's DONE → STARTED).
- **a timer**: after committing SUSPENDED, the executor publishes an ADR-51 scheduled message
  (``Nats-Schedule: @at <due>``) targeting the job's work subject for the committed step. The
  server stores it durably and fires it at the due time, across restarts of every process and of
  nats-server. The fired copy carries no ``Nats-Msg-Id`` (verified on nats-server 2.15), so the
  work stream's duplicate window can never swallow it; a newer schedule on the job's schedule
  subject replaces an older one, so at most one timer per job is pending.

**No lost wake-up.** Both sides of a race write the parent's record with a compare-and-set, so
they are ordered. If the child's note lands first, the parent's own commit fails, re-reads, keeps
the note in the inbox (:func:`~statek_bus.runtime.merge.merge_concurrent`) and :func:`rearm` queues the parent at once
because a SUSPENDED record with inbox items is runnable. If the parent's SUSPENDED commit lands
first, the child's writer sees SUSPENDED and queues it. The note is written even while the
stored record waits for something else: a woken parent's record stays SUSPENDED (waiting for an
older child) while its resumed step runs, and that step may create this child and commit a wait
for it; the note makes that commit fail and re-queue (a lost wake-up otherwise). A timer whose due time passes between the
readiness check and the commit is queued at once rather than scheduled.

**No doubled commit.** A message for step ``n`` runs only while the record's ``step == n``, and
every step that consumes one commits ``n + 1`` (a still-waiting job too), so a second wake-up
for the same step (a timer and a child at once) is stale and acknowledged; a crash between a
commit and its wake-ups is repaired when the unacknowledged message is redelivered
(:func:`on_stale` re-runs them; all are idempotent).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from statek_bus.authoring.futures import SubTask, SubTaskState
from statek_bus.jobs.inbox import JobInbox, wake_if_pending
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.runtime.engine_state import EngineState, load_state, store_state
from statek_bus.runtime.merge import USAGE_FIELDS, add_usage, usage_vector
from statek_bus.runtime.resume import SUBTASK_ROLE
from statek_bus.wire.errors import NotFoundError, PayloadTooLargeError
from statek_bus.wire.messages import JobEvent, JobRecord, JobStatus, error_exit

__all__ = ["after_commit", "child_done", "deliver_subtask", "end_job", "on_stale", "oversized", "rearm"]

log = logging.getLogger(__name__)

_NOW_MARGIN = timedelta(milliseconds=2)
"""A timer due within this margin is queued at once instead of scheduled."""


def oversized(exc: PayloadTooLargeError) -> str:
    """The error a job ends with when its record outgrew what one message holds (``exc``: the
    refused write, whose ``details`` give the record's size and its limit)."""
    size, limit = exc.details.get("size"), exc.details.get("limit")
    sizes = f"{size:,}/{limit:,} bytes" if isinstance(size, int) and isinstance(limit, int) else str(exc)
    return f"Maximum record size exceeded: {sizes}"


async def end_job(store: JobStore, job_id: str, error: str, *, step: int | None = None) -> None:
    """End job ``job_id`` with ``error`` and publish its DONE status, unless it has ended already
    (or moved past ``step``, when given). A record too large to take the error too ends without
    its chat log: every entry of it went out as an event, which the job log keeps."""

    def end(r: JobRecord, *, shrink: bool = False) -> JobRecord | None:
        if (step is not None and r.step != step) or r.status is JobStatus.DONE:
            return None
        if shrink:
            state = load_state(r)
            state.log = []
            store_state(r, state)
        r.end(error_exit(error), error)
        r.step += 1
        return r

    try:
        record, _, changed = await store.transition(job_id, end)
    except PayloadTooLargeError:
        record, _, changed = await store.transition(job_id, lambda r: end(r, shrink=True))
    if changed:
        await store.publish(
            JobEvent(
                job_id=record.id,
                kind="status",
                at=utcnow(),
                status=JobStatus.DONE,
                step=record.step - 1,
                exit_status=record.exit_status,
            )
        )


async def after_commit(
    store: JobStore, inbox: JobInbox, record: JobRecord, state: EngineState | None = None
) -> None:
    """The wake-ups a committed step owes: re-arm a waiting job, notify a finished child's parent.

    A job that ends DONE (not cancelled) with inbox items sent while the step ran restarts
    (:func:`~statek_bus.jobs.inbox.wake_if_pending`: the executor's half of the inbox hand-off).
    ``state``: ``record``'s engine state when the caller has it decoded already.
    """
    state = state or load_state(record)
    if record.status is JobStatus.SUSPENDED:
        await rearm(store, inbox, record, state)
    if state.subtask_done is not None and state.last is not None and state.last.subtask:
        await deliver_subtask(store, record)
    if record.status is JobStatus.DONE and record.parent_id:
        await child_done(store, record)
    if record.status is JobStatus.DONE and record.cancel_reason is None:
        await wake_if_pending(store, inbox, record)


async def on_stale(store: JobStore, inbox: JobInbox, record: JobRecord) -> None:
    """A redelivered or duplicate message for an older step: repeat the wake-ups (idempotent)."""
    await after_commit(store, inbox, record)


async def rearm(
    store: JobStore, inbox: JobInbox, record: JobRecord, state: EngineState | None = None
) -> None:
    """Queue a SUSPENDED job now if something already woke it, else arm its timer, if any."""
    if record.inbox or await inbox.last_seq(record.id) > record.inbox_seq:
        await store.enqueue(record.id, record.step, agent=record.agent)
        return
    wait = (state or load_state(record)).wait
    if wait is None:
        await store.enqueue(
            record.id, record.step, agent=record.agent
        )  # nothing to wait for: let the step sort it out
        return
    ahead = [d for d in wait.due if wait.checked_at is None or d > wait.checked_at]
    if not ahead:
        return
    due = min(ahead)
    if due <= utcnow() + _NOW_MARGIN:
        await store.enqueue(record.id, record.step, agent=record.agent)
    else:
        await store.enqueue(record.id, record.step, agent=record.agent, at=due)


async def child_done(store: JobStore, child: JobRecord) -> None:
    """Sum a finished child's usage into its parent (and up the chain) and wake the parent."""
    await _report(store, child, note=True)


async def _report(store: JobStore, child: JobRecord, *, note: bool) -> None:
    parent_id = child.parent_id
    if not parent_id:
        return
    total = usage_vector(child.usage)
    wake = usage_added = False

    def change(parent: JobRecord) -> JobRecord | None:
        nonlocal wake, usage_added
        wake = usage_added = False
        state = load_state(parent)
        before = state.child_usage.get(child.id, [])
        before = [*before, *[0.0] * (len(USAGE_FIELDS) - len(before))]  # records before a field was added
        changed = False
        if total != before and total[0] >= before[0]:
            add_usage(parent.usage, [t - b for t, b in zip(total, before, strict=True)])
            state.child_usage = {**state.child_usage, child.id: total}
            usage_added = changed = True
        waiting = state.wait is not None and child.id in state.wait.jobs
        noted = any(e.kind == "status" and e.job_id == child.id for e in parent.inbox)
        # Noted whenever the parent has not ended, even SUSPENDED on something else: its record may
        # be a woken step's base that is about to commit a wait for this very child; that commit
        # (a CAS) then fails, keeps the note and re-queues itself. Only waking depends on the wait.
        if note and not noted and parent.status is not JobStatus.DONE:
            parent.inbox = [
                *parent.inbox,
                JobEvent(job_id=child.id, kind="status", at=utcnow(), status=JobStatus.DONE, step=child.step),
            ]
            wake = waiting and parent.status is JobStatus.SUSPENDED
            changed = True
        if not changed:
            return None
        store_state(parent, state)
        return parent

    try:
        parent, _, changed = await store.transition(parent_id, change)
    except NotFoundError:
        return
    except PayloadTooLargeError as exc:  # the parent's record cannot take the note: no retry can
        await end_job(store, parent_id, oversized(exc))
        return
    if not changed:
        return
    if wake:
        await store.enqueue(parent.id, parent.step, agent=parent.agent)
    if usage_added and parent.parent_id:
        await _report(store, parent, note=False)  # the grandparent's total includes it too


async def deliver_subtask(store: JobStore, child: JobRecord) -> None:
    """Report a sub-task's completion to its parent: result in its state, a notification, a wake-up."""
    info = load_state(child).subtask_done
    if info is None or not info.parent:
        return
    sid = info.id
    enqueue = False

    def change(parent: JobRecord) -> JobRecord | None:
        nonlocal enqueue
        enqueue = False
        state = load_state(parent)
        if state.subtasks.get(sid, SubTask()).state.finished:
            return None  # already reported (a redelivery)
        entry = info.entry(child.id)
        state.subtasks = {**state.subtasks, sid: entry}
        text = (
            f"[Error] sub-task id={sid} failed with {entry.error}"
            if entry.state is SubTaskState.ERROR
            else f"[Notification] sub-task id={sid} completed successfully."
        )
        event = JobEvent(
            job_id=child.id, kind="notification", at=utcnow(), text=text, role=SUBTASK_ROLE + sid
        )
        parent.inbox = [*parent.inbox, event]
        if parent.status is JobStatus.DONE:  # STATEK: a sub-task's completion restarts a DONE parent
            parent.restart()
            enqueue = True
        elif parent.status is JobStatus.SUSPENDED:
            enqueue = True
        store_state(parent, state)
        return parent

    try:
        parent, _, changed = await store.transition(info.parent, change)
    except NotFoundError:
        return
    except PayloadTooLargeError as exc:  # the parent's record cannot take the result: no retry can
        await end_job(store, info.parent, oversized(exc))
        return
    if changed and enqueue:
        await store.enqueue(parent.id, parent.step, agent=parent.agent)
