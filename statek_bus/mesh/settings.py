"""Settings: every tunable of statek-bus, in one place, read from the environment (12-factor).

Each field is read from ``STATEK_<FIELD NAME IN UPPER CASE>`` (``nats_url`` from ``NATS_URL``, as
the ``nats`` CLI does, and STATEK's ``FULL_AGENT_TRACE*`` under their own names), with the typed
default below. A malformed value is a clear error naming the
variable. Services, the CLI, tests and benchmarks all take a :class:`Settings`; tests build one with
``Settings.from_env({...})`` or ``dataclasses.replace`` rather than mutating the process environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["REFUSED_STATEK_VARIABLES", "Settings", "SettingsError"]

ENV_PREFIX = "STATEK_"


class SettingsError(ValueError):
    """An environment variable holds a value of the wrong type."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Typed settings with defaults; see the module docstring for the environment mapping."""

    # --- connection and embedded server ---------------------------------------------------------
    nats_url: str = "nats://127.0.0.1:4222"
    """Where services and clients connect (env ``NATS_URL``)."""
    data_dir: str = ".statek"
    """JetStream file storage of the embedded server (``statek-bus up``)."""
    port: int = 4222
    """Client port of the embedded server; 0 picks a free one."""
    replicas: int = 1
    """Replicas of every bucket and stream: 1 embedded, 3 on a Kubernetes cluster."""
    request_timeout: float = 10.0
    """Seconds a client waits for a reply before raising ServiceUnavailableError."""
    connect_timeout: float = 5.0
    """Seconds the CLI and clients wait for the first connection."""
    log_level: str = "INFO"
    """Python logging level of services."""
    creds_file: str = ""
    """NATS credentials file (user JWT + nkey seed, as ``nats context`` uses, or an nkey seed alone:
    what ``statek-bus up --auth`` writes); env ``STATEK_CREDS_FILE`` or ``NATS_CREDS`` (:mod:`statek_bus.mesh.auth`)."""
    inbox_prefix: str = "_INBOX"
    """Prefix of this process's reply subjects; each service's identity may subscribe only its own
    (``_INBOX_<role>``, docs/permissions.md), so no other identity reads its replies."""
    provision: str = "auto"
    """What a service does with storage at start: ``auto`` creates what is missing, then verifies;
    ``verify`` only checks what it uses exists (run ``statek-bus provision`` first: least privilege)."""
    nkey_seed_file: str = ""
    """File holding an nkey seed, for servers that authorize nkey users."""
    user_file: str = ""
    """File holding the NATS user name (with ``password_file``)."""
    password_file: str = ""
    """File holding the NATS password."""
    tls_ca_file: str = ""
    """CA bundle of the server's certificate; setting it turns TLS on."""
    tls_cert_file: str = ""
    """Client certificate for mutual TLS (with ``tls_key_file``)."""
    tls_key_file: str = ""
    """The client certificate's private key."""
    log_format: str = "text"
    """``text`` for a terminal, ``json`` for one JSON object per line (:mod:`statek_bus.mesh.logs`)."""
    health_port: int = -1
    """Port of ``/livez``, ``/readyz`` and ``/metrics`` (-1: no HTTP server; 0: a free port, logged)."""
    health_host: str = "0.0.0.0"
    """Bind address of the health port (all interfaces in a pod, so the kubelet reaches it)."""

    # --- service runner ---------------------------------------------------------------------------
    handler_concurrency: int = 256
    """Requests one service instance handles at once (bounded tasks; nats-py runs handlers serially)."""
    drain_timeout: float = 20.0
    """Seconds a stopping service waits for in-flight work before leaving it for redelivery."""
    max_request_bytes: int = 1_000_000
    """Largest request body accepted (413 above); also bounded by the server's max_payload."""

    # --- jobs and states --------------------------------------------------------------------------
    list_default_limit: int = 50
    """Page size of list endpoints when ``limit`` is omitted."""
    list_max_limit: int = 1000
    """Largest accepted ``limit`` of list endpoints."""
    state_max_bytes: int = 256 * 1024
    """Largest encoded ``state`` object (413 above)."""
    state_history: int = 16
    """Revisions kept per state for ``history()`` (NATS KV allows at most 64): the retention of
    states' history (a state itself is kept until it is deleted)."""
    job_history: int = 4
    """Revisions kept per job record."""
    dedup_window: float = 120.0
    """Seconds the work stream deduplicates by ``Nats-Msg-Id``."""
    inbox_limit: int = 10_000
    """Undelivered messages and notifications one job's inbox holds; a send over it is a 413.

    Enforced by the server (``max_msgs_per_subject`` of ``statek_inbox``), so every service of a
    mesh must use the same value (a differing one is a provisioning error naming it)."""
    recovery_interval: float = 30.0
    """Seconds between submission's passes that enqueue READY jobs lacking a work message."""
    reconcile_interval: float = 600.0
    """Seconds between submission's passes over the live-job index that re-enqueue runnable jobs
    whose work message was lost (a purged or restored work stream); 0 turns them off."""
    job_retention: float = 30 * 86400.0
    """Seconds a DONE job is kept after its last update, with its log and list entries (then
    removed by submission's retention pass, :mod:`statek_bus.jobs.retention`); 0 keeps them forever."""
    retention_interval: float = 300.0
    """Seconds between submission's retention passes."""
    jobs_max_bytes: int = 2 * 1024**3
    """Storage cap of the ``statek_jobs`` bucket (writes beyond it fail; see deploy/README.md sizing)."""
    states_max_bytes: int = 1024**3
    """Storage cap of the ``statek_states`` bucket (every state with its ``state_history`` revisions)."""
    agents_max_bytes: int = 64 * 1024**2
    """Storage cap of the ``statek_agents`` bucket."""
    work_max_bytes: int = 1024**3
    """Storage cap of the ``statek_work`` queue (beyond it the oldest messages are dropped: JetStream
    allows no other policy beside message schedules; the reconcile pass re-enqueues such steps)."""
    job_log_max_bytes: int = 4 * 1024**3
    """Storage cap of the ``statek_job_log`` stream (beyond it the oldest events are dropped)."""
    blobs_max_bytes: int = 1024**3
    """Storage cap of the ``statek_blobs`` object store (large workspaces)."""
    jobdefs_max_bytes: int = 256 * 1024**2
    """Storage cap of the ``statek_jobdefs`` bucket (one definition per distinct set of job options)."""
    context_max_bytes: int = 256 * 1024**2
    """Storage cap of the ``statek_context`` bucket (shared contexts)."""
    knowledge_max_bytes: int = 512 * 1024**2
    """Storage cap of the ``statek_knowledge`` bucket (a version is at most 64 MiB of files; a
    dropped file is kept one more version)."""
    inbox_max_bytes: int = 1024**3
    """Storage cap of the ``statek_inbox`` stream (messages sent to jobs and not consumed yet; when
    full a send is refused with a 503, nothing is dropped)."""
    agent_events_max_bytes: int = 1024**3
    """Storage cap of the ``statek_agent_events`` queue (beyond it a new event is refused, not an
    old one dropped)."""
    jobs_gauge_interval: float = 15.0
    """Seconds between submission's counts of jobs by status (the ``statek_jobs`` gauge of
    ``/metrics``, read from the live-job index); 0 turns them off."""

    # --- executor ---------------------------------------------------------------------------------
    agents: str = ""
    """``module:attr`` of the agents the executor serves (empty: the built-in ``demo`` agent)."""
    burst: bool = False
    """Executor: stop once the work queue is idle and nothing runs (arq's burst mode), e.g. for a batch."""
    max_concurrency: int = 100
    """Steps one executor replica runs code for at once."""
    model_waits_per_slot: int = 4
    """Steps per concurrency slot that may wait on the model meanwhile (a waiting step gives its slot back)."""
    fetch_batch: int = 50
    """Work messages pulled per fetch (never 1: see docs/architecture.md)."""
    ack_wait: float = 30.0
    """Seconds before an unacknowledged step is redelivered to another replica."""
    max_deliver: int = 20
    """Deliveries of one work message before it is dead-lettered."""
    step_timeout: float = 10.0
    """Wall-clock seconds model code may run in one step before it is stopped."""
    restricted_mode: bool = True
    """Check model code against the sandbox policy before it runs (STATEK's ``STATEK_PYTHON_SANDBOX_MODE``
    ``restricted``/``off`` sets it too)."""
    python_sandbox_max_source_bytes: int = 200_000
    """Largest model source accepted, in UTF-8 bytes (STATEK's name and default)."""
    python_sandbox_max_ast_nodes: int = 20_000
    """Largest model source accepted, in AST nodes (STATEK's name and default)."""
    python_sandbox_allowed_imports: str = ""
    """Comma-separated modules model code may import (empty: STATEK's default list)."""
    python_sandbox_allowed_tools: str = ""
    """Comma-separated hidden tools model code may still call (STATEK's name; empty: none)."""
    code_runner: str = "process"
    """Where model code runs: ``process`` (a locked-down worker process per step, the default) or
    ``in-process`` (threads of the executor: no memory or CPU limit, for trusted development only;
    the executor warns loudly at start)."""
    app_code_in_process: bool = True
    """Run an agent's warmup in the executor while nothing model-written has run in the job (it is
    application code against data; a worker process would cost a fork and protect nothing). Off:
    every step's code runs in a worker process."""
    data_tier: bool = True
    """Run model code that provably touches only data (a strict subset of Python on plain values,
    every value and operation size-guarded: :mod:`statek_bus.sandbox.datatier`) in the executor's
    threads instead of a worker process; whatever the tier cannot prove, or gives up on, runs in a
    worker as before. Off: every model step forks a worker."""
    sandbox_workers: int = 32
    """Steps whose model code runs at once in worker processes (one process each)."""
    sandbox_memory_mb: int = 512
    """Memory one step's worker may allocate beyond its size at start (MiB; 0: no limit)."""
    sandbox_cpu_seconds: int = 0
    """CPU seconds one step's worker may use (0: ``step_timeout`` rounded up, plus one)."""
    max_turns: int = 5
    """Harness limit: LLM turns per job run."""
    max_exceptions: int = 3
    """Harness limit: runtime errors per job run."""
    max_consecutive_exceptions: int = 1
    """Harness limit: consecutive runtime errors before the job ends."""
    max_token_usage: int = 10_000
    """Harness limit: tokens per job run."""
    limit_extension_per_completion: float = 0.0
    """Every harness limit is multiplied by ``1 + this * <LLM calls so far in the run>`` (STATEK's)."""
    default_difficulty: str = "M"
    """Difficulty of a job whose agent has no ``DEFAULT_DIFFICULTY`` metadata (``L``, ``M``, ``H``)."""
    xml_box_console: str = ""
    """Tag boxing console output in the model's history, for agents without ``XML_BOX_CONSOLE`` metadata."""
    logs_path: str = ""
    """Directory of per-job log files ``<role>_<job id>.log`` an executor appends each step's events to."""
    full_agent_trace: bool = False
    """Trace events (``llm.request``, ``llm.response``, ``tool.*``, ``python_cli.*``, secrets redacted) on
    each job's event subject and in :attr:`full_agent_trace_path` (env ``FULL_AGENT_TRACE``)."""
    full_agent_trace_path: str = "full_agent_trace.jsonl"
    """JSONL file of trace events, per executor (env ``FULL_AGENT_TRACE_PATH``; empty: the stream only)."""
    full_agent_trace_max_bytes: int = 10 * 1024 * 1024
    """Size at which the trace file rotates (env ``FULL_AGENT_TRACE_MAX_BYTES``)."""
    full_agent_trace_backup_count: int = 3
    """Rotated trace files kept (env ``FULL_AGENT_TRACE_BACKUP_COUNT``)."""
    workspace_inline_max: int = 256 * 1024
    """Encoded workspaces larger than this go to the object store."""
    prompt_files_dir: str = ""
    """Executor: a directory of STATEK prompt files (``<role>.md``) published to ``statek_knowledge`` at
    start (:mod:`statek_bus.runtime.knowledge`); every executor then serves the published version."""
    warmup_defs_dir: str = ""
    """Executor: a directory of STATEK warmup defs (``<role>.py``), published the same way."""
    examples_dir: str = ""
    """Executor: a directory of STATEK examples (``<role>/**/*.md``), published the same way."""
    documents_dir: str = ""
    """Executor: a directory of STATEK documents (``**/*.txt``, ``**/*.md``), published the same way."""

    # --- provider ---------------------------------------------------------------------------------
    llm_timeout: float = 120.0
    """Seconds one provider call may take."""
    llm_retry_attempts: int = 5
    """Attempts per LLM call on 408/429/5xx/timeouts."""
    llm_retry_base: float = 0.5
    """First backoff delay in seconds (exponential, with full jitter)."""
    llm_retry_cap: float = 30.0
    """Longest backoff delay in seconds."""
    llm_model_concurrency: int = 32
    """Calls in flight per model per provider instance."""
    llm_model_rate: float = 0.0
    """Calls started per second per model (0: unlimited)."""
    llm_price_table: str = ""
    """Optional CSV of per-model prices overriding litellm's map."""
    llm_keys_dir: str = ""
    """Directory of provider key files, one per variable (a mounted Secret); empty: keys from the env."""
    script_dir: str = ""
    """Directory of ``.json`` scripts the scripted model's ``SCRIPT_FILE`` may name (empty: disabled)."""
    provider_config: str = ""
    """JSON file of STATEK's provider config (reasoning-level payloads per model), read by the provider
    at start (:mod:`statek_bus.provider.params`); empty: none."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then apply ``overrides``.

        Raises:
            SettingsError: a value is malformed, or a STATEK variable that statek-bus does not
                honour is set (:data:`REFUSED_STATEK_VARIABLES`): one line naming each and what to
                use instead, rather than a setting silently doing nothing.
        """
        env = os.environ if environ is None else environ
        refused = [f"{n} ({why})" for n, why in REFUSED_STATEK_VARIABLES.items() if env.get(n)]
        refused += [f"{n} ({_PROVIDER_VARS})" for n in env if _PROVIDER_URL.fullmatch(n) and env.get(n)]
        refused += [f"{n} ({_PROVIDER_OPTION})" for n in env if _PROVIDER_OPTIONS.fullmatch(n) and env.get(n)]
        if refused:
            raise SettingsError("STATEK settings statek-bus does not honour: " + "; ".join(refused))
        values: dict[str, Any] = {}
        mode = env.get("STATEK_PYTHON_SANDBOX_MODE")
        if mode:
            if mode.strip().lower() not in ("restricted", "off"):
                raise SettingsError(f"STATEK_PYTHON_SANDBOX_MODE={mode!r} is not 'restricted' or 'off'")
            values["restricted_mode"] = mode.strip().lower() == "restricted"
        for f in fields(cls):
            name = _UNPREFIXED.get(f.name) or ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, type(getattr(_DEFAULTS, f.name)))
        if "creds_file" not in values and env.get("NATS_CREDS"):
            values["creds_file"] = env["NATS_CREDS"]  # the name `statek-bus up --auth` prints
        values.update(overrides)
        if values.get("provision", "auto") not in ("auto", "verify"):
            raise SettingsError(f"STATEK_PROVISION={values['provision']!r} is not 'auto' or 'verify'")
        raw_level = str(values.get("default_difficulty", "M")).strip().upper()
        level = raw_level[:1]
        if raw_level not in ("L", "M", "H", "LOW", "MEDIUM", "HIGH"):
            raise SettingsError(
                f"STATEK_DEFAULT_DIFFICULTY={values['default_difficulty']!r} is not L, M or H"
            )
        values["default_difficulty"] = level
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


