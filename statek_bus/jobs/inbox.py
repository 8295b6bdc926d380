"""Each job's inbox: an append-only JetStream subject per job, consumed by position.

A message or notification sent to a job is one publish to ``statek.inbox.<token(job_id)>`` in the
``statek_inbox`` stream, acknowledged once it is durable; senders never write the job record, so
any number of them append at once without contending. The record keeps only how far the job has
consumed (``JobRecord.inbox_seq``, a stream sequence). At the start of a step the executor reads
the items after that position (:meth:`JobInbox.read`) and the step's commit moves the position in
the same compare-and-set as the step itself: a step that is re-run after a crash or a redelivery
reads the same items again from the committed position, and a step that loses its
compare-and-set consumed nothing. Every item is therefore consumed exactly once, in order.

**Waking the job without losing a message.** A send must make sure the job will run a step after
its message is stored; the executor, after committing a step, must make sure the same. Both
follow one rule, in this order (:func:`wake`):

    sender:   publish (acknowledged)  →  read the record from the leader  →  act on what it shows
    executor: commit the step (CAS)   →  read the subject's last sequence from the leader → act

If the sender's read comes before the executor's commit, the executor's later read sees the
message (it was stored before that read began); if it comes after, the sender sees the committed
record. Either way one of them sees "stored but not consumed" on a record that will not run on
its own, and acts: a SUSPENDED job gets its wake-up (the step's usual ``Nats-Msg-Id``, so two
wake-ups store one message), a DONE job restarts (a compare-and-set conditional on DONE and on
the message not being consumed, so two restarters restart it once), a READY or running job is
enqueued only if its work subject is empty (a running step keeps its unacknowledged message
there). A cancel still wins: a job cancelled while a message was on its way ends cancelled, and
only a send that reads the cancelled record afterwards restarts it, as before.

**Bounds.** The server refuses a publish once a job's subject holds ``inbox_limit`` messages
(``max_msgs_per_subject`` with ``discard_new_per_subject``): a 413 naming the limit, and nothing
stored. A message is also refused (413) when it could not fit in the job's record beside what the
record holds already, since delivering it copies it into the chat log; a large one (over an
eighth of that room) is also checked against the bytes still undelivered before it (one read,
which small messages skip: they are bounded by count). Concurrent large senders may pass that
check together, so a step consumes at most :data:`~statek_bus.wire.limits.INBOX_DRAIN_MAX` items
and only as many bytes as its record has room for; the rest wait for the next step, and an item
too large for an emptied record is delivered cut, with a note saying how much was cut.

**Retention.** Consumed items are purged by the executor after the step that consumed them
commits (and by submission's recovery sweep if that purge was lost); an unconsumed item stays
until its job consumes it, however long the job waits, so the stream has no ``max_age``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError

from statek_bus.jobs.store import JobStore
from statek_bus.mesh.availability import retry_transient, unavailable_as_503
from statek_bus.mesh.direct import connection, direct_get, last_message, request_timeout
from statek_bus.mesh.lastreads import LastReads
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import PayloadTooLargeError
from statek_bus.wire.limits import INBOX_DRAIN_MAX, RECORD_HEADROOM
from statek_bus.wire.messages import IndexEntry, JobEvent, JobRecord, JobStatus, decode, encode
from statek_bus.wire.subjects import (
    INBOX_PREFIX,
    INBOX_STREAM,
    LIVE_INDEX_PREFIX,
    MSG_ID_HEADER,
    inbox_subject,
    token,
    untoken,
)

__all__ = [
    "InboxItem",
    "JobInbox",
    "Woken",
    "fit",
    "last_seq",
    "publish_restart",
    "room_for",
    "wake",
    "wake_if_pending",
]

log = logging.getLogger(__name__)

_SUBJECT_FULL = 10077  # JetStream: maximum messages per subject exceeded (discard new per subject)
_ITEM_OVERHEAD = 512  # bytes a delivered item adds to the record beyond its text (chat log entry)
_READ_TIMEOUT = 5.0  # seconds a batched read of an inbox waits before it is retried


class _Full(Exception):
    """The job's inbox subject holds ``inbox_limit`` messages (the server refused the publish)."""


@dataclass(frozen=True)
class InboxItem:
    """One message or notification in a job's inbox."""

    seq: int
    """Its ``statek_inbox`` stream sequence (the job's position once consumed)."""
    event: JobEvent
    """What was sent."""


@dataclass(frozen=True)
class Woken:
    """What :func:`wake` did."""

    record: JobRecord
    """The record as it stands after the wake (restarted, if it was)."""
    revision: int
    """Its revision."""
    restarted: bool = False
    """A DONE job was restarted (DONE → STARTED)."""
    enqueued: bool = False
    """A new work message was stored."""


