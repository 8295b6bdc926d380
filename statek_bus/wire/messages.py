"""Every request, reply, event and stored record of statek-bus, as msgspec Structs.

Requests forbid unknown fields, so a typo is a 400 naming it. Replies and records are JSON, so
``nats req`` and ``nats kv get`` show them as they are. Decode with :func:`decode`: a validation
error becomes a :class:`~statek_bus.wire.errors.BadRequestError` whose ``field`` is the JSON path.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.limits import MAX_JSON_DEPTH, MAX_NAME_LENGTH, NAME_FORBIDDEN, NAME_PATTERN
from statek_bus.wire.options import JobOptions
from statek_bus.wire.subjects import batch_job_ids

__all__ = [
    "AgentDescription",
    "AgentGetRequest",
    "ChatEntry",
    "ChatMessage",
    "CompleteReply",
    "CompleteRequest",
    "Empty",
    "ExecutorStatus",
    "IndexEntry",
    "Job",
    "JobCancelRequest",
    "JobEvent",
    "JobGetRequest",
    "JobHistory",
    "JobListRequest",
    "JobRecord",
    "JobSendMessageRequest",
    "JobSendNotificationRequest",
    "JobStatus",
    "LLMUsage",
    "ModelInfo",
    "ModelsReply",
    "Name",
    "ParamDescription",
    "PendingMarker",
    "RunningStep",
    "State",
    "StateChange",
    "StateCreateRequest",
    "StateDeleteRequest",
    "StateGetOrCreateRequest",
    "StateHistoryRequest",
    "StateListRequest",
    "StateRecord",
    "StateRef",
    "StateRetrieveRequest",
    "StateUpdateRequest",
    "SubmitBatchRequest",
    "SubmitRequest",
    "ToolCall",
    "ToolDescription",
    "Usage",
    "WorkMessage",
    "cancelled_exit",
    "check_depth",
    "decode",
    "encode",
    "error_exit",
]

T = TypeVar("T")

Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
"""An id or name in a request: at most :data:`~statek_bus.wire.limits.MAX_NAME_LENGTH` characters,
none of them a control character (:data:`~statek_bus.wire.limits.NAME_PATTERN`)."""


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base of request bodies: unknown fields are rejected with a 400 naming them."""


class _Record(msgspec.Struct, kw_only=True):
    """Base of replies and stored records."""


class Empty(_Request, kw_only=True, frozen=True):
    """A request with no fields (``{}``)."""


# ==================================================================================================
# Jobs
# ==================================================================================================


class JobStatus(enum.StrEnum):
    """STATEK's job statuses."""

    READY = "READY"
    WARMING_UP = "WARMING_UP"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    DONE = "DONE"


class Usage(_Record, kw_only=True):
    """LLM usage of a job, its own calls plus those of its children."""

    llm_calls: int = 0
    """LLM calls made."""
    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Completion tokens."""
    cached_tokens: int = 0
    """Prompt tokens served from the provider's cache."""
    cost: float = 0.0
    """Cost in USD, from the provider's price map or our price table."""
    bytes_sent: int = 0
    """Bytes of the LLM requests (JSON), STATEK's ``LLM_Usage`` figure."""
    bytes_received: int = 0
    """Bytes of the LLM replies (JSON)."""


class Job(_Record, kw_only=True):
    """A job as clients see it (reply of submit, get, list, cancel, send_*)."""

    id: str
    """Job id: generated, or the caller's idempotency key."""
    agent: str
    """Role of the agent that runs it."""
    status: JobStatus
    """READY, WARMING_UP, STARTED, SUSPENDED or DONE."""
    locale: str | None = None
    """``LANG-COUNTRY`` locale, inherited by child jobs."""
    params: dict[str, Any] = {}
    """The ``**kwargs`` of ``submit_new_job``."""
    parent_id: str | None = None
    """The job that created this one, if any."""
    created_at: datetime
    """When the job was submitted (UTC)."""
    updated_at: datetime
    """When the record last changed (UTC)."""
    exit_status: Any = None
    """The value passed to ``exit(...)``, or ``"Cancelled: <reason>"``."""
    error: str | None = None
    """Why the job ended abnormally (limits, sandbox, provider), if it did."""
    usage: Usage = msgspec.field(default_factory=Usage)
    """LLM usage, children included."""
    revision: int = 0
    """KV revision of the record; every transition is a compare-and-set on it."""
    agent_served: bool | None = None
    """In a submit reply: ``False`` when no live executor serves the agent now (the job waits)."""


