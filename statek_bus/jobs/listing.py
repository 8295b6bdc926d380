"""Reading ``statek_jobs`` without watchers: batched direct gets, and ``jobs.list`` on top of them.

Two direct-get (ADR-31) forms do all the reading; neither creates a consumer, so nothing lingers
on the server after a request:

- :func:`read_in_order` — ``{"seq", "next_by_subj": <wildcard>, "batch"}``: the messages of a
  subject filter in stream order, a batch per round trip, so a caller can stop early. Used for
  write-once keys (list index entries, pending markers), whose stream order is creation order.
- :func:`read_last` — ``{"multi_last": [subjects]}``: the latest message of up to
  :data:`MULTI_LAST_MAX` explicit keys per round trip (job records by id), each answer at most
  ``max_payload`` bytes (:func:`~statek_bus.mesh.lastreads.read_newest`).

(Candidates to move to :mod:`statek_bus.jobs.store`, beside ``scan``.)

How ``jobs.list`` keeps its cost bounded
----------------------------------------
The filter's index (``idx.all``, ``idx.agent.<a>`` or ``idx.parent.<p>``, one entry per job or
per batch, written at submit time) is read in creation order and only as far as needed:

- without ``status``, page ``p`` of size ``L`` reads index entries until it has ``p·L`` ids (a
  batch entry stands for up to 2,000 ids), then reads only that page's ``L`` records;
- with ``status``, the candidates' records are read in chunks, in index order, until the page is
  filled. Statuses change by compare-and-set on the records (the executor writes no index), so
  there is no status index to consult; instead at most :data:`MAX_EXAMINED` records are read per
  request. If the page is not filled by then and candidates remain, the reply is 413 asking for a
  narrower filter (``agent``/``parent_id``) or an earlier page — never a multi-second scan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import msgspec
from nats.aio.client import Client

from statek_bus.mesh.availability import retry_transient
from statek_bus.mesh.direct import direct_get
from statek_bus.mesh.lastreads import read_newest
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import BadRequestError, PayloadTooLargeError
from statek_bus.wire.limits import MULTI_LAST_MAX
from statek_bus.wire.messages import IndexEntry, Job, JobListRequest, JobRecord
from statek_bus.wire.subjects import INDEX_PREFIX, JOBS_BUCKET, KV_OPERATION_HEADER, job_key, token

__all__ = [
    "JOBS_STREAM",
    "MAX_EXAMINED",
    "KeyValues",
    "list_jobs",
    "read_in_order",
    "read_last",
    "read_records",
]

JOBS_STREAM = f"KV_{JOBS_BUCKET}"
"""The stream behind the ``statek_jobs`` bucket."""
MAX_EXAMINED = 10_000
"""Most job records one status-filtered ``jobs.list`` reads (413 beyond, asking to narrow)."""
_IN_ORDER_BATCH = 512
_TIMEOUT = 10.0

KeyValues = list[tuple[str, bytes, int]]
"""(key, value, revision) triples."""
_index_dec = msgspec.json.Decoder(IndexEntry)
_record_dec = msgspec.json.Decoder(JobRecord)


async def read_in_order(
    nc: Client, subject_filter: str, *, stream: str = JOBS_STREAM, batch: int = _IN_ORDER_BATCH
) -> AsyncIterator[KeyValues]:
    """Live messages on ``subject_filter`` (a KV key filter) in stream order, a batch at a time.

    For write-once keys only (every message is the key's one value); delete and purge markers
    are skipped. Stop iterating to stop reading.
    """
    seq = 1
    prefix = f"$KV.{stream.removeprefix('KV_')}."
    subject = prefix + subject_filter
    while True:
        req = {"seq": seq, "next_by_subj": subject, "batch": batch}
        got = await retry_transient(lambda req=req: direct_get(nc, stream, req, timeout=_TIMEOUT))  # type: ignore[misc]
        msgs, pending = got.messages, got.pending
        if got.last_sequence is not None:
            seq = got.last_sequence + 1
        out: KeyValues = []
        for m in msgs:
            hdrs = m.headers or {}
            if m.data and KV_OPERATION_HEADER not in hdrs:
                key = hdrs.get("Nats-Subject", "").removeprefix(prefix)
                out.append((key, m.data, int(hdrs.get("Nats-Sequence", "0"))))
        if out:
            yield out
        if pending <= 0 or not msgs:
            return


async def read_last(
    nc: Client, keys: Sequence[str], *, stream: str = JOBS_STREAM
) -> dict[str, tuple[bytes, int]]:
    """The current value and revision of each existing key (missing or deleted keys are absent)."""
    prefix = f"$KV.{stream.removeprefix('KV_')}."
    subjects = [prefix + k for k in keys]
    got = await retry_transient(lambda: read_newest(nc, stream, subjects, timeout=_TIMEOUT))
    return {
        subject.removeprefix(prefix): (m.data, m.seq)
        for subject, m in got.items()
        if m.data and KV_OPERATION_HEADER not in m.headers
    }


async def read_records(
    nc: Client, job_ids: Sequence[str], *, keys: Sequence[str] | None = None
) -> dict[str, tuple[JobRecord, int]]:
    """The existing records (and revisions) among ``job_ids``, by id (``keys``: their job keys)."""
    by_key = dict(zip(keys if keys is not None else [job_key(j) for j in job_ids], job_ids, strict=True))
    raw = await read_last(nc, list(by_key))
    return {by_key[k]: (_record_dec.decode(v), rev) for k, (v, rev) in raw.items()}


async def _candidates(nc: Client, scope: str) -> AsyncIterator[list[str]]:
    """Job ids of an index scope in creation order, without repeats, a batch of entries at a time."""
    seen: set[str] = set()
    async for entries in read_in_order(nc, f"{INDEX_PREFIX}.{scope}.>"):
        ids: list[str] = []
        for _, value, _ in entries:
            for job_id in _index_dec.decode(value).ids():
                if job_id not in seen:
                    seen.add(job_id)
                    ids.append(job_id)
        yield ids


async def list_jobs(nc: Client, settings: Settings, req: JobListRequest) -> list[Job]:
    """``jobs.list``: jobs in creation order, filtered exactly, with a bounded cost (see above)."""
    limit = settings.list_default_limit if req.limit is None else req.limit
    if not 1 <= limit <= settings.list_max_limit:
        raise BadRequestError(f"limit must be 1..{settings.list_max_limit}", field="$.limit")
    page = 1 if req.page_number is None else req.page_number
    if page < 1:
        raise BadRequestError("page_number starts at 1", field="$.page_number")
    if req.parent_id is not None:
        scope = f"parent.{token(req.parent_id)}"
    elif req.agent is not None:
        scope = f"agent.{token(req.agent)}"
    else:
        scope = "all"

    def keep(rec: JobRecord) -> bool:
        return (
            (req.agent is None or rec.agent == req.agent)
            and (req.parent_id is None or rec.parent_id == req.parent_id)
            and (req.status is None or rec.status == req.status)
        )

    offset = (page - 1) * limit
    if req.status is None:  # index positions are list positions: read the index up to the page
        ids: list[str] = []
        async for chunk in _candidates(nc, scope):
            ids.extend(chunk)
            if len(ids) >= offset + limit:
                break
        window = ids[offset : offset + limit]
        found = await read_records(nc, window)
        return [found[j][0].public(found[j][1]) for j in window if j in found and keep(found[j][0])]

    out: list[Job] = []
    examined = 0
    async for chunk in _candidates(nc, scope):
        for i in range(0, len(chunk), MULTI_LAST_MAX):
            part = chunk[i : i + MULTI_LAST_MAX]
            if examined + len(part) > MAX_EXAMINED:
                raise PayloadTooLargeError(
                    f"listing by status read {examined} jobs without filling page {page}; "
                    "narrow the filter (agent, parent_id) or ask for an earlier page",
                    field="$.status",
                    details={"examined": examined, "limit": MAX_EXAMINED},
                )
            examined += len(part)
            found = await read_records(nc, part)
            for job_id in part:
                hit = found.get(job_id)
                if hit is None or not keep(hit[0]):
                    continue
                if offset:
                    offset -= 1
                    continue
                out.append(hit[0].public(hit[1]))
                if len(out) == limit:
                    return out
    return out
