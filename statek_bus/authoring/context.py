"""STATEK's context helpers: the job and agent a step runs for, the persistent per-job context, a test scope.

These are for application code (tools, error handlers, tests), never for model code: they hand
out host objects (the :class:`~statek_bus.authoring.tools.JobContext`, the agent), so none of them
is in a job's namespace. Model code reaches what it may see through system tools
(``print_locals``, ``shared_context_set_var``), which print or take data only.

- :func:`get_current_job`, :func:`get_current_agent`, :func:`get_current_agent_name`,
  :func:`statek_ctx_get` and :func:`statek_ctx_set` read and extend the step's volatile context
  (STATEK's ``statek_ctx``: ``job`` and ``agent``, plus what a tool sets for the rest of the step).
- :func:`perm_ctx_get`, :func:`perm_ctx_set` and :func:`perm_ctx_set_unique` keep a per-job
  dictionary that survives steps, restarts and executors: it is committed with the step in the job
  record (STATEK kept it in the locals under ``_PERM_CTX``; here model code cannot overwrite it).
  Values are tagged JSON, bounded by :data:`~statek_bus.wire.limits.MAX_PERM_CONTEXT_BYTES`.
- :func:`find_locals` searches the job's workspace (and the persistent context) by type or name.
- :func:`statek_context` binds a job context for a unit test of a tool, without an executor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgspec

from statek_bus.authoring.tools import JobContext, bind_job, current_job, unbind_job
from statek_bus.wire.limits import MAX_PERM_CONTEXT_BYTES
from statek_bus.wire.values import from_json, to_json

__all__ = [
    "PERM_KEY",
    "find_locals",
    "get_current_agent",
    "get_current_agent_name",
    "get_current_job",
    "perm_ctx_get",
    "perm_ctx_set",
    "perm_ctx_set_unique",
    "statek_context",
    "statek_ctx_get",
    "statek_ctx_set",
]

PERM_KEY = "perm"
"""``JobContext.extras`` key of the persistent per-job context (tagged JSON by key); the engine
loads it from the engine state before the step's code runs and commits it with the step."""
_AGENT_KEY = "agent"
_MISSING: Any = object()


def get_current_job() -> JobContext:
    """The job the calling tool runs for; ``RuntimeError`` outside a step (or :func:`statek_context`)."""
    return current_job()


def get_current_agent() -> Any:
    """The agent object of the current job; ``RuntimeError`` outside a step."""
    agent = current_job().extras.get(_AGENT_KEY)
    if agent is None:
        raise RuntimeError("no agent in the job context")
    return agent


def get_current_agent_name() -> str:
    """The current job's agent role (STATEK returned the agent's class name; here agents are named by role)."""
    return current_job().agent


def statek_ctx_get(*args: Any) -> Any:
    """``statek_ctx_get(key[, default])``: a value of the step's volatile context.

    ``job`` is the :class:`JobContext`, ``agent`` the agent; other keys are what
    :func:`statek_ctx_set` stored during this step. Without a default: ``RuntimeError`` outside a
    step, ``KeyError`` for a key that is not set; ``TypeError`` for other than one or two arguments.
    """
    if not 1 <= len(args) <= 2:
        raise TypeError(f"statek_ctx_get takes a key and an optional default ({len(args)} arguments given)")
    key, default = args[0], args[1] if len(args) == 2 else _MISSING
    try:
        ctx = current_job()
    except RuntimeError:
        if default is _MISSING:
            raise
        return default
    if key == "job":
        return ctx
    if key in ctx.extras and key != PERM_KEY:
        return ctx.extras[key]
    if default is _MISSING:
        raise KeyError(key)
    return default


def statek_ctx_set(**values: Any) -> None:
    """Put ``values`` into the step's volatile context (gone after the step); ``RuntimeError`` outside."""
    ctx = current_job()
    for key in values:
        if key in ("job", PERM_KEY, "env", "exit"):
            raise ValueError(f"statek_ctx_set cannot replace {key!r}")
    ctx.extras.update(values)


# --------------------------------------------------------------------------------------------------
# The persistent per-job context
# --------------------------------------------------------------------------------------------------


def _perm() -> dict[str, Any]:
    ctx = current_job()
    perm = ctx.extras.get(PERM_KEY)
    if not isinstance(perm, dict):
        perm = ctx.extras[PERM_KEY] = {}
    return perm


