"""Child jobs, sub-tasks, timers and combinators: the system tools model code waits with.

Every job's namespace holds these tools (:data:`WAIT_TOOLS`):

- ``create_new_job(agent, shared_vars=None, locale=None, **params)`` → :class:`~statek_bus.authoring.futures.JobHandle`
  (``agent`` is a role string or an agent object); ``start_dialog(agent, message, ...)`` also sends
  the first message.
- ``delegate_task(agent, ...)`` → a future of ``(exit_status, job)``: ``s, j = delegate_task(...)``
  unpacks into two lazy elements and the job suspends only where ``s`` or ``j`` is read.
  ``delegate_mute_task``/``delegate_mute_dialog`` resolve to the child's replies joined (or its
  error). A failed child resolves to its ``"Error: ..."`` exit status: an error value, not a crash.
- ``sleep(seconds)`` / ``wait_until(when)`` → a timer future; as a statement it waits. Timers are
  durable: a scheduled message on the work stream wakes the job (see :mod:`statek_bus.runtime.wakeups`).
- ``get_all(*futures)`` / ``get_any(*futures)`` take futures of any kind (child jobs, timers,
  other combinations, job handles) *unresolved* and wait for all of them / the first ready.
- ``@subtask`` factories return a :class:`SubTaskHandler` while the child runs; the child calls
  ``complete_sub_task(result)`` and the parent gets a notification at its next safe point (a
  DONE parent restarts); ``find_sub_task_handler(id)`` finds the handler again.
- ``send_notification_to(job, text)`` notifies another job.

Children inherit the parent's locale unless given one (the submission service resolves it), their
usage is summed into the parent's, and their ids derive from where they were created
(``<parent>/<item>.<unit>.<statement>.<n>``), so re-running a statement never creates a second child.
Messages and notifications sent from a step are at-least-once: a crash before the step commits
repeats them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from statek_bus.authoring.futures import (
    AllFuture,
    AnyFuture,
    JobFuture,
    JobHandle,
    SubTask,
    SubTaskDone,
    SubTaskState,
    TimerFuture,
    current_env,
)
from statek_bus.authoring.referenced import referenced_locals
from statek_bus.authoring.tools import Tool, current_job, tool
from statek_bus.client.jobs import agent_role, split_options
from statek_bus.wire.messages import Job, JobSendNotificationRequest, SubmitRequest
from statek_bus.wire.subjects import JOBS_SEND_NOTIFICATION, JOBS_SUBMIT
from statek_bus.wire.values import from_json, to_json

__all__ = [
    "WAIT_TOOLS",
    "SubTaskHandler",
    "complete_sub_task",
    "create_new_job",
    "delegate_mute_dialog",
    "delegate_mute_task",
    "delegate_task",
    "find_sub_task_handler",
    "get_all",
    "get_any",
    "send_notification_to",
    "sleep",
    "start_dialog",
    "subtask",
    "wait_until",
]


def _create(agent: Any, shared_vars: dict[str, Any] | None, locale: Any, kwargs: dict[str, Any]) -> JobHandle:
    """Submit a child job under a deterministic id (re-running the statement finds the same job).

    ``kwargs`` are the child's parameters, except STATEK's per-job options (``warmup_code``...),
    which become its :class:`~statek_bus.wire.messages.JobOptions`.
    """
    options, params = split_options(kwargs)
    env = current_env()
    site = env.sites.next()
    child_id = f"{env.job_id}/{site}"
    role = agent_role(agent)
    shared = dict(shared_vars or {})
    if options is not None and options.warmup_code:  # STATEK: the caller's variables its warmup reads
        namespace = current_job().namespace
        for name in referenced_locals(options.warmup_code):
            if name not in shared and name in namespace:
                value = namespace[name]
                if not callable(value) and not inspect.ismodule(value):
                    shared[name] = value
    handler = env.pending_handler
    if handler is not None:
        env.pending_handler = None
        handler.job_id, handler.parent_id = child_id, env.job_id
        handler.id = handler.id or site
        shared["sub_task_handler"] = handler
    code = None
    if locale is not None:
        from statek_bus.wire.locale import resolve_locale

        code = resolve_locale(locale).code
    request = SubmitRequest(
        agent=role,
        shared_vars={k: to_json(v, env.registry, f"shared_vars[{k!r}]") for k, v in shared.items()} or None,
        locale=code,
        params=params or None,
        job_id=child_id,
        parent_id=env.job_id,
        options=options,
    )
    env.run(env.mesh().request(JOBS_SUBMIT, request, Job))
    return JobHandle(child_id, role)


def _once(key: str, action: Callable[[], Any]) -> None:
    """Run ``action`` the first time the current statement reaches it (not again after a wake-up)."""
    env = current_env()
    site = f"{key}@{env.sites.next()}"
    if env.memo.get(site):
        return
    action()
    env.memo[site] = True


@tool(system=True)
def create_new_job(
    agent: Any,
    shared_vars: dict[str, Any] | None = None,
    locale: Any = None,
    warmup_code: str | None = None,
    post_processing: str | None = None,
    **kwargs: Any,
) -> JobHandle:
    """Create a child job (READY) and return it; it runs on its own, the parent does not wait.

    Args:
        agent: the agent role (or agent object).
        shared_vars: variables in the child's workspace when it starts.
        locale: ``LANG-COUNTRY``; default: this job's locale.
        warmup_code: code the child runs (sandboxed) before its agent's warmup; the variables of
            this job that it reads are copied into the child's workspace.
        post_processing: post-processors added to the agent's (``FinalCheck(max_llm_actions=2)``).
        **kwargs: the child's parameters (``provider_config`` and ``extra_resources`` are options).
    """
    return _create(
        agent, shared_vars, locale, {**kwargs, "warmup_code": warmup_code, "post_processing": post_processing}
    )


@tool(system=True)
def start_dialog(
    agent: Any, message: str, shared_vars: dict[str, Any] | None = None, locale: Any = None, **kwargs: Any
) -> JobHandle:
    """Create a child job and send it ``message`` as its first user message.

    Args:
        agent: the agent role (or agent object).
        message: the first message.
        shared_vars: variables in the child's workspace.
        locale: ``LANG-COUNTRY``; default: this job's locale.
        **kwargs: the child's parameters.
    """
    job = _create(agent, shared_vars, locale, kwargs)
    _once("message", lambda: job.send_message(str(message)))
    return job


@tool(system=True)
def delegate_task(
    agent: Any, shared_vars: dict[str, Any] | None = None, locale: Any = None, **kwargs: Any
) -> JobFuture:
    """Run a child job; resolves to ``(exit_status, job)`` once it is DONE (reading it waits).

    Args:
        agent: the agent role (or agent object).
        shared_vars: variables in the child's workspace.
        locale: ``LANG-COUNTRY``; default: this job's locale.
        **kwargs: the child's parameters.
    """
    job = _create(agent, shared_vars, locale, kwargs)
    return JobFuture(job.id, job.agent, "task")


@tool(system=True)
def delegate_mute_task(
    agent: Any, shared_vars: dict[str, Any] | None = None, locale: Any = None, **kwargs: Any
) -> JobFuture:
    """Run a child job; resolves to its replies joined by newlines (or its error) once it is DONE.

    Args:
        agent: the agent role (or agent object).
        shared_vars: variables in the child's workspace.
        locale: ``LANG-COUNTRY``; default: this job's locale.
        **kwargs: the child's parameters.
    """
    job = _create(agent, shared_vars, locale, kwargs)
    return JobFuture(job.id, job.agent, "mute")


@tool(system=True)
def delegate_mute_dialog(
    agent: Any, message: str, shared_vars: dict[str, Any] | None = None, locale: Any = None, **kwargs: Any
) -> JobFuture:
    """Start a dialog child with ``message``; resolves like ``delegate_mute_task``.

    Args:
        agent: a dialog agent's role (or object).
        message: the first message.
        shared_vars: variables in the child's workspace.
        locale: ``LANG-COUNTRY``; default: this job's locale.
        **kwargs: the child's parameters.
    """
    job = start_dialog(agent, message, shared_vars, locale, **kwargs)
    return JobFuture(job.id, job.agent, "mute")


@tool(system=True)
def sleep(seconds: float) -> TimerFuture:
    """Wait ``seconds`` (as a statement; assigned, it waits where it is read). Survives restarts.

    Args:
        seconds: how long.
    """
    env = current_env()
    site = f"timer@{env.sites.next()}"
    due = env.memo.get(site)
    if due is None:
        due = to_json(env.now() + timedelta(seconds=float(seconds)))
        env.memo[site] = due
    return TimerFuture(from_json(due))


@tool(system=True)
def wait_until(when: datetime) -> TimerFuture:
    """Wait until ``when`` (a naive datetime is UTC). Survives restarts.

    Args:
        when: the moment to wake up.
    """
    if not isinstance(when, datetime):
        raise TypeError(f"wait_until needs a datetime, not {type(when).__name__}")
    return TimerFuture(when if when.tzinfo else when.replace(tzinfo=UTC))


def _combinator(kind: type[AllFuture] | type[AnyFuture], items: tuple[Any, ...]) -> Any:
    if not items:
        raise TypeError(f"{'get_all' if kind is AllFuture else 'get_any'} needs at least one future")
    if len(items) == 1 and isinstance(items[0], list | tuple):
        items = tuple(items[0])
    return kind(list(items))


@tool(system=True, futures=True)
def get_all(*futures: Any) -> AllFuture:
    """Wait for every future (child jobs, timers, other combinations); resolves to their values.

    Args:
        futures: the futures (or one list of them), passed unresolved.
    """
    return _combinator(AllFuture, futures)  # type: ignore[no-any-return]


@tool(system=True, futures=True)
def get_any(*futures: Any) -> AnyFuture:
    """Wait for the first ready future; resolves to its value (the first in argument order).

    Args:
        futures: the futures (or one list of them), passed unresolved.
    """
    return _combinator(AnyFuture, futures)  # type: ignore[no-any-return]


@tool(system=True)
def send_notification_to(job: Any, text: str) -> None:
    """Send ``text`` as a notification to another job (delivered at its next safe point).

    Args:
        job: a job (or job id).
        text: the notification.
    """
    env = current_env()
    job_id = job.id if isinstance(job, JobHandle) else str(job)
    request = JobSendNotificationRequest(job_id=job_id, text=str(text))
    _once("notify", lambda: env.run(env.mesh().request(JOBS_SEND_NOTIFICATION, request, Job)))


# ==================================================================================================
# Sub-tasks
# ==================================================================================================


@dataclasses.dataclass(eq=False)
class SubTaskHandler:
    """A handle on a sub-task (a child job started by a ``@subtask`` factory).

    Its state is live: in the parent, ``state``/``result``/``error`` reflect the completion the
    child reported (``WAITING``, ``STARTED``, ``COMPLETED``, ``ERROR``). ``str(handler)`` is the
    result (``""`` for None); it raises ``RuntimeError`` for an error or unfinished work.
    """

    id: str = ""
    """The handler id (given to the factory as ``id=``, else derived from the child)."""
    job_id: str = ""
    """The child job."""
    parent_id: str = ""
    """The job that started it."""

    def _entry(self) -> SubTask:
        try:
            env = current_env()
        except RuntimeError:
            return SubTask()
        if env.job_id == self.parent_id:
            return env.subtasks.get(self.id, SubTask())
        if env.job_id == self.job_id and env.subtask_done is not None:
            return env.subtask_done.entry(self.job_id)
        return SubTask()

    @property
    def state(self) -> str:
        """WAITING, STARTED, COMPLETED or ERROR."""
        found = self._entry().state
        if found.finished:
            return str(found)
        with contextlib.suppress(Exception):
            ready = JobHandle(self.job_id).status == "READY"
            return str(SubTaskState.WAITING if ready else SubTaskState.STARTED)
        return str(SubTaskState.WAITING)

    @property
    def is_completed(self) -> bool:
        """Whether the sub-task reported completion (successfully or not)."""
        return self._entry().state.finished

    @property
    def result(self) -> Any:
        """The reported result (None until completed)."""
        return from_json(self._entry().result)

    @property
    def error(self) -> str | None:
        """The reported error, if any."""
        return self._entry().error

    def get_log_message(self) -> str:
        """The notification text the parent gets."""
        if self.error is not None:
            return f"[Error] sub-task id={self.id} failed with {self.error}"
        return f"[Notification] sub-task id={self.id} completed successfully."

    def complete(self, result: Any = None, error: str | None = None) -> None:
        """Report completion (from the child job); see :func:`complete_sub_task`."""
        _complete(self, result, error)

    def __str__(self) -> str:
        entry = self._entry()
        if entry.state is SubTaskState.ERROR:
            raise RuntimeError(str(entry.error))
        if entry.state is not SubTaskState.COMPLETED:
            raise RuntimeError(f"Sub-task id={self.id} is not completed: {self.state}")
        result = from_json(entry.result)
        return "" if result is None else str(result)

    def __llm_repr__(self) -> str:
        return f"SubTaskHandler(id={self.id!r}, job={self.job_id!r}, state={self.state})"


def _complete(handler: SubTaskHandler, result: Any, error: str | None) -> None:
    env = current_env()
    if env.job_id != handler.job_id:
        raise RuntimeError("a sub-task is completed by its own job")
    if result is not None and error is not None:
        raise ValueError("complete_sub_task takes a result or an error, not both")
    if env.subtask_done is not None:
        raise RuntimeError("Sub-task handler is already completed")
    env.subtask_done = SubTaskDone(
        id=handler.id,
        parent=handler.parent_id,
        state=SubTaskState.ERROR if error is not None else SubTaskState.COMPLETED,
        result=to_json(result, env.registry, "result"),
        error=str(error) if error is not None else None,
    )


@tool(system=True)
def complete_sub_task(result: Any = None, error: str | None = None) -> None:
    """Report this job's sub-task as completed (or failed); the parent is notified.

    Args:
        result: the result (what ``str(handler)`` shows the parent).
        error: an error message instead of a result.
    """
    handler = current_job().namespace.get("sub_task_handler")
    if handler is None:
        raise RuntimeError("this job is not a sub-task (no sub_task_handler)")
    if not isinstance(handler, SubTaskHandler):
        raise TypeError(f"sub_task_handler is a {type(handler).__name__}, not a SubTaskHandler")
    _complete(handler, result, error)


@tool(system=True)
def find_sub_task_handler(id: str | None = None) -> SubTaskHandler | None:
    """The handler of a sub-task this job started (the latest completed one when no id is given).

    Args:
        id: the handler id.
    """
    env = current_env()
    if id is not None:
        entry = env.subtasks.get(id)
        if entry is None:
            raise RuntimeError(f"sub-task handler id={id} not found")
        return SubTaskHandler(id, entry.job, env.job_id)
    done = [k for k, e in env.subtasks.items() if e.state.finished]
    if not done:
        return None
    key = done[-1]
    return SubTaskHandler(key, env.subtasks[key].job, env.job_id)


def subtask(
    fn: Callable[..., Any] | None = None, /, *, system: bool = False, target: Iterable[str] | None = None
) -> Any:
    """Make a job factory a sub-task tool: the caller gets a :class:`SubTaskHandler` and keeps running.

    The factory creates the child (``create_new_job``, ``start_dialog``...) and returns it (or a
    handler). The tool gains an ``id`` keyword: the handler's id. The child finds the handler as
    its ``sub_task_handler`` variable and reports with ``complete_sub_task(result)``.

    Raises:
        TypeError: the factory declares ``id`` or does not take ``**kwargs``.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        inner = f.fn if isinstance(f, Tool) else f
        sig = inspect.signature(inner)
        params = list(sig.parameters.values())
        if "id" in sig.parameters:
            raise TypeError(f"@subtask {inner.__name__}: the factory must not declare 'id'")
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            raise TypeError(f"@subtask {inner.__name__}: the factory must take **kwargs")

        def call(*args: Any, id: str | None = None, **kwargs: Any) -> SubTaskHandler:
            env = current_env()
            handler = SubTaskHandler(id=id or "", parent_id=env.job_id)
            env.pending_handler = handler
            try:
                made = inner(*args, **kwargs)
            finally:
                env.pending_handler = None
            if isinstance(made, SubTaskHandler):
                handler = made
                handler.id = handler.id or id or handler.job_id.rsplit("/", 1)[-1]
            elif isinstance(made, JobHandle):
                if handler.job_id != made.id:  # created outside the factory's own call
                    handler.job_id, handler.id = made.id, handler.id or made.id.rsplit("/", 1)[-1]
            else:
                raise TypeError(f"@subtask {inner.__name__} returned {type(made).__name__}, not a job")
            env.subtasks.setdefault(handler.id, SubTask(job=handler.job_id))
            return handler

        extra = inspect.Parameter("id", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")
        at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
        call.__signature__ = sig.replace(parameters=[*params[:at], extra, *params[at:]])  # type: ignore[attr-defined]
        call.__name__, call.__qualname__ = inner.__name__, inner.__qualname__
        call.__doc__, call.__module__ = inner.__doc__, inner.__module__
        return Tool(call, name=inner.__name__, system=system, target=target)

    return wrap(fn) if fn is not None else wrap


WAIT_TOOLS: tuple[Tool, ...] = (
    create_new_job,
    start_dialog,
    delegate_task,
    delegate_mute_task,
    delegate_mute_dialog,
    sleep,
    wait_until,
    get_all,
    get_any,
    send_notification_to,
    complete_sub_task,
    find_sub_task_handler,
)
"""The system tools of this module, offered to every code-first agent."""
