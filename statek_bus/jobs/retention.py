"""Retention: DONE jobs older than ``job_retention`` disappear, with their logs and list entries.

The submission service runs :func:`reap_done` every ``retention_interval`` seconds. It walks the
``idx.all`` list index in creation order (write-once keys, so stream order is creation order),
reads each entry's records, and stops at the first entry whose jobs were all created after the
cutoff: a job created after it cannot have ended before it. So a pass costs the jobs old enough
to go, plus the old jobs still running, never the whole bucket.

An entry (one job, or a whole batch) goes only when every one of its jobs is DONE and last
updated before the cutoff. Then, in this order, each step idempotent, so a pass that dies half-way
is finished by the next one:

1. each record is purged (a rollup of every revision) *conditionally* on the revision just read
   (``Nats-Expected-Last-Subject-Sequence``): a job a message restarted meanwhile stays;
2. each job's log subject in ``statek_job_log`` is purged;
3. the entry's list-index keys (``idx.agent.*``, ``idx.parent.*``, ``idx.live.*``, then
   ``idx.all``) are purged, so ``jobs.list`` never counts a job that is gone.

An entry whose records are already gone (a pass that died after step 1) has its ``idx.live`` and
``idx.all`` keys purged; its agent and parent entries, whose names the records held, stay behind
as ids without a record, which ``jobs.list`` skips. Purge markers carry a ``Nats-TTL``, so nothing of the job stays behind. Why a reaper rather than
a per-message TTL on the DONE record: the record keeps ``job_history`` revisions and only the
last one would expire (the job would come back as its previous revision); a DONE job restarts
when a message reaches it; and the log and index entries were written long before the job ended.
Workspace blobs of large workspaces (``statek_blobs``) are not reaped here; their bucket has a
``max_bytes`` of its own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError
from nats.js.kv import KV_OP, KV_PURGE, MSG_ROLLUP_SUBJECT

from statek_bus.jobs.listing import read_in_order, read_records
from statek_bus.jobs.store import utcnow
from statek_bus.wire.messages import IndexEntry, JobRecord, JobStatus
from statek_bus.wire.subjects import (
    INDEX_PREFIX,
    JOB_LOG_STREAM,
    JOBS_BUCKET,
    LIVE_INDEX_PREFIX,
    WRONG_LAST_SEQUENCE,
    job_events_subject,
    job_key,
    token,
)

__all__ = ["ReapReport", "reap_done"]

log = logging.getLogger(__name__)

_MARKER_TTL = 60.0  # seconds a purge marker lives before the server removes it
_entry_dec = msgspec.json.Decoder(IndexEntry)


@dataclass
class ReapReport:
    """What one pass did."""

    examined: int = 0
    """Job records read."""
    reaped: int = 0
    """Jobs removed with their logs."""
    kept: int = 0
    """Old enough DONE jobs kept because a writer changed them meanwhile (restarted)."""


async def reap_done(
    nc: Client, js: JetStreamContext, *, older_than: timedelta, pause: float = 0.0
) -> ReapReport:
    """Remove DONE jobs last updated more than ``older_than`` ago, with their logs and list entries.

    Args:
        nc: the connection (reads are batched direct gets).
        js: JetStream on it (purges).
        older_than: the retention of DONE jobs.
        pause: seconds between batches of entries, to keep the pass's rate low.
    """
    report = ReapReport()
    cutoff = utcnow() - older_than
    prefix = f"{INDEX_PREFIX}.all."
    async for entries in read_in_order(nc, f"{prefix}>"):
        for key, value, _ in entries:
            ids = _entry_dec.decode(value).ids()
            found = await read_records(nc, ids)
            report.examined += len(found)
            records = [found[j] for j in ids if j in found]
            if any(r.created_at > cutoff for r, _ in records):
                return report  # creation order: every later entry is younger still
            if not all(r.status is JobStatus.DONE and r.updated_at <= cutoff for r, _ in records):
                continue
            gone = [await _purge_record(js, r, rev) for r, rev in records]
            report.kept += gone.count(False)
            if not all(gone):
                continue
            report.reaped += len(records)
            for job_id in ids:
                await js.purge_stream(JOB_LOG_STREAM, subject=job_events_subject(job_id))
            await _purge_index(js, key.removeprefix(prefix), records[0][0] if records else None)
        if pause:
            await asyncio.sleep(pause)
    return report


async def _purge_record(js: JetStreamContext, record: JobRecord, revision: int) -> bool:
    """Purge every revision of ``record``'s key if ``revision`` is still its latest."""
    headers = {
        KV_OP: KV_PURGE,
        Header.ROLLUP: MSG_ROLLUP_SUBJECT,
        Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision),
    }
    try:
        await js.publish(f"$KV.{JOBS_BUCKET}.{job_key(record.id)}", b"", headers=headers, msg_ttl=_MARKER_TTL)
    except APIError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            return False  # restarted (or otherwise changed) since it was read: not ours to remove
        raise
    return True


async def _purge_index(js: JetStreamContext, suffix: str, record: JobRecord | None) -> None:
    """Purge an entry's list-index keys (``suffix`` is ``{j|b}.<token>``), ``idx.all`` last."""
    keys = [f"{LIVE_INDEX_PREFIX}.{suffix}"]
    if record is not None:  # every job of an entry shares its agent and parent
        keys.append(f"{INDEX_PREFIX}.agent.{token(record.agent)}.{suffix}")
        if record.parent_id is not None:
            keys.append(f"{INDEX_PREFIX}.parent.{token(record.parent_id)}.{suffix}")
    keys.append(f"{INDEX_PREFIX}.all.{suffix}")
    for k in keys:
        headers = {KV_OP: KV_PURGE, Header.ROLLUP: MSG_ROLLUP_SUBJECT}
        await js.publish(f"$KV.{JOBS_BUCKET}.{k}", b"", headers=headers, msg_ttl=_MARKER_TTL)
