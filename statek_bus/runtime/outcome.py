"""What a step ends with: a :class:`StepOutcome` to commit, :class:`RetryStep` to run it later, or
:class:`RecordTooLarge` to end the job.

Both the code-first engine (:mod:`statek_bus.runtime.engine`) and the handler step
(:mod:`statek_bus.runtime.handler_step`) produce them; the executor consumes them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from statek_bus.runtime.engine_state import EngineState
from statek_bus.wire.messages import JobRecord

__all__ = ["RecordTooLarge", "RetryStep", "StepOutcome"]


class RetryStep(Exception):
    """The step cannot run now (a dependency is down): leave it for redelivery after ``delay``."""

    def __init__(self, reason: str, delay: float = 2.0) -> None:
        super().__init__(reason)
        self.delay = delay


class RecordTooLarge(Exception):
    """The step's record is over what one message holds: no re-run can commit it (``error``: what
    the job ends with)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclasses.dataclass
class StepOutcome:
    """The result of a step: the record to commit and the events to publish after the commit."""

    record: JobRecord
    """The new record (``step`` advanced)."""
    consumed: int
    """Inbox items delivered by this step (the executor keeps items that arrived later)."""
    dialog: list[str] = dataclasses.field(default_factory=list)
    """Prose sent to the user this step."""
    state: EngineState | None = None
    """The engine state stored in ``record.engine`` (saves decoding it again after the commit)."""
    trace: list[Any] = dataclasses.field(default_factory=list)
    """``(name, data)`` trace entries of the step (``FULL_AGENT_TRACE``, :mod:`statek_bus.runtime.trace`)."""