class JobInbox:
    """Every job's inbox in the ``statek_inbox`` stream.

    Args:
        nc: the connection (batched direct reads).
        js: JetStream on it.
        settings: ``inbox_limit`` (named in the 413 of a full inbox) and ``replicas``.
    """

    def __init__(self, nc: Client, js: JetStreamContext, settings: Settings) -> None:
        self.nc = nc
        self.js = js
        self.limit = settings.inbox_limit
        # The hand-off reads must see every write acknowledged before them. A direct get may be
        # answered by a replica that lags; with one replica it is the leader, and cheaper than the
        # JetStream API's message get.
        self.direct_is_leader = settings.replicas == 1
        self._last = LastReads(nc, INBOX_STREAM, timeout=_READ_TIMEOUT)

    async def append(self, event: JobEvent, *, message_id: str | None, field: str) -> int:
        """Store ``event`` in its job's inbox; its stream sequence (the first one for a repeated id).

        Raises:
            PayloadTooLargeError: the inbox holds ``limit`` undelivered items (nothing is stored).
        """
        headers = {MSG_ID_HEADER: f"{token(event.job_id)}:{message_id}"} if message_id else None
        try:
            with unavailable_as_503(f"storing a message for job {event.job_id!r}"):
                try:
                    ack = await self.js.publish(inbox_subject(event.job_id), encode(event), headers=headers)
                except APIError as exc:  # nats-py raises this one as a 503: it is not an outage
                    if exc.err_code == _SUBJECT_FULL:
                        raise _Full from None
                    raise
        except _Full:
            raise PayloadTooLargeError(
                f"job {event.job_id!r} has {self.limit} undelivered messages, its inbox limit "
                "(inbox_limit, STATEK_INBOX_LIMIT); send again once it has consumed some",
                field=field,
                details={"limit": self.limit, "setting": "inbox_limit"},
            ) from None
        return int(ack.seq)

    async def read(self, job_id: str, after: int, *, room: int) -> list[InboxItem]:
        """The items after position ``after``, oldest first, that fit ``room`` bytes of a record.

        At most :data:`INBOX_DRAIN_MAX`. An item too large for ``room`` on its own comes first
        (its text cut to fit), so a job whose record is nearly full still moves past it.
        """
        return fit(await self.fetch(job_id, after, max_bytes=room), after, room)

    async def fetch(self, job_id: str, after: int, *, max_bytes: int) -> list[InboxItem]:
        """Up to :data:`INBOX_DRAIN_MAX` items after ``after`` (about ``max_bytes`` of them), oldest first."""
        batch = await retry_transient(
            lambda: direct_get(
                self.nc,
                INBOX_STREAM,
                {
                    "seq": after + 1,
                    "next_by_subj": inbox_subject(job_id),
                    "batch": INBOX_DRAIN_MAX,
                    "max_bytes": max(max_bytes, 1),
                },
                timeout=_READ_TIMEOUT,
            )
        )
        return [
            InboxItem(int((m.headers or {}).get("Nats-Sequence") or 0), decode(m.data, JobEvent))
            for m in batch.messages
        ]

    async def undelivered_bytes(self, job_id: str, after: int, *, up_to: int) -> int:
        """Bytes of the items after ``after`` (counted up to about ``up_to``)."""
        items = await self.fetch(job_id, after, max_bytes=up_to)
        return sum(len(encode(i.event)) for i in items if i.seq > after)

    async def last_seq(self, job_id: str, *, leader: bool = True) -> int:
        """Sequence of the newest item in the job's inbox (0: none stored).

        ``leader``: the answer sees every item acknowledged before the call (the hand-off's read);
        otherwise any replica may answer. Reads that any replica may answer, and with one replica
        every read, are batched with the other jobs' (:class:`~statek_bus.mesh.lastreads.LastReads`).
        """
        if leader and not self.direct_is_leader:
            return await last_seq(self.js, job_id)
        subject = inbox_subject(job_id)
        stored = await retry_transient(lambda: self._last.last(subject))
        return stored.seq if stored is not None else 0

    async def unread(self, job_id: str, after: int, *, max_bytes: int) -> list[InboxItem]:
        """:meth:`fetch`, asked only of an inbox that holds an item past ``after`` (most hold none:
        the check is one batched read shared with other jobs, the fetch a request of its own)."""
        if await self.last_seq(job_id, leader=False) <= after:
            return []
        return await self.fetch(job_id, after, max_bytes=max_bytes)

    async def purge(self, job_id: str, through: int) -> None:
        """Drop the job's items up to and including ``through`` (consumed ones)."""
        with unavailable_as_503(f"purging the inbox of job {job_id!r}"):
            await self.js.purge_stream(INBOX_STREAM, subject=inbox_subject(job_id), seq=through + 1)

    async def job_ids(self) -> list[str]:
        """Jobs whose inbox holds items (consumed ones not purged yet included)."""
        info = await retry_transient(
            lambda: self.js.stream_info(INBOX_STREAM, subjects_filter=f"{INBOX_PREFIX}.>")
        )
        prefix = len(INBOX_PREFIX) + 1
        return [untoken(subj[prefix:]) for subj in info.state.subjects or {}]

    async def latest_record(self, store: JobStore, job_id: str) -> tuple[JobRecord, int] | None:
        """The job's record as the hand-off needs it: no older than any write acknowledged before."""
        return await (store.find(job_id) if self.direct_is_leader else store.find_latest(job_id))


