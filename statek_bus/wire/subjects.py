"""Every name that crosses the wire or names storage: subjects, services, buckets, streams, headers.

A grep for ``"statek.`` outside this module should find only tests and docs. Ids chosen by users
(job ids, task ids, agent ids) never appear raw in a subject or a key: :func:`token` escapes them
into a single subject token / key segment, so no id can match or overwrite another's data.
"""

from __future__ import annotations

import hashlib
import re

from statek_bus.wire.limits import MAX_NAME_LENGTH

__all__ = [
    "AGENTS_BUCKET",
    "AGENTS_GET",
    "AGENTS_LIST",
    "AGENTS_REQUESTS",
    "AGENT_EVENTS_PREFIX",
    "AGENT_EVENTS_STREAM",
    "CONTEXT_BUCKET",
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "EVENTS_PREFIX",
    "EXECUTOR_STATUS",
    "EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER",
    "INBOX_PREFIX",
    "INBOX_STREAM",
    "INDEX_PREFIX",
    "JOBDEFS_BUCKET",
    "JOBS_BUCKET",
    "JOBS_CANCEL",
    "JOBS_GET",
    "JOBS_HISTORY",
    "JOBS_LIST",
    "JOBS_REQUESTS",
    "JOBS_SEND_MESSAGE",
    "JOBS_SEND_NOTIFICATION",
    "JOBS_SUBMIT",
    "JOBS_SUBMIT_BATCH",
    "JOB_LOG_STREAM",
    "KNOWLEDGE_BUCKET",
    "KNOWLEDGE_MANIFEST_KEY",
    "KNOWLEDGE_SERVED_KEYS",
    "KV_OPERATION_HEADER",
    "LEGACY_WORK_CONSUMER",
    "LIVE_INDEX_PREFIX",
    "LLM_COMPLETE",
    "LLM_MODELS",
    "LLM_REQUESTS",
    "MSG_ID_HEADER",
    "OBJECT_STORE_BUCKET",
    "PENDING_PREFIX",
    "SERVICE_EXECUTOR",
    "SERVICE_PROVIDER",
    "SERVICE_STATE",
    "SERVICE_SUBMISSION",
    "SERVICE_VERSION",
    "STATES_BUCKET",
    "STATES_CREATE",
    "STATES_DELETE",
    "STATES_GET_OR_CREATE",
    "STATES_HISTORY",
    "STATES_LIST",
    "STATES_REQUESTS",
    "STATES_RETRIEVE",
    "STATES_UPDATE",
    "TIMER_DUE_HEADER",
    "TRACEPARENT_HEADER",
    "TRACE_ID_HEADER",
    "WORK_CONSUMER_PREFIX",
    "WORK_RUN_PREFIX",
    "WORK_SCHEDULE_PREFIX",
    "WORK_STREAM",
    "WRONG_LAST_SEQUENCE",
    "agent_events_consumer",
    "agent_events_subject",
    "batch_job_ids",
    "context_key",
    "event_job_id",
    "inbox_subject",
    "job_events_subject",
    "job_key",
    "knowledge_file_key",
    "knowledge_served_key",
    "token",
    "untoken",
    "work_consumer",
    "work_filter",
    "work_run_subject",
    "work_schedule_subject",
]

# --- services (ADR-32 names: [A-Za-z0-9_-]+) -------------------------------------------------------
SERVICE_VERSION = "0.1.0"
"""SemVer of the wire contract every service reports in ``$SRV.INFO``."""
SERVICE_SUBMISSION = "statek-submission"
SERVICE_EXECUTOR = "statek-executor"
SERVICE_STATE = "statek-state"
SERVICE_PROVIDER = "statek-provider"

# --- request/reply subjects ------------------------------------------------------------------------
JOBS_SUBMIT = "statek.jobs.submit"
JOBS_SUBMIT_BATCH = "statek.jobs.submit_batch"
JOBS_GET = "statek.jobs.get"
JOBS_LIST = "statek.jobs.list"
JOBS_CANCEL = "statek.jobs.cancel"
JOBS_SEND_MESSAGE = "statek.jobs.send_message"
JOBS_SEND_NOTIFICATION = "statek.jobs.send_notification"
JOBS_HISTORY = "statek.jobs.history"
AGENTS_LIST = "statek.agents.list"
AGENTS_GET = "statek.agents.get"
STATES_CREATE = "statek.states.create"
STATES_RETRIEVE = "statek.states.retrieve"
STATES_UPDATE = "statek.states.update"
STATES_LIST = "statek.states.list"
STATES_DELETE = "statek.states.delete"
STATES_GET_OR_CREATE = "statek.states.get_or_create"
STATES_HISTORY = "statek.states.history"
LLM_COMPLETE = "statek.llm.complete"
LLM_MODELS = "statek.llm.models"
EXECUTOR_STATUS = "statek.executor.status"

