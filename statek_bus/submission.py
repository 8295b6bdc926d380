"""The submission library: validate and record jobs, enqueue their first step, query, cancel, message.

Where a submitted job goes (one pipelined burst, then one publish burst)::

    request ─▶ validate (agent from the watched registry, locale, ids, shared_vars, size)
            ─▶ KV statek_jobs, in this order on one connection, awaited together:
                 pending.<nuid>          marker: "these jobs may still lack their work message"
                 idx.{all,agent.<a>,parent.<p>}.{j,b}.<id>   list indexes (one entry per job or batch)
                 job.<id>, one per job   kv.create: the idempotency point
            ─▶ work stream: step 0 of every job created now (Nats-Msg-Id <id>:0), awaited together
            ─▶ reply                     (record + work message are both persisted)
            ─▶ purge pending.<nuid> in the background (a purge whose tombstone expires: no leak)

Why markers and not a scan: a stranded job (the service died between the record and its work
message) can only be READY at step 0 with no message on its work subject. Finding those by reading
every record would cost O(all jobs) per pass forever; the marker written in the same burst as the
records makes the pass O(submits in flight). For each marked job the pass checks the record, then
the work stream, then the record again (unchanged revision), and only then enqueues; a publish
that raced with the original one is deduplicated by its message id. A retried submit does the same
check for ids that already exist, so a retry completes an interrupted batch and never doubles one.

Cancelling a READY or SUSPENDED job commits it DONE *and* advances ``step``: its queued message
goes stale, and a later restart (a message to the DONE job) enqueues a fresh step whose message
id was never used, so the work stream's deduplication cannot swallow it.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import keyword
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError

from statek_bus.agent_registry import AgentDirectory
from statek_bus.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    StatekError,
)
from statek_bus.joblog import read_job_log
from statek_bus.jobstore import JobStore, scan, utcnow
from statek_bus.locale import resolve_locale
from statek_bus.messages import (
    AgentDescription,
    AgentGetRequest,
    ChatEntry,
    Empty,
    IndexEntry,
    Job,
    JobCancelRequest,
    JobEvent,
    JobGetRequest,
    JobHistory,
    JobListRequest,
    JobRecord,
    JobSendMessageRequest,
    JobSendNotificationRequest,
    JobStatus,
    PendingMarker,
    SubmitBatchRequest,
    SubmitRequest,
    encode,
)
from statek_bus.settings import Settings
from statek_bus.subjects import (
    AGENTS_BUCKET,
    INDEX_PREFIX,
    PENDING_PREFIX,
    batch_job_ids,
    job_events_subject,
    token,
)
from statek_bus.values import TAG, from_json

__all__ = ["MAX_BATCH", "MAX_ID_BYTES", "Submission"]

log = logging.getLogger("statek_bus.submission")
T = TypeVar("T")

MAX_ID_BYTES = 200
"""Longest job, batch or parent id (UTF-8 bytes): escaped ids must fit NATS's 4 KiB control line."""
MAX_BATCH = 10_000
"""Most jobs in one ``submit_batch`` (413 above)."""
DEFAULT_CANCEL_REASON = "no reason given"
"""``cancel_reason`` when the caller gives none (exit status ``Cancelled: no reason given``)."""

_MARKER_GRACE = timedelta(seconds=30)  # younger markers may belong to a submit still in flight
_PURGE_TTL = 60  # seconds a purge tombstone lives before the server removes it
_CHUNK = 256  # records read or checked at once
_RECORD_HEADROOM = 4096  # headers and escaping on top of a record, below the server's max_payload


async def gather_chunked(
    items: Sequence[T], op: Callable[[T], Awaitable[Any]], size: int = _CHUNK
) -> list[Any]:
    """``op`` over ``items``, at most ``size`` in flight, results in order."""
    out: list[Any] = []
    for i in range(0, len(items), size):
        out.extend(await asyncio.gather(*(op(x) for x in items[i : i + size])))
    return out


