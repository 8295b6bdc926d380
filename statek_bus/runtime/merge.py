"""Re-basing a step's outcome on a record another writer changed while the step ran.

Used by the executor's commit: when the compare-and-set fails because a message, a cancel, a
child's usage or a sub-task's completion arrived, the outcome is merged onto the fresh record and
retried. :class:`Rebase` carries one outcome across any number of failed attempts, so every
external increment is applied exactly once: each merge takes the difference from the record the
previous merge already absorbed, never from the step's original base again.
"""

from __future__ import annotations

import msgspec

from statek_bus.runtime.engine_state import StepTrace, load_state, store_state
from statek_bus.wire.messages import JobRecord, JobStatus, Usage, cancelled_exit

__all__ = [
    "USAGE_FIELDS",
    "Rebase",
    "add_usage",
    "keep_running",
    "merge_concurrent",
    "merge_external",
    "usage_vector",
]

USAGE_FIELDS = (
    "llm_calls",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost",
    "bytes_sent",
    "bytes_received",
)
"""The additive fields of :class:`~statek_bus.wire.messages.Usage`."""


def merge_concurrent(new: JobRecord, fresh: JobRecord, consumed: int) -> JobRecord:
    """Re-base ``new`` on ``fresh``: keep inbox items that arrived meanwhile, honour a cancel."""
    merged = msgspec.structs.replace(
        new, inbox=list(fresh.inbox[consumed:]), cancel_reason=fresh.cancel_reason
    )
    if merged.status is JobStatus.DONE:  # a child's completion note does not restart a finished job
        merged.inbox = [e for e in merged.inbox if e.kind != "status"]
    state = load_state(merged)
    trace = state.last
    if merged.cancel_reason and merged.status is not JobStatus.DONE:
        merged.end(cancelled_exit(merged.cancel_reason))
        if trace is not None:
            trace.statuses = [*trace.statuses, JobStatus.DONE]
    elif merged.status is JobStatus.DONE and merged.inbox and not merged.cancel_reason:
        _go_on(merged, fresh.status, trace)  # a note arrived while the step ran: keep going
    merged.engine = msgspec.to_builtins(state)
    return merged


def keep_running(new: JobRecord, base: JobRecord) -> JobRecord:
    """A step ending DONE while its job's inbox holds items it did not consume: it goes on instead.

    The executor's check before committing a final step (messages sent while the step ran), so
    an ``exit`` with a message on its way does not end the job, as a message merged into the
    commit does not (:func:`merge_concurrent`).
    """
    out = msgspec.structs.replace(new)
    state = load_state(out)
    _go_on(out, base.status, state.last)
    out.engine = msgspec.to_builtins(state)
    return out


def _go_on(record: JobRecord, was: JobStatus, trace: StepTrace | None) -> None:
    record.restart()
    if trace is not None:
        trace.statuses = [st for st in trace.statuses if st is not JobStatus.DONE]
        if was is not JobStatus.STARTED and JobStatus.STARTED not in trace.statuses:
            trace.statuses.append(JobStatus.STARTED)


def usage_vector(u: Usage) -> list[float]:
    """``u``'s additive fields as a vector (:data:`USAGE_FIELDS` order)."""
    return [float(getattr(u, f)) for f in USAGE_FIELDS]


def add_usage(target: Usage, delta: list[float]) -> None:
    """Add ``delta`` (:data:`USAGE_FIELDS` order) to ``target`` in place."""
    for f, d in zip(USAGE_FIELDS, delta, strict=True):
        value = getattr(target, f) + d
        setattr(target, f, value if f == "cost" else int(value))


def merge_external(new: JobRecord, base: JobRecord, fresh: JobRecord) -> JobRecord:
    """Carry what other jobs wrote into ``fresh`` since ``base`` over to a step's outcome ``new``.

    Children add usage and per-child totals; sub-tasks add their completion. Everything else in
    the outcome is the step's own. ``base`` must be the record whose changes ``new`` already holds
    (see :class:`Rebase`), or the same increment would be added twice.
    """
    fresh_state, base_state = load_state(fresh), load_state(base)
    if fresh_state.child_usage == base_state.child_usage and fresh_state.subtasks == base_state.subtasks:
        return new
    delta = [f - b for f, b in zip(usage_vector(fresh.usage), usage_vector(base.usage), strict=True)]
    out = msgspec.structs.replace(new, usage=msgspec.structs.replace(new.usage))
    add_usage(out.usage, delta)
    state = load_state(out)
    state.child_usage = {**state.child_usage, **fresh_state.child_usage}
    subtasks = dict(state.subtasks)
    for sid, entry in fresh_state.subtasks.items():
        if entry.state.finished:
            subtasks[sid] = entry
    state.subtasks = subtasks
    store_state(out, state)
    return out


class Rebase:
    """One step's outcome, re-based onto each fresh record a failed compare-and-set reveals.

    Args:
        outcome: the record the step produced.
        base: the record the step ran on.
        consumed: inbox items the step delivered.
    """

    def __init__(self, outcome: JobRecord, base: JobRecord, consumed: int) -> None:
        self.record = outcome
        """The outcome as re-based so far (what the next attempt writes)."""
        self._absorbed = base
        self._consumed = consumed

    def onto(self, fresh: JobRecord) -> JobRecord:
        """Merge ``fresh``'s concurrent changes into the outcome; each change counts once."""
        merged = merge_concurrent(self.record, fresh, self._consumed)
        self.record = merge_external(merged, self._absorbed, fresh)
        self._absorbed = fresh
        return self.record
