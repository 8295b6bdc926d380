"""The executor's side of agent queues (STATEK's ``process_agent_events``): events become jobs.

For every code-first agent it serves whose warmup reads exactly one name it does not define (the
*event local*, STATEK's rule), an executor runs one :class:`AgentEventPump` task: it pulls the
agent's queue (:mod:`statek_bus.jobs.queues`) and submits one job per event through
``statek.jobs.submit``, with ``shared_vars={<event local>: event}`` and the job id derived from the
event id, then acknowledges the event. Submission is idempotent on that id, so an event delivered
twice (a crash between the submit and the ack, a re-publish) still makes one job. Nothing else is a
second path: the job is validated, indexed and queued as any submitted job.

An event that is not JSON, or too large, is acknowledged and dropped with a WARNING naming it; a
submission that is unavailable leaves the event for redelivery. An agent whose warmup reads no or
several outside names gets no pump (its events wait), and the executor says so once at start.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import logging
from typing import Any

from nats.js import JetStreamContext

from statek_bus.authoring.agents import Agent, AnyAgent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.queues import ensure_consumer, event_of
from statek_bus.mesh.connection import pause_before_retry, raise_if_cancelled, stop_tasks
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import ServiceUnavailableError, StatekError
from statek_bus.wire.subjects import AGENT_EVENTS_STREAM, agent_events_consumer
from statek_bus.wire.values import from_json

__all__ = ["AgentEventPump", "event_local"]

log = logging.getLogger(__name__)

_FETCH = 50
"""Events pulled at once."""
_EXPIRES = 5.0
"""Seconds one pull waits on the server."""
_RETRY = 2.0
"""Seconds before an event whose submit was unavailable is delivered again."""


def event_local(agent: Agent) -> str | None:
    """The one name ``agent``'s warmup reads without defining it (None: none, or several)."""
    blocks = agent.warmup_blocks()
    if not blocks:
        return None
    loaded: list[str] = []
    bound: set[str] = {t.name for t in agent.all_tools()} | set(dir(builtins)) | {"print", "exit"}
    for block in blocks:
        try:
            tree = ast.parse(block.code)
        except SyntaxError:
            return None
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (loaded.append(node.id) if isinstance(node.ctx, ast.Load) else bound.add(node.id))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
    outside = sorted({n for n in loaded if n not in bound})
    return outside[0] if len(outside) == 1 else None


class AgentEventPump:
    """Turns the queued events of the served agents into jobs (an async context manager).

    Args:
        js: JetStream of the executor's connection.
        client: the client jobs are submitted with.
        agents: the served agents by role.
        settings: ``ack_wait``/``max_deliver`` of the queues' consumers.
    """

    def __init__(
        self, js: JetStreamContext, client: AsyncStatekClient, agents: dict[str, AnyAgent], settings: Settings
    ) -> None:
        self.js = js
        self.client = client
        self.settings = settings
        self.locals: dict[str, str] = {}
        for role, agent in agents.items():
            if not isinstance(agent, Agent) or not agent.warmup_blocks():
                continue
            name = event_local(agent)
            if name is None:
                log.info(
                    "agent %s takes no queue events: its warmup must read exactly one outside name", role
                )
            else:
                self.locals[role] = name
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> AgentEventPump:
        for role in self.locals:
            await ensure_consumer(
                self.js, role, ack_wait=self.settings.ack_wait, max_deliver=self.settings.max_deliver
            )
            self._tasks.append(asyncio.create_task(self._run(role), name=f"statek-events-{role}"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await stop_tasks(*self._tasks)

    async def busy(self) -> bool:
        """Whether any served agent's queue holds events not yet turned into jobs (burst mode waits)."""
        for role in self.locals:
            info = await self.js.consumer_info(AGENT_EVENTS_STREAM, agent_events_consumer(role))
            if info.num_pending or info.num_ack_pending:
                return True
        return False

    async def _run(self, role: str) -> None:
        sub = await self.js.pull_subscribe_bind(
            consumer=agent_events_consumer(role), stream=AGENT_EVENTS_STREAM
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(_FETCH, timeout=_EXPIRES)
                except TimeoutError:
                    raise_if_cancelled()
                    continue
                except Exception:  # a server outage: the connection reconnects, try again
                    log.warning("agent %s: pulling its queue failed", role, exc_info=True)
                    await pause_before_retry(_RETRY)
                    continue
                for msg in msgs:
                    await self._one(role, msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _one(self, role: str, msg: Any) -> None:
        try:
            event = event_of(role, msg.data, msg.headers, msg.metadata.sequence.stream)
        except ValueError as exc:
            log.warning("agent %s: event at sequence %s dropped: %s", role, msg.metadata.sequence.stream, exc)
            await msg.term()
            return
        try:
            value = _revive(event.value)
            await self.client.jobs.submit(role, shared_vars={self.locals[role]: value}, job_id=event.job_id)
        except ServiceUnavailableError:
            await msg.nak(delay=_RETRY)
            return
        except StatekError as exc:  # 4xx: this event can never make a job
            log.warning("agent %s: event %s dropped: %s", role, event.event_id, exc)
            await msg.term()
            return
        await msg.ack()


def _revive(value: Any) -> Any:
    """A pushed event's tagged values (a datetime...) as Python values; other JSON as it is."""
    try:
        return from_json(value)
    except (TypeError, ValueError, KeyError):
        return value
