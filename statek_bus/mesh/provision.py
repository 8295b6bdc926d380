"""Provisioning of every bucket and stream statek-bus uses: idempotent, safe from every replica.

Every service calls :func:`provision` at start. Creating a stream with the config it already has
is a no-op on the server, so replicas starting together agree. A stream that exists with another
config is a :class:`ProvisionError` naming each difference (``nats kv edit`` / ``nats stream edit``
or a new data dir fixes it) instead of the server's bare "stream name already in use".
"""

from __future__ import annotations

import asyncio
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

__all__ = ["ProvisionError", "configure_work_consumer", "desired_streams", "provision", "work_consumer"]

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
    """A bucket or stream exists with a config that differs from what this version needs."""


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


def work_consumer(settings: Settings) -> ConsumerConfig:
    """The one durable pull consumer every executor replica shares."""
    return ConsumerConfig(
        durable_name=s.WORK_CONSUMER,
        filter_subject=f"{s.WORK_RUN_PREFIX}.>",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=max(1000, settings.max_concurrency * 20),
    )


async def provision(js: JetStreamContext, settings: Settings, *, attempts: int = 20) -> None:
    """Create every stream, bucket, consumer and the object store, or verify they match."""
    for cfg in desired_streams(settings):
        await _retrying(lambda cfg=cfg: _ensure_stream(js, cfg), attempts)
    await _retrying(lambda: _ensure_work_consumer(js, settings), attempts)
    await _retrying(lambda: _ensure_object_store(js, settings), attempts)


async def _ensure_work_consumer(js: JetStreamContext, settings: Settings) -> None:
    # Create it when missing, never rewrite it: its ack_wait/max_deliver belong to the executors
    # (see configure_work_consumer), not to whichever service happened to start last.
    try:
        await js.consumer_info(s.WORK_STREAM, s.WORK_CONSUMER)
    except NotFoundError:
        await js.add_consumer(s.WORK_STREAM, work_consumer(settings))


async def configure_work_consumer(js: JetStreamContext, settings: Settings) -> None:
    """Set the work consumer's delivery settings from the executor's ``settings`` (create or update)."""
    await _retrying(lambda: js.add_consumer(s.WORK_STREAM, work_consumer(settings)), 20)


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
        have = (await js.stream_info(cfg.name)).config
        diffs = [
            f"{field} {getattr(cfg, field)!r} wanted, {getattr(have, field)!r} found"
            for field in _COMPARED
            if _norm(getattr(cfg, field)) != _norm(getattr(have, field))
        ]
        what = f"bucket {cfg.name[3:]}" if cfg.name.startswith("KV_") else f"stream {cfg.name}"
        raise ProvisionError(
            f"{what} exists with a different config: {'; '.join(diffs) or 'server-side differences'}"
        ) from None


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
