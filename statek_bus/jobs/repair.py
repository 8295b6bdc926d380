"""Re-enqueueing runnable jobs whose work message is gone: the operator's repair and its periodic pass.

Recovery through ``pending.*`` markers (:meth:`~statek_bus.jobs.submission.Submission.recover`)
repairs a submit or message that died half-way. It cannot repair a lost *work stream*: after
``statek_work`` is purged (an operator mistake, a restore from an older backup) every READY job
stays READY, because nothing points at it any more. Two passes fix that, both idempotent:

- :func:`reconcile`: the periodic, low-rate pass the submission service runs every
  ``reconcile_interval`` seconds. It reads the ``idx.live.{j,b}.<id>`` entries that submit (and a
  restarting message) write beside each job, so its cost follows the jobs that may still run,
  not the bucket: an entry whose jobs are all DONE is purged the first time a pass sees it.
- :func:`repair_all`: the operator's command. It reads every job record (``job.>``), so it also
  covers jobs written before live entries existed; ``limit`` bounds one run.

A job is runnable when it is READY, WARMING_UP or STARTED, or SUSPENDED with undelivered inbox
items. For each one the pass publishes its current step with ``if_absent`` (stored only if the
job's work subject holds no message, checked by the server in the same step), so a job that still
has its message, or is running, gets nothing, and two passes at once store one message. The
message id is new for each pass (``<token>:<step>:r<nonce>``): the lost message's own id may still
be in the stream's duplicate window, which would silently swallow the repair. Jobs changed less
than :data:`GRACE` ago are left for the next pass: their own write may still be on its way.

Not repaired: a SUSPENDED job waiting on a timer whose scheduled wake-up was in the purged stream
(the wake time is engine-private state); it wakes when a message or notification reaches it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta

import msgspec
from nats.aio.client import Client

from statek_bus.jobs.listing import read_in_order, read_records
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.wire.messages import IndexEntry, JobRecord, JobStatus
from statek_bus.wire.subjects import LIVE_INDEX_PREFIX, untoken

__all__ = ["GRACE", "RepairReport", "count_live", "is_runnable", "reconcile", "repair_all"]

GRACE = timedelta(seconds=30)
"""Jobs updated more recently than this are left alone (their own enqueue may be in flight)."""
_CHUNK = 256
_PURGE_TTL = 60
_entry_dec = msgspec.json.Decoder(IndexEntry)


@dataclass
class RepairReport:
    """What one pass did."""

    examined: int = 0
    """Job records read."""
    runnable: int = 0
    """Of those, jobs in a runnable state."""
    enqueued: int = 0
    """Runnable jobs that had no work message and got one."""
    finished_entries: int = 0
    """Live-index entries purged because all their jobs are DONE (:func:`reconcile` only)."""


def is_runnable(rec: JobRecord) -> bool:
    """Whether ``rec`` needs a work message to make progress."""
    if rec.status in (JobStatus.READY, JobStatus.WARMING_UP, JobStatus.STARTED):
        return True
    return rec.status is JobStatus.SUSPENDED and bool(rec.inbox)


async def _enqueue_runnable(
    store: JobStore, records: Iterable[JobRecord], nonce: str, report: RepairReport, grace: timedelta
) -> None:
    now = utcnow()
    todo = [r for r in records if is_runnable(r)]
    report.runnable += len(todo)
    todo = [r for r in todo if now - r.updated_at >= grace]

    async def one(rec: JobRecord) -> bool:
        return await store.enqueue(
            rec.id, rec.step, agent=rec.agent, if_absent=True, msg_id_suffix=f"r{nonce}"
        )

    for i in range(0, len(todo), _CHUNK):
        stored = await asyncio.gather(*(one(r) for r in todo[i : i + _CHUNK]))
        report.enqueued += sum(stored)


async def reconcile(
    nc: Client, store: JobStore, *, pause: float = 0.0, grace: timedelta = GRACE
) -> RepairReport:
    """One pass over the live index.

    Args:
        nc: the connection (reads are batched direct gets).
        store: job records and the work queue.
        pause: seconds between batches of entries, to keep the pass's rate low.
        grace: jobs updated more recently than this are left for the next pass.
    """
    report = RepairReport()
    nonce = uuid.uuid4().hex[:12]
    async for key, ids, recs in _live(nc, pause):
        report.examined += len(recs)
        if len(recs) == len(ids) and all(r.status is JobStatus.DONE for r in recs):
            await store.kv.purge(key, msg_ttl=_PURGE_TTL)
            report.finished_entries += 1
            continue
        await _enqueue_runnable(store, recs, nonce, report, grace)
    return report


async def _live(nc: Client, pause: float = 0.0) -> AsyncIterator[tuple[str, list[str], list[JobRecord]]]:
    """Each live-index entry: its key, its job ids and the records found for them."""
    async for entries in read_in_order(nc, f"{LIVE_INDEX_PREFIX}.>"):
        for key, value, _ in entries:
            ids = _entry_dec.decode(value).ids()
            records: dict[str, tuple[JobRecord, int]] = {}
            for i in range(0, len(ids), _CHUNK):
                records.update(await read_records(nc, ids[i : i + _CHUNK]))
            yield key, ids, [r for r, _ in records.values()]
        if pause:
            await asyncio.sleep(pause)


async def count_live(nc: Client, *, pause: float = 0.0) -> dict[JobStatus, int]:
    """How many jobs are in each status but DONE, read from the live index and the records
    (so it is the same whichever replica asks, and survives restarts of every process)."""
    counts: dict[JobStatus, int] = dict.fromkeys((s for s in JobStatus if s is not JobStatus.DONE), 0)
    seen: set[str] = set()
    async for _, _, recs in _live(nc, pause):
        for r in recs:
            if r.status is not JobStatus.DONE and r.id not in seen:
                seen.add(r.id)
                counts[r.status] += 1
    return counts


async def repair_all(
    nc: Client, store: JobStore, *, limit: int | None = None, pause: float = 0.0, grace: timedelta = GRACE
) -> RepairReport:
    """The operator's repair: every job record (at most ``limit``), runnable ones re-enqueued.

    Args:
        nc: the connection.
        store: job records and the work queue.
        limit: most records one run examines (run again to go on; it is idempotent).
        pause: seconds between batches of records.
        grace: jobs updated more recently than this are left alone.
    """
    report = RepairReport()
    nonce = uuid.uuid4().hex[:12]
    seen: set[str] = set()
    async for entries in read_in_order(nc, "job.>", batch=_CHUNK):
        ids = []
        for key, _, _ in entries:
            job_id = untoken(key.removeprefix("job."))
            if job_id not in seen:
                seen.add(job_id)
                ids.append(job_id)
        if limit is not None:
            ids = ids[: max(0, limit - report.examined)]
        records = await read_records(nc, ids)
        report.examined += len(ids)
        await _enqueue_runnable(store, [r for r, _ in records.values()], nonce, report, grace)
        if limit is not None and report.examined >= limit:
            break
        if pause:
            await asyncio.sleep(pause)
    return report
