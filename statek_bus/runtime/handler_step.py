"""Handler agents' step: ``on_create`` once, then ``on_event`` per inbox item (no model code)."""

from __future__ import annotations

from typing import Any

import msgspec

from statek_bus.authoring.agents import HandlerAgent
from statek_bus.authoring.console import error_line
from statek_bus.jobs.store import utcnow
from statek_bus.mesh.settings import Settings
from statek_bus.runtime.chat import LogItem, drop_oldest
from statek_bus.runtime.engine_state import StepTrace, load_state, store_state
from statek_bus.runtime.outcome import RetryStep, StepOutcome
from statek_bus.wire.errors import ServiceUnavailableError
from statek_bus.wire.limits import HANDLER_LOG_BYTES
from statek_bus.wire.messages import JobRecord, JobStatus, cancelled_exit, error_exit

__all__ = ["run_handler_step"]


async def run_handler_step(
    record: JobRecord, agent: HandlerAgent, nc: Any, settings: Settings
) -> StepOutcome:
    """One step of a handler job: ``on_create`` once, then ``on_event`` for each inbox item, in order.

    The job then rests DONE (exit status ``None``) until the next message restarts it, so one
    job's handlers never run concurrently: the work queue holds at most one step per job. Its
    chat log keeps the newest :data:`~statek_bus.wire.limits.HANDLER_LOG_BYTES` of turns.
    Handler side effects are at-least-once: a crash before the commit re-runs the step.
    """
    from statek_bus.authoring.agents import EventContent, HandlerContext, HandlerEvent
    from statek_bus.client.core import AsyncStatekClient

    new = msgspec.structs.replace(record, inbox=[])
    state = load_state(record)
    state.log = list(state.log)
    trace = StepTrace(step=record.step, log_from=len(state.log))
    outcome_exit: Any = None
    error: str | None = None
    if record.cancel_reason:
        outcome_exit = cancelled_exit(record.cancel_reason)
    else:
        if new.status is not JobStatus.STARTED:
            new.status = JobStatus.STARTED
            trace.statuses.append(JobStatus.STARTED)
        client = AsyncStatekClient(settings=settings, nc=nc)

        async def send_message(text: str) -> None:
            state.log.append(LogItem(kind="llm", step=record.step, text=str(text), executed=True))

        ctx = HandlerContext(
            job=record.public(0),
            state=client.states.for_task(record.id, agent.role),
            agent=agent.role,
            send_message=send_message,
            client=client,
        )
        try:
            if not state.handler_started:
                state.handler_started = True
                if agent.create_handler is not None:
                    await agent.create_handler(ctx, dict(record.params))
            for ev in record.inbox:
                if ev.kind not in ("message", "notification") or ev.text is None:
                    continue
                state.log.append(LogItem(kind="user", step=record.step, text=ev.text, executed=True))
                if agent.event_handler is not None:
                    event = HandlerEvent(kind=ev.kind, content=EventContent(content=ev.text), at=ev.at)
                    await agent.event_handler(ctx, event)
        except ServiceUnavailableError as exc:
            raise RetryStep(str(exc)) from None
        except Exception as exc:
            error = error_line(exc)
            outcome_exit = error_exit(error)
            state.log.append(LogItem(kind="system", step=record.step, text=outcome_exit, executed=True))
    # a handler lives as long as messages come: its record keeps the newest turns (each went out
    # as an event, and stays in the job log)
    trace.log_from -= drop_oldest(state.log, before=trace.log_from, max_bytes=HANDLER_LOG_BYTES)
    new.end(outcome_exit, error)
    trace.statuses.append(JobStatus.DONE)
    new.step = record.step + 1
    new.updated_at = utcnow()
    state.last = trace
    store_state(new, state)
    return StepOutcome(record=new, consumed=len(record.inbox), state=state)