class JobRecord(_Record, kw_only=True):
    """A job as stored in ``statek_jobs`` (the wire :class:`Job` plus what the engine needs).

    Its revision is not stored: it is the KV entry's revision (see :mod:`statek_bus.jobs.store`).
    """

    id: str
    """Job id."""
    agent: str
    """Agent role."""
    status: JobStatus = JobStatus.READY
    """Current status."""
    locale: str | None = None
    """Locale."""
    params: dict[str, Any] = {}
    """Job parameters (``**kwargs``)."""
    parent_id: str | None = None
    """Parent job id."""
    created_at: datetime
    """Submission time (UTC)."""
    updated_at: datetime
    """Last change (UTC)."""
    exit_status: Any = None
    """Exit value."""
    error: str | None = None
    """Abnormal end reason."""
    usage: Usage = msgspec.field(default_factory=Usage)
    """LLM usage, children included."""
    shared_vars: dict[str, Any] = {}
    """Initial workspace variables in the tagged value encoding of :mod:`statek_bus.wire.values`."""
    step: int = 0
    """Committed steps so far; the work message for step ``n`` carries ``step=n``."""
    cancel_reason: str | None = None
    """Set by cancel; the executor ends the job at its next step boundary."""
    inbox: list[JobEvent] = []
    """What other jobs reported since the last step: child completion notes and sub-task reports.

    A ``status`` event with ``status=DONE`` whose ``job_id`` is a child's is that child's
    completion note; a ``notification`` whose ``role`` is ``subtask:<id>`` reports a sub-task's
    completion. (Messages and notifications sent to the job live in its ``statek_inbox`` subject.)
    """
    inbox_seq: int = 0
    """``statek_inbox`` stream sequence up to which the job consumed its inbox subject (0: nothing yet)."""
    engine: dict[str, Any] = {}
    """Engine-private run state (pending code, counters, waits); opaque outside the executor."""
    jobdef: str | None = None
    """Key of the job's definition in ``statek_jobdefs`` (its own options), if it has options."""

    def end(self, exit_status: Any, error: str | None = None) -> None:
        """The job is DONE with ``exit_status`` (see :func:`error_exit`, :func:`cancelled_exit`) and ``error``."""
        self.status, self.exit_status, self.error = JobStatus.DONE, exit_status, error

    def restart(self) -> None:
        """A DONE job goes on (STATEK's DONE → STARTED on a message): its ending is forgotten."""
        self.status = JobStatus.STARTED
        self.exit_status = self.error = self.cancel_reason = None

    def public(self, revision: int) -> Job:
        """The client-facing view of this record."""
        return Job(
            id=self.id,
            agent=self.agent,
            status=self.status,
            locale=self.locale,
            params=self.params,
            parent_id=self.parent_id,
            created_at=self.created_at,
            updated_at=self.updated_at,
            exit_status=self.exit_status,
            error=self.error,
            usage=self.usage,
            revision=revision,
        )


class SubmitRequest(_Request, kw_only=True, frozen=True):
    """``statek.jobs.submit``: create one job."""

    agent: Name
    """Role of a registered agent."""
    shared_vars: dict[str, Any] | None = None
    """Variables in scope when the job starts (tagged value encoding)."""
    locale: str | None = None
    """``LANG-COUNTRY``; unknown locales are a 400."""
    params: dict[str, Any] | None = None
    """Agent-specific parameters (the client's ``**kwargs``)."""
    job_id: Name | None = None
    """Idempotency key: the same id twice returns the first job."""
    parent_id: Name | None = None
    """The parent job, for child jobs."""
    options: JobOptions | None = None
    """The job's own options (warmup code, post-processors, provider config, extra resources)."""


