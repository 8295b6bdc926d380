"""The permission matrix: what each identity of a mesh may publish and subscribe, in one place.

Every process authenticates with its own identity (``statek-bus up --auth`` locally, creds from
Secrets in Kubernetes) and nats-server enforces what it may do. This module is the only statement
of those permissions: ``up --auth`` renders them into the embedded server's config
(:func:`server_config`), ``deploy/`` ships the same rendering, and ``docs/permissions.md`` is
:func:`markdown` (tests keep both equal to this module).

How the matrix is drawn:

- each service subscribes only its own request subjects, ``$SRV.>`` (discovery) and its own reply
  inbox ``_INBOX_<role>.>`` (it connects with ``inbox_prefix``), and answers requests through
  ``allow_responses`` (it may publish to the reply subject of a request it received, once);
- JetStream is reached through its API subjects, per stream: reading a stream's info and
  messages, its consumers, flow control and acks (:func:`_stream_api`); writes are publishes on
  the stream's own subjects (``$KV.<bucket>.>``, ``statek.work.run.>``...);
- only the administrator (``statek-bus provision``) may create, change or delete streams;
- a client talks to the services only: it may not publish a single ``$KV`` subject, a work
  message or an LLM call, nor create a JetStream consumer (a push consumer's deliver subject is not
  checked against its creator's permissions, so it could write anywhere). ``wait()`` and
  ``watch()`` follow the job's events subject and read its log with direct gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from statek_bus.wire import subjects as s

__all__ = [
    "ADMIN",
    "CLIENT",
    "ROLES",
    "SERVICE_ROLES",
    "Role",
    "helm_users",
    "markdown",
    "nkey_variable",
    "role",
    "server_config",
]


def _stream_api(stream: str) -> tuple[str, ...]:
    """The JetStream API subjects that read ``stream`` and use consumers on it."""
    return (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.*.{stream}",
        f"$JS.API.CONSUMER.*.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$JS.ACK.{stream}.>",
    )


def _kv(bucket: str) -> str:
    return f"KV_{bucket}"


_JOBS = _kv(s.JOBS_BUCKET)
_AGENTS = _kv(s.AGENTS_BUCKET)
_JOBDEFS = _kv(s.JOBDEFS_BUCKET)
_CONTEXT = _kv(s.CONTEXT_BUCKET)
_KNOWLEDGE = _kv(s.KNOWLEDGE_BUCKET)
_INBOX_STREAM = s.INBOX_STREAM
_STATES = _kv(s.STATES_BUCKET)
_BLOBS = f"OBJ_{s.OBJECT_STORE_BUCKET}"
_EVENTS = f"{s.EVENTS_PREFIX}.*"
_JOBS_REQ = s.JOBS_REQUESTS
_AGENTS_REQ = s.AGENTS_REQUESTS
_STATES_REQ = s.STATES_REQUESTS
_LLM_REQ = s.LLM_REQUESTS


@dataclass(frozen=True)
class Role:
    """One identity of a mesh and what nats-server lets it do."""

    name: str
    """Role name: the user name in the server config, the creds file's stem (``<name>.creds``)."""
    summary: str
    """What runs as this role."""
    publish: tuple[str, ...]
    """Subjects it may publish to (requests, stream writes, JetStream API calls)."""
    subscribe: tuple[str, ...]
    """Subjects it may subscribe to (its endpoints, ``$SRV``, its inbox, events)."""
    streams: tuple[str, ...] = ()
    """Streams it uses: what it verifies at start (:func:`statek_bus.mesh.provision.verify`)."""
    responses: bool = False
    """It answers requests (``allow_responses``: one reply per request received)."""
    notes: tuple[str, ...] = field(default=())
    """Why, line by line, for the doc."""

    @property
    def inbox_prefix(self) -> str:
        """The prefix of its reply subjects (``STATEK_INBOX_PREFIX``)."""
        return "_INBOX" if self.name == CLIENT else f"_INBOX_{self.name}"

    def permissions(self) -> dict[str, object]:
        """The nats-server ``permissions`` block of this role."""
        out: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.responses:
            out["allow_responses"] = {"max": 1, "expires": "10m"}
        return out


CLIENT = "client"
"""The role of applications, the Python clients and the ``statek-bus`` commands users run."""
ADMIN = "admin"
"""The role of ``statek-bus provision``: creates and migrates storage, nothing else runs as it."""

_SERVICE_COMMON_SUB = ("$SRV.>",)
_JS_COMMON = ("$JS.API.INFO", "$JS.API.STREAM.NAMES")  # account info, and a stream found by its subject


def _inbox(name: str) -> str:
    return f"_INBOX_{name}.>"


def _self_ping(service: str) -> str:
    # a service is ready once its own $SRV.PING answers: that request travels behind its SUBs
    return f"$SRV.PING.{service}.*"


