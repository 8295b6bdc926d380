"""Job records, work messages and job events: the storage both submission and executors use.

- A job record lives at ``job.<token(id)>`` in ``statek_jobs``; its KV revision is its version.
  Every change is a compare-and-set on that revision (:meth:`JobStore.transition`), so two
  writers (two executors, an executor and a cancel) can never both commit from the same state.
- Step ``n`` of a job is run by one work message ``{"job_id", "step": n}`` on
  ``statek.work.run.<token(agent)>.<token(job)>`` (only the executors serving that agent consume
  it; with none, it waits in the stream), published with ``Nats-Msg-Id: <token>:<n>`` so a re-publish inside
  the dedup window (a retried submit, a redelivered step re-queueing its successor) stores nothing.
  A delayed wake-up is an ADR-51 scheduled message that fires into the same subject.
- Job events go to ``statek.events.jobs.<token>``; the job-log stream captures them, which makes
  them both live (core subscribers) and durable (history, late watchers).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from statek_bus.mesh import tracing
from statek_bus.mesh.availability import retry_transient, unavailable_as_503
from statek_bus.mesh.direct import connection, last_message, publish_acked, request_timeout
from statek_bus.wire.errors import ConflictError, NotFoundError, PayloadTooLargeError, ServiceUnavailableError
from statek_bus.wire.messages import JobEvent, JobRecord, WorkMessage, decode, encode
from statek_bus.wire.subjects import (
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    JOBS_BUCKET,
    KV_OPERATION_HEADER,
    MSG_ID_HEADER,
    TIMER_DUE_HEADER,
    WRONG_LAST_SEQUENCE,
    job_events_subject,
    job_key,
    token,
    work_run_subject,
    work_schedule_subject,
)

__all__ = ["JobStore", "StaleRecordError", "scan", "utcnow"]

_CAS_ATTEMPTS = 50
_CAS_BACKOFF = 0.002  # seconds; the bound doubles per lost round, up to 64 ms


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every stored timestamp uses it)."""
    return datetime.now(UTC)


class StaleRecordError(ConflictError):
    """A compare-and-set lost: the record changed since it was read."""


