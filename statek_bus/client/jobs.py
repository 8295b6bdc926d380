"""The client side of jobs: :class:`AsyncJobs` (``AsyncStatekClient().jobs``).

Submitting is safe to retry: the client picks the ``job_id`` (or ``batch_id``) when the caller does
not, so a submit that timed out or hit a restarting service is retried with the same ids and the
service returns the jobs it already created instead of making new ones.

``shared_vars`` are encoded here with the tagged value codec (:mod:`statek_bus.wire.values`), so
datetimes, UUIDs, Decimals, bytes, sets... survive; a value that cannot be encoded is a
``TypeError`` naming the variable, raised before anything is sent. A bad locale is an
:class:`~statek_bus.wire.locale.UnknownLocaleError`, also before sending.

:meth:`AsyncJobs.wait` and :meth:`AsyncJobs.watch` are event-driven: they watch the job's record
through its events subject (subscribed before the job is read, so a completion can never fall
between a read and a subscription) and its log in the job-log stream, read with direct gets. A
client needs no permission on the jobs bucket or to create consumers (docs/permissions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec
from nats.aio.msg import Msg

from statek_bus.client.transport import Transport
from statek_bus.jobs import checks as jobchecks
from statek_bus.mesh.direct import direct_get
from statek_bus.wire.errors import PayloadTooLargeError, ServiceUnavailableError
from statek_bus.wire.locale import StatekLocale, resolve_locale
from statek_bus.wire.messages import (
    AgentDescription,
    AgentGetRequest,
    Empty,
    Job,
    JobCancelRequest,
    JobEvent,
    JobGetRequest,
    JobHistory,
    JobListRequest,
    JobSendMessageRequest,
    JobSendNotificationRequest,
    JobStatus,
    SubmitBatchRequest,
    SubmitRequest,
    decode,
    encode,
)
from statek_bus.wire.options import JobOptions
from statek_bus.wire.subjects import (
    AGENTS_GET,
    AGENTS_LIST,
    JOB_LOG_STREAM,
    JOBS_CANCEL,
    JOBS_GET,
    JOBS_HISTORY,
    JOBS_LIST,
    JOBS_SEND_MESSAGE,
    JOBS_SEND_NOTIFICATION,
    JOBS_SUBMIT,
    JOBS_SUBMIT_BATCH,
    job_events_subject,
)
from statek_bus.wire.values import to_json

__all__ = ["OPTION_NAMES", "AsyncJobs", "agent_role", "encode_shared_vars", "split_options"]

Jobs = list[Job]
Agents = list[AgentDescription]
_SUBMIT_ATTEMPTS = 3
_RETRY_DELAYS = (0.2, 1.0)
_DONE_GRACE = 2.0  # seconds watch() waits for the DONE event once the record says DONE
_RECHECK = 5.0
"""Seconds wait() and watch() go without an event before they read the job again (an event lost
to a reconnect, or an executor that died between its commit and the event, would else be missed)."""
_REPLAY_BATCH = 256


def _is_done(data: bytes) -> bool:
    """Whether an event's JSON is a DONE status (decoded only when it may be one)."""
    if b'"DONE"' not in data:
        return False
    event = decode(data, JobEvent)
    return event.kind == "status" and event.status is JobStatus.DONE


def agent_role(agent: Any) -> str:
    """The role of ``agent``: a role string, or any object with a ``role`` attribute."""
    if isinstance(agent, str):
        return agent
    role = getattr(agent, "role", None)
    if not isinstance(role, str):
        raise TypeError(
            f"agent must be a role string or have a str 'role' attribute, not {type(agent).__name__}"
        )
    return role


def encode_shared_vars(
    shared_vars: Mapping[str, Any] | None, label: str = "shared_vars"
) -> dict[str, Any] | None:
    """Encode a ``shared_vars`` mapping with the tagged value codec.

    Raises:
        TypeError: ``shared_vars`` is not a mapping of ``str`` names, or a value cannot be encoded
            (the message names the variable and the path inside it).
    """
    if shared_vars is None:
        return None
    if not isinstance(shared_vars, Mapping):
        raise TypeError(
            f"{label} must be a dict of variable names to values, not {type(shared_vars).__name__}"
        )
    out: dict[str, Any] = {}
    for name, value in shared_vars.items():
        if not isinstance(name, str):
            raise TypeError(f"{label}: variable names must be str, not {type(name).__name__} ({name!r})")
        out[name] = to_json(value, path=f"{label}[{name!r}]")
    return out