ROLES: tuple[Role, ...] = (
    Role(
        name="submission",
        summary="statek-submission: records jobs, enqueues their work, answers job queries",
        publish=(
            f"$KV.{s.JOBS_BUCKET}.>",
            f"$KV.{s.JOBDEFS_BUCKET}.>",
            f"{s.WORK_RUN_PREFIX}.>",
            f"{s.INBOX_PREFIX}.>",
            _EVENTS,
            f"$SRV.INFO.{s.SERVICE_EXECUTOR}",
            _self_ping(s.SERVICE_SUBMISSION),
            *_stream_api(_JOBS),
            *_stream_api(_AGENTS),
            *_stream_api(_JOBDEFS),
            *_stream_api(_INBOX_STREAM),
            f"$JS.API.STREAM.PURGE.{_INBOX_STREAM}",
            f"$JS.API.STREAM.INFO.{s.WORK_STREAM}",  # it only publishes work: no consumer of the queue
            *_stream_api(s.JOB_LOG_STREAM),
            *_JS_COMMON,
        ),
        subscribe=(_JOBS_REQ, _AGENTS_REQ, *_SERVICE_COMMON_SUB, _inbox("submission")),
        streams=(_JOBS, _AGENTS, _JOBDEFS, s.WORK_STREAM, s.JOB_LOG_STREAM, _INBOX_STREAM),
        responses=True,
        notes=(
            "asks live executors for their agents (`$SRV.INFO.statek-executor`)",
            "appends messages and notifications to a job's inbox (`statek.inbox.<job>`); its recovery "
            "sweep reads and purges what jobs consumed",
            "publishes step 0 of each job and the wake-up of a message (`statek.work.run.<agent>.<job>`)",
            "stores a job's own options once per content (`statek_jobdefs`)",
        ),
    ),
    Role(
        name="executor",
        summary="statek-executor: runs job steps of the agents it serves",
        publish=(
            f"$KV.{s.JOBS_BUCKET}.>",
            f"$KV.{s.AGENTS_BUCKET}.>",
            f"$KV.{s.CONTEXT_BUCKET}.>",
            f"$KV.{s.KNOWLEDGE_BUCKET}.>",
            f"$O.{s.OBJECT_STORE_BUCKET}.>",
            f"{s.WORK_RUN_PREFIX}.>",
            f"{s.WORK_SCHEDULE_PREFIX}.>",
            _EVENTS,
            s.LLM_COMPLETE,
            _JOBS_REQ,
            _STATES_REQ,
            _self_ping(s.SERVICE_EXECUTOR),
            *_stream_api(_JOBS),
            *_stream_api(_AGENTS),
            *_stream_api(s.WORK_STREAM),
            *_stream_api(s.JOB_LOG_STREAM),
            *_stream_api(_BLOBS),
            *_stream_api(_JOBDEFS),  # reads a job's own options (it writes none)
            *_stream_api(_CONTEXT),
            *_stream_api(s.AGENT_EVENTS_STREAM),
            *_stream_api(_KNOWLEDGE),
            *_stream_api(_INBOX_STREAM),
            *_JS_COMMON,
            f"$JS.API.STREAM.PURGE.{_BLOBS}",
            f"$JS.API.STREAM.PURGE.{_INBOX_STREAM}",
        ),
        subscribe=(s.EXECUTOR_STATUS, *_SERVICE_COMMON_SUB, _inbox("executor")),
        streams=(
            _JOBS,
            _AGENTS,
            _JOBDEFS,
            _CONTEXT,
            s.WORK_STREAM,
            s.JOB_LOG_STREAM,
            _BLOBS,
            s.AGENT_EVENTS_STREAM,
            _KNOWLEDGE,
            _INBOX_STREAM,
        ),
        responses=True,
        notes=(
            "creates and updates the work consumers of its own agents (`statek_agent_<agent>`)",
            "calls the provider (`statek.llm.complete`) and, for steps, the job and state services",
            "turns its agents' queued events (`statek_agent_events`) into jobs through `statek.jobs.submit`",
            "keeps shared contexts in `statek_context`",
            "reads its jobs' inboxes (`statek_inbox`) and purges what a committed step consumed",
            "serves the published knowledge version (`statek_knowledge`), publishes its `STATEK_*_DIR` "
            "directories at start and records the version it serves (`served.<id>`)",
        ),
    ),
    Role(
        name="state",
        summary="statek-state: the States API over its bucket",
        publish=(f"$KV.{s.STATES_BUCKET}.>", _self_ping(s.SERVICE_STATE), *_stream_api(_STATES), *_JS_COMMON),
        subscribe=(_STATES_REQ, *_SERVICE_COMMON_SUB, _inbox("state")),
        streams=(_STATES,),
        responses=True,
    ),
    Role(
        name="provider",
        summary="statek-provider: the only process with LLM API keys",
        publish=(_self_ping(s.SERVICE_PROVIDER),),
        subscribe=(_LLM_REQ, *_SERVICE_COMMON_SUB, _inbox("provider")),
        responses=True,
        notes=("no JetStream at all: it only answers requests (and pings itself once, to know it is ready)",),
    ),
    Role(
        name=CLIENT,
        summary="applications, `AsyncStatekClient` / `StatekClient`, the `statek-bus` commands",
        publish=(
            _JOBS_REQ,
            _AGENTS_REQ,
            _STATES_REQ,
            f"{s.AGENT_EVENTS_PREFIX}.*",
            s.EXECUTOR_STATUS,
            "$SRV.>",
            f"$JS.API.DIRECT.GET.{s.JOB_LOG_STREAM}",
            f"$JS.API.DIRECT.GET.{_STATES}",
            f"$JS.API.DIRECT.GET.{_STATES}.>",
            f"$JS.API.STREAM.INFO.{_STATES}",
        ),
        subscribe=("_INBOX.>", _EVENTS, f"$KV.{s.STATES_BUCKET}.>"),
        notes=(
            "`wait()`/`watch()` subscribe `statek.events.jobs.<job>` and read the job's log with direct gets",
            "`states.watch()` subscribes the state bucket's subjects (a wake-up per commit) and reads the "
            "commits with direct gets",
            "publishes events to an agent's queue (`statek.agents.events.<agent>`: each becomes a job)",
            "may not publish `$KV.*`, `statek.work.*` or `statek.llm.*`, nor create a consumer",
            "sends messages through `statek.jobs.*` only: it may not append to an inbox itself",
            "may not publish knowledge: prompt files and warmup defs are the application's code, so "
            "`statek-bus knowledge publish` runs with the administrator's (or an executor's) credentials",
        ),
    ),
)
"""Every role but the administrator's."""