_UNPREFIXED = {
    "nats_url": "NATS_URL",
    "full_agent_trace": "FULL_AGENT_TRACE",
    "full_agent_trace_path": "FULL_AGENT_TRACE_PATH",
    "full_agent_trace_max_bytes": "FULL_AGENT_TRACE_MAX_BYTES",
    "full_agent_trace_backup_count": "FULL_AGENT_TRACE_BACKUP_COUNT",
}
"""Fields read from a variable without the ``STATEK_`` prefix (the ``nats`` CLI's, STATEK's trace ones)."""
_PROVIDER_URL = re.compile(r"(?!STATEK_)[A-Z][A-Z0-9]*_API_URL")
_PROVIDER_OPTIONS = re.compile(r"(?!STATEK_)[A-Z][A-Z0-9]*_(RESPONSE_FORMAT_FILE|USE_PROMPT_CACHING)")
_PROVIDER_OPTION = "STATEK's per-provider option: statek-bus's provider has no such setting"
_PROVIDER_VARS = "provider endpoints and keys live in the provider service: litellm's own variables"
REFUSED_STATEK_VARIABLES: dict[str, str] = {
    "STATEK_CHAT_STYLE": "set CHAT_STYLE in the agent's metadata",
    "STATEK_EXAMPLES_STYLE": "not supported yet by statek-bus",
    "STATEK_XML_BOX_EXAMPLE": "not supported yet by statek-bus",
    "STATEK_DEFAULT_ACL": "STATEK never applied it; statek-bus has no ACL setting",
    "STATEK_RPC_HOST": "nothing in STATEK read it; statek-bus speaks NATS: set NATS_URL",
    "STATEK_RPC_PORT": "nothing in STATEK read it; statek-bus speaks NATS: set NATS_URL",
    "STATEK_MODEL_INFO_DIR": "the provider's models come from litellm's map or STATEK_LLM_PRICE_TABLE",
    "DEFAULT_LLM_API_PROVIDER": "name the model with its provider prefix (openrouter/..., openai/...)",
}
"""STATEK 1.4.2 variables refused at start, each with what to use instead (STATEK's others are honoured)."""


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


_DEFAULTS = Settings()