OPTION_NAMES = ("warmup_code", "post_processing", "provider_config", "extra_resources")
"""STATEK's per-job option keywords of ``submit_new_job`` / ``create_new_job``."""


def split_options(kwargs: Mapping[str, Any]) -> tuple[JobOptions | None, dict[str, Any]]:
    """``(options, params)`` of STATEK-style keywords: the :data:`OPTION_NAMES` set (not ``None``)
    become :class:`~statek_bus.wire.messages.JobOptions`, the rest the job's parameters."""
    params = {k: v for k, v in kwargs.items() if k not in OPTION_NAMES}
    given = {k: kwargs[k] for k in OPTION_NAMES if kwargs.get(k) is not None}
    return (JobOptions(**given) if given else None), params


class AsyncJobs:
    """Submit, query, cancel, message, wait for and watch jobs.

    Args:
        client: the transport (an :class:`~statek_bus.client.core.AsyncStatekClient`) it requests through.
    """

    def __init__(self, client: Transport) -> None:
        self._client = client

    # --- submit ------------------------------------------------------------------------------------
    async def submit(
        self,
        agent: Any,
        shared_vars: Mapping[str, Any] | None = None,
        locale: StatekLocale | str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        parent_id: str | None = None,
        options: JobOptions | None = None,
    ) -> Job:
        """Create one job; the same ``job_id`` twice returns the first job.

        Args:
            agent: a role string or an agent object (its ``role``).
            shared_vars: variables in scope when the job starts.
            locale: a :class:`StatekLocale` or ``"LANG-COUNTRY"``.
            params: agent-specific parameters (``**kwargs`` of ``submit_new_job``).
            job_id: idempotency key (generated when omitted, so retries are safe).
            parent_id: the parent job, for a child job.
            options: the job's own warmup code, post-processors, provider config and extra
                resources (:class:`~statek_bus.wire.messages.JobOptions`); jobs with the same
                options share one stored definition.
        """
        req = SubmitRequest(
            agent=agent_role(agent),
            shared_vars=encode_shared_vars(shared_vars),
            locale=resolve_locale(locale).code if locale is not None else None,
            params=dict(params) if params else None,
            job_id=job_id if job_id is not None else uuid.uuid4().hex,
            parent_id=parent_id,
            options=options,
        )
        job: Job = await self._submit(JOBS_SUBMIT, req, Job)
        return job

    async def submit_batch(
        self,
        agent: Any,
        shared_vars_batch: Sequence[Mapping[str, Any] | None],
        locale: StatekLocale | str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        batch_id: str | None = None,
        parent_id: str | None = None,
        options: JobOptions | None = None,
    ) -> Jobs:
        """Create one job per ``shared_vars_batch`` entry (ids ``<batch_id>-<index>``); ``options``
        apply to every job (they share one definition).

        Retrying with the same ``batch_id`` completes an interrupted batch exactly once. A batch
        over :data:`~statek_bus.jobs.checks.MAX_BATCH` entries is sent as parts ``p = 0, 1, ...`` of
        at most that many, each a batch of its own with id ``<batch_id>.p<p>``: job ids are then
        ``<batch_id>.p<p>-<index within the part>``, and a retry with the same ``batch_id`` and
        entries derives the same ids, so the exactly-once contract holds part by part.
        """
        if isinstance(shared_vars_batch, Mapping | str | bytes):
            raise TypeError("shared_vars_batch must be a list with one shared_vars dict (or None) per job")
        encoded = [
            encode_shared_vars(sv, f"shared_vars_batch[{i}]") for i, sv in enumerate(shared_vars_batch)
        ]
        role = agent_role(agent)
        code = resolve_locale(locale).code if locale is not None else None
        params_ = dict(params) if params else None
        bid = batch_id if batch_id is not None else uuid.uuid4().hex
        size = jobchecks.MAX_BATCH
        if len(encoded) <= size:
            parts = [(bid, encoded)]
        else:
            parts = [
                (f"{bid}.p{n}", encoded[i : i + size]) for n, i in enumerate(range(0, len(encoded), size))
            ]
        out: Jobs = []
        for part_id, entries in parts:
            req = SubmitBatchRequest(
                agent=role,
                shared_vars_batch=entries,
                locale=code,
                params=params_,
                batch_id=part_id,
                parent_id=parent_id,
                options=options,
            )
            jobs: Jobs = await self._submit(JOBS_SUBMIT_BATCH, req, Jobs)
            out.extend(jobs)
        return out

    async def submit_new_job(
        self,
        agent: Any,
        shared_vars: Mapping[str, Any] | None = None,
        locale: StatekLocale | str | None = None,
        **kwargs: Any,
    ) -> Job:
        """STATEK's signature: ``warmup_code``, ``post_processing``, ``provider_config`` and
        ``extra_resources`` are the job's options (:func:`split_options`), other ``**kwargs`` its ``params``."""
        options, params = split_options(kwargs)
        return await self.submit(agent, shared_vars, locale, params=params, options=options)

    async def submit_new_jobs_batch(
        self,
        agent: Any,
        shared_vars_batch: Sequence[Mapping[str, Any] | None],
        locale: StatekLocale | str | None = None,
        **kwargs: Any,
    ) -> Jobs:
        """STATEK's signature: the per-job options (:func:`split_options`) apply to every job, other
        ``**kwargs`` become every job's ``params``."""
        options, params = split_options(kwargs)
        return await self.submit_batch(agent, shared_vars_batch, locale, params=params, options=options)

    async def _submit(self, subject: str, req: Any, reply: Any) -> Any:
        body = encode(req)
        nc = await self._client.connection()
        if len(body) > nc.max_payload:
            raise PayloadTooLargeError(
                f"request is {len(body)} bytes, over the server's {nc.max_payload}-byte message limit",
                details={"size": len(body), "limit": nc.max_payload},
            )
        for attempt in range(_SUBMIT_ATTEMPTS):
            try:
                return await self._client.request(subject, msgspec.Raw(body), reply)
            except ServiceUnavailableError:
                if attempt == _SUBMIT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_RETRY_DELAYS[attempt])
        raise AssertionError("unreachable")  # pragma: no cover

    # --- queries and transitions -------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        """The job (``NotFoundError`` when there is none)."""
        return await self._client.request(JOBS_GET, JobGetRequest(job_id=job_id), Job)

    async def list(
        self,
        agent: Any = None,
        status: JobStatus | str | None = None,
        parent_id: str | None = None,
        limit: int | None = None,
        page_number: int | None = None,
    ) -> Jobs:
        """Jobs in creation order, filtered by agent, status and parent; pages start at 1."""
        req = JobListRequest(
            agent=agent_role(agent) if agent is not None else None,
            status=JobStatus(status) if status is not None else None,
            parent_id=parent_id,
            limit=limit,
            page_number=page_number,
        )
        return await self._client.request(JOBS_LIST, req, Jobs)

    async def cancel(self, job_id: str, reason: str | None = None) -> Job:
        """Cancel: a READY/SUSPENDED job ends now, a running one at its next step; DONE is 409."""
        return await self._client.request(JOBS_CANCEL, JobCancelRequest(job_id=job_id, reason=reason), Job)

    async def send_message(self, job_id: str, message: str, *, message_id: str | None = None) -> Job:
        """Send a chat message to the job; a DONE job restarts (DONE → STARTED).

        ``message_id`` is the send's idempotency key (a uuid4 when omitted): a 503 is retried with
        it, and the job receives the message once.
        """
        req = JobSendMessageRequest(job_id=job_id, message=message, message_id=message_id or uuid.uuid4().hex)
        job: Job = await self._submit(JOBS_SEND_MESSAGE, req, Job)
        return job

    async def send_notification(self, job_id: str, text: str, *, message_id: str | None = None) -> Job:
        """Send a notification to the job; a DONE job restarts (DONE → STARTED).

        ``message_id``: as for :meth:`send_message`.
        """
        req = JobSendNotificationRequest(job_id=job_id, text=text, message_id=message_id or uuid.uuid4().hex)
        job: Job = await self._submit(JOBS_SEND_NOTIFICATION, req, Job)
        return job

    async def history(self, job_id: str) -> JobHistory:
        """The job's chat log and console output."""
        return await self._client.request(JOBS_HISTORY, JobGetRequest(job_id=job_id), JobHistory)

    async def agents(self) -> Agents:
        """Every agent an executor registered."""
        return await self._client.request(AGENTS_LIST, Empty(), Agents)

    async def agent(self, role: str) -> AgentDescription:
        """One agent's description (``NotFoundError`` lists the known roles)."""
        return await self._client.request(AGENTS_GET, AgentGetRequest(agent=role), AgentDescription)

    # --- wait and watch ----------------------------------------------------------------------------
    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Return the job once it is DONE (at once if it already is).

        It subscribes the job's events subject first, then reads the job (``statek.jobs.get``)
        and reads it again on each DONE event, so a completion can never fall between the two;
        a re-read every :data:`_RECHECK` seconds covers an event lost to a reconnect. A client
        needs no JetStream permission for it (docs/permissions.md).

        Raises:
            NotFoundError: there is no such job.
            TimeoutError: it is not DONE within ``timeout`` seconds.
        """
        nc = await self._client.connection()
        done = asyncio.Event()

        async def on_event(msg: Msg) -> None:
            if _is_done(msg.data):
                done.set()

        sub = await nc.subscribe(job_events_subject(job_id), cb=on_event)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    done.clear()
                    job = await self.get(job_id)
                    if job.status is JobStatus.DONE:
                        return job
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), _RECHECK)
        except TimeoutError:
            raise TimeoutError(f"job {job_id!r} is not DONE after {timeout:g}s") from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def watch(self, job_id: str, *, replay: bool = True) -> AsyncIterator[JobEvent]:
        """The job's events (status changes, console lines, chat messages) until it is DONE.

        Args:
            job_id: the job.
            replay: start with the events the job already has (else only new ones).

        It subscribes the job's events subject, then replays the job's log (``statek_job_log``)
        with batched direct gets, and goes on with the live events it has not replayed: no
        consumer on the server, no permission beyond reading. The iterator ends after the DONE
        status event. If the job is DONE but its event never comes (an executor that died between
        the two), a DONE event is made from the job.
        """
        nc = await self._client.connection()
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_event(msg: Msg) -> None:
            queue.put_nowait(msg.data)

        subject = job_events_subject(job_id)
        sub = await nc.subscribe(subject, cb=on_event)
        try:
            first = await self.get(job_id)  # NotFoundError now for a job that is not there
            replayed: set[bytes] = set()
            if replay:
                async for data, last in self._replay(subject):
                    replayed.add(data)
                    event = decode(data, JobEvent)
                    yield event
                    if last and _is_done(data):
                        return
            checked_done: Job | None = first if first.status is JobStatus.DONE else None
            while True:
                try:
                    data = await asyncio.wait_for(
                        queue.get(), _DONE_GRACE if checked_done is not None else _RECHECK
                    )
                except TimeoutError:
                    if checked_done is not None:
                        yield JobEvent(
                            job_id=job_id,
                            kind="status",
                            at=checked_done.updated_at,
                            status=JobStatus.DONE,
                            step=None,
                            exit_status=checked_done.exit_status,
                        )
                        return
                    job = await self.get(job_id)  # NotFoundError for a job that is not there
                    checked_done = job if job.status is JobStatus.DONE else None
                    continue
                if data in replayed:  # published before the replay read it
                    replayed.discard(data)
                    continue
                yield decode(data, JobEvent)
                if _is_done(data):
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _replay(self, subject: str) -> AsyncIterator[tuple[bytes, bool]]:
        """Each stored event on ``subject`` in order, and whether it is the last one stored now."""
        nc = await self._client.connection()
        start = 1
        timeout = self._client.settings.request_timeout
        while True:
            batch = await direct_get(
                nc,
                JOB_LOG_STREAM,
                {"seq": start, "next_by_subj": subject, "batch": _REPLAY_BATCH},
                timeout=timeout,
            )
            for i, msg in enumerate(batch.messages):
                yield msg.data, batch.pending == 0 and i == len(batch.messages) - 1
            if not batch.messages or batch.pending == 0 or batch.last_sequence is None:
                return
            start = batch.last_sequence + 1