SERVICE_ROLES: dict[str, str] = {
    s.SERVICE_SUBMISSION: "submission",
    s.SERVICE_EXECUTOR: "executor",
    s.SERVICE_STATE: "state",
    s.SERVICE_PROVIDER: "provider",
}
"""ADR-32 service name → its role."""


def role(name: str) -> Role:
    """The role called ``name``."""
    for r in ROLES:
        if r.name == name:
            return r
    raise KeyError(name)


def server_config(users: dict[str, str], *, account: str = "STATEK") -> str:
    """The nats-server ``accounts`` block: one account with JetStream and one user per role.

    Args:
        users: role name → the role's nkey public key (``U...``); ``admin`` has every permission.
        account: the account's name.
    """
    entries: list[dict[str, object]] = []
    for name, nkey in users.items():
        entry: dict[str, object] = {"nkey": nkey}
        if name != ADMIN:
            entry["permissions"] = role(name).permissions()
        entries.append(entry)
    block = {account: {"jetstream": "enabled", "users": entries}}
    return "accounts: " + json.dumps(block, indent=2) + "\n"


def nkey_variable(name: str) -> str:
    """The environment variable holding role ``name``'s public nkey in a NATS pod (Kubernetes)."""
    return f"STATEK_NKEY_{name.upper()}"


def helm_users() -> list[dict[str, object]]:
    """The account's users as the NATS Helm chart's values write them (``deploy/helm/nats-values.yaml``).

    Each public key is the NATS pod's environment variable :func:`nkey_variable` (``<< $VAR >>`` is
    the chart's syntax for a value written unquoted, which nats-server reads as a variable).
    """
    out: list[dict[str, object]] = [{"nkey": f"<< ${nkey_variable(ADMIN)} >>"}]
    for r in ROLES:
        out.append({"nkey": f"<< ${nkey_variable(r.name)} >>", "permissions": r.permissions()})
    return out


def markdown() -> str:
    """The permission matrix as the Markdown tables of ``docs/permissions.md``."""
    lines: list[str] = []
    for r in ROLES:
        lines += [f"### `{r.name}`", "", r.summary + ".", ""]
        lines += ["| may | subjects |", "|---|---|"]
        lines.append(f"| publish | {_cells(r.publish) or 'nothing (replies only)'} |")
        lines.append(f"| subscribe | {_cells(r.subscribe)} |")
        if r.responses:
            lines.append("| reply | to each request it receives, once (`allow_responses`) |")
        if r.streams:
            lines.append(f"| verifies at start | {_cells(r.streams)} |")
        lines.append(f"| reply inbox | `{r.inbox_prefix}.>` |")
        lines.append("")
        lines += [f"- {n}" for n in r.notes]
        if r.notes:
            lines.append("")
    return "\n".join(lines)


def _cells(items: tuple[str, ...]) -> str:
    return ", ".join(f"`{i}`" for i in items)
