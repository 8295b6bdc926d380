"""``StatekPushQueue``: STATEK's push queue, over the mesh (agent queues and messages to jobs).

::

    from statek_bus import StatekPushQueue

    queue = StatekPushQueue()
    queue.push_to_agent_queue("triage", {"kind": "ping"})       # one job per event
    queue.push_to_job_console(job.id, "hello again")            # a DONE job restarts

STATEK kept these queues in its object store and a worker loop polled them. Here an agent's events
are a durable JetStream stream that executors consume (:mod:`statek_bus.jobs.queues`), and a
message to a job goes straight into its record (``statek.jobs.send_message``), so nothing polls.
It shares the connection of :class:`~statek_bus.client.statek_client_api.StatekClientAPI`.
"""

from __future__ import annotations

from typing import Any

from statek_bus.client.statek_client_api import StatekClientAPI
from statek_bus.jobs.queues import AgentEvent
from statek_bus.mesh.settings import Settings

__all__ = ["StatekPushQueue"]


class StatekPushQueue:
    """STATEK's queue operations (see the module docstring).

    Args:
        nats_url: the NATS server (default: ``NATS_URL``).
        settings: full settings; ``nats_url`` overrides its URL.
    """

    def __init__(self, nats_url: str | None = None, *, settings: Settings | None = None) -> None:
        self._api = StatekClientAPI(nats_url, settings=settings)

    def push_to_agent_queue(self, agent: Any, event: Any, event_id: str | None = None) -> str:
        """Queue ``event`` for ``agent``: an executor makes one job of it; returns the event id.

        Args:
            agent: the agent (or its role); its warmup reads exactly one outside name, bound to ``event``.
            event: the event (JSON-able, tagged values allowed).
            event_id: idempotency key: the same id twice makes one job.
        """
        return self._api.client.queues.push(agent, event, event_id)

    def has_agent_events(self, agent: Any) -> bool:
        """Whether ``agent``'s queue holds events not yet made into jobs."""
        return self._api.client.queues.has_events(agent)

    def pop_from_agent_queue(self, agent: Any, count: int = 1) -> list[AgentEvent]:
        """Take up to ``count`` events off ``agent``'s queue without making jobs."""
        return self._api.client.queues.pop(agent, count)

    def push_to_job_console(self, job_id: str, message: str) -> None:
        """Send ``message`` to the job as a user message (a DONE job restarts)."""
        self._api.client.jobs.send_message(job_id, message)

    def has_job(self, job_id: str) -> bool:
        """Whether messages sent to ``job_id`` wait to be read by it."""
        return self._api.client.queues.has_job(job_id)