class SubmitBatchRequest(_Request, kw_only=True, frozen=True):
    """``statek.jobs.submit_batch``: create one job per ``shared_vars_batch`` entry."""

    agent: Name
    """Role of a registered agent."""
    shared_vars_batch: list[dict[str, Any] | None]
    """One entry per job; ``null`` entries start with no shared variables."""
    locale: str | None = None
    """Locale for every job."""
    params: dict[str, Any] | None = None
    """Parameters for every job."""
    batch_id: Name | None = None
    """Idempotency key of the batch: job ids derive from it and the index."""
    parent_id: Name | None = None
    """The parent job of every job in the batch."""
    options: JobOptions | None = None
    """Options of every job of the batch (they share one stored definition)."""


class JobGetRequest(_Request, kw_only=True, frozen=True):
    """``statek.jobs.get`` and ``statek.jobs.history``."""

    job_id: Name
    """The job."""


class JobListRequest(_Request, kw_only=True, frozen=True):
    """``statek.jobs.list``: filter exactly, page from 1."""

    agent: Name | None = None
    """Only jobs of this agent role."""
    status: JobStatus | None = None
    """Only jobs in this status."""
    parent_id: Name | None = None
    """Only children of this job."""
    limit: int | None = None
    """Page size (default and maximum from settings)."""
    page_number: int | None = None
    """Page, from 1."""


class JobCancelRequest(_Request, kw_only=True, frozen=True):
    """``statek.jobs.cancel``."""

    job_id: Name
    """The job."""
    reason: str | None = None
    """Shown in ``exit_status`` as ``Cancelled: <reason>``."""


class JobSendMessageRequest(_Request, kw_only=True, frozen=True):
    """``statek.jobs.send_message``: a chat message to the job (restarts a DONE job)."""

    job_id: Name
    """The job."""
    message: str
    """The message text."""
    message_id: Name | None = None
    """Idempotency key: a send repeated with the same id within the dedup window is stored once."""


class JobSendNotificationRequest(_Request, kw_only=True, frozen=True):
    """``statek.jobs.send_notification``: a notification (restarts a DONE job)."""

    job_id: Name
    """The job."""
    text: str
    """The notification text."""
    message_id: Name | None = None
    """Idempotency key: a send repeated with the same id within the dedup window is stored once."""


class WorkMessage(_Record, kw_only=True):
    """Payload of a work-queue message: run step ``step`` of ``job_id``."""

    job_id: str
    """The job."""
    step: int
    """The step to run; a stale step (already committed) is acknowledged after re-queueing the next."""


class JobEvent(_Record, kw_only=True):
    """An event on ``statek.events.jobs.<job>``, captured in the job-log stream."""

    job_id: str
    """The job."""
    kind: Literal["status", "console", "chat", "message", "notification", "trace"]
    """What happened (``trace``: ``FULL_AGENT_TRACE`` is on; :attr:`name` says which)."""
    at: datetime
    """When (UTC)."""
    status: JobStatus | None = None
    """For ``status``: the new status."""
    text: str | None = None
    """Console output, chat content, message or notification text."""
    role: str | None = None
    """For ``chat``: ``system``, ``user``, ``assistant`` or ``tool``."""
    step: int | None = None
    """The step that produced it."""
    exit_status: Any = None
    """For a ``status`` event to DONE: the exit value."""
    name: str | None = None
    """For ``trace``: ``llm.request``, ``llm.response``, ``tool.request``, ``tool.output``... (STATEK's)."""
    data: Any = None
    """For ``trace``: the event's fields, secrets redacted."""


class ChatEntry(_Record, kw_only=True):
    """One chat-log entry of a job's history."""

    role: str
    """``system``, ``user``, ``assistant`` or ``tool``."""
    content: str
    """The text."""
    step: int | None = None
    """The step that wrote it."""
    at: datetime | None = None
    """When (UTC)."""