# --- request families (permissions: docs/permissions.md) -------------------------------------------
JOBS_REQUESTS = "statek.jobs.*"
"""Every jobs request subject."""
AGENTS_REQUESTS = "statek.agents.*"
"""Every agents request subject."""
STATES_REQUESTS = "statek.states.*"
"""Every States API request subject."""
LLM_REQUESTS = "statek.llm.*"
"""Every provider request subject."""

# --- published subjects ----------------------------------------------------------------------------
EVENTS_PREFIX = "statek.events.jobs"
"""Job events (status changes, console lines, chat messages): ``statek.events.jobs.<token(job_id)>``."""
WORK_RUN_PREFIX = "statek.work.run"
"""Work-queue messages that run a job's next step: ``statek.work.run.<token(agent)>.<token(job_id)>``."""
WORK_SCHEDULE_PREFIX = "statek.work.sched"
"""Scheduled (delayed) work messages ``statek.work.sched.<token(agent)>.<token(job_id)>``; outside every
consumer's filter, they fire into the job's ``WORK_RUN_PREFIX`` subject."""
AGENT_EVENTS_PREFIX = "statek.agents.events"
"""An agent's queue: ``statek.agents.events.<token(role)>``; each event (any JSON) creates one job."""
INBOX_PREFIX = "statek.inbox"
"""Messages and notifications sent to a job, appended to ``statek.inbox.<token(job_id)>``."""

# --- storage ---------------------------------------------------------------------------------------
JOBS_BUCKET = "statek_jobs"
AGENTS_BUCKET = "statek_agents"
STATES_BUCKET = "statek_states"
JOBDEFS_BUCKET = "statek_jobdefs"
"""Job definitions (a job's own options), stored once under the sha-256 of their content."""
OBJECT_STORE_BUCKET = "statek_blobs"
KNOWLEDGE_BUCKET = "statek_knowledge"
"""Prompt files, warmup defs, examples and documents every executor serves (one published version)."""
KNOWLEDGE_MANIFEST_KEY = "manifest"
"""``statek_knowledge`` key of the published version: the list of its files (written last)."""
KNOWLEDGE_SERVED_KEYS = "served.*"
"""``statek_knowledge`` keys ``served.<instance>``: what each executor serves (:func:`knowledge_served_key`)."""
WORK_STREAM = "statek_work"
"""WorkQueue stream of job steps; one durable pull consumer per agent (:func:`work_consumer`)."""
WORK_CONSUMER_PREFIX = "statek_agent_"
"""Durable work consumers are ``statek_agent_<token(agent)>``, filtered on that agent's work subjects."""
LEGACY_WORK_CONSUMER = "statek_executors"
"""The single work consumer of versions before executor pools (``statek-bus provision`` removes it)."""
CONTEXT_BUCKET = "statek_context"
"""Shared contexts (STATEK's ``init_shared_context``): one key per context, ``ctx.<token(spec)>...``."""
AGENT_EVENTS_STREAM = "statek_agent_events"
"""WorkQueue stream of agents' queues; one durable consumer per agent (:func:`agent_events_consumer`)."""
JOB_LOG_STREAM = "statek_job_log"
"""Append-only stream capturing every job event subject: the durable chat log and console of each job."""
INBOX_STREAM = "statek_inbox"
"""Append-only stream of every job's inbox (:data:`INBOX_PREFIX`); a job record keeps how far it consumed."""

PENDING_PREFIX = "pending"
"""``statek_jobs`` keys ``pending.<nuid>``: jobs whose step-0 work message may not be persisted yet."""
INDEX_PREFIX = "idx"
"""``statek_jobs`` keys ``idx.{all|agent.<tok>|parent.<tok>}.{j|b}.<tok>``: list indexes in creation order."""
LIVE_INDEX_PREFIX = f"{INDEX_PREFIX}.live"
"""``statek_jobs`` keys ``idx.live.{j|b}.<tok>``: jobs that may still run (purged once all are DONE)."""

# --- headers ---------------------------------------------------------------------------------------
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's ``err_code`` values for a write whose expected last (subject) sequence did not match."""
TRACE_ID_HEADER = "Statek-Trace-Id"
TRACEPARENT_HEADER = "traceparent"
"""W3C Trace Context header, carried on requests and work messages (:mod:`statek_bus.mesh.tracing`)."""
TIMER_DUE_HEADER = "Statek-Due"
"""On a timer's scheduled work message: its due time (RFC 3339), so the executor measures lateness."""
KV_OPERATION_HEADER = "KV-Operation"
"""Marks a KV delete or purge tombstone (``DEL`` / ``PURGE``) on a message read from a bucket's stream."""

