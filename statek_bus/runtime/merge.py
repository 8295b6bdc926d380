"""Re-basing a step's outcome on a record another writer changed while the step ran.

Used by the executor's commit: when the compare-and-set fails because a message, a cancel or a
child's completion note arrived, the outcome is merged onto the fresh record and retried.
"""

from __future__ import annotations

import msgspec

from statek_bus.runtime.engine_state import load_state
from statek_bus.wire.messages import JobRecord, JobStatus

__all__ = ["merge_concurrent"]


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
        merged.status = JobStatus.DONE
        merged.exit_status = f"Cancelled: {merged.cancel_reason}"
        if trace is not None:
            trace.statuses = [*trace.statuses, JobStatus.DONE]
    elif merged.status is JobStatus.DONE and merged.inbox and not merged.cancel_reason:
        merged.status = JobStatus.STARTED  # a message arrived while the step ran: keep going
        merged.exit_status = None
        merged.error = None
        if trace is not None:
            trace.statuses = [st for st in trace.statuses if st is not JobStatus.DONE]
            if fresh.status is not JobStatus.STARTED and JobStatus.STARTED not in trace.statuses:
                trace.statuses.append(JobStatus.STARTED)
    merged.engine = msgspec.to_builtins(state)
    return merged