class JobHistory(_Record, kw_only=True):
    """Reply of ``statek.jobs.history``: the chat log and the console of a job."""

    job_id: str
    """The job."""
    chat: list[ChatEntry] = []
    """Chat log, oldest first."""
    console: list[str] = []
    """Console output, oldest first."""


class PendingMarker(_Record, kw_only=True):
    """``pending.<nuid>``: jobs whose step-0 work message may not be persisted yet."""

    job_ids: list[str] = []
    """Explicit ids (a single submit)."""
    batch_id: str | None = None
    """For a batch: ids are ``<batch_id>-<index>`` for index in ``range(count)``."""
    count: int = 0
    """Jobs in the batch."""
    index_keys: list[str] = []
    """Index entries written with the jobs (removed if the submit never created any of them)."""
    created_at: datetime
    """When the submit began (UTC)."""

    def ids(self) -> list[str]:
        """Every job id this marker covers."""
        return self.job_ids or batch_job_ids(self.batch_id or "", self.count)


class IndexEntry(_Record, kw_only=True, omit_defaults=True):
    """``idx.<scope>.{j,b}.<id>``: one job, or a whole batch, in creation order."""

    job_id: str | None = None
    """A single job."""
    batch_id: str | None = None
    """A batch: jobs ``<batch_id>-0`` ... ``<batch_id>-<count - 1>``."""
    count: int = 0
    """Jobs in the batch."""

    def ids(self) -> list[str]:
        """The job ids this entry stands for."""
        return [self.job_id] if self.job_id is not None else batch_job_ids(self.batch_id or "", self.count)


# ==================================================================================================
# Agents
# ==================================================================================================


class ParamDescription(_Record, kw_only=True):
    """A job parameter an agent declares."""

    name: str
    """Parameter name."""
    type: str = "any"
    """Type name as declared."""
    required: bool = False
    """Whether a job must carry it."""
    description: str = ""
    """What it means."""


class ToolDescription(_Record, kw_only=True):
    """A tool as described to the model."""

    name: str
    """Tool name."""
    description: str = ""
    """Docstring summary."""
    parameters: dict[str, Any] = {}
    """JSON Schema of its arguments."""


class AgentDescription(_Record, kw_only=True):
    """What an executor registers in ``statek_agents`` for each agent it serves."""

    role: str
    """Agent role: the name jobs are submitted to."""
    description: str = ""
    """What the agent does."""
    kind: Literal["code", "handler"] = "code"
    """Code-first (model writes Python) or handler agent (``on_create``/``on_event``)."""
    tools: list[ToolDescription] = []
    """Tools the model may call."""
    params: list[ParamDescription] = []
    """Declared job parameters."""
    model: str | None = None
    """The agent's ``MODEL`` metadata."""
    metadata: dict[str, Any] = {}
    """Other agent metadata."""
    updated_at: datetime | None = None
    """When an executor last registered it."""
    served: bool | None = None
    """In agents replies: whether a live executor serves it now (else it is only remembered)."""


class AgentGetRequest(_Request, kw_only=True, frozen=True):
    """``statek.agents.get``."""

    agent: Name
    """The agent role."""


# ==================================================================================================
# States (seed 002)
# ==================================================================================================


class State(_Record, kw_only=True):
    """A state object owned by one (task, agent) pair."""

    id: str
    """State id."""
    task_id: str
    """Owning task (a job id when a job owns it; any string)."""
    agent_id: str
    """Owning agent."""
    state: dict[str, Any]
    """The state object (always a JSON object)."""
    created_at: datetime
    """Creation time (UTC)."""
    updated_at: datetime
    """Last update (UTC)."""
    revision: int = 0
    """Bumped on every update; pass it as ``expected_revision`` for compare-and-set."""


class StateRecord(_Record, kw_only=True):
    """A state as stored in ``statek_states``; ``revision`` comes from the KV entry."""

    id: str
    """State id."""
    task_id: str
    """Owning task."""
    agent_id: str
    """Owning agent."""
    state: dict[str, Any]
    """The state object."""
    created_at: datetime
    """Creation time (UTC)."""
    updated_at: datetime
    """Last update (UTC)."""
    expires_at: datetime | None = None
    """When ``ttl_seconds`` was given on create: when it expires."""