def perm_ctx_get(*args: Any) -> Any:
    """``perm_ctx_get(key[, default])``: a value of the persistent per-job context.

    ``RuntimeError`` outside a step; ``KeyError`` for a missing key without a default.
    """
    if not 1 <= len(args) <= 2:
        raise TypeError(f"perm_ctx_get takes a key and an optional default ({len(args)} arguments given)")
    perm = _perm()
    key = args[0]
    if key in perm:
        return from_json(perm[key])
    if len(args) == 2:
        return args[1]
    raise KeyError(key)


def perm_ctx_set(**values: Any) -> None:
    """Store ``values`` in the persistent per-job context (committed with the step).

    Raises:
        TypeError: a value has no tagged JSON encoding.
        ValueError: the context would exceed :data:`~statek_bus.wire.limits.MAX_PERM_CONTEXT_BYTES`.
    """
    perm = _perm()
    encoded = {k: to_json(v, path=f"perm_ctx[{k!r}]") for k, v in values.items()}
    merged = {**perm, **encoded}
    size = len(msgspec.json.encode(merged))
    if size > MAX_PERM_CONTEXT_BYTES:
        raise ValueError(
            f"the persistent job context would be {size} bytes; the limit is {MAX_PERM_CONTEXT_BYTES}"
        )
    perm.update(encoded)


def perm_ctx_set_unique(key: str, value: Any) -> str:
    """Store ``value`` under ``key``, or ``key_1``, ``key_2``... if taken; returns the name used."""
    perm = _perm()
    name, n = key, 0
    while name in perm:
        n += 1
        name = f"{key}_{n}"
    perm_ctx_set(**{name: value})
    return name


# --------------------------------------------------------------------------------------------------
# Searching the workspace
# --------------------------------------------------------------------------------------------------


def find_locals(
    var_type: type | tuple[type, ...] | None = None, var_name: str | None = None, ext_scan: bool = True
) -> dict[str, Any]:
    """Variables of the current job by type and/or name: ``{name: value}``.

    Searches the job's workspace (through the step's view of it: in a worker-process step each read
    asks the worker, and only data crosses), then, with ``ext_scan``, the persistent context.
    Futures are resolved: one named explicitly suspends the job if it is not ready (as reading it
    in code would); unready futures found by type are skipped. ``RuntimeError`` outside a step.
    """
    from statek_bus.authoring.futures import Future, current_env, poll, resolve

    ctx = current_job()
    found: dict[str, Any] = {}
    sources: list[tuple[str, Any]] = []
    ns = ctx.namespace
    names = [var_name] if var_name is not None else [n for n in list(ns) if not n.startswith("_")]
    for name in names:
        if name in ns:
            sources.append((name, ns[name]))
    if ext_scan:
        perm = ctx.extras.get(PERM_KEY) or {}
        for name in [var_name] if var_name is not None else list(perm):
            if name in perm and name not in dict(sources):
                sources.append((name, from_json(perm[name])))
    for name, value in sources:
        if isinstance(value, Future):
            if var_name is not None:
                value = resolve(value)  # named: an unready future suspends the job, as a read would
            else:
                env = current_env()
                ready, value = env.run(poll(value, env))
                if not ready:
                    continue
        if var_type is None or isinstance(value, var_type):
            found[name] = value
    return found


# --------------------------------------------------------------------------------------------------
# Testing
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def statek_context(job: JobContext | str | None = None, agent: Any = None) -> Iterator[JobContext]:
    """Run a block as if inside a step of ``job`` (a :class:`JobContext`, a job id, or a test job).

    For unit tests of tools: :func:`get_current_job`, :func:`perm_ctx_set` and friends work inside
    it; waiting tools and the shared context still need an executor and raise ``RuntimeError``.

    Args:
        job: the job context to bind, or a job id for a fresh one (default ``"test-job"``).
        agent: the agent the helpers report (its ``role`` names the job's agent).
    """
    if not isinstance(job, JobContext):
        role = str(getattr(agent, "role", "test-agent"))
        job = JobContext(job_id=job or "test-job", agent=role, params={}, namespace={})
    if agent is not None:
        job.extras[_AGENT_KEY] = agent
    token = bind_job(job)
    try:
        yield job
    finally:
        unbind_job(token)
