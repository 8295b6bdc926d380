"""Futures: values a job waits for, with statement-level suspension and no memory per waiting job.

A future is a small dataclass (persisted in the workspace and the engine state as tagged JSON, never
pickled): a child job's result (:class:`JobFuture`), one element of a tuple-valued future
(:class:`ElementFuture`), a timer (:class:`TimerFuture`), a combination (:class:`AllFuture`,
:class:`AnyFuture`) or an application's ``@temporal`` function (:class:`TemporalFuture`).

Model code never sees a future being waited for: the sandbox rewrites every variable read into
``__statek_read__(value)`` (:mod:`statek_bus.sandbox.restricted`). Reading a ready future gives its value;
reading one that is not ready raises :class:`Suspend`, a ``BaseException`` model code cannot catch
with ``except Exception``. The session stops at that top-level statement, the engine records the
wait (the future, where to resume, and its wake-up sources) and commits the job SUSPENDED. Nothing
else is kept: no coroutine, no thread, no unacknowledged message. A wake-up (the child's DONE, a
message, a notification, the timer's scheduled message) queues the job's step; the step checks the
future again and, when it is ready, re-runs the suspended statement (earlier statements are not
run again).

Calls whose callee declares ``takes_futures`` (``get_all``, ``get_any``) receive futures
unresolved; every other call resolves its future arguments first (STATEK resolved them for the
combinators too, so ``get_any`` waited for every future in turn and then failed).

A future is resolved against a :class:`StepRuntime` (the step's job, the jobs it can read, its client and
the executor's event loop), reached through :func:`statek_bus.authoring.tools.current_job`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from statek_bus.authoring.console import format_value
from statek_bus.authoring.tools import Tool, current_job
from statek_bus.sandbox.replay import REPLAYING, refuse_during_replay
from statek_bus.sandbox.restricted import register_future_type
from statek_bus.wire.messages import JobRecord, JobStatus, error_exit
from statek_bus.wire.values import TypeRegistry, from_json, to_json

if TYPE_CHECKING:
    from statek_bus.client.core import AsyncStatekClient

__all__ = [
    "FUTURE_TYPES",
    "AllFuture",
    "AnyFuture",
    "CallSites",
    "ElementFuture",
    "Future",
    "JobFuture",
    "JobHandle",
    "JobSource",
    "StepRuntime",
    "SubTask",
    "SubTaskDone",
    "SubTaskState",
    "Suspend",
    "TemporalFuture",
    "TimerFuture",
    "current_env",
    "decode_future",
    "encode_future",
    "poll",
    "resolve",
    "sources",
    "temporal",
]

T = TypeVar("T")


class Suspend(BaseException):
    """Raised when model code reads a future that is not ready: the job suspends at the statement."""

    def __init__(self, future: Any) -> None:
        super().__init__("suspend")
        self.future = future


class SubTaskState(enum.StrEnum):
    """Where a sub-task is, as its handler reports it (STATEK's names)."""

    WAITING = "WAITING"
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"

    @property
    def finished(self) -> bool:
        """Whether the child reported completion (a result or an error)."""
        return self in (SubTaskState.COMPLETED, SubTaskState.ERROR)


class SubTask(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A sub-task as the parent's engine state records it; completion is written by the child."""

    job: str = ""
    """The child job."""
    state: SubTaskState = SubTaskState.WAITING
    """WAITING until the child reports, then COMPLETED or ERROR."""
    result: Any = None
    """The reported result (tagged JSON)."""
    error: str | None = None
    """The reported error."""


class SubTaskDone(msgspec.Struct, kw_only=True, frozen=True):
    """A child's own report of its sub-task's completion, delivered to ``parent`` after the commit."""

    id: str
    """The handler id."""
    parent: str
    """The parent job."""
    state: SubTaskState
    """COMPLETED or ERROR."""
    result: Any = None
    """The result (tagged JSON)."""
    error: str | None = None
    """The error."""

    def entry(self, job: str) -> SubTask:
        """The parent's record of this completion (``job``: the child)."""
        return SubTask(job=job, state=self.state, result=self.result, error=self.error)


# ==================================================================================================
# The step's environment
# ==================================================================================================


class CallSites:
    """Deterministic names for what model code creates (child jobs, timers) during a statement.

    A site is ``<item>.<unit>.<statement>.<n>``: the chat-log item whose code runs, the unit (code
    block or tool call) within it, the top-level statement and the n-th creation in it. Re-running a
    statement after a wake-up, or a whole step after a crash, produces the same names, so a child
    job is created once (its id is the idempotency key) and a timer keeps its due time.
    """

    def __init__(self) -> None:
        self.prefix = "0.0.0"
        self.n = 0

    def enter(self, prefix: str) -> None:
        """A new top-level statement (or tool call) starts: ``prefix`` is ``<item>.<unit>.<statement>``."""
        self.prefix = prefix
        self.n = 0

    def next(self) -> str:
        """The next site of the current statement."""
        site = f"{self.prefix}.{self.n}"
        self.n += 1
        return site


class JobSource(Protocol):
    """How a step reads other jobs; the runtime implements it over the job store."""

    async def find(self, job_id: str) -> tuple[JobRecord, int] | None:
        """The job's record and revision, or ``None`` if there is no such job."""
        ...

    def replies(self, record: JobRecord) -> list[str]:
        """What the job said: the text of its LLM turns, in order (a mute delegation's result)."""
        ...


class StepRuntime:
    """The runtime of one step, as futures and wait tools see it (``JobContext.extras["env"]``).

    Args:
        job_id: the job the step runs for.
        jobs: reads other jobs (None: outside an executor, every lookup fails).
        client: the client for submissions and messages (None: creating jobs fails).
        loop: the executor's event loop (tools run in worker threads and hop onto it).
    """

    def __init__(
        self,
        job_id: str,
        jobs: JobSource | None,
        client: AsyncStatekClient | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.job_id = job_id
        self.jobs = jobs
        self.client = client
        self.loop = loop
        self.sites = CallSites()
        self.memo: dict[str, Any] = {}
        """Site → value fixed the first time a statement ran (a timer's due time), committed with the step."""
        self.subtasks: dict[str, SubTask] = {}
        """Sub-task handlers of this job by id, from the engine state."""
        self.subtask_done: SubTaskDone | None = None
        """Set by ``complete_sub_task``, delivered to the parent after the commit."""
        self.suspended: Any = None
        """The future whose read suspended the step (kept even if model code swallowed the signal)."""
        self.pending_handler: Any = None
        """A :class:`~statek_bus.authoring.waiting.SubTaskHandler` the next created job receives (``@subtask``)."""
        self.registry: TypeRegistry = REGISTRY
        """Classes shared variables of created jobs may hold (the agent's plus this module's)."""
        self._done: dict[str, JobRecord] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the executor's loop from a worker thread and return its result.

        Every job-affecting call (a handle's messages, child lookups, tools doing I/O) passes here,
        so replayed definitions are refused at this one point too.
        """
        if REPLAYING.get():
            coro.close()
            refuse_during_replay("a call that reaches the job store")
        loop = self.loop
        if loop is None or not loop.is_running():
            return asyncio.run(coro)
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                coro.close()
                raise RuntimeError("futures cannot be resolved on the event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def mesh(self) -> AsyncStatekClient:
        """The client for submissions and messages; ``RuntimeError`` when this step has none."""
        if self.client is None:
            raise RuntimeError("this executor cannot create or message jobs (no client)")
        return self.client

    async def job(self, job_id: str) -> JobRecord | None:
        """A job's record (DONE records are cached for the step: they no longer change meanwhile)."""
        found = self._done.get(job_id)
        if found is not None:
            return found
        if self.jobs is None:
            raise RuntimeError("no job store: waiting is only available inside a job step run by an executor")
        got = await self.jobs.find(job_id)
        if got is None:
            return None
        record: JobRecord = got[0]
        if record.status is JobStatus.DONE:
            self._done[job_id] = record
        return record

    def now(self) -> datetime:
        """The current time (UTC)."""
        return datetime.now(UTC)


def current_env() -> StepRuntime:
    """The :class:`StepRuntime` of the running step; ``RuntimeError`` outside an executor step."""
    env = current_job().extras.get("env")
    if not isinstance(env, StepRuntime):
        raise RuntimeError("waiting is only available inside a job step run by an executor")
    return env


# ==================================================================================================
# Future kinds
# ==================================================================================================


class Future:
    """Base of every future: reading resolves it (or suspends the job)."""

    def __statek_resolve__(self) -> Any:
        return resolve(self)

    def __str__(self) -> str:
        return str(resolve(self))

    def __format__(self, spec: str) -> str:
        return format(resolve(self), spec)

    def __bool__(self) -> bool:
        return bool(resolve(self))

    def __len__(self) -> int:
        return len(resolve(self))

    def __getitem__(self, key: Any) -> Any:
        return resolve(self)[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(resolve(self))

    def __llm_repr__(self) -> str:
        return format_value(resolve(self))


@dataclasses.dataclass(eq=False)
class JobHandle:
    """A job as model code and tools see it (what ``create_new_job`` returns).

    Reading ``status``, ``exit_status`` or ``error`` reads the job's record.
    """

    id: str
    """The job id."""
    agent: str = ""
    """Its agent role."""

    def _record(self) -> JobRecord:
        env = current_env()
        record = env.run(env.job(self.id))
        if record is None:
            raise LookupError(f"job {self.id!r} not found")
        return record

    @property
    def status(self) -> str:
        """READY, WARMING_UP, STARTED, SUSPENDED or DONE."""
        return str(self._record().status)

    @property
    def exit_status(self) -> Any:
        """The value the job exited with (None while running)."""
        return self._record().exit_status

    @property
    def error(self) -> str | None:
        """Why the job ended abnormally, if it did."""
        return self._record().error

    def is_done(self) -> bool:
        """Whether the job is DONE."""
        return self._record().status is JobStatus.DONE

    def send_message(self, text: str) -> None:
        """Send the job a chat message (a DONE job restarts, a SUSPENDED one is woken)."""
        env = current_env()
        env.run(env.mesh().jobs.send_message(self.id, str(text)))

    def send_notification(self, text: str) -> None:
        """Send the job a notification, delivered at its next safe point."""
        env = current_env()
        env.run(env.mesh().jobs.send_notification(self.id, str(text)))

    def __str__(self) -> str:
        return f"Job({self.id})"

    def __llm_repr__(self) -> str:
        return f"Job(id={self.id!r}, agent={self.agent!r})"


@dataclasses.dataclass(eq=False)
class JobFuture(Future):
    """A child job's result: ``(exit_status, job)`` (``task``) or its joined replies (``mute``)."""

    job_id: str
    """The child job."""
    agent: str = ""
    """Its agent role."""
    mode: str = "task"
    """``task``: ``(exit_status, JobHandle)``; ``mute``: its replies joined (or its error)."""

    def __iter__(self) -> Iterator[Any]:
        if self.mode == "task":  # ``status, job = delegate_task(...)``: two lazy elements
            return iter((ElementFuture(self, 0), ElementFuture(self, 1)))
        return iter(resolve(self))


@dataclasses.dataclass(eq=False)
class ElementFuture(Future):
    """Element ``index`` of a tuple-valued future."""

    base: Any
    """The future whose value is a tuple."""
    index: int = 0
    """Which element."""


@dataclasses.dataclass(eq=False)
class TimerFuture(Future):
    """Ready at ``due`` (``sleep``/``wait_until``); its value is None."""

    due: datetime
    """When (UTC)."""


@dataclasses.dataclass(eq=False)
class AllFuture(Future):
    """Ready when every item is; its value is the list of their values (``get_all``)."""

    items: list[Any]
    """Futures, job handles or plain values."""


@dataclasses.dataclass(eq=False)
class AnyFuture(Future):
    """Ready when one item is; its value is the first ready item's value, in argument order (``get_any``)."""

    items: list[Any]
    """Futures, job handles or plain values."""


@dataclasses.dataclass(eq=False)
class TemporalFuture(Future):
    """The result of a ``@temporal`` function: its ``condition``/``complement`` over ``state``."""

    fn: str
    """``module:qualname`` of the temporal function (looked up in the temporal registry)."""
    data: Any = None
    """The function's return value (tagged JSON), given to ``condition`` and ``complement``."""

    @property
    def state(self) -> Any:
        """The decoded return value of the temporal function."""
        return from_json(self.data, REGISTRY)


FUTURE_TYPES: tuple[type, ...] = (JobFuture, ElementFuture, TimerFuture, AllFuture, AnyFuture, TemporalFuture)
"""Every future class (registered with the sandbox reader)."""
for _cls in FUTURE_TYPES:
    register_future_type(_cls)

REGISTRY = TypeRegistry([*FUTURE_TYPES, JobHandle])
"""Classes of this module that workspaces and engine state may hold."""


def encode_future(future: Any) -> Any:
    """A future as tagged JSON (for the engine state)."""
    return to_json(future, REGISTRY, "future")


def decode_future(data: Any) -> Any:
    """Invert :func:`encode_future`."""
    return from_json(data, REGISTRY)


# ==================================================================================================
# @temporal
# ==================================================================================================

_TEMPORALS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool]]] = {}


def _key(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def temporal(
    *,
    complement: Callable[[Any], Any] | None = None,
    condition: Callable[[Any], bool] | None = None,
    extends: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a function return a future: ``@temporal(complement=c, condition=cond)``.

    Calling the decorated function runs it; its return value (JSON-encodable: ids, numbers,
    datetimes, other futures, job handles) becomes the future's ``state``. ``condition(future)``
    says whether the future is ready and ``complement(future)`` computes its value; both are
    application code (module-level functions, run unrestricted) and read ``future.state``. The job
    is woken to re-check the condition by the children and timers found in ``state`` and by every
    message or notification: nothing polls. ``@temporal(extends=other)`` reuses ``other``'s pair.
    Apply ``@tool`` outside (``@tool`` then ``@temporal(...)`` below it) to offer it to the model.

    Raises:
        ValueError: both ``extends`` and complement/condition, neither, or ``extends`` not temporal.
    """
    if extends is not None:
        if complement is not None or condition is not None:
            raise ValueError("@temporal takes either extends= or complement=/condition=, not both")
        key = getattr(extends, "__statek_temporal__", None)
        if key is None or key not in _TEMPORALS:
            raise ValueError(f"{extends!r} is not a temporal function")
        complement, condition = _TEMPORALS[key]
    if complement is None or condition is None:
        raise ValueError("@temporal needs complement= and condition= (or extends=)")
    pair = (complement, condition)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        inner = fn.fn if isinstance(fn, Tool) else fn
        key = _key(inner)
        _TEMPORALS[key] = pair

        def call(*args: Any, **kwargs: Any) -> TemporalFuture:
            return TemporalFuture(fn=key, data=to_json(inner(*args, **kwargs), REGISTRY, "state"))

        call.__name__, call.__qualname__, call.__doc__ = inner.__name__, inner.__qualname__, inner.__doc__
        call.__module__ = inner.__module__
        call.__wrapped__ = inner  # type: ignore[attr-defined]
        call.__statek_temporal__ = key  # type: ignore[attr-defined]
        if isinstance(fn, Tool):
            return Tool(call, name=fn.name, system=fn.system, hidden=fn.hidden, target=fn.target)
        return call

    return wrap


# ==================================================================================================
# Resolution
# ==================================================================================================


def _task_value(record: JobRecord, fut: JobFuture, env: StepRuntime) -> Any:
    if fut.mode == "task":
        return (record.exit_status, JobHandle(record.id, record.agent))
    if record.error is not None:
        return record.exit_status if record.exit_status is not None else error_exit(record.error)
    jobs = env.jobs
    text = "\n".join(r for r in (jobs.replies(record) if jobs is not None else []) if r)
    return text if text else record.exit_status


async def poll(item: Any, env: StepRuntime) -> tuple[bool, Any]:
    """(ready, value) of a future, job handle or plain value (plain values are ready)."""
    if isinstance(item, JobFuture | JobHandle):
        job_id = item.job_id if isinstance(item, JobFuture) else item.id
        record = await env.job(job_id)
        if record is None:
            return True, error_exit(f"job {job_id!r} not found")
        if record.status is not JobStatus.DONE:
            return False, None
        if isinstance(item, JobHandle):
            return True, record.exit_status
        return True, _task_value(record, item, env)
    if isinstance(item, ElementFuture):
        ready, value = await poll(item.base, env)
        return (True, value[item.index]) if ready else (False, None)
    if isinstance(item, TimerFuture):
        return (env.now() >= item.due), None
    if isinstance(item, AllFuture):
        values = []
        for sub in item.items:
            ready, value = await poll(sub, env)
            if not ready:
                return False, None
            values.append(value)
        return True, values
    if isinstance(item, AnyFuture):
        for sub in item.items:
            ready, value = await poll(sub, env)
            if ready:
                return True, value
        return False, None
    if isinstance(item, TemporalFuture):
        pair = _TEMPORALS.get(item.fn)
        if pair is None:
            raise LookupError(f"temporal function {item.fn!r} is not loaded in this executor")
        complement, condition = pair
        if not await asyncio.to_thread(condition, item):
            return False, None
        return True, await asyncio.to_thread(complement, item)
    return True, item


def _poll_local(item: Any, env: StepRuntime) -> tuple[bool, Any] | None:
    """:func:`poll` for what needs no I/O (timers, plain values and combinations of them), in the
    calling thread; ``None`` when a job record or a temporal condition must be consulted."""
    if isinstance(item, JobFuture | JobHandle | TemporalFuture):
        return None
    if isinstance(item, TimerFuture):
        return (env.now() >= item.due), None
    if isinstance(item, ElementFuture):
        base = _poll_local(item.base, env)
        if base is None:
            return None
        return (True, base[1][item.index]) if base[0] else (False, None)
    if isinstance(item, AllFuture | AnyFuture):
        polled = [_poll_local(sub, env) for sub in item.items]
        if any(p is None for p in polled):
            return None
        done = [p for p in polled if p is not None and p[0]]
        if isinstance(item, AllFuture):
            return (True, [p[1] for p in done]) if len(done) == len(polled) else (False, None)
        return (True, done[0][1]) if done else (False, None)
    return True, item


def resolve(future: Any) -> Any:
    """The value of ``future``; raises :class:`Suspend` when it is not ready (inside a step)."""
    refuse_during_replay("reading a future")
    env = current_env()
    # Timers need no I/O: check them here instead of a round trip through the event loop.
    local = _poll_local(future, env)
    ready, value = local if local is not None else env.run(poll(future, env))
    if ready:
        return value
    env.suspended = future
    raise Suspend(future)


def sources(item: Any) -> tuple[set[str], list[datetime]]:
    """What can make ``item`` ready: the job ids it waits for and its timers' due times (sorted)."""
    jobs: set[str] = set()
    due: list[datetime] = []

    def walk(x: Any) -> None:
        if isinstance(x, JobFuture):
            jobs.add(x.job_id)
        elif isinstance(x, JobHandle):
            jobs.add(x.id)
        elif isinstance(x, ElementFuture):
            walk(x.base)
        elif isinstance(x, TimerFuture):
            due.append(x.due)
        elif isinstance(x, AllFuture | AnyFuture):
            for sub in x.items:
                walk(sub)
        elif isinstance(x, TemporalFuture):
            with contextlib.suppress(Exception):
                walk(x.state)
        elif isinstance(x, list | tuple | set | frozenset):
            for sub in x:
                walk(sub)
        elif isinstance(x, dict):
            for sub in x.values():
                walk(sub)
        elif isinstance(x, datetime):
            due.append(x if x.tzinfo else x.replace(tzinfo=UTC))

    walk(item)
    return jobs, sorted(due)