class StateRef(_Record, kw_only=True):
    """Value of a state's id pointer and index keys: which (task, agent) pair a state id belongs to."""

    id: str
    """The state id."""
    task_id: str
    """Owning task."""
    agent_id: str
    """Owning agent."""


class StateCreateRequest(_Request, kw_only=True, frozen=True):
    """``statek.states.create``."""

    task_id: Name
    """Owning task."""
    agent_id: Name
    """Owning agent."""
    state: Any
    """Must be a JSON object (validated by the service, so the 400 names ``state``)."""
    ttl_seconds: int | None = None
    """Optional lifetime in whole seconds (≥ 1)."""


class StateRetrieveRequest(_Request, kw_only=True, frozen=True):
    """``statek.states.retrieve``: by ``state_id``, or by ``task_id`` and ``agent_id``."""

    state_id: Name | None = None
    """The state id (a missing id is 404)."""
    task_id: Name | None = None
    """With ``agent_id``: the pair (a missing pair answers ``null``)."""
    agent_id: Name | None = None
    """With ``task_id``."""


class StateUpdateRequest(_Request, kw_only=True, frozen=True):
    """``statek.states.update``: replace the whole object."""

    state_id: Name
    """The state id."""
    state: Any
    """The new object (must be a JSON object)."""
    expected_revision: int | None = None
    """Compare-and-set: a different current revision is a 409 carrying it."""


class StateListRequest(_Request, kw_only=True, frozen=True):
    """``statek.states.list``."""

    task_id: Name | None = None
    """Only this task's states."""
    agent_id: Name | None = None
    """Only this agent's states."""
    limit: int | None = None
    """Page size."""
    page_number: int | None = None
    """Page, from 1."""


class StateDeleteRequest(_Request, kw_only=True, frozen=True):
    """``statek.states.delete``."""

    state_id: Name
    """The state id."""


class StateGetOrCreateRequest(_Request, kw_only=True, frozen=True):
    """``statek.states.get_or_create``: atomic get, or create with ``default``."""

    task_id: Name
    """Owning task."""
    agent_id: Name
    """Owning agent."""
    default: Any
    """The object to create when none exists (must be a JSON object)."""


class StateHistoryRequest(_Request, kw_only=True, frozen=True):
    """``statek.states.history``: earlier revisions, newest first."""

    state_id: Name
    """The state id."""
    limit: int | None = None
    """At most this many revisions."""


class StateChange(_Record, kw_only=True):
    """One change seen by ``states.watch``."""

    op: Literal["create", "update", "delete"]
    """What happened."""
    state: State
    """The state after the change (before it, for ``delete``)."""
    revision: int
    """The KV revision of the change."""


# ==================================================================================================
# LLM provider
# ==================================================================================================


class ToolCall(_Record, kw_only=True):
    """A tool call the model asked for."""

    name: str
    """Tool name."""
    arguments: dict[str, Any] = {}
    """Arguments by name."""
    id: str | None = None
    """Provider's call id, echoed in the ``tool`` reply message."""


class ChatMessage(_Record, kw_only=True):
    """One message of an LLM conversation (OpenAI shape)."""

    role: Literal["system", "user", "assistant", "tool"]
    """Who speaks."""
    content: str | None = None
    """The text."""
    tool_calls: list[ToolCall] | None = None
    """For ``assistant``: the tool calls it made."""
    tool_call_id: str | None = None
    """For ``tool``: the call this answers."""
    name: str | None = None
    """Optional speaker or tool name."""
    reasoning: str | None = None
    """For ``assistant``: the reasoning the model returned with this turn, replayed to it."""
    reasoning_model: str | None = None
    """The model that produced ``reasoning``; the provider replays it only to that model."""