class Submission:
    """Everything the submission service does, over one NATS connection.

    Args:
        nc: the connection (READY events are published on it without waiting for acks).
        store: job records, work queue and events.
        agents: the agent registry.
        settings: limits and the recovery interval.
    """

    def __init__(self, nc: Client, store: JobStore, agents: AgentDirectory, settings: Settings) -> None:
        self.nc = nc
        self.store = store
        self.kv = store.kv
        self.agents = agents
        self.settings = settings
        self._purge_queue: asyncio.Queue[str] = asyncio.Queue()
        self._stop = asyncio.Event()

    @classmethod
    async def open(cls, nc: Client, js: JetStreamContext, settings: Settings) -> Submission:
        """Bind the (provisioned) jobs and agents buckets."""
        store = await JobStore.open(js)
        return cls(nc, store, AgentDirectory(await js.key_value(AGENTS_BUCKET)), settings)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Submission]:
        """Run the agent watch, marker purging and the periodic recovery pass."""
        async with self.agents.running():
            self._stop.clear()
            tasks = [asyncio.create_task(self._recovery_loop()), asyncio.create_task(self._purge_loop())]
            try:
                yield self
            finally:
                self._stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

    # --- submit ------------------------------------------------------------------------------------
    async def submit(self, req: SubmitRequest) -> Job:
        """Create one job (or return the existing job with ``req.job_id``)."""
        job_id = req.job_id if req.job_id is not None else uuid.uuid4().hex
        _check_id(job_id, "job_id")
        jobs = await self._create(
            req.agent,
            [job_id],
            [req.shared_vars],
            locale=req.locale,
            params=req.params,
            parent_id=req.parent_id,
            index=IndexEntry(job_id=job_id),
            vars_field="shared_vars",
        )
        return jobs[0]

    async def submit_batch(self, req: SubmitBatchRequest) -> list[Job]:
        """Create one job per entry; ids are ``<batch_id>-<index>`` so a retry completes the batch."""
        n = len(req.shared_vars_batch)
        if n > MAX_BATCH:
            raise PayloadTooLargeError(
                f"a batch holds at most {MAX_BATCH} jobs, not {n}",
                field="shared_vars_batch",
                details={"size": n, "limit": MAX_BATCH},
            )
        batch_id = req.batch_id if req.batch_id is not None else uuid.uuid4().hex
        _check_id(batch_id, "batch_id", reserve=8)
        if n == 0:
            return []
        return await self._create(
            req.agent,
            batch_job_ids(batch_id, n),
            req.shared_vars_batch,
            locale=req.locale,
            params=req.params,
            parent_id=req.parent_id,
            index=IndexEntry(batch_id=batch_id, count=n),
            vars_field="shared_vars_batch",
        )

    async def _create(
        self,
        agent: str,
        ids: list[str],
        shared_vars: Sequence[dict[str, Any] | None],
        *,
        locale: str | None,
        params: dict[str, Any] | None,
        parent_id: str | None,
        index: IndexEntry,
        vars_field: str,
    ) -> list[Job]:
        desc = await self.agents.get(agent)
        params = params or {}
        for p in desc.params:
            if p.required and p.name not in params:
                raise BadRequestError(
                    f"agent {agent!r} requires parameter {p.name!r}", field=f"params.{p.name}"
                )
        code = resolve_locale(locale).code if locale is not None else None
        if parent_id is not None:
            _check_id(parent_id, "parent_id")
            parent = await self.store.find(parent_id)
            if parent is None:
                raise NotFoundError(f"parent job {parent_id!r} not found", field="parent_id")
            code = code if code is not None else parent[0].locale
        single = len(ids) == 1 and index.job_id is not None
        for i, sv in enumerate(shared_vars):
            _check_shared_vars(sv, vars_field if single else f"{vars_field}[{i}]")

        now = utcnow()
        records = [
            JobRecord(
                id=job_id,
                agent=agent,
                locale=code,
                params=params,
                parent_id=parent_id,
                created_at=now,
                updated_at=now,
                shared_vars=sv or {},
            )
            for job_id, sv in zip(ids, shared_vars, strict=True)
        ]
        limit = self.nc.max_payload - _RECORD_HEADROOM
        for i, rec in enumerate(records):
            size = len(encode(rec))
            if size > limit:
                raise PayloadTooLargeError(
                    f"job {rec.id!r} would be {size} bytes, over the {limit}-byte record limit",
                    field=vars_field if single else f"{vars_field}[{i}]",
                    details={"size": size, "limit": limit},
                )

        kind, ident = ("j", index.job_id) if index.job_id is not None else ("b", index.batch_id or "")
        scopes = ["all", f"agent.{token(agent)}"]
        if parent_id is not None:
            scopes.append(f"parent.{token(parent_id)}")
        index_keys = [f"{INDEX_PREFIX}.{s}.{kind}.{token(ident)}" for s in scopes]
        marker_key = f"{PENDING_PREFIX}.{uuid.uuid4().hex}"
        marker = PendingMarker(
            job_ids=ids if single else [],
            batch_id=None if single else index.batch_id,
            count=len(ids),
            index_keys=index_keys,
            created_at=now,
        )
        # One burst on one connection: the marker and index entries reach the stream before the
        # records (nats-py appends each publish to the write buffer in call order), so a record is
        # never stored without its marker. A failure anywhere is a 503; the caller's retry with the
        # same ids completes the submit.
        body = encode(index)
        results = await asyncio.gather(
            self.kv.put(marker_key, encode(marker)),
            *(self._create_index(k, body) for k in index_keys),
            *(self.store.create(r) for r in records),
            return_exceptions=True,
        )
        _raise_first(results)
        created: list[tuple[JobRecord, int, bool]] = list(results[1 + len(index_keys) :])  # type: ignore[arg-type]

        fresh: list[str] = []
        retried: list[str] = []
        conflicts: list[str] = []
        for rec, _rev, was_created in created:
            if was_created:
                fresh.append(rec.id)
            elif rec.agent != agent:
                conflicts.append(rec.id)
            elif rec.status is JobStatus.READY and rec.step == 0:
                retried.append(rec.id)
        acks = await asyncio.gather(*(self.store.enqueue(j, 0) for j in fresh), return_exceptions=True)
        _raise_first(acks)
        if retried:
            await gather_chunked(retried, self._enqueue_first_step_if_absent)
        self._purge_queue.put_nowait(marker_key)
        for job_id in fresh:  # an ack per event would double the round trips; the record is the truth
            event = JobEvent(job_id=job_id, kind="status", at=now, status=JobStatus.READY, step=0)
            await self.nc.publish(job_events_subject(job_id), encode(event))
        if conflicts:
            raise ConflictError(
                f"job {conflicts[0]!r} already exists for another agent",
                field="job_id" if single else "batch_id",
                details={"job_ids": conflicts[:20]},
            )
        return [rec.public(rev) for rec, rev, _ in created]

    async def _create_index(self, key: str, body: bytes) -> None:
        # create, not put: a retry keeps the entry's first position in the listing order
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.kv.create(key, body)

    async def _enqueue_if_stranded(self, job_id: str) -> bool:
        """Enqueue step 0 of a READY job whose work message is not in the work stream."""
        found = await self.store.find(job_id)
        if found is None or found[0].status is not JobStatus.READY or found[0].step != 0:
            return False
        return await self._enqueue_first_step_if_absent(job_id)

    async def _enqueue_first_step_if_absent(self, job_id: str) -> bool:
        """Publish step 0 only if the job's work subject holds no message (one atomic publish).

        A work-queue message stays in the stream until an executor acks it, which it does only
        after committing the step; so an empty subject for a READY step-0 job means the message
        was never stored. The message id is the usual one, so a publish racing with the original
        one is deduplicated.
        """
        stored = await self.store.enqueue(job_id, 0, if_absent=True)
        if stored:
            log.debug("job %r had no work message: enqueued its first step", job_id)
        return stored

    # --- recovery ----------------------------------------------------------------------------------

    async def recover(self) -> int:
        """One recovery pass over ``pending.*`` markers; returns how many jobs it enqueued."""
        enqueued = 0
        now = utcnow()
        for key, value in await scan(self.kv, f"{PENDING_PREFIX}.>"):
            marker = msgspec.json.decode(value, type=PendingMarker)
            ids = marker.ids()
            enqueued += sum(await gather_chunked(ids, self._enqueue_if_stranded))
            if now - marker.created_at < _MARKER_GRACE:
                continue  # its submit may still be running; look again next pass
            if not any(await gather_chunked(ids, self.store.find)):
                await asyncio.gather(*(self.kv.purge(k, msg_ttl=_PURGE_TTL) for k in marker.index_keys))
            await self.kv.purge(key, msg_ttl=_PURGE_TTL)
        return enqueued

    async def _recovery_loop(self) -> None:
        while not self._stop.is_set():
            try:
                count = await self.recover()
                if count:
                    log.warning("recovery pass enqueued %d stranded job(s)", count)
            except Exception:
                log.warning("recovery pass failed; retrying next interval", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.recovery_interval)

    async def _purge_loop(self) -> None:
        while True:
            stopping = asyncio.ensure_future(self._stop.wait())
            getting = asyncio.ensure_future(self._purge_queue.get())
            await asyncio.wait({stopping, getting}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            keys = [getting.result()] if getting.done() else []
            getting.cancel()
            while not self._purge_queue.empty():
                keys.append(self._purge_queue.get_nowait())
            if keys:
                done = await gather_chunked(keys, self._purge_marker)
                if not all(done):
                    log.warning("%d pending marker(s) not purged; recovery will", done.count(False))
            if self._stop.is_set() and self._purge_queue.empty():
                return

    async def _purge_marker(self, key: str) -> bool:
        try:
            await self.kv.purge(key, msg_ttl=_PURGE_TTL)
            return True
        except Exception:
            return False

    # --- queries -----------------------------------------------------------------------------------
    async def get(self, req: JobGetRequest) -> Job:
        """The job ``req.job_id`` (404 when missing)."""
        record, rev = await self.store.get(req.job_id)
        return record.public(rev)

    async def list_jobs(self, req: JobListRequest) -> list[Job]:
        """Jobs in creation order, filtered exactly; the filter's index supplies the candidates."""
        limit = self.settings.list_default_limit if req.limit is None else req.limit
        if not 1 <= limit <= self.settings.list_max_limit:
            raise BadRequestError(f"limit must be 1..{self.settings.list_max_limit}", field="limit")
        page = 1 if req.page_number is None else req.page_number
        if page < 1:
            raise BadRequestError("page_number starts at 1", field="page_number")
        if req.parent_id is not None:
            scope = f"parent.{token(req.parent_id)}"
        elif req.agent is not None:
            scope = f"agent.{token(req.agent)}"
        else:
            scope = "all"
        ids: list[str] = []
        for _, value in await scan(self.kv, f"{INDEX_PREFIX}.{scope}.>"):
            ids.extend(msgspec.json.decode(value, type=IndexEntry).ids())
        ids = list(dict.fromkeys(ids))

        def keep(found: tuple[JobRecord, int] | None) -> bool:
            if found is None:
                return False
            rec = found[0]
            return (
                (req.agent is None or rec.agent == req.agent)
                and (req.parent_id is None or rec.parent_id == req.parent_id)
                and (req.status is None or rec.status == req.status)
            )

        offset = (page - 1) * limit
        if req.status is None:  # positions are index positions: no record before the page is read
            window = ids[offset : offset + limit]
            return [f[0].public(f[1]) for f in await gather_chunked(window, self.store.find) if keep(f)]
        out: list[Job] = []
        for i in range(0, len(ids), _CHUNK):
            for found in await gather_chunked(ids[i : i + _CHUNK], self.store.find):
                if keep(found):
                    if offset:
                        offset -= 1
                    else:
                        out.append(found[0].public(found[1]))
                        if len(out) == limit:
                            return out
        return out

    async def history(self, req: JobGetRequest) -> JobHistory:
        """The job's chat log and console, from the job-log stream."""
        await self.store.get(req.job_id)
        chat: list[ChatEntry] = []
        console: list[str] = []
        for e in await read_job_log(self.store.js, req.job_id):
            if e.kind == "chat":
                chat.append(ChatEntry(role=e.role or "assistant", content=e.text or "", step=e.step, at=e.at))
            elif e.kind == "console" and e.text is not None:
                console.append(e.text)
        return JobHistory(job_id=req.job_id, chat=chat, console=console)

    async def agents_list(self, req: Empty) -> list[AgentDescription]:
        """Every registered agent."""
        return await self.agents.all()

    async def agents_get(self, req: AgentGetRequest) -> AgentDescription:
        """One agent (404 naming it and listing the known roles)."""
        return await self.agents.get(req.agent)

    # --- transitions -------------------------------------------------------------------------------
    async def cancel(self, req: JobCancelRequest) -> Job:
        """READY/SUSPENDED → DONE now; a running job stops at its next step boundary; DONE is 409."""
        reason = req.reason if req.reason else DEFAULT_CANCEL_REASON

        def change(rec: JobRecord) -> JobRecord | None:
            if rec.status is JobStatus.DONE:
                raise ConflictError(
                    f"job {rec.id!r} is already DONE",
                    field="job_id",
                    details={"exit_status": rec.exit_status},
                )
            if rec.status in (JobStatus.READY, JobStatus.SUSPENDED):
                rec.status = JobStatus.DONE
                rec.exit_status = f"Cancelled: {reason}"
                rec.cancel_reason = reason
                rec.step += 1  # every queued message (step or wake-up) is now stale
                return rec
            if rec.cancel_reason is not None:
                return None  # already asked to stop
            rec.cancel_reason = reason
            return rec

        rec, rev, changed = await self.store.transition(req.job_id, change)
        if changed and rec.status is JobStatus.DONE:
            await self._status_event(rec, rev)
        return rec.public(rev)

    async def send_message(self, req: JobSendMessageRequest) -> Job:
        """Queue a chat message for the job; a DONE job restarts, a SUSPENDED one is woken."""
        return await self._deliver(req.job_id, "message", req.message, "message")

    async def send_notification(self, req: JobSendNotificationRequest) -> Job:
        """Queue a notification for the job; a DONE job restarts, a SUSPENDED one is woken."""
        return await self._deliver(req.job_id, "notification", req.text, "text")

    async def _deliver(self, job_id: str, kind: Any, text: str, field: str) -> Job:
        if not text.strip():
            raise BadRequestError(f"{field} must not be empty", field=field)
        event = JobEvent(job_id=job_id, kind=kind, at=utcnow(), text=text)
        limit = self.nc.max_payload - _RECORD_HEADROOM
        before: list[JobStatus] = []

        def change(rec: JobRecord) -> JobRecord:
            before[:] = [rec.status]
            rec.inbox = [*rec.inbox, event]
            if rec.status is JobStatus.DONE:  # STATEK's DONE → STARTED
                rec.status = JobStatus.STARTED
                rec.exit_status = None
                rec.cancel_reason = None
            if len(encode(rec)) > limit:
                raise PayloadTooLargeError(
                    f"job {job_id!r} has too many undelivered messages", field=field, details={"limit": limit}
                )
            return rec

        rec, rev, _ = await self.store.transition(job_id, change)
        if before[0] in (JobStatus.DONE, JobStatus.SUSPENDED):
            await self.store.enqueue(job_id, rec.step)
        await self.store.publish(msgspec.structs.replace(event, step=rec.step))
        if before[0] is JobStatus.DONE:
            await self._status_event(rec, rev)
        return rec.public(rev)

    async def _status_event(self, rec: JobRecord, rev: int) -> None:
        event = JobEvent(
            job_id=rec.id,
            kind="status",
            at=rec.updated_at,
            status=rec.status,
            step=rec.step,
            exit_status=rec.exit_status,
        )
        try:
            await self.store.publish(event)
        except Exception:  # the record is the truth; watchers fall back to it
            log.warning("could not publish status event of job %r (revision %d)", rec.id, rev, exc_info=True)


# --- validation ------------------------------------------------------------------------------------
def _check_id(value: str, field: str, *, reserve: int = 0) -> None:
    size = len(value.encode("utf-8"))
    if not value.strip() or size > MAX_ID_BYTES - reserve:
        raise BadRequestError(
            f"{field} must be a non-blank string of at most {MAX_ID_BYTES - reserve} UTF-8 bytes", field=field
        )


def _check_shared_vars(shared_vars: dict[str, Any] | None, field: str) -> None:
    for name, value in (shared_vars or {}).items():
        if not name.isidentifier() or keyword.iskeyword(name):
            raise BadRequestError(
                f"shared variable name {name!r} is not a Python identifier", field=f"{field}.{name}"
            )
        _check_tags(value, f"{field}.{name}")


def _check_tags(value: Any, path: str) -> None:
    """Tagged values (``{"$t": ...}``) must decode; classes and enums are checked by the executor."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_tags(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        tag = value.get(TAG)
        if tag is None:
            for k, v in value.items():
                _check_tags(v, f"{path}.{k}")
        elif tag in ("obj", "enum"):
            if not isinstance(value.get("cls"), str) or "v" not in value:
                raise BadRequestError(f"tagged {tag} needs 'cls' and 'v'", field=path)
        else:
            try:
                from_json(value)
            except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
                raise BadRequestError(f"invalid tagged value ({tag!r}): {exc}", field=path) from None


def _raise_first(results: Iterable[Any]) -> None:
    for r in results:
        if isinstance(r, StatekError):
            raise r
        if isinstance(r, BaseException):
            log.warning("job write failed: %r", r)
            raise ServiceUnavailableError(
                "storing the job failed (JetStream unavailable?); retry with the same job_id/batch_id"
            ) from r
