"""Provisioning (creating and migrating storage) and verifying it: two steps, two identities.

:func:`provision` creates every bucket and stream statek-bus uses, or checks that those that exist
have the config this version needs; it is what ``statek-bus provision`` runs, with administrator
credentials, before the services start (a Kubernetes Job, or ``statek-bus up`` itself). It is
idempotent and safe from many processes at once: creating a stream with the config it already has
is a no-op on the server. A stream that exists with another config is a :class:`ProvisionError`
naming each difference (``nats kv edit`` / ``nats stream edit`` or a new data dir fixes it)
instead of the server's bare "stream name already in use". It also migrates the work queue of
versions before executor pools (one shared consumer, ``statek.work.run.<job>`` subjects).

A service only *verifies* (:func:`verify`) the streams it uses (``STATEK_PROVISION=verify``): it
needs no permission to create anything, and what is missing or forbidden is one
:class:`ProvisionError` line after at most one request timeout, all streams checked at once.
``STATEK_PROVISION=auto`` (the default, for a laptop and the test fixtures) lets a service
provision first, as every version before this one did (:func:`prepare`).

Work consumers are the executors' own: one durable pull consumer per agent
(``statek_agent_<agent>``, filtered on ``statek.work.run.<agent>.*``), created or updated by every
executor serving that agent with its delivery settings (:func:`configure_work_consumers`). A job
of an agent nobody serves waits in the stream, and a consumer created later starts with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from statek_bus.mesh.settings import Settings
from statek_bus.wire import subjects as s
from statek_bus.wire.messages import JobRecord, WorkMessage, decode

__all__ = [
    "ProvisionError",
    "configure_work_consumers",
    "desired_streams",
    "object_store_stream",
    "prepare",
    "provision",
    "verify",
    "work_consumer_config",
]

_IN_USE = 10058
_KV_COMMON: dict[str, Any] = {
    "retention": RetentionPolicy.LIMITS,
    "discard": DiscardPolicy.NEW,
    "allow_rollup_hdrs": True,
    "deny_delete": True,
    "allow_msg_ttl": True,
    "allow_direct": True,
    "max_msg_size": -1,
}
# Fields compared when a stream already exists; the rest are server-filled defaults.
_COMPARED = (
    "subjects",
    "retention",
    "storage",
    "num_replicas",
    "max_msgs_per_subject",
    "max_age",
    "allow_direct",
    "allow_msg_ttl",
    "allow_msg_schedules",
    "discard",
    "max_bytes",
    "compression",
    "discard_new_per_subject",
)


class ProvisionError(RuntimeError):
    """Storage is missing, forbidden to this identity, or exists with a config this version cannot use."""


def _kv(bucket: str, settings: Settings, history: int, max_bytes: int) -> StreamConfig:
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_msgs_per_subject=history,
        duplicate_window=120.0,
        max_age=0,
        max_bytes=max_bytes,
        compression=StoreCompression.S2,
        **_KV_COMMON,
    )


def desired_streams(settings: Settings) -> list[StreamConfig]:
    """The config of every stream (KV buckets are streams named ``KV_<bucket>``)."""
    return [
        _kv(s.JOBS_BUCKET, settings, settings.job_history, settings.jobs_max_bytes),
        _kv(s.AGENTS_BUCKET, settings, 1, settings.agents_max_bytes),
        _kv(s.JOBDEFS_BUCKET, settings, 1, settings.jobdefs_max_bytes),
        _kv(s.STATES_BUCKET, settings, settings.state_history, settings.states_max_bytes),
        _kv(s.CONTEXT_BUCKET, settings, 4, settings.context_max_bytes),
        _kv(s.KNOWLEDGE_BUCKET, settings, 1, settings.knowledge_max_bytes),
        StreamConfig(
            name=s.AGENT_EVENTS_STREAM,
            subjects=[f"{s.AGENT_EVENTS_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.dedup_window,
            max_age=0,
            max_bytes=settings.agent_events_max_bytes,
            discard=DiscardPolicy.NEW,  # a full queue refuses the publisher, never drops an event
            compression=StoreCompression.S2,
        ),
        StreamConfig(
            name=s.WORK_STREAM,
            subjects=[f"{s.WORK_RUN_PREFIX}.>", f"{s.WORK_SCHEDULE_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.dedup_window,
            allow_msg_schedules=True,
            max_age=0,
            # JetStream refuses discard=new beside message schedules, so a full queue drops its oldest
            # messages; reconcile() re-enqueues a runnable job whose step was dropped
            max_bytes=settings.work_max_bytes,
            compression=StoreCompression.S2,
        ),
        StreamConfig(
            name=s.JOB_LOG_STREAM,
            subjects=[f"{s.EVENTS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            allow_direct=True,
            max_age=0,
            max_bytes=settings.job_log_max_bytes,
            discard=DiscardPolicy.OLD,  # a full log drops its oldest events; retention reaps per job
            compression=StoreCompression.S2,
        ),
        _inbox_stream(settings),
    ]


def _inbox_stream(settings: Settings) -> StreamConfig:
    # Every job's inbox, one subject per job. The server enforces the per-job limit: a publish
    # over ``inbox_limit`` stored messages on the subject is refused (10077) and stores nothing.
    # No max_age: an unconsumed message stays until its job consumes it; the consuming step (or
    # the recovery sweep) purges what the job has consumed (docs/architecture.md, "Inbox").
    return StreamConfig(
        name=s.INBOX_STREAM,
        subjects=[f"{s.INBOX_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_msgs_per_subject=settings.inbox_limit,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        duplicate_window=settings.dedup_window,
        allow_direct=True,
        max_age=0,
        max_bytes=settings.inbox_max_bytes,  # full: a send is refused (discard new), never one dropped
        compression=StoreCompression.S2,
    )


def object_store_stream() -> str:
    """The stream behind the workspace object store."""
    return f"OBJ_{s.OBJECT_STORE_BUCKET}"


def work_consumer_config(settings: Settings, agent: str) -> ConsumerConfig:
    """The durable pull consumer every executor replica serving ``agent`` shares."""
    return ConsumerConfig(
        durable_name=s.work_consumer(agent),
        filter_subject=s.work_filter(agent),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=max(1000, settings.max_concurrency * 20),
    )


# --- provisioning ---------------------------------------------------------------------------------
async def provision(js: JetStreamContext, settings: Settings, *, attempts: int = 20) -> None:
    """Create every stream, bucket and the object store, or verify they match; migrate the work queue."""
    for cfg in desired_streams(settings):
        await _retrying(lambda cfg=cfg: _ensure_stream(js, cfg), attempts)
    await _retrying(lambda: _ensure_object_store(js, settings), attempts)
    await _retrying(lambda: _migrate_work(js), attempts)


async def configure_work_consumers(js: JetStreamContext, settings: Settings, agents: Iterable[str]) -> None:
    """Create or update the work consumer of each of ``agents`` with this executor's delivery settings.

    Only these agents' consumers are touched: adding or removing a pool changes no other pool's.
    """
    for agent in agents:
        await _retrying(
            lambda agent=agent: js.add_consumer(s.WORK_STREAM, work_consumer_config(settings, agent)), 20
        )


async def prepare(js: JetStreamContext, settings: Settings, streams: Iterable[str]) -> None:
    """What a service does at start: check the ``streams`` it uses; with ``auto``, provision first.

    The check comes first either way, all streams at once: an identity that may not even read
    them fails here, in one line, instead of in a series of create requests the server drops.
    """
    names = list(dict.fromkeys(streams))
    if settings.provision == "auto":
        problems = await _problems(js, settings, names)
        forbidden = [text for kind, text in problems if kind == "forbidden"]
        if forbidden:
            raise ProvisionError(_not_ready(forbidden))
        await provision(js, settings)
    await verify(js, settings, names)


async def _retrying(op: Any, attempts: int) -> None:
    # A freshly started cluster may not have a meta leader yet: retry unavailable answers briefly.
    for i in range(attempts):
        try:
            await op()
            return
        except (ServiceUnavailableError, TimeoutError):
            if i == attempts - 1:
                raise
            await asyncio.sleep(0.25)


async def _ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
    except BadRequestError as exc:
        if exc.err_code != _IN_USE:
            raise
        assert cfg.name is not None
        diffs = _differences(cfg, (await js.stream_info(cfg.name)).config)
        raise ProvisionError(
            f"{_what(cfg.name)} exists with a different config: {'; '.join(diffs) or 'server-side differences'}"
        ) from None


def _differences(want: StreamConfig, have: StreamConfig) -> list[str]:
    return [
        f"{field} {getattr(want, field)!r} wanted, {getattr(have, field)!r} found"
        for field in _COMPARED
        if _norm(getattr(want, field)) != _norm(getattr(have, field))
    ]


def _what(stream: str) -> str:
    if stream.startswith("KV_"):
        return f"bucket {stream[3:]}"
    if stream.startswith("OBJ_"):
        return f"object store {stream[4:]}"
    return f"stream {stream}"


def _norm(v: Any) -> Any:
    if v in (None, False, 0, 0.0, -1):
        return None
    return sorted(v) if isinstance(v, list) else v


async def _ensure_object_store(js: JetStreamContext, settings: Settings) -> None:
    try:
        await js.object_store(s.OBJECT_STORE_BUCKET)
    except NotFoundError:
        try:
            await js.create_object_store(
                s.OBJECT_STORE_BUCKET,
                storage=StorageType.FILE,
                replicas=settings.replicas,
                max_bytes=settings.blobs_max_bytes,  # nats-py's object store config has no compression
            )
        except BadRequestError as exc:
            if exc.err_code != _IN_USE:  # another replica created it first
                raise


async def _migrate_work(js: JetStreamContext) -> None:
    """Move the queue of a version before executor pools onto the agents' subjects.

    That version had one consumer (``statek_executors``) on ``statek.work.run.<job>``: it is
    deleted (a WorkQueue stream allows no overlapping consumers), and each queued or scheduled
    message of that form is re-published under its job's agent, then removed.
    """
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(s.WORK_STREAM, s.LEGACY_WORK_CONSUMER)
    kv = await js.key_value(s.JOBS_BUCKET)
    for prefix in (s.WORK_RUN_PREFIX, s.WORK_SCHEDULE_PREFIX):
        seq = 0
        while True:
            try:
                msg = await js.get_msg(s.WORK_STREAM, seq + 1, subject=f"{prefix}.*", next=True)
            except NotFoundError:
                break
            seq = int(msg.seq or 0)
            job_id = decode(msg.data or b"{}", WorkMessage).job_id
            try:
                entry = await kv.get(s.job_key(job_id))
            except Exception:  # a message for a job that is gone: nothing to run
                entry = None
            if entry is not None and entry.value:
                agent = decode(entry.value, JobRecord).agent
                headers = dict(msg.headers or {})
                if "Nats-Schedule-Target" in headers:
                    headers["Nats-Schedule-Target"] = s.work_run_subject(agent, job_id)
                headers.pop("Nats-Expected-Last-Subject-Sequence", None)
                new_subject = (
                    s.work_run_subject(agent, job_id)
                    if prefix == s.WORK_RUN_PREFIX
                    else s.work_schedule_subject(agent, job_id)
                )
                await js.publish(new_subject, msg.data or b"", headers=headers)
            await js.delete_msg(s.WORK_STREAM, seq)


# --- verifying ------------------------------------------------------------------------------------
async def verify(js: JetStreamContext, settings: Settings, streams: Iterable[str]) -> None:
    """Check that each of ``streams`` exists with the config this version needs.

    Every stream is asked for at once, so a user without the permission to read one (nats-server
    drops the request: no answer) costs one ``request_timeout``, not one per stream.

    Raises:
        ProvisionError: one line naming every stream that is missing, unreadable or different,
            and what to do.
    """
    problems = await _problems(js, settings, list(dict.fromkeys(streams)))
    if problems:
        raise ProvisionError(_not_ready([text for _, text in problems]))


def _not_ready(problems: list[str]) -> str:
    return (
        "storage not ready: " + "; ".join(problems) + " (run `statek-bus provision` with administrator "
        "credentials, or check this identity's permissions: docs/permissions.md)"
    )


async def _problems(js: JetStreamContext, settings: Settings, names: list[str]) -> list[tuple[str, str]]:
    """(kind, text) of each stream that is ``missing``, ``forbidden`` or ``different``, asked all at once."""
    wanted = {cfg.name: cfg for cfg in desired_streams(settings)}
    found = await asyncio.gather(*(_check(js, settings, wanted.get(n), n) for n in names))
    return [p for p in found if p is not None]


async def _check(
    js: JetStreamContext, settings: Settings, want: StreamConfig | None, name: str
) -> tuple[str, str] | None:
    for attempt in range(20):  # a cluster without a meta leader yet answers 503 for a moment
        try:
            info = await asyncio.wait_for(js.stream_info(name), timeout=settings.request_timeout)
            break
        except NotFoundError:
            return "missing", f"{_what(name)} is missing"
        except TimeoutError:  # nats-server drops a request this identity may not send: no answer
            return "forbidden", (
                f"{_what(name)}: no answer to $JS.API.STREAM.INFO.{name} (forbidden to this user, or no JetStream)"
            )
        except ServiceUnavailableError:
            if attempt == 19:
                return "unavailable", f"{_what(name)}: JetStream is unavailable"
            await asyncio.sleep(0.25)
    diffs = _differences(want, info.config) if want is not None else []
    return ("different", f"{_what(name)} differs: {'; '.join(diffs)}") if diffs else None