async def last_seq(js: JetStreamContext, job_id: str, *, direct: bool = False) -> int:
    """Sequence of the newest item in ``job_id``'s inbox (0: none stored); ``direct``: a direct get
    (the leader's answer only with one replica), else the JetStream API's, from the leader."""
    nc, subject = connection(js), inbox_subject(job_id)
    stored = await retry_transient(
        lambda: last_message(nc, INBOX_STREAM, subject, leader=not direct, timeout=request_timeout(js))
    )
    return stored.seq if stored is not None else 0


def fit(items: list[InboxItem], after: int, room: int) -> list[InboxItem]:
    """The items past ``after`` that fit ``room`` bytes of a record, oldest first.

    An item too large for ``room`` on its own comes first, its text cut to fit, so a job whose
    record is nearly full still moves past it.
    """
    out: list[InboxItem] = []
    used = 0
    for item in items:
        if item.seq <= after:
            continue
        cost = len(encode(item.event)) + _ITEM_OVERHEAD
        if used + cost > room:
            if out:
                break
            item, cost = InboxItem(item.seq, _cut(item.event, room)), room
        out.append(item)
        used += cost
    return out


def room_for(record: JobRecord, max_payload: int) -> int:
    """Bytes the record may still grow by (its limit: ``max_payload`` less the headroom)."""
    return max_payload - RECORD_HEADROOM - len(encode(record))


def _cut(event: JobEvent, room: int) -> JobEvent:
    text = event.text or ""
    keep = max(0, room - _ITEM_OVERHEAD - 200)
    if len(text.encode()) <= keep:
        return event
    cut = text.encode()[:keep].decode("utf-8", errors="ignore")
    note = f" [… cut: {len(text.encode()) - len(cut.encode())} more bytes did not fit the job's record]"
    return msgspec.structs.replace(event, text=cut + note)


async def wake(
    store: JobStore, inbox: JobInbox, job_id: str, seq: int, *, restart_cancelled: bool
) -> Woken | None:
    """Make sure the job runs a step that consumes inbox item ``seq`` (see the module docstring).

    Args:
        store: the job store.
        inbox: the inbox.
        job_id: the job.
        seq: an item stored in its inbox before this call.
        restart_cancelled: whether a cancelled DONE job restarts too (a sender's explicit message
            does; the executor's and the recovery sweep's checks do not: a cancel wins).

    Returns:
        What was done, or ``None`` when the job does not exist.
    """
    found = await inbox.latest_record(store, job_id)
    if found is None:
        return None
    record, rev = found
    if record.inbox_seq >= seq:
        return Woken(record, rev)  # consumed already
    if record.status is JobStatus.DONE:
        if record.cancel_reason is not None and not restart_cancelled:
            return Woken(record, rev)

        def restart(rec: JobRecord) -> JobRecord | None:
            if rec.status is not JobStatus.DONE or rec.inbox_seq >= seq:
                return None  # restarted (or consumed) by someone else meanwhile
            if rec.cancel_reason is not None and not restart_cancelled:
                return None
            rec.restart()
            return rec

        record, rev, changed = await store.transition(job_id, restart)
        if not changed:
            return await wake(store, inbox, job_id, seq, restart_cancelled=restart_cancelled)
        await _live_again(store, job_id)
        enqueued = await store.enqueue(job_id, record.step, agent=record.agent)
        return Woken(record, rev, restarted=True, enqueued=enqueued)
    if record.status is JobStatus.SUSPENDED:
        return Woken(record, rev, enqueued=await store.enqueue(job_id, record.step, agent=record.agent))
    # READY, WARMING_UP or STARTED: queued or running. A running step holds its unacknowledged work
    # message on the subject (nothing is stored); a job left without one gets it now.
    return Woken(
        record, rev, enqueued=await store.enqueue(job_id, record.step, agent=record.agent, if_absent=True)
    )


async def wake_if_pending(store: JobStore, inbox: JobInbox, record: JobRecord) -> bool:
    """After a commit of ``record``: wake the job if its inbox holds unconsumed items; woken?"""
    last = await inbox.last_seq(record.id)
    if last <= record.inbox_seq:
        return False
    woken = await wake(store, inbox, record.id, last, restart_cancelled=False)
    if woken is not None and woken.restarted:
        await publish_restart(store, woken.record)
    return woken is not None and (woken.restarted or woken.enqueued)


async def _live_again(store: JobStore, job_id: str) -> None:
    """A restarted job may run again: back in the live index (``statek_bus.jobs.repair``)."""
    with contextlib.suppress(KeyWrongLastSequenceError):  # there already
        await store.kv.create(f"{LIVE_INDEX_PREFIX}.j.{token(job_id)}", encode(IndexEntry(job_id=job_id)))


async def publish_restart(store: JobStore, record: JobRecord) -> None:
    """Publish the status event of a job :func:`wake` restarted (best effort: the record is the truth)."""
    event = JobEvent(
        job_id=record.id, kind="status", at=record.updated_at, status=record.status, step=record.step
    )
    try:
        await store.publish(event)
    except Exception:  # the record is the truth; watchers fall back to it
        log.warning("could not publish the restart of job %r", record.id, exc_info=True)