class JobStore:
    """Typed access to job records, the work queue and job events on one JetStream context."""

    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self.js = js
        self.kv = kv
        self.nc = connection(js)
        """The connection: a step's reads and writes go through its shared reply subscription."""
        self.timeout = request_timeout(js)
        """Seconds a read or a write waits for JetStream's answer (the context's own timeout)."""

    @classmethod
    async def open(cls, js: JetStreamContext) -> JobStore:
        """Bind to the (provisioned) jobs bucket."""
        return cls(js, await js.key_value(JOBS_BUCKET))

    # --- records -----------------------------------------------------------------------------------
    async def find(self, job_id: str) -> tuple[JobRecord, int] | None:
        """The record and its revision, or ``None`` when there is no such job."""
        return await self._read(job_id, leader=False)

    async def find_latest(self, job_id: str) -> tuple[JobRecord, int] | None:
        """:meth:`find` answered by the stream leader: it sees every write acknowledged before it.

        A direct get may be answered by a replica that has not applied the newest write yet; a
        reader that must see every commit acknowledged before its read (the inbox's hand-off
        between a sender and the executor, :mod:`statek_bus.jobs.inbox`) reads here.
        """
        return await self._read(job_id, leader=True)

    async def _read(self, job_id: str, *, leader: bool) -> tuple[JobRecord, int] | None:
        nc, subject = self.nc, f"$KV.{JOBS_BUCKET}.{job_key(job_id)}"
        stored = await retry_transient(
            lambda: last_message(nc, f"KV_{JOBS_BUCKET}", subject, leader=leader, timeout=self.timeout)
        )
        if stored is None or not stored.data or stored.headers.get(KV_OPERATION_HEADER) in ("DEL", "PURGE"):
            return None  # never written, deleted, or an expired/purged marker
        return decode(stored.data, JobRecord), stored.seq

    async def get(self, job_id: str) -> tuple[JobRecord, int]:
        """The record and its revision; :class:`NotFoundError` when missing."""
        found = await self.find(job_id)
        if found is None:
            raise NotFoundError(f"job {job_id!r} not found", field="job_id")
        return found

    async def create(self, record: JobRecord) -> tuple[JobRecord, int, bool]:
        """Store a new record; if the id exists, return the existing one. Third item: created."""
        try:
            with unavailable_as_503(f"storing job {record.id!r}"):
                rev = await self.kv.create(job_key(record.id), encode(record))
            return record, int(rev), True
        except KeyWrongLastSequenceError:
            existing = await self.find(record.id)
            if existing is None:  # deleted between the two calls: try once more
                rev = await self.kv.create(job_key(record.id), encode(record))
                return record, int(rev), True
            return existing[0], existing[1], False

    async def put(self, record: JobRecord, revision: int, *, max_bytes: int | None = None) -> int:
        """Compare-and-set ``record`` over ``revision``; :class:`StaleRecordError` if it moved.

        Raises:
            PayloadTooLargeError: the encoded record is over ``max_bytes``, or with its headers over
                the server's ``max_payload`` (``details``: ``size`` and ``limit``); nothing written.
        """
        subject, headers = (
            f"$KV.{JOBS_BUCKET}.{job_key(record.id)}",
            {EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: str(revision)},
        )
        data = encode(record)
        if max_bytes is not None and len(data) > max_bytes:
            raise PayloadTooLargeError(
                f"job {record.id!r}: a record of {len(data):,} bytes is over its {max_bytes:,}",
                details={"size": len(data), "limit": max_bytes},
            )
        try:
            with unavailable_as_503(f"updating job {record.id!r}"):
                ack = await publish_acked(self.nc, subject, data, headers=headers, timeout=self.timeout)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise StaleRecordError(f"job {record.id!r} changed concurrently") from None
            raise
        return ack.seq

    async def transition(
        self, job_id: str, change: Callable[[JobRecord], JobRecord | None]
    ) -> tuple[JobRecord, int, bool]:
        """Read, apply ``change`` and compare-and-set, retrying when another writer got there first.

        ``change`` returns the new record, or ``None`` to leave the record as it is (it may raise
        to refuse, e.g. a 409 for an illegal transition). Returns (record, revision, changed).
        """
        for attempt in range(_CAS_ATTEMPTS):
            record, rev = await self.get(job_id)
            new = change(record)
            if new is None:
                return record, rev, False
            new.updated_at = utcnow()
            try:
                return new, await self.put(new, rev), True
            except StaleRecordError:
                # full-jitter backoff: 50 writers retrying at once (50 messages to one job) would
                # otherwise collide again on every round and exhaust the attempts under load
                await asyncio.sleep(random.uniform(0, _CAS_BACKOFF * 2 ** min(attempt, 5)))
        raise ServiceUnavailableError(f"job {job_id!r} is under heavy contention; try again")

    # --- work queue --------------------------------------------------------------------------------
    async def enqueue(
        self,
        job_id: str,
        step: int,
        *,
        agent: str,
        at: datetime | None = None,
        if_absent: bool = False,
        msg_id_suffix: str = "",
    ) -> bool:
        """Queue step ``step`` of ``job_id`` (a job of ``agent``) now, or at ``at`` (a durable ADR-51 scheduled message).

        The message goes to the agent's work subject: only executors serving ``agent`` receive it.

        With ``if_absent`` the publish is stored only when the job's work subject holds no message
        (``Nats-Expected-Last-Subject-Sequence: 0``: check and publish in one server-side step).
        ``msg_id_suffix`` makes the ``Nats-Msg-Id`` differ from the step's usual one (a repair
        after a lost stream, whose usual id may still be in the duplicate window).
        The message carries the current ``traceparent`` (:mod:`statek_bus.mesh.tracing`), so the
        step runs in the trace of whoever queued it; a scheduled one also carries its due time.
        Returns whether a new message was stored (``False`` for a duplicate id or a present one).
        """
        body = encode(WorkMessage(job_id=job_id, step=step))
        msg_id = f"{token(job_id)}:{step}" + (f":{msg_id_suffix}" if msg_id_suffix else "")
        if at is None:
            headers = tracing.inject({MSG_ID_HEADER: msg_id}) or {}  # the step runs in the queuer's trace
            if if_absent:
                headers[EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER] = "0"
            try:
                with unavailable_as_503(f"queueing job {job_id!r}"):
                    ack = await publish_acked(
                        self.nc, work_run_subject(agent, job_id), body, headers=headers, timeout=self.timeout
                    )
            except APIError as exc:
                if if_absent and exc.err_code in WRONG_LAST_SEQUENCE:
                    return False  # queued, or being run
                raise
            return not ack.duplicate
        when = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
        with unavailable_as_503(f"scheduling job {job_id!r}"):
            await publish_acked(
                self.nc,
                work_schedule_subject(agent, job_id),
                body,
                timeout=self.timeout,
                headers=tracing.inject(
                    {
                        MSG_ID_HEADER: f"{msg_id}:at",
                        "Nats-Schedule": f"@at {when}",
                        "Nats-Schedule-Target": work_run_subject(agent, job_id),
                        TIMER_DUE_HEADER: when,  # passed on to the fired message: lateness
                    }
                ),
            )
        return True

    # --- events ------------------------------------------------------------------------------------
    async def publish(self, event: JobEvent) -> None:
        """Publish a job event (stored in the job-log stream, seen live by subscribers)."""
        with unavailable_as_503(f"publishing an event of job {event.job_id!r}"):
            await self.js.publish(job_events_subject(event.job_id), encode(event))


async def scan(kv: KeyValue, pattern: str, *, timeout: float = 10.0) -> list[tuple[str, bytes]]:
    """The latest value of every live key matching ``pattern``, in the order they were written.

    (``KeyValue.keys(filters=...)`` watches the whole bucket and filters client-side; this
    filters on the server.)
    """
    watcher = await kv.watch(pattern, ignore_deletes=True, inactive_threshold=5.0)
    out: list[tuple[str, bytes]] = []
    try:
        while True:
            entry = await watcher.updates(timeout)  # type: ignore[no-untyped-call]
            if entry is None:
                return out
            if entry.value:
                out.append((entry.key, entry.value))
    finally:  # on a closed connection stop() raises: never in place of the error in flight
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
