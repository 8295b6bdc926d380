"""Agent queues (STATEK's ``StatekPushQueue``): a durable stream of events per agent, each creating one job.

An event is any JSON value published on ``statek.agents.events.<token(role)>``; the
``statek_agent_events`` stream (work-queue retention) keeps it until an executor serving the agent
has turned it into a job. Any client can publish one::

    nats pub statek.agents.events.triage_agent '{"kind": "ping"}' -H Nats-Msg-Id:evt-42

The event's id is its ``Nats-Msg-Id`` header (or, without one, ``seq-<stream sequence>``); one
stream holds every agent's queue, so an id names one event across all agents. It makes delivery
exactly-once twice over: the stream drops a re-publish with the same id within its
duplicate window, and the job the event creates has the id :func:`~statek_bus.wire.subjects.event_job_id`
derives from it, so even a re-publish after the window (or a redelivery after a crash) finds the
first job instead of creating another.

Each agent has one durable pull consumer (:func:`~statek_bus.wire.subjects.agent_events_consumer`)
that every executor serving it shares. The push-queue operations STATEK had are here too:
:func:`push` (``push_to_agent_queue``), :func:`has_events`, :func:`pop` (take events without making
jobs) and :func:`has_job` (messages for a job not yet read by it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from statek_bus.jobs.inbox import last_seq
from statek_bus.jobs.store import JobStore
from statek_bus.wire.errors import PayloadTooLargeError
from statek_bus.wire.limits import MAX_EVENT_BYTES
from statek_bus.wire.subjects import (
    AGENT_EVENTS_STREAM,
    MSG_ID_HEADER,
    agent_events_consumer,
    agent_events_subject,
    event_job_id,
)

__all__ = [
    "AgentEvent",
    "consumer_config",
    "ensure_consumer",
    "event_of",
    "has_events",
    "has_job",
    "pop",
    "push",
]

_ENCODER = msgspec.json.Encoder()


class AgentEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One event taken from an agent's queue."""

    agent: str
    """The agent's role."""
    event_id: str
    """``Nats-Msg-Id`` of the publish, or ``seq-<n>``."""
    job_id: str
    """The job this event creates (derived from the role and the event id)."""
    value: Any
    """The event (JSON; tagged values when pushed from Python)."""


def consumer_config(role: str, *, ack_wait: float = 30.0, max_deliver: int = 20) -> ConsumerConfig:
    """The durable consumer of ``role``'s queue."""
    return ConsumerConfig(
        durable_name=agent_events_consumer(role),
        filter_subject=agent_events_subject(role),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
    )


async def ensure_consumer(js: JetStreamContext, role: str, **config: Any) -> str:
    """Create ``role``'s consumer if missing (every executor may); returns its name."""
    name = agent_events_consumer(role)
    try:
        await js.consumer_info(AGENT_EVENTS_STREAM, name)
    except NotFoundError:
        await js.add_consumer(AGENT_EVENTS_STREAM, consumer_config(role, **config))
    return name


async def push(js: JetStreamContext, role: str, value: Any, event_id: str | None = None) -> str:
    """Queue ``value`` (JSON-able; tagged JSON) for ``role``; returns the event id.

    The same ``event_id`` twice creates one job. ``PayloadTooLargeError`` over
    :data:`~statek_bus.wire.limits.MAX_EVENT_BYTES`.
    """
    from statek_bus.wire.values import to_json

    body = _ENCODER.encode(to_json(value, path="event"))
    if len(body) > MAX_EVENT_BYTES:
        raise PayloadTooLargeError(f"the event is {len(body)} bytes; the limit is {MAX_EVENT_BYTES}")
    headers = {MSG_ID_HEADER: event_id} if event_id else None
    ack = await js.publish(agent_events_subject(role), body, headers=headers)
    return event_id or f"seq-{ack.seq}"


def event_of(role: str, data: bytes, headers: dict[str, str] | None, seq: int) -> AgentEvent:
    """The event a stream message holds; ``ValueError`` when its body is not JSON or too large."""
    if len(data) > MAX_EVENT_BYTES:
        raise ValueError(f"the event is {len(data)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        value = msgspec.json.decode(data) if data.strip() else None
    except msgspec.DecodeError as exc:
        raise ValueError(f"the event is not JSON: {exc}") from None
    event_id = (headers or {}).get(MSG_ID_HEADER) or f"seq-{seq}"
    return AgentEvent(agent=role, event_id=event_id, job_id=event_job_id(role, event_id), value=value)


async def has_events(js: JetStreamContext, role: str) -> bool:
    """Whether ``role``'s queue holds events not yet turned into jobs (or popped)."""
    info = await js.stream_info(AGENT_EVENTS_STREAM, subjects_filter=agent_events_subject(role))
    return bool(info.state.subjects)


async def pop(js: JetStreamContext, role: str, count: int = 1, timeout: float = 1.0) -> list[AgentEvent]:
    """Take up to ``count`` events off ``role``'s queue without creating jobs (oldest first)."""
    name = await ensure_consumer(js, role)
    sub = await js.pull_subscribe_bind(consumer=name, stream=AGENT_EVENTS_STREAM)
    out: list[AgentEvent] = []
    try:
        try:
            msgs = await sub.fetch(count, timeout=timeout)
        except TimeoutError:
            return out
        for msg in msgs:
            with contextlib.suppress(ValueError):  # a malformed event is dropped: popping takes it away
                out.append(event_of(role, msg.data, msg.headers, msg.metadata.sequence.stream))
            await msg.ack_sync()
    finally:
        await sub.unsubscribe()
    return out


async def has_job(js: JetStreamContext, job_id: str) -> bool:
    """Whether messages or notifications sent to ``job_id`` wait for it (not yet read by a step)."""
    found = await (await JobStore.open(js)).find(job_id)
    if found is None:
        return False
    record = found[0]
    return bool(record.inbox) or await last_seq(js, job_id) > record.inbox_seq  # sent, not yet consumed
