"""Reading a job's durable event log (the ``statek_job_log`` stream) from its start."""

from __future__ import annotations

import contextlib
import uuid

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from statek_bus.wire.messages import JobEvent, decode
from statek_bus.wire.subjects import JOB_LOG_STREAM, job_events_subject

__all__ = ["read_job_log"]


async def read_job_log(js: JetStreamContext, job_id: str) -> list[JobEvent]:
    """Every event of ``job_id`` in the job-log stream, oldest first (an ephemeral consumer)."""
    info = await js.add_consumer(
        JOB_LOG_STREAM,
        ConsumerConfig(
            name=uuid.uuid4().hex,
            filter_subject=job_events_subject(job_id),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    assert info.name is not None
    events: list[JobEvent] = []
    try:
        remaining = info.num_pending or 0
        if remaining:
            sub = await js.pull_subscribe_bind(consumer=info.name, stream=JOB_LOG_STREAM)
            try:
                while remaining > 0:
                    msgs = await sub.fetch(min(remaining, 500), timeout=5.0)
                    remaining -= len(msgs)
                    events.extend(decode(m.data, JobEvent) for m in msgs)
            finally:
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(JOB_LOG_STREAM, info.name)
    return events