class CompleteRequest(_Request, kw_only=True, frozen=True):
    """``statek.llm.complete``."""

    model: Name
    """litellm model string, ``scripted/<name>``, or ``L:a,M:b,H:c`` with ``metadata.DIFFICULTY``."""
    messages: list[ChatMessage]
    """The conversation."""
    tools: list[dict[str, Any]] | None = None
    """OpenAI-style tool schemas."""
    temperature: float | None = None
    """Sampling temperature in [0, 1]."""
    job_id: Name | None = None
    """The calling job (usage is attributed to it)."""
    metadata: dict[str, Any] | None = None
    """Agent metadata (``SCRIPT``, ``SCRIPT_FILE``, ``DIFFICULTY``...)."""
    call_index: int | None = None
    """The job's LLM-call count so far (the scripted model answers reply ``call_index``)."""
    deadline_s: float | None = None
    """Seconds, from when it was sent, that the caller waits for the reply; the provider drops a
    request still queued past it instead of making a call nobody will read."""
    call_id: Name | None = None
    """The call's identity (the executor's: job, call index, content). A repeat, such as a retried
    step's call, gets the first call's result instead of a second paid call."""
    provider_config: dict[str, Any] | None = None
    """The job's own provider config (reasoning-level payloads), merged over the provider's."""


