"""The submission library: validate and record jobs, enqueue their first step, query, cancel, message.

Where a submitted job goes (one pipelined burst, then one publish burst)::

    request ─▶ validate (agent from the watched registry, locale, ids, shared_vars, size)
            ─▶ read the ids' existing records (one get, or multi_last direct gets of 256 ids):
               409 for another agent's id, 413 for a reply over max_payload — nothing written
            ─▶ KV statek_jobs, in this order on one connection, awaited together:
                 pending.<nuid>          marker: "these jobs may still lack their work message"
                 idx.{all,agent.<a>,parent.<p>}.{j,b}.<id>   list indexes (one entry per job or batch)
                 idx.live.{j,b}.<id>     jobs that may still run (:mod:`statek_bus.jobs.repair`)
                 job.<id>, one per job   kv.create: the idempotency point
            ─▶ work stream: step 0 of every job created now (Nats-Msg-Id <id>:0), awaited together
            ─▶ reply                     (record + work message are both persisted)
            ─▶ purge pending.<nuid> in the background (a purge whose tombstone expires: no leak)

Why markers and not a scan: a stranded job (the service died between a record write and the work
message it needs) is found through a ``pending.<nuid>`` marker written *before* that record write,
so the recovery pass costs O(writes in flight), never O(all jobs). A submit leaves one: the
marker names the jobs (or the batch); a stranded job is READY at step 0.

For each marked job the pass reads the record and, if it is READY, STARTED, or SUSPENDED with
undelivered inbox items, publishes its current step with ``if_absent`` — stored only when the
job's work subject holds no message, checked by the server in the same step as the publish. A
running job keeps its unacknowledged work message on that subject, and a publish racing with the
original one carries the same ``Nats-Msg-Id`` and is deduplicated, so nothing runs twice. A
retried submit or message does the same for the jobs it finds already written.

A message or notification needs no marker: it is appended to the job's inbox subject
(:mod:`statek_bus.jobs.inbox`) before anything else, so the item itself is the durable trace. The
same pass sweeps the inbox stream's subjects (O(jobs with unconsumed items)) and wakes a job a
sender left unwoken (:meth:`Submission.sweep_inboxes`).

Conflicts (a ``job_id`` of another agent's job) are detected before anything is written: the
batch's existing records are read first (``multi_last`` direct gets, 256 ids per round trip), and
a 409 names the conflicting ids and writes nothing. The same read sizes the reply: a batch whose
reply would not fit the server's ``max_payload`` is 413 before anything is written.

Cancelling a READY or SUSPENDED job commits it DONE *and* advances ``step``: its queued message
goes stale, and a later restart (a message to the DONE job) enqueues a fresh step whose message
id was never used, so the work stream's deduplication cannot swallow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError

from statek_bus.jobs.checks import (
    MAX_BATCH,
    MAX_ID_BYTES,
    check_id,
    check_reply_size,
    check_shared_vars,
    conflict,
    json_paths,
)
from statek_bus.jobs.inbox import JobInbox, publish_restart, room_for, wake, wake_if_pending
from statek_bus.jobs.jobdefs import JobDefStore, check_options
from statek_bus.jobs.listing import list_jobs, read_in_order, read_records
from statek_bus.jobs.log import read_job_log
from statek_bus.jobs.registry import AgentDirectory
from statek_bus.jobs.repair import count_live, reconcile
from statek_bus.jobs.retention import reap_done
from statek_bus.jobs.store import JobStore, utcnow
from statek_bus.mesh import metrics
from statek_bus.mesh.availability import unavailable_as_503
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    StatekError,
)
from statek_bus.wire.limits import RECORD_HEADROOM
from statek_bus.wire.locale import resolve_locale
from statek_bus.wire.messages import (
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
    cancelled_exit,
    encode,
)
from statek_bus.wire.options import JobDef, JobOptions
from statek_bus.wire.subjects import (
    AGENTS_BUCKET,
    EVENTS_PREFIX,
    INDEX_PREFIX,
    LIVE_INDEX_PREFIX,
    PENDING_PREFIX,
    batch_job_ids,
    token,
)

__all__ = ["MAX_BATCH", "MAX_ID_BYTES", "Submission", "gather_chunked"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CANCEL_REASON = "no reason given"
"""``cancel_reason`` when the caller gives none (exit status ``Cancelled: no reason given``)."""

_MARKER_GRACE = timedelta(seconds=30)  # younger markers may belong to a submit still in flight
_PURGE_TTL = 60  # seconds a purge tombstone lives before the server removes it
_CHUNK = 256  # records read or checked at once
_LARGE_SHARE = 8  # a message over 1/8 of its job's record room is checked against the undelivered bytes


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
        self.jobdefs = JobDefStore(store.js)
        self.inbox = JobInbox(nc, store.js, settings)
        self._purge_queue: asyncio.Queue[str] = asyncio.Queue()
        self._stop = asyncio.Event()

    @classmethod
    async def open(cls, nc: Client, js: JetStreamContext, settings: Settings) -> Submission:
        """Bind the (provisioned) jobs and agents buckets."""
        store = await JobStore.open(js)
        return cls(nc, store, AgentDirectory(await js.key_value(AGENTS_BUCKET), nc), settings)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Submission]:
        """Run the agent watch, marker purging and the periodic recovery pass."""
        async with self.agents.running():
            self._stop.clear()
            tasks = [
                asyncio.create_task(self._recovery_loop()),
                asyncio.create_task(self._purge_loop()),
                asyncio.create_task(self._reconcile_loop()),
                asyncio.create_task(self._jobs_gauge_loop()),
                asyncio.create_task(self._retention_loop()),
            ]
            try:
                yield self
            finally:
                self._stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

    # --- submit ------------------------------------------------------------------------------------
    async def submit(self, req: SubmitRequest) -> Job:
        """Create one job (or return the existing job with ``req.job_id``)."""
        job_id = req.job_id if req.job_id is not None else uuid.uuid4().hex
        check_id(job_id, "$.job_id")
        jobs = await self._create(
            req.agent,
            [job_id],
            [req.shared_vars],
            locale=req.locale,
            params=req.params,
            parent_id=req.parent_id,
            index=IndexEntry(job_id=job_id),
            vars_field="$.shared_vars",
            options=check_options(req.options),
        )
        if await self.agents.served(req.agent) is False:  # accepted; it waits until one serves it
            jobs[0].agent_served = False
        return jobs[0]

    async def submit_batch(self, req: SubmitBatchRequest) -> list[Job]:
        """Create one job per entry; ids are ``<batch_id>-<index>`` so a retry completes the batch."""
        n = len(req.shared_vars_batch)
        if n > MAX_BATCH:
            raise PayloadTooLargeError(
                f"a batch holds at most {MAX_BATCH} jobs, not {n}; split it (each part with its own batch_id)",
                field="$.shared_vars_batch",
                details={"size": n, "limit": MAX_BATCH},
            )
        batch_id = req.batch_id if req.batch_id is not None else uuid.uuid4().hex
        check_id(batch_id, "$.batch_id", reserve=8)
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
            vars_field="$.shared_vars_batch",
            options=check_options(req.options),
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
        options: JobOptions | None = None,
    ) -> list[Job]:
        check_id(agent, "$.agent")
        with json_paths():
            desc = await self.agents.get(agent)
            code = resolve_locale(locale).code if locale is not None else None
        params = params or {}
        for p in desc.params:
            if p.required and p.name not in params:
                raise BadRequestError(
                    f"agent {agent!r} requires parameter {p.name!r}", field=f"$.params.{p.name}"
                )
        if parent_id is not None:
            check_id(parent_id, "$.parent_id")
            parent = await self.store.find(parent_id)
            if parent is None:
                raise NotFoundError(f"parent job {parent_id!r} not found", field="$.parent_id")
            code = code if code is not None else parent[0].locale
        single = index.job_id is not None
        for i, sv in enumerate(shared_vars):
            check_shared_vars(sv, vars_field if single else f"{vars_field}[{i}]")

        # Read before writing: a conflict (another agent's job under one of the ids) or a reply
        # that cannot fit is refused with nothing written.
        if single:
            found = await self.store.find(ids[0])
            existing = {ids[0]: found} if found is not None else {}
            toks = [token(ids[0])]
        else:  # token(f"{b}-{i}") == f"{token(b)}-{i}": escape once per batch, not per job
            btok = token(index.batch_id or "")
            toks = [f"{btok}-{i}" for i in range(len(ids))]
            existing = await read_records(self.nc, ids, keys=[f"job.{t}" for t in toks])
        conflicts = [j for j in ids if j in existing and existing[j][0].agent != agent]
        if conflicts:
            raise conflict(conflicts, single)
        jobdef = None
        if options is not None and len(existing) < len(ids):  # stored before a record names it
            jobdef = await self.jobdefs.put(JobDef(agent=agent, options=options))
        now = utcnow()
        limit = self.nc.max_payload - RECORD_HEADROOM
        new: list[tuple[JobRecord, bytes, str]] = []
        for i, (job_id, sv, tok) in enumerate(zip(ids, shared_vars, toks, strict=True)):
            if job_id in existing:
                continue
            rec = JobRecord(
                id=job_id,
                agent=agent,
                locale=code,
                params=params,
                parent_id=parent_id,
                created_at=now,
                updated_at=now,
                shared_vars=sv or {},
                jobdef=jobdef,
            )
            body = encode(rec)
            if len(body) > limit:
                raise PayloadTooLargeError(
                    f"job {job_id!r} would be {len(body)} bytes, over the {limit}-byte record limit",
                    field=vars_field if single else f"{vars_field}[{i}]",
                    details={"size": len(body), "limit": limit},
                )
            new.append((rec, body, tok))
        if not single:
            check_reply_size(ids, existing, [r for r, _, _ in new], limit, vars_field)

        kind, ident = ("j", index.job_id) if index.job_id is not None else ("b", index.batch_id or "")
        scopes = ["all", f"agent.{token(agent)}"]
        if parent_id is not None:
            scopes.append(f"parent.{token(parent_id)}")
        index_keys = [f"{INDEX_PREFIX}.{s}.{kind}.{token(ident)}" for s in scopes]
        index_keys.append(f"{LIVE_INDEX_PREFIX}.{kind}.{token(ident)}")  # found by reconcile()
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
        entry = encode(index)
        results = await asyncio.gather(
            self.kv.put(marker_key, encode(marker)),
            *(self._create_index(k, entry) for k in index_keys),
            *(self._create_record(rec, body, f"job.{tok}") for rec, body, tok in new),
            return_exceptions=True,
        )
        _raise_first(results)
        made_index = [k for k, made in zip(index_keys, results[1 : 1 + len(index_keys)], strict=True) if made]
        created: list[tuple[JobRecord, int, bool]] = list(results[1 + len(index_keys) :])  # type: ignore[arg-type]

        fresh: list[str] = []
        retried = [j for j, (rec, _) in existing.items() if rec.status is JobStatus.READY and rec.step == 0]
        raced: list[str] = []  # another agent created the id between our read and our write
        for rec, rev, was_created in created:
            if was_created:
                fresh.append(rec.id)
            elif rec.agent != agent:
                raced.append(rec.id)
            else:
                existing[rec.id] = (rec, rev)
                if rec.status is JobStatus.READY and rec.step == 0:
                    retried.append(rec.id)
        acks = await asyncio.gather(
            *(self.store.enqueue(j, 0, agent=agent) for j in fresh), return_exceptions=True
        )
        _raise_first(acks)
        if retried:
            await gather_chunked(retried, functools.partial(self._enqueue_first_step_if_absent, agent))
        self._purge_queue.put_nowait(marker_key)
        tok_of = {rec.id: tok for rec, _, tok in new}
        for job_id in fresh:  # an ack per event would double the round trips; the record is the truth
            event = JobEvent(job_id=job_id, kind="status", at=now, status=JobStatus.READY, step=0)
            await self.nc.publish(f"{EVENTS_PREFIX}.{tok_of[job_id]}", encode(event))
        if raced:
            if single and made_index:  # nothing of ours is left: drop the entries we just made
                await asyncio.gather(*(self.kv.purge(k, msg_ttl=_PURGE_TTL) for k in made_index))
            raise conflict(raced, single)
        made = {rec.id: rec.public(rev) for rec, rev, was_created in created if was_created}
        return [made[j] if j in made else existing[j][0].public(existing[j][1]) for j in ids]

    async def _create_index(self, key: str, body: bytes) -> bool:
        """Create an index entry (create, not put: a retry keeps its first position); made now?"""
        try:
            await self.kv.create(key, body)
            return True
        except KeyWrongLastSequenceError:
            return False

    async def _create_record(self, rec: JobRecord, body: bytes, key: str) -> tuple[JobRecord, int, bool]:
        """:meth:`JobStore.create` with the record already encoded (to size it) and its key escaped."""
        try:
            with unavailable_as_503(f"storing job {rec.id!r}"):
                rev = await self.kv.create(key, body)
            return rec, int(rev), True
        except KeyWrongLastSequenceError:
            return await self.store.create(rec)

    async def _enqueue_first_step_if_absent(self, agent: str, job_id: str) -> bool:
        """Publish step 0 only if the job's work subject holds no message (one atomic publish).

        A work-queue message stays in the stream until an executor acks it, which it does only
        after committing the step; so an empty subject for a READY step-0 job means the message
        was never stored. The message id is the usual one, so a publish racing with the original
        one is deduplicated.
        """
        stored = await self.store.enqueue(job_id, 0, agent=agent, if_absent=True)
        if stored:
            log.debug("job %r had no work message: enqueued its first step", job_id)
        return stored

    # --- recovery ----------------------------------------------------------------------------------

    async def recover(self) -> int:
        """One recovery pass over ``pending.*`` markers; returns how many jobs it enqueued."""
        enqueued = 0
        now = utcnow()
        async for markers in read_in_order(self.nc, f"{PENDING_PREFIX}.>"):
            for key, value, _ in markers:
                marker = msgspec.json.decode(value, type=PendingMarker)
                ids = marker.ids()
                records = await read_records(self.nc, ids)
                enqueued += await self._enqueue_stranded(records)
                if now - marker.created_at < _MARKER_GRACE:
                    continue  # its write may still be running; look again next pass
                if marker.index_keys and not records:
                    await asyncio.gather(*(self.kv.purge(k, msg_ttl=_PURGE_TTL) for k in marker.index_keys))
                await self.kv.purge(key, msg_ttl=_PURGE_TTL)
        return enqueued + await self.sweep_inboxes()

    async def sweep_inboxes(self) -> int:
        """Wake every job with unconsumed inbox items that nothing will run; purge consumed ones.

        It repairs a sender that died between its append and its wake-up (the item is durable;
        nothing else names the job). A cancelled job is left alone: a cancel wins over a message
        that was on its way. Returns how many work messages it stored.
        """
        stored = 0
        for job_id in await self.inbox.job_ids():
            found = await self.store.find(job_id)
            if found is None:
                continue
            record = found[0]
            if await wake_if_pending(self.store, self.inbox, record):
                stored += 1
                log.debug("job %r had undelivered inbox items and no step to run: woken", job_id)
            elif record.inbox_seq:
                await self.inbox.purge(job_id, record.inbox_seq)
        return stored

    async def _enqueue_stranded(self, records: dict[str, tuple[JobRecord, int]]) -> int:
        """Queue the current step of each job that may lack its work message; returns how many.

        A job qualifies when it is READY, STARTED, or SUSPENDED with undelivered inbox items (the
        states a submit or a restarting message leaves it in). The publish uses ``if_absent``: the
        server stores it only if the job's work subject is empty, checking and storing in one step.
        The record is not read again before publishing: if it moved meanwhile, a running job still
        holds its unacknowledged message on the subject (nothing is stored), a publish equal to one
        already made is dropped by its ``Nats-Msg-Id``, and a message for a step the job has since
        passed is stale, which the executor acknowledges without running anything.
        """
        steps = [
            (rec.id, rec.step, rec.agent)
            for rec, _ in records.values()
            if rec.status in (JobStatus.READY, JobStatus.STARTED)
            or (rec.status is JobStatus.SUSPENDED and rec.inbox)
        ]

        async def one(item: tuple[str, int, str]) -> bool:
            return await self.store.enqueue(item[0], item[1], agent=item[2], if_absent=True)

        stored = await gather_chunked(steps, one)
        for (job_id, step, _), ok in zip(steps, stored, strict=True):
            if ok:
                log.debug("job %r had no work message: enqueued step %d", job_id, step)
        return sum(stored)

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

    async def _jobs_gauge_loop(self) -> None:
        interval = self.settings.jobs_gauge_interval
        while interval > 0 and not self._stop.is_set():
            try:
                for status, n in (await count_live(self.nc)).items():
                    metrics.JOBS.labels(status=status.value).set(n)
            except Exception:
                log.debug("counting jobs by status failed; retrying next interval", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _retention_loop(self) -> None:
        interval, keep = self.settings.retention_interval, self.settings.job_retention
        while interval > 0 and keep > 0 and not self._stop.is_set():
            try:
                report = await reap_done(
                    self.nc, self.store.js, older_than=timedelta(seconds=keep), pause=0.05
                )
                if report.reaped:
                    log.info("retention: removed %d DONE job(s) older than %gs", report.reaped, keep)
            except Exception:
                log.warning("retention pass failed; retrying next interval", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _reconcile_loop(self) -> None:
        interval = self.settings.reconcile_interval
        while interval > 0 and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return
            try:
                report = await reconcile(self.nc, self.store, pause=0.05)
                if report.enqueued:
                    log.warning("reconcile: %d runnable job(s) had lost their work message", report.enqueued)
            except Exception:
                log.warning("reconcile pass failed; retrying next interval", exc_info=True)

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
        check_id(req.job_id, "$.job_id")
        with json_paths():
            record, rev = await self.store.get(req.job_id)
        return record.public(rev)

    async def list_jobs(self, req: JobListRequest) -> list[Job]:
        """Jobs in creation order, filtered exactly, at a bounded cost (:mod:`statek_bus.jobs.listing`)."""
        if req.agent is not None:
            check_id(req.agent, "$.agent")
        if req.parent_id is not None:
            check_id(req.parent_id, "$.parent_id")
        return await list_jobs(self.nc, self.settings, req)

    async def history(self, req: JobGetRequest) -> JobHistory:
        """The job's chat log and console, from the job-log stream."""
        check_id(req.job_id, "$.job_id")
        with json_paths():
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
        check_id(req.agent, "$.agent")
        with json_paths():
            return await self.agents.describe(req.agent)

    # --- transitions -------------------------------------------------------------------------------
    async def cancel(self, req: JobCancelRequest) -> Job:
        """READY/SUSPENDED → DONE now; a running job stops at its next step boundary; DONE is 409."""
        check_id(req.job_id, "$.job_id")
        reason = req.reason if req.reason else DEFAULT_CANCEL_REASON
        limit = self.nc.max_payload - RECORD_HEADROOM

        def fits(rec: JobRecord) -> JobRecord:
            # the reason is stored twice (cancel_reason, exit_status): refuse what cannot be stored
            if len(encode(rec)) > limit:
                raise PayloadTooLargeError(
                    f"the cancel reason makes job {rec.id!r} over the {limit}-byte record limit",
                    field="$.reason",
                    details={"limit": limit},
                )
            return rec

        def change(rec: JobRecord) -> JobRecord | None:
            if rec.status is JobStatus.DONE:
                raise ConflictError(
                    f"job {rec.id!r} is already DONE",
                    field="$.job_id",
                    details={"exit_status": rec.exit_status},
                )
            if rec.status in (JobStatus.READY, JobStatus.SUSPENDED):
                rec.end(cancelled_exit(reason))
                rec.cancel_reason = reason
                rec.step += 1  # every queued message (step or wake-up) is now stale
                return fits(rec)
            if rec.cancel_reason is not None:
                return None  # already asked to stop
            rec.cancel_reason = reason
            return fits(rec)

        with json_paths():
            rec, rev, changed = await self.store.transition(req.job_id, change)
        if changed and rec.status is JobStatus.DONE:
            await self._status_event(rec, rev)
        return rec.public(rev)

    async def send_message(self, req: JobSendMessageRequest) -> Job:
        """Queue a chat message for the job; a DONE job restarts, a SUSPENDED one is woken."""
        return await self._deliver(req.job_id, "message", req.message, "$.message", req.message_id)

    async def send_notification(self, req: JobSendNotificationRequest) -> Job:
        """Queue a notification for the job; a DONE job restarts, a SUSPENDED one is woken."""
        return await self._deliver(req.job_id, "notification", req.text, "$.text", req.message_id)

    async def _deliver(self, job_id: str, kind: Any, text: str, field: str, message_id: str | None) -> Job:
        """Append ``text`` to the job's inbox, then make sure a step will consume it.

        The append is one publish to the job's inbox subject (:mod:`statek_bus.jobs.inbox`): it
        never contends with other senders or the executor. An unknown job (404), a message that
        could not fit in the job's record (413) and a full inbox (413, refused by the server)
        store nothing. A sender that dies after the append leaves a durable item that the
        recovery sweep finds; a retry with the same ``message_id`` stores nothing new.
        """
        check_id(job_id, "$.job_id")
        if message_id is not None:
            check_id(message_id, "$.message_id")
        if not text.strip():
            raise BadRequestError(f"{field.removeprefix('$.')} must not be empty", field=field)
        event = JobEvent(job_id=job_id, kind=kind, at=utcnow(), text=text)
        with json_paths():
            current, _ = await self.store.get(job_id)
        room = room_for(current, self.nc.max_payload)
        size = len(encode(event))
        if size <= room and size > room // _LARGE_SHARE:
            # a large one is checked against what waits before it (a small one costs no read)
            room -= await self.inbox.undelivered_bytes(job_id, current.inbox_seq, up_to=room)
        if size > room:
            raise PayloadTooLargeError(
                f"the {kind} would not fit in job {job_id!r}'s record beside its undelivered "
                f"messages ({max(room, 0)} bytes left)",
                field=field,
                details={"limit": max(room, 0)},
            )
        seq = await self.inbox.append(event, message_id=message_id, field=field)
        woken = await wake(self.store, self.inbox, job_id, seq, restart_cancelled=True)
        if woken is None:  # deleted meanwhile
            raise NotFoundError(f"job {job_id!r} not found", field="$.job_id")
        rec, rev = woken.record, woken.revision
        await self.store.publish(msgspec.structs.replace(event, step=rec.step))
        if woken.restarted:
            await publish_restart(self.store, rec)
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


def _raise_first(results: Iterable[Any]) -> None:
    for r in results:
        if isinstance(r, StatekError):
            raise r
        if isinstance(r, BaseException):
            log.warning("job write failed: %r", r)
            raise ServiceUnavailableError(
                "storing the job failed (JetStream unavailable?); retry with the same job_id/batch_id"
            ) from r
