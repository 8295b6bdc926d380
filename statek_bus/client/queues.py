"""Agent queues from a client: ``client.queues.push(agent, event, event_id=...)`` and STATEK's queue reads.

The events land in the agent's durable queue (:mod:`statek_bus.jobs.queues`), and an executor
serving the agent makes one job of each: the same ``event_id`` twice makes one job. ``nats pub`` to
``statek.agents.events.<agent>`` with a ``Nats-Msg-Id`` header does the same from a shell.
"""

from __future__ import annotations

from typing import Any

from statek_bus.client.transport import Transport
from statek_bus.jobs import queues
from statek_bus.jobs.queues import AgentEvent
from statek_bus.wire.subjects import event_job_id

__all__ = ["AsyncQueues", "BlockingQueues"]


def _role(agent: Any) -> str:
    return agent if isinstance(agent, str) else str(agent.role)


class AsyncQueues:
    """Agents' event queues (``AsyncStatekClient().queues``)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def push(self, agent: Any, event: Any, event_id: str | None = None) -> str:
        """Queue ``event`` for ``agent`` (a role or an agent object); returns the event id.

        Args:
            agent: the agent whose executor turns the event into a job.
            event: the event, bound to the one outside name the agent's warmup reads.
            event_id: idempotency key (``Nats-Msg-Id``); the job's id is derived from it.
        """
        return await queues.push(await self._t.jetstream(), _role(agent), event, event_id)

    def job_id(self, agent: Any, event_id: str) -> str:
        """The id of the job the event ``event_id`` creates (to wait on it)."""
        return event_job_id(_role(agent), event_id)

    async def has_events(self, agent: Any) -> bool:
        """Whether ``agent``'s queue holds events no executor has taken yet (``has_agent_events``)."""
        return await queues.has_events(await self._t.jetstream(), _role(agent))

    async def pop(self, agent: Any, count: int = 1) -> list[AgentEvent]:
        """Take up to ``count`` events off ``agent``'s queue without creating jobs (``pop_from_agent_queue``)."""
        return await queues.pop(await self._t.jetstream(), _role(agent), count)

    async def has_job(self, job_id: str) -> bool:
        """Whether messages sent to ``job_id`` wait to be read by it (STATEK's ``has_job``)."""
        return await queues.has_job(await self._t.jetstream(), job_id)


class BlockingQueues:
    """:class:`AsyncQueues`, blocking (``StatekClient().queues``)."""

    def __init__(self, aio: AsyncQueues, run: Any) -> None:
        self.aio = aio
        """The async facade the calls run on."""
        self._run = run

    def push(self, agent: Any, event: Any, event_id: str | None = None) -> str:
        """Blocking :meth:`AsyncQueues.push`."""
        result: str = self._run(self.aio.push(agent, event, event_id))
        return result

    def job_id(self, agent: Any, event_id: str) -> str:
        """See :meth:`AsyncQueues.job_id`."""
        return self.aio.job_id(agent, event_id)

    def has_events(self, agent: Any) -> bool:
        """Blocking :meth:`AsyncQueues.has_events`."""
        result: bool = self._run(self.aio.has_events(agent))
        return result

    def pop(self, agent: Any, count: int = 1) -> list[AgentEvent]:
        """Blocking :meth:`AsyncQueues.pop`."""
        result: list[AgentEvent] = self._run(self.aio.pop(agent, count))
        return result

    def has_job(self, job_id: str) -> bool:
        """Blocking :meth:`AsyncQueues.has_job`."""
        result: bool = self._run(self.aio.has_job(job_id))
        return result