class LLMUsage(_Record, kw_only=True):
    """Usage of one LLM call."""

    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Completion tokens."""
    cached_tokens: int = 0
    """Cached prompt tokens."""
    cost: float = 0.0
    """Cost in USD."""


class CompleteReply(_Record, kw_only=True):
    """Reply of ``statek.llm.complete``."""

    text: str
    """The reply text (may be empty when only tool calls came back)."""
    tool_calls: list[ToolCall] = []
    """Formal tool calls."""
    reasoning: str | None = None
    """Reasoning text, where the provider returns it."""
    usage: LLMUsage = msgspec.field(default_factory=LLMUsage)
    """Tokens and cost."""
    model: str = ""
    """The model that answered."""


class ModelInfo(_Record, kw_only=True):
    """A model the provider serves, with its limits."""

    name: str
    """Model string or prefix (``scripted/*``)."""
    concurrency: int
    """Calls in flight allowed per provider instance."""
    rate: float = 0.0
    """Calls per second allowed (0: unlimited)."""
    key_env: str | None = None
    """The environment variable holding its key (never the key)."""
    key_present: bool = False
    """Whether that variable is set in the provider's environment."""


class ModelsReply(_Record, kw_only=True):
    """Reply of ``statek.llm.models``."""

    models: list[ModelInfo] = []
    """Models and their limits."""


# ==================================================================================================
# Executor
# ==================================================================================================


class RunningStep(_Record, kw_only=True):
    """A step an executor replica is running."""

    job_id: str
    """The job."""
    step: int
    """The step number."""
    started_at: datetime
    """When it started (UTC)."""


class ExecutorStatus(_Record, kw_only=True):
    """Reply of ``statek.executor.status``: one replica's view."""

    instance_id: str
    """The micro service instance id."""
    running: list[RunningStep] = []
    """Steps in flight."""
    max_concurrency: int = 0
    """Bound on concurrent steps."""
    agents: list[str] = []
    """Roles this replica serves."""
    sandbox: dict[str, str] = {}
    """Isolation of model code: layer → ``on`` or why it is off (``process`` off: in-process runner)."""


# ==================================================================================================
# Codec
# ==================================================================================================

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_FIELD_IN_MESSAGE = re.compile(r"field `([^`]+)`")
_PATH = re.compile(r" - at `([^`]+)`$")
_LONE_SURROGATE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F])")


def encode(obj: Any) -> bytes:
    """Encode a message (or any msgspec-encodable value) as JSON."""
    return _encoder.encode(obj)


def error_exit(error: str) -> str:
    """The exit status of a job that ended with ``error``: ``Error: <error>``, as STATEK writes it."""
    return f"Error: {error}"


def cancelled_exit(reason: str) -> str:
    """The exit status of a cancelled job: ``Cancelled: <reason>``, as STATEK writes it."""
    return f"Cancelled: {reason}"


def decode(data: bytes, kind: type[T]) -> T:
    """Decode ``data`` as ``kind``; any failure is a 400 whose ``field`` is the JSON path.

    Requests are checked with :func:`check_depth` first (the service runner does it); stored
    records are not, since the executor may nest a workspace deeper than any request may.
    """
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return dec.decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise _bad_request(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {_why(data, exc)}", field="$") from None
    except RecursionError:  # not reachable below MAX_JSON_DEPTH; never a 500 if it is
        raise _too_deep("$") from None


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_LEAF = re.compile(rb"\[\]|\{\}")
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


def check_depth(data: bytes) -> None:
    """Raise a 400 naming the path if the JSON ``data`` nests deeper than ``MAX_JSON_DEPTH``.

    Checked on every request before decoding: msgspec decodes recursively (a 2 KB body of 999
    nested lists raised ``RecursionError``, a 500), and whatever a service accepts must stay
    loadable by the services after it (the executor's workspace loader is recursive too).

    A body with few brackets passes at once (two C-speed counts). Otherwise strings are cut out and only brackets kept; each pass of ``_LEAF`` removes exactly one level
    (a substitution never rescans its own output), so the brackets are gone after ``MAX_JSON_DEPTH``
    passes exactly when the body is shallow enough. All of it runs in C; only a body that fails
    is walked token by token to name the path.
    """
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    for _ in range(MAX_JSON_DEPTH):
        if not brackets:
            return
        brackets = _LEAF.sub(b"", brackets)
    if brackets:
        path = _deep_path(data)
        if path is not None:  # None: unbalanced, i.e. malformed; the decoder names that
            raise _too_deep(path)


def _deep_path(data: bytes) -> str | None:
    """The JSON path of the first array or object nested deeper than ``MAX_JSON_DEPTH``."""
    frames: list[list[Any]] = []  # [is_array, index, key]
    last = b""
    for m in _TOKEN.finditer(data):
        t = m.group()
        if t[:1] == b'"':
            last = t
        elif t == b":" and frames:
            frames[-1][2] = _key(last)
        elif t == b"," and frames and frames[-1][0]:
            frames[-1][1] += 1
        elif t in (b"[", b"{"):
            if len(frames) >= MAX_JSON_DEPTH:
                return "$" + "".join(_segment(f) for f in frames)
            frames.append([t == b"[", 0, ""])
        elif t in (b"]", b"}") and frames:
            frames.pop()
    return None


def _segment(frame: list[Any]) -> str:
    return f"[{frame[1]}]" if frame[0] else f".{frame[2]}"


def _key(raw: bytes) -> str:
    try:
        key = msgspec.json.decode(raw, type=str)
    except msgspec.DecodeError:
        return "?"
    return key if len(key) <= 64 else key[:61] + "..."


def _why(data: bytes, exc: msgspec.DecodeError) -> str:
    """msgspec says "truncated" when a body ends less than 6 bytes after a lone ``\\ud800``: name it."""
    lone = _LONE_SURROGATE.search(data) if str(exc) == "Input data was truncated" else None
    if lone is None:
        return str(exc)
    return f"invalid string escape {lone.group(1).decode()} at byte {lone.start(1)}: a lone UTF-16 surrogate"


def _too_deep(path: str) -> BadRequestError:
    return BadRequestError(
        f"{path} is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects",
        field=path,
        details={"limit": MAX_JSON_DEPTH},
    )


def _bad_request(message: str) -> BadRequestError:
    path_m = _PATH.search(message)
    path = path_m.group(1) if path_m else "$"
    field_m = _FIELD_IN_MESSAGE.search(message)
    if field_m:
        path = f"{path}.{field_m.group(1)}"
    if message.startswith("Expected `str` matching regex"):  # only Name has a pattern
        return BadRequestError(f"{path.removeprefix('$.')} must not contain {NAME_FORBIDDEN}", field=path)
    return BadRequestError(f"invalid request: {message}", field=path)