# --- id escaping -----------------------------------------------------------------------------------
_SAFE = re.compile(r"[A-Za-z0-9_-]")
_ALL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def token(value: str) -> str:
    """Escape any UTF-8 string into one subject token and one KV key segment.

    Bytes outside ``[A-Za-z0-9_-]`` become ``=XX`` (upper-case hex of each UTF-8 byte), so the result
    never contains ``.``, ``*``, ``>``, whitespace or ``/``; the mapping is injective and reversible
    with :func:`untoken`. The empty string maps to ``=``, which no non-empty id produces.
    """
    if not value:
        return "="
    if _ALL_SAFE.fullmatch(value):  # the common case, ~25x faster than the loop (a hot path)
        return value
    out: list[str] = []
    for ch in value:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def untoken(value: str) -> str:
    """Invert :func:`token`."""
    if value == "=":
        return ""
    raw = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "=":
            raw.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(value[i].encode("ascii"))
            i += 1
    return raw.decode("utf-8")


def batch_job_ids(batch_id: str, count: int) -> list[str]:
    """The ids of a batch's jobs: ``<batch_id>-<index>`` (a retried batch derives the same ids)."""
    return [f"{batch_id}-{i}" for i in range(count)]


def job_key(job_id: str) -> str:
    """Key of a job record in :data:`JOBS_BUCKET`."""
    return f"job.{token(job_id)}"


def knowledge_file_key(sha256: str) -> str:
    """``statek_knowledge`` key of one file's content, by its SHA-256 (content-addressed)."""
    return f"file.{sha256}"


def knowledge_served_key(instance: str) -> str:
    """``statek_knowledge`` key where executor ``instance`` says which version it serves."""
    return f"served.{token(instance)}"


def job_events_subject(job_id: str) -> str:
    """Subject on which a job's events are published (and captured by :data:`JOB_LOG_STREAM`)."""
    return f"{EVENTS_PREFIX}.{token(job_id)}"


def work_run_subject(agent: str, job_id: str) -> str:
    """Work-queue subject that runs ``job_id``'s next step; only executors serving ``agent`` consume it."""
    return f"{WORK_RUN_PREFIX}.{token(agent)}.{token(job_id)}"


def work_schedule_subject(agent: str, job_id: str) -> str:
    """Schedule subject for a delayed wake-up of ``job_id`` (ADR-51 message scheduling)."""
    return f"{WORK_SCHEDULE_PREFIX}.{token(agent)}.{token(job_id)}"


def work_filter(agent: str) -> str:
    """The filter subject of ``agent``'s work consumer: every job of that agent."""
    return f"{WORK_RUN_PREFIX}.{token(agent)}.*"


def work_consumer(agent: str) -> str:
    """Name of the durable work consumer every executor serving ``agent`` pulls from."""
    return f"{WORK_CONSUMER_PREFIX}{token(agent)}"


def context_key(specs: list[str]) -> str:
    """Key in :data:`CONTEXT_BUCKET` of the shared context bound to ``specs`` (sorted, unique)."""
    return "ctx." + ".".join(token(s) for s in sorted(set(specs)))


def agent_events_subject(role: str) -> str:
    """Subject of ``role``'s queue in :data:`AGENT_EVENTS_STREAM` (``nats pub`` to it creates a job)."""
    return f"{AGENT_EVENTS_PREFIX}.{token(role)}"


def agent_events_consumer(role: str) -> str:
    """Durable consumer of ``role``'s queue, shared by every executor serving the agent."""
    return f"statek_events_{token(role)}"  # token() never yields ".", "*", ">" or whitespace


def event_job_id(role: str, event_id: str) -> str:
    """The job an agent-queue event creates: the same event id always names the same job.

    ``event:<role>:<event id>``, or with the event id's SHA-256 when that would exceed
    :data:`~statek_bus.wire.limits.MAX_NAME_LENGTH` (a job id's bound).
    """
    plain = f"event:{role}:{event_id}"
    if len(plain) <= MAX_NAME_LENGTH:
        return plain
    return f"event:{role}:sha256-{hashlib.sha256(event_id.encode()).hexdigest()}"


def inbox_subject(job_id: str) -> str:
    """Subject of ``job_id``'s inbox in :data:`INBOX_STREAM`."""
    return f"{INBOX_PREFIX}.{token(job_id)}"
