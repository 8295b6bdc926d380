"""Blocking twins of the async facades, for :class:`~statek_bus.client.core.StatekClient`.

Every method has the name and parameters of its async original (a test holds them equal) and
blocks until the coroutine has run on the client's loop thread; async iterators become plain
iterators. Written out rather than generated, so type checkers and IDEs see every signature.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from statek_bus.client.jobs import AsyncJobs
from statek_bus.client.states import AsyncStates, Mutation, StateListResponse, StateWatch, TaskState
from statek_bus.wire.locale import StatekLocale
from statek_bus.wire.messages import (
    AgentDescription,
    Job,
    JobEvent,
    JobHistory,
    JobStatus,
    State,
    StateChange,
)
from statek_bus.wire.options import JobOptions

__all__ = ["BlockingJobs", "BlockingStates", "BlockingTaskState", "LoopThread"]

T = TypeVar("T")
_Jobs = list[Job]
_States = list[State]
_Agents = list[AgentDescription]


class LoopThread:
    """An event loop in a daemon thread; sync callers run coroutines on it and wait."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="statek-client-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """``agen`` as a blocking iterator; closing the iterator closes ``agen`` on the loop."""
        try:
            while True:
                try:
                    yield self.run(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                self.run(aclose())

    def close(self) -> None:
        """Stop the loop and join its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


async def _next(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()


class BlockingJobs:
    """:class:`~statek_bus.client.jobs.AsyncJobs`, blocking."""

    def __init__(self, aio: AsyncJobs, runner: LoopThread) -> None:
        self.aio = aio
        """The async facade the calls run on."""
        self._run = runner.run
        self._iterate = runner.iterate

    def submit(
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
        """Blocking :meth:`AsyncJobs.submit`."""
        return self._run(
            self.aio.submit(
                agent, shared_vars, locale, params=params, job_id=job_id, parent_id=parent_id, options=options
            )
        )

    def submit_batch(
        self,
        agent: Any,
        shared_vars_batch: Sequence[Mapping[str, Any] | None],
        locale: StatekLocale | str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        batch_id: str | None = None,
        parent_id: str | None = None,
        options: JobOptions | None = None,
    ) -> _Jobs:
        """Blocking :meth:`AsyncJobs.submit_batch`."""
        return self._run(
            self.aio.submit_batch(
                agent,
                shared_vars_batch,
                locale,
                params=params,
                batch_id=batch_id,
                parent_id=parent_id,
                options=options,
            )
        )

    def submit_new_job(
        self,
        agent: Any,
        shared_vars: Mapping[str, Any] | None = None,
        locale: StatekLocale | str | None = None,
        **kwargs: Any,
    ) -> Job:
        """Blocking :meth:`AsyncJobs.submit_new_job`."""
        return self._run(self.aio.submit_new_job(agent, shared_vars, locale, **kwargs))

    def submit_new_jobs_batch(
        self,
        agent: Any,
        shared_vars_batch: Sequence[Mapping[str, Any] | None],
        locale: StatekLocale | str | None = None,
        **kwargs: Any,
    ) -> _Jobs:
        """Blocking :meth:`AsyncJobs.submit_new_jobs_batch`."""
        return self._run(self.aio.submit_new_jobs_batch(agent, shared_vars_batch, locale, **kwargs))

    def get(self, job_id: str) -> Job:
        """Blocking :meth:`AsyncJobs.get`."""
        return self._run(self.aio.get(job_id))

    def list(
        self,
        agent: Any = None,
        status: JobStatus | str | None = None,
        parent_id: str | None = None,
        limit: int | None = None,
        page_number: int | None = None,
    ) -> _Jobs:
        """Blocking :meth:`AsyncJobs.list`."""
        return self._run(self.aio.list(agent, status, parent_id, limit, page_number))

    def cancel(self, job_id: str, reason: str | None = None) -> Job:
        """Blocking :meth:`AsyncJobs.cancel`."""
        return self._run(self.aio.cancel(job_id, reason))

    def send_message(self, job_id: str, message: str) -> Job:
        """Blocking :meth:`AsyncJobs.send_message`."""
        return self._run(self.aio.send_message(job_id, message))

    def send_notification(self, job_id: str, text: str) -> Job:
        """Blocking :meth:`AsyncJobs.send_notification`."""
        return self._run(self.aio.send_notification(job_id, text))

    def history(self, job_id: str) -> JobHistory:
        """Blocking :meth:`AsyncJobs.history`."""
        return self._run(self.aio.history(job_id))

    def agents(self) -> _Agents:
        """Blocking :meth:`AsyncJobs.agents`."""
        return self._run(self.aio.agents())

    def agent(self, role: str) -> AgentDescription:
        """Blocking :meth:`AsyncJobs.agent`."""
        return self._run(self.aio.agent(role))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Blocking :meth:`AsyncJobs.wait`."""
        return self._run(self.aio.wait(job_id, timeout))

    def watch(self, job_id: str, *, replay: bool = True) -> Iterator[JobEvent]:
        """Blocking :meth:`AsyncJobs.watch`: a plain iterator of the job's events."""
        return self._iterate(self.aio.watch(job_id, replay=replay))


class BlockingStates:
    """:class:`~statek_bus.client.states.AsyncStates`, blocking."""

    def __init__(self, aio: AsyncStates, runner: LoopThread) -> None:
        self.aio = aio
        """The async facade the calls run on."""
        self._runner = runner
        self._run = runner.run

    def create(
        self, task_id: str, agent_id: str, state: dict[str, Any], *, ttl_seconds: int | None = None
    ) -> State:
        """Blocking :meth:`AsyncStates.create`."""
        return self._run(self.aio.create(task_id, agent_id, state, ttl_seconds=ttl_seconds))

    def retrieve(
        self, state_id: str | None = None, *, task_id: str | None = None, agent_id: str | None = None
    ) -> State | None:
        """Blocking :meth:`AsyncStates.retrieve`."""
        return self._run(self.aio.retrieve(state_id, task_id=task_id, agent_id=agent_id))

    def update(self, state_id: str, state: dict[str, Any], expected_revision: int | None = None) -> State:
        """Blocking :meth:`AsyncStates.update`."""
        return self._run(self.aio.update(state_id, state, expected_revision))

    def list(
        self,
        task_id: str | None = None,
        agent_id: str | None = None,
        limit: int | None = None,
        page_number: int | None = None,
    ) -> StateListResponse:
        """Blocking :meth:`AsyncStates.list`."""
        return self._run(self.aio.list(task_id, agent_id, limit, page_number))

    def delete(self, state_id: str) -> State:
        """Blocking :meth:`AsyncStates.delete`."""
        return self._run(self.aio.delete(state_id))

    def get_or_create(self, task_id: str, agent_id: str, default: dict[str, Any]) -> State:
        """Blocking :meth:`AsyncStates.get_or_create`."""
        return self._run(self.aio.get_or_create(task_id, agent_id, default))

    def history(self, state_id: str, limit: int | None = None) -> _States:
        """Blocking :meth:`AsyncStates.history`."""
        return self._run(self.aio.history(state_id, limit))

    def transact(self, state_id: str, fn: Mutation, *, attempts: int = 100) -> State:
        """Blocking :meth:`AsyncStates.transact`."""
        return self._run(self.aio.transact(state_id, fn, attempts=attempts))

    def watch(
        self,
        task_id: str | None = None,
        agent_id: str | None = None,
        state_id: str | None = None,
        *,
        since_revision: int | None = None,
    ) -> Iterator[StateChange]:
        """Blocking :meth:`AsyncStates.watch`: subscribed before it returns, then a plain iterator."""
        watch: StateWatch = self._run(
            self.aio.watch(task_id, agent_id, state_id, since_revision=since_revision).start()
        )
        return self._runner.iterate(watch)

    def for_task(self, task_id: str, agent_id: str) -> BlockingTaskState:
        """Blocking :meth:`AsyncStates.for_task`."""
        return BlockingTaskState(self.aio.for_task(task_id, agent_id), self._runner)


class BlockingTaskState:
    """:class:`~statek_bus.client.states.TaskState`, blocking."""

    def __init__(self, aio: TaskState, runner: LoopThread) -> None:
        self.aio = aio
        """The async pair-bound state the calls run on."""
        self.task_id = aio.task_id
        """The task."""
        self.agent_id = aio.agent_id
        """The agent."""
        self._run = runner.run

    def create(self, state: dict[str, Any], *, ttl_seconds: int | None = None) -> State:
        """Blocking :meth:`TaskState.create`."""
        return self._run(self.aio.create(state, ttl_seconds=ttl_seconds))

    def get(self) -> State | None:
        """Blocking :meth:`TaskState.get`."""
        return self._run(self.aio.get())

    def get_or_create(self, default: dict[str, Any]) -> State:
        """Blocking :meth:`TaskState.get_or_create`."""
        return self._run(self.aio.get_or_create(default))

    def update(self, state: dict[str, Any], expected_revision: int | None = None) -> State:
        """Blocking :meth:`TaskState.update`."""
        return self._run(self.aio.update(state, expected_revision))

    def transact(self, fn: Mutation, *, attempts: int = 100) -> State:
        """Blocking :meth:`TaskState.transact`."""
        return self._run(self.aio.transact(fn, attempts=attempts))

    def delete(self) -> State:
        """Blocking :meth:`TaskState.delete`."""
        return self._run(self.aio.delete())
