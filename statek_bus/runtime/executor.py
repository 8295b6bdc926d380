"""The executor: pulls job steps from the work queue, runs them, commits them, acknowledges them.

Work is routed by agent: each agent has one durable pull consumer (``statek_agent_<agent>``),
shared by every replica that serves it, and an executor pulls only from the consumers of its own
agents (:class:`AgentQueue`), creating or updating them at start with its delivery settings. This
module keeps pull requests outstanding for its free slots and dispatches messages as they arrive
(a blocking ``fetch`` of a batch waits for the batch end; ``fetch(1)`` costs a round trip per
step). With several agents, each queue always has a pull outstanding and the credit goes to the
queues that delivered work lately: an idle agent's queue holds one slot of credit, not a share.
So up to
``max_concurrency`` steps run code at once; a step waiting on the model no longer counts (up to
``model_waits_per_slot`` such steps per slot, a setting), so a slow model does not keep other jobs' code
from running. A step:

1. load the job record (and its workspace);
2. if the message is stale (the record has moved past its step, or the job is DONE) acknowledge
   it — first re-queueing the job's current step and re-publishing the last step's events when
   the job is still running, which closes the crash gap between a commit and the next publish
   (both are deduplicated by ``Nats-Msg-Id``);
3. run the step (:mod:`statek_bus.runtime.engine`, or a handler agent's handlers);
4. commit with a compare-and-set on the record's revision. If another writer got there first
   and only added inbox items or a cancel reason, merge and retry; if the step itself was
   committed elsewhere, drop this result;
5. publish the step's events and the next work message in parallel, then acknowledge.

Every in-flight message gets an ``in_progress`` heartbeat every ``ack_wait / 3`` seconds, so a
long LLM call is not redelivered; a crashed replica's messages are redelivered after
``ack_wait`` and re-run from the last committed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from statek_bus.authoring.agents import Agent, AnyAgent, HandlerAgent
from statek_bus.authoring.console import error_line
from statek_bus.authoring.futures import StepRuntime
from statek_bus.authoring.knowledge import KnowledgeView
from statek_bus.authoring.messaging import deliver_message, split_media
from statek_bus.authoring.shared_context import is_bound, lookup_shared
from statek_bus.authoring.tools import JobContext
from statek_bus.client.llm import ProviderModel
from statek_bus.jobs.inbox import InboxItem, JobInbox, fit, room_for
from statek_bus.jobs.jobdefs import JobDefStore
from statek_bus.jobs.store import JobStore, StaleRecordError, utcnow
from statek_bus.mesh import metrics, tracing
from statek_bus.mesh.connection import pause_before_retry, raise_if_cancelled, stop_tasks
from statek_bus.mesh.logs import job_context
from statek_bus.mesh.provision import configure_work_consumers
from statek_bus.mesh.settings import Settings
from statek_bus.runtime import trace as agent_trace
from statek_bus.runtime import wakeups as waits
from statek_bus.runtime.coderunner import SandboxSession, install_stdout_capture
from statek_bus.runtime.engine import StepEngine
from statek_bus.runtime.engine_state import EngineState, load_state, step_events
from statek_bus.runtime.handler_step import run_handler_step
from statek_bus.runtime.knowledge import KnowledgeWatcher
from statek_bus.runtime.loading import load_agents
from statek_bus.runtime.merge import Rebase, keep_running
from statek_bus.runtime.outcome import RecordTooLarge, RetryStep, StepOutcome
from statek_bus.runtime.procrunner import make_code_runner, runner_layers
from statek_bus.runtime.resume import StoreJobs
from statek_bus.runtime.slots import PULL_EXPIRES, AgentQueue, Slots
from statek_bus.runtime.trace import Tracer
from statek_bus.wire.errors import PayloadTooLargeError, StatekError
from statek_bus.wire.limits import RECORD_HEADROOM
from statek_bus.wire.messages import (
    CompleteReply,
    CompleteRequest,
    Empty,
    ExecutorStatus,
    JobEvent,
    JobRecord,
    JobStatus,
    RunningStep,
    WorkMessage,
    decode,
    encode,
)
from statek_bus.wire.subjects import (
    AGENTS_BUCKET,
    MSG_ID_HEADER,
    TIMER_DUE_HEADER,
    WORK_STREAM,
    job_events_subject,
    token,
)
from statek_bus.wire.values import TypeRegistry

__all__ = ["Executor"]

log = logging.getLogger(__name__)

_RECENT_AGE = 0.05
"""Seconds a committed record stands in for a KV read of the job's next step (see ``_remember``)."""


def _observe_lateness(msg: Msg) -> None:
    """A timer's wake-up: how late the server stored it after its due time (``TIMER_LATENESS``)."""
    try:
        due = datetime.fromisoformat((msg.headers or {})[TIMER_DUE_HEADER])
    except ValueError:
        return
    metrics.TIMER_LATENESS.observe(max(0.0, (msg.metadata.timestamp - due).total_seconds()))


class _ModelWaits:
    """The LLM seam as the engine sees it: the step's slot is given back while the model answers."""

    def __init__(self, model: ProviderModel, slots: Slots) -> None:
        self.model = model
        self.slots = slots

    async def complete(self, request: CompleteRequest) -> CompleteReply:
        """The provider's reply to ``request``; the step holds no slot from here on."""
        flight = _flight.get()
        if flight is not None and flight.holds_slot:
            flight.holds_slot = False
            self.slots.release()
        return await self.model.complete(request)

    async def resume_code(self) -> None:
        """Take a slot again before the step runs its reply's code (at most ``max_concurrency``
        steps run code at once, whichever of them called the model first)."""
        flight = _flight.get()
        if flight is not None and not flight.holds_slot:
            await self.slots.acquire()
            flight.holds_slot = True


# ==================================================================================================
# The executor
# ==================================================================================================


@dataclasses.dataclass
class _InFlight:
    msg: Msg
    job_id: str = ""
    step: int = -1
    started: float = dataclasses.field(default_factory=time.monotonic)
    started_at: Any = dataclasses.field(default_factory=utcnow)
    holds_slot: bool = True  # False once the step waits on the model (see Slots)


_flight: contextvars.ContextVar[_InFlight | None] = contextvars.ContextVar("statek_flight", default=None)
"""The in-flight entry of the step the current task runs."""
_step_view: contextvars.ContextVar[KnowledgeView | None] = contextvars.ContextVar(
    "statek_knowledge", default=None
)
"""The knowledge version the current task's step runs with (read once, when the step starts)."""


class Executor:
    """Runs job steps of the agents it serves, from their work queues (an async context manager).

    Args:
        nc: the service's connection.
        js: JetStream on it.
        settings: concurrency, timeouts, harness limits.
        agents: ``module:attr`` of the agents to serve (empty: the built-in demo agent).
        stopping: the service's stop signal: pulling stops as soon as it is set.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        settings: Settings,
        *,
        agents: str = "",
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.nc = nc
        self._external_stop = stopping
        self.js = js
        self.settings = settings
        agent_list, self.registries = load_agents(agents)
        self.agents: dict[str, AnyAgent] = {a.role: a for a in agent_list}
        self.instance_id = ""
        self.store: JobStore | None = None
        self.jobdefs = JobDefStore(js)
        self.inbox = JobInbox(nc, js, settings)
        self.runner = make_code_runner(settings)
        self.model = ProviderModel(nc, settings)
        self.tracer = Tracer(nc, settings)
        from statek_bus.client.core import AsyncStatekClient

        self.client = AsyncStatekClient(settings=settings, nc=nc)
        self.in_flight: dict[int, _InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._queues: list[AgentQueue] = []
        self._by_consumer: dict[str, AgentQueue] = {}
        self._wake = asyncio.Event()
        self._slots = Slots(settings.max_concurrency, self._outstanding, self._wake)
        self.engine = StepEngine(
            settings, self.runner, _ModelWaits(self.model, self._slots), self._session, self._save_workspace
        )
        self._sub: Any = None
        self._loop_task: asyncio.Task[None] | None = None
        self._hb_task: asyncio.Task[None] | None = None
        self._ids = 0
        self._recent: dict[str, tuple[JobRecord, int, float]] = {}
        self._recent_max = 4 * settings.max_concurrency
        self._inbox_pos: dict[str, int] = {}  # job -> an inbox position its record has reached
        self._setups: dict[str, tuple[Agent, tuple[int | None, ...], dict[str, Any], Any, Any]] = {}
        self.knowledge: KnowledgeWatcher | None = None
        """The knowledge version steps run with (prompt files, warmups, examples, documents)."""

    # --- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> Executor:
        install_stdout_capture()
        self.store = await JobStore.open(self.js)
        watcher = KnowledgeWatcher(
            self.js,
            self.settings,
            self.agents,
            uuid.uuid4().hex[:16],
            on_change=lambda _: self.register_agents(),
        )
        self.knowledge = await watcher.__aenter__()
        await self.register_agents()
        await configure_work_consumers(self.js, self.settings, sorted(self.agents))
        deliver = self.nc.new_inbox()
        self._queues = [AgentQueue(agent, i, deliver) for i, agent in enumerate(sorted(self.agents))]
        self._by_consumer = {q.consumer: q for q in self._queues}
        self._sub = await self.nc.subscribe(f"{deliver}.*", cb=self._on_msg)
        self._loop_task = asyncio.create_task(self._pull_loop(), name="statek-executor-pull")
        self._hb_task = asyncio.create_task(self._heartbeats(), name="statek-executor-heartbeat")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop pulling; in-flight steps get ``drain_timeout`` to finish, the rest stay unacknowledged.

        Messages that still arrive for pull requests issued before the stop are handed back at
        once (``nak``), so another replica takes them without waiting for ``ack_wait``.
        """
        self._stopping.set()
        self._wake.set()
        await stop_tasks(self._loop_task)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout)
            unfinished = [f.msg for f in self.in_flight.values()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
                for msg in unfinished:  # uncommitted: hand back now rather than after ack_wait
                    with contextlib.suppress(Exception):
                        await msg.nak()
        await stop_tasks(self._hb_task)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        await self.runner.aclose()
        self.tracer.close()
        if self.knowledge is not None:
            await self.knowledge.__aexit__(None, None, None)
            self.knowledge = None

    def _stopped(self) -> bool:
        return self._stopping.is_set() or (self._external_stop is not None and self._external_stop.is_set())

    async def register_agents(self) -> None:
        """Put every served agent's description in ``statek_agents`` (key: token(role))."""
        kv = await self.js.key_value(AGENTS_BUCKET)
        now = utcnow()
        served = self.knowledge.view.agents if self.knowledge is not None else self.agents
        for agent in served.values():
            desc = agent.description()
            desc.updated_at = now
            await kv.put(token(agent.role), encode(desc))

    async def wait_idle(self, *, poll: float = 0.2, quiet: int = 3) -> None:
        """Return once nothing runs here and the work consumer has nothing pending or unacknowledged.

        Checked every ``poll`` seconds; idle ``quiet`` checks in a row count (a step that just
        committed may still be queueing the job's next one). Timers not yet due are not work yet:
        burst mode leaves them for a later run, as arq's burst mode leaves deferred jobs.
        """
        calm = 0
        while calm < quiet:
            await asyncio.sleep(poll)
            infos = [await self.js.consumer_info(WORK_STREAM, q.consumer) for q in self._queues]
            busy = self._tasks or any(i.num_pending or i.num_ack_pending for i in infos)
            calm = 0 if busy else calm + 1

    def status(self) -> ExecutorStatus:
        """This replica's running steps, concurrency and agents.

        A step past its code, waiting on the model or committing its reply, holds no slot and is
        not listed.
        """
        return ExecutorStatus(
            instance_id=self.instance_id,
            running=[
                RunningStep(job_id=f.job_id, step=f.step, started_at=f.started_at)
                for f in self.in_flight.values()
                if f.job_id and f.holds_slot
            ],
            max_concurrency=self.settings.max_concurrency,
            agents=sorted(self.agents),
            sandbox=runner_layers(self.runner),
        )

    def concurrency(self) -> dict[str, object]:
        """This replica's concurrency, as ``$SRV.STATS`` reports it in the status endpoint's ``data``:
        ``max_concurrency``, ``running`` (steps holding a slot: running code), ``in_flight`` (every
        step, those waiting on the model too) and ``free`` slots."""
        running = sum(1 for f in self.in_flight.values() if f.holds_slot)
        return {
            "max_concurrency": self.settings.max_concurrency,
            "running": running,
            "in_flight": len(self.in_flight),
            "free": max(0, self.settings.max_concurrency - running),
        }

    async def status_handler(self, _: Empty) -> ExecutorStatus:
        """``statek.executor.status`` endpoint."""
        return self.status()

    # --- pulling -----------------------------------------------------------------------------------
    def _outstanding(self) -> int:
        return sum(q.outstanding() for q in self._queues)

    def _pick(self, free: int, threshold: int, now: float) -> tuple[AgentQueue, int, bool] | None:
        """The queue to ask next, for how many messages, and whether they reserve slots; or ``None``.

        Every queue always has a pull outstanding, busy ones (a message within a pull lifetime; a
        sole queue always is) first: a busy queue asks for its share of the free slots; an idle
        one, or any queue while no slot is free, keeps one *listening* pull of one message that
        reserves no slot (its message may have to wait for one: :meth:`Slots.acquire`), so every
        agent is listened for however many agents share few slots. Then, once ``threshold`` slots
        are free, the busy queue with the least credit asks for more.
        """
        batch = max(1, self.settings.fetch_batch)
        sole = len(self._queues) == 1
        busy = [q for q in self._queues if sole or q.busy(now)]
        for q in (*busy, *(q for q in self._queues if q not in busy)):
            if not q.pulls:
                if free > 0 and q in busy:
                    return q, min(free, batch), True
                return q, 1, False
        if busy and free >= threshold:
            q = min(busy, key=lambda b: b.outstanding())
            return q, min(free, batch), True
        return None

    async def _pull_loop(self) -> None:
        window = self.settings.max_concurrency
        ceiling = window * (1 + self.settings.model_waits_per_slot)
        threshold = min(max(1, self.settings.fetch_batch), max(1, window // 2))
        while not self._stopped():
            now = time.monotonic()
            for q in self._queues:
                q.expire(now)
            room = ceiling - len(self._tasks) - self._outstanding()
            free = min(self._slots.free(), room)
            # at the ceiling not even a listening pull goes out: it would take a message past it;
            # near it, pulls wait until a batch's worth of room is back (one pull per finished step
            # would cost the server and this loop a request each)
            picked = self._pick(free, threshold, now) if room >= min(threshold, ceiling) else None
            if picked is not None:
                q, n, reserved = picked
                req = {"batch": n, "expires": int(PULL_EXPIRES * 1e9)}
                q.pulls.append([now, n, reserved])
                try:
                    await self.nc.publish(q.subject, json.dumps(req).encode(), reply=q.reply)
                except Exception:
                    q.pulls.pop()
                    log.warning("pull request failed", exc_info=True)
                    await pause_before_retry(0.5)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    def _queue_of(self, msg: Msg) -> AgentQueue | None:
        # a status reply comes on the pull's own reply subject (``<inbox>.<index>``); a message keeps
        # its stream subject, and its ack subject names the consumer it came from
        if msg.reply.startswith("$JS.ACK."):
            return self._by_consumer.get(msg.metadata.consumer)
        index = msg.subject.rsplit(".", 1)[-1]
        return self._queues[int(index)] if index.isdigit() and int(index) < len(self._queues) else None

    async def _on_msg(self, msg: Msg) -> None:
        queue = self._queue_of(msg)
        if msg.headers and msg.headers.get("Status"):
            self._on_status(msg, queue)
            return
        if queue is not None:
            queue.used_one()
        self._wake.set()
        if self._stopped():
            with contextlib.suppress(Exception):
                await msg.nak()  # back to the queue now, for a replica that is not stopping
            return
        self._ids += 1
        key = self._ids
        self.in_flight[key] = _InFlight(msg, holds_slot=self._slots.try_take())
        metrics.STEPS_IN_FLIGHT.inc()
        task = asyncio.create_task(self._handle(key, msg))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, key=key))

    def _on_status(self, msg: Msg, queue: AgentQueue | None) -> None:
        # 408 (expired), 409 (max waiting, leadership change...) and 404 end the queue's oldest pull
        # request (the server serves and expires them in order): its remaining credit is free again.
        status = (msg.headers or {}).get("Status", "")
        if status in ("408", "409", "404") and queue is not None and queue.pulls:
            queue.pulls.popleft()
        self._wake.set()

    def _done(self, task: asyncio.Task[None], *, key: int) -> None:
        self._tasks.discard(task)
        flight = self.in_flight.pop(key, None)
        if flight is not None:
            metrics.STEPS_IN_FLIGHT.dec()
        if flight is not None and flight.holds_slot:
            self._slots.release()
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("step task failed", exc_info=task.exception())

    async def _heartbeats(self) -> None:
        period = max(0.2, self.settings.ack_wait / 3)
        while True:
            raise_if_cancelled()  # a cancel while in_progress() published can be swallowed by nats-py
            await asyncio.sleep(period)
            now = time.monotonic()
            for f in list(self.in_flight.values()):
                if now - f.started >= period * 0.9:
                    with contextlib.suppress(Exception):
                        await f.msg.in_progress()

    # --- one step ----------------------------------------------------------------------------------
    async def _handle(self, key: int, msg: Msg) -> None:
        assert self.store is not None
        try:
            work = decode(msg.data, WorkMessage)
        except StatekError:
            log.error("dropping a malformed work message: %r", msg.data[:200])
            await msg.term()
            return
        flight = self.in_flight.get(key)
        if flight is not None:
            if not flight.holds_slot:  # every slot is held (a listening pull's message took one): wait
                await self._slots.acquire()
                flight.holds_slot = True
            flight.job_id, flight.step = work.job_id, work.step
            _flight.set(flight)
        if msg.reply and (msg.metadata.num_delivered or 1) > 1:
            metrics.REDELIVERIES.inc()
        elif msg.reply and msg.headers and TIMER_DUE_HEADER in msg.headers:
            _observe_lateness(msg)
        try:
            attrs: dict[str, str | int] = {"statek.job_id": work.job_id, "statek.step": work.step}
            with (
                tracing.span("statek.step", msg.headers, kind="consumer", attributes=attrs),
                job_context(work.job_id, work.step, trace_id=tracing.current_trace_id()),
            ):
                await self._run(work, msg)
        except RecordTooLarge as exc:
            log.warning("job %s step %d: %s", work.job_id, work.step, exc.error)
            await self._fail_job(work, exc.error)
            await msg.ack()
        except RetryStep as exc:
            metrics.RETRIES.labels(what="step").inc()
            delivered = msg.metadata.num_delivered or 1
            if delivered >= self.settings.max_deliver - 1:  # the last delivery: do not strand the job
                await self._fail_job(work, f"gave up after {delivered} attempts: {exc}")
                await msg.ack()
                return
            delay = min(60.0, exc.delay * 2 ** min(delivered - 1, 6))
            log.warning("job %s step %d: %s; retrying in %.1fs", work.job_id, work.step, exc, delay)
            await msg.nak(delay=delay)
        except asyncio.CancelledError:
            raise
        except BaseException:  # anything else (a stray ExitSignal or Suspend too) must not strand the job
            delivered = msg.metadata.num_delivered if msg.reply else 1
            trace = uuid.uuid4().hex[:12]
            log.exception(
                "job %s step %d failed (trace %s, delivery %d)", work.job_id, work.step, trace, delivered
            )
            if delivered >= 3:
                await self._fail_job(work, f"internal error in the executor (trace id {trace})")
                await msg.ack()
            else:
                await msg.nak(delay=1.0)

    async def _run(self, work: WorkMessage, msg: Msg) -> None:
        assert self.store is not None
        cached = self._recent.pop(work.job_id, None)
        found: tuple[JobRecord, int] | None = None
        # the inbox is read beside the record, from a position it has reached (positions only grow)
        after = self._inbox_pos.get(work.job_id, 0)
        fetch = self.inbox.unread(work.job_id, after, max_bytes=self.nc.max_payload)
        if cached is not None and cached[0].step == work.step and time.monotonic() - cached[2] <= _RECENT_AGE:
            found = cached[0], cached[1]  # the successor this replica queued a moment ago
            fetched = await fetch
        else:
            found, fetched = await asyncio.gather(self.store.find(work.job_id), fetch)
        if found is None:
            await msg.ack()
            return
        record, rev = found
        if record.step != work.step or record.status is JobStatus.DONE:
            await self._stale(record, work)
            await msg.ack()
            return
        view = self.knowledge.view if self.knowledge is not None else None  # one version for the step
        agent = (view.agents if view is not None else self.agents).get(record.agent)
        if agent is None:  # not on its agent's subject (a message written by hand): route it there
            await self.store.enqueue(record.id, record.step, agent=record.agent, msg_id_suffix="routed")
            await msg.ack()
            return
        if fetched and fetched[-1].seq <= record.inbox_seq:  # a window of consumed items not purged yet
            fetched = await self.inbox.fetch(record.id, record.inbox_seq, max_bytes=self.nc.max_payload)
        started = time.perf_counter()
        _step_view.set(view)
        outcome = await self._run_step(self._with_inbox(record, fetched), agent)
        outcome.consumed = len(record.inbox)  # the record's own items: the rest came from the stream
        committed = await self._commit(record, rev, outcome)
        if committed is not None and self.tracer.active:
            await self.tracer.committed(committed, work.step, outcome.trace)
        metrics.STEP_SECONDS.labels(agent=record.agent).observe(time.perf_counter() - started)
        metrics.STEPS.labels(agent=record.agent, outcome=_outcome(committed)).inc()
        if committed is not None and committed.status is JobStatus.DONE and committed.error is not None:
            log.warning("job %s (%s) ended with an error: %s", committed.id, committed.agent, committed.error)
        if committed is not None:
            # the user gets the prose before the next step can run: messages arrive in order
            if outcome.dialog and isinstance(agent, Agent) and agent.send_message is not None:
                await self._send_dialog(agent, committed, outcome.dialog)
            await self._after_commit(
                committed,
                outcome.state if committed is outcome.record else None,
                consumed_from=record.inbox_seq,
            )
        else:  # committed elsewhere (a duplicate delivery): that replica may have died before queueing
            fresh = await self.store.find(work.job_id)
            if fresh is not None:
                await self._stale(fresh[0], work)
        await msg.ack()

    def _with_inbox(self, record: JobRecord, fetched: list[InboxItem]) -> JobRecord:
        """The record the step runs on: its own inbox items plus the inbox subject's items since
        ``inbox_seq`` that fit it; ``inbox_seq`` moves to the last one taken, committed with the
        step (:mod:`statek_bus.jobs.inbox`)."""
        items = fit(fetched, record.inbox_seq, room_for(record, self.nc.max_payload))
        if not items:
            return record
        return msgspec.structs.replace(
            record, inbox=[*record.inbox, *(i.event for i in items)], inbox_seq=items[-1].seq
        )

    async def _send_dialog(self, agent: Agent, record: JobRecord, texts: list[str]) -> None:
        """Hand dialog prose to the agent's ``send_message`` (after the commit: once per step)."""
        assert agent.send_message is not None
        for text in texts:
            body, media = split_media(text)
            try:
                result = await asyncio.to_thread(deliver_message, agent.send_message, body, media)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # the user never got it: say so where the job's watchers look
                log.warning("job %s: send_message failed", record.id, exc_info=True)
                assert self.store is not None
                await self.store.publish(
                    JobEvent(
                        job_id=record.id,
                        kind="console",
                        at=utcnow(),
                        step=record.step - 1,
                        text=f"Error: send_message failed: {error_line(exc)}",
                    )
                )

    async def _run_step(self, record: JobRecord, agent: AnyAgent) -> StepOutcome:
        if isinstance(agent, HandlerAgent):
            return await run_handler_step(record, agent, self.nc, self.settings)
        assert self.store is not None
        loop = asyncio.get_running_loop()
        env = StepRuntime(record.id, StoreJobs(self.store), self.client, loop)
        env.registry = self.registries.get(agent.role) or env.registry
        ctx = JobContext(
            job_id=record.id,
            agent=record.agent,
            params=record.params,
            namespace={},
            loop=loop,
            extras={"locale": record.locale, "env": env, "agent": agent, "knowledge": _step_view.get()},
        )
        if record.jobdef is not None:  # the job's own options (immutable: read once per executor)
            ctx.extras["job_options"] = (await self.jobdefs.get(record.jobdef)).options
        if self.tracer.enabled:
            agent_trace.begin(ctx)
        outcome = await self.engine.run(record, agent, ctx)
        outcome.trace = list(ctx.extras.get(agent_trace.TRACE_KEY) or [])
        return outcome

    async def _stale(self, record: JobRecord, work: WorkMessage) -> None:
        """A redelivered or duplicate message: make sure a running job's current step is queued."""
        assert self.store is not None
        if record.step > work.step and record.status not in (JobStatus.DONE, JobStatus.SUSPENDED):
            await asyncio.gather(
                self._publish_events(record), self.store.enqueue(record.id, record.step, agent=record.agent)
            )
        elif record.step > work.step:  # DONE or SUSPENDED: repeat the wake-ups it owes (idempotent)
            await asyncio.gather(self._publish_events(record), waits.on_stale(self.store, self.inbox, record))

    async def _commit(self, base: JobRecord, rev: int, outcome: StepOutcome) -> JobRecord | None:
        """CAS the outcome over ``rev``; merge concurrent inbox/cancel changes; None if superseded."""
        assert self.store is not None
        rebase = Rebase(outcome.record, base, outcome.consumed)
        final = rebase.record
        ending = final.status is JobStatus.DONE and final.cancel_reason is None and not base.cancel_reason
        if ending and await self.inbox.last_seq(base.id) > final.inbox_seq:  # sent while the step ran
            rebase.record = keep_running(final, base)
        while True:
            new = rebase.record
            try:
                revision = await self.store.put(new, rev, max_bytes=self.nc.max_payload - RECORD_HEADROOM)
            except PayloadTooLargeError as exc:  # room is kept for what others add (a cancel, a note)
                raise RecordTooLarge(waits.oversized(exc)) from None
            except StaleRecordError:
                found = await self.store.find(base.id)
                if found is None:
                    return None
                fresh, rev = found
                if fresh.step != base.step or fresh.status is JobStatus.DONE:
                    return None  # the step was committed (or the job ended) elsewhere
                rebase.onto(fresh)
                continue
            self._remember(new, revision)
            return new

    def _remember(self, record: JobRecord, revision: int) -> None:
        """Keep what the next step of a committed record may use: its inbox position, its record."""
        if record.inbox_seq:
            self._inbox_pos.pop(record.id, None)
            self._inbox_pos[record.id] = record.inbox_seq
            while len(self._inbox_pos) > self._recent_max:
                self._inbox_pos.pop(next(iter(self._inbox_pos)))
        self._remember_record(record, revision)

    def _remember_record(self, record: JobRecord, revision: int) -> None:
        """Keep the committed record: its next step, if pulled here soon, skips one KV read.

        Every commit is a compare-and-set, so a change by another writer (a message, a cancel) is
        never lost; but code would run before that commit fails. So only a running job's record is
        kept, and only for ``_RECENT_AGE``: a SUSPENDED job's next step is a wake-up that may come
        after a cancel (it always reads the record), and an old entry may hide a ``cancel_reason``.
        """
        if record.status in (JobStatus.DONE, JobStatus.SUSPENDED):
            self._recent.pop(record.id, None)
            return
        self._recent[record.id] = (record, revision, time.monotonic())
        while len(self._recent) > self._recent_max:
            self._recent.pop(next(iter(self._recent)))

    async def _after_commit(
        self, record: JobRecord, state: EngineState | None = None, *, consumed_from: int | None = None
    ) -> None:
        """Publish a committed step's events, queue what it owes; purge the inbox items it consumed
        (``consumed_from``: the position before the step)."""
        assert self.store is not None
        state = state or load_state(record)
        work: list[Awaitable[object]] = [
            self._publish_events(record, state),
            waits.after_commit(self.store, self.inbox, record, state),
        ]
        if record.status not in (JobStatus.DONE, JobStatus.SUSPENDED):
            work.append(self.store.enqueue(record.id, record.step, agent=record.agent))
        if consumed_from is not None and record.inbox_seq > consumed_from:
            work.append(self._purge_inbox(record))
        await asyncio.gather(*work)

    async def _purge_inbox(self, record: JobRecord) -> None:
        try:
            await self.inbox.purge(record.id, record.inbox_seq)
        except Exception:  # consumed items only: the next step or the recovery sweep purges them
            log.warning("job %s: purging consumed inbox items failed", record.id, exc_info=True)

    async def _publish_events(self, record: JobRecord, state: EngineState | None = None) -> None:
        """Publish the committed step's events, each with a ``Nats-Msg-Id`` of its own.

        Core publishes (no per-event acknowledgement round trip): the job-log stream captures them
        and its duplicate window drops a re-publish after a crash. The record is the truth; a lost
        event is re-derived and re-published when a stale delivery of the step shows up.
        """
        events = step_events(record, state)
        if not events:
            return
        subject, tok = _event_names(record.id)
        prefix = f"{tok}:{events[0].step}:"
        for i, e in enumerate(events):
            await self.nc.publish(subject, encode(e), headers={MSG_ID_HEADER: f"{prefix}{i}"})

    async def _fail_job(self, work: WorkMessage, error: str) -> None:
        assert self.store is not None
        await waits.end_job(self.store, work.job_id, error, step=work.step)

    # --- workspace ---------------------------------------------------------------------------------
    async def _session(
        self,
        ctx: JobContext,
        agent: Agent,
        ref: dict[str, Any] | None,
        shared_vars: dict[str, Any],
        trusted: bool,
    ) -> SandboxSession:
        from statek_bus.runtime import workspace
        from statek_bus.wire.values import from_json

        registry = self.registries.get(agent.role) or TypeRegistry()
        # an agent whose tools changed (added, removed or swapped in place) is rebuilt
        key = (*map(id, agent.tools), None, *map(id, agent.internal_tools))
        setup = self._setups.get(agent.role)
        if setup is None or setup[0] is not agent or setup[1] != key:
            tools = {t.name: t for t in agent.all_tools()}
            hidden = frozenset(n for n, t in tools.items() if t.hidden)
            policies = _policy(self.settings, hidden), _policy(self.settings, frozenset())
            setup = self._setups[agent.role] = (agent, key, tools, *policies)
        _, _, tools, policy, trusted_policy = setup
        data = None
        if ref is not None:
            data = await workspace.load_workspace(self.js, msgspec.convert(ref, workspace.WorkspaceRef))
        initial = {k: from_json(v, registry) for k, v in shared_vars.items()} if data is None else {}
        return SandboxSession(
            policy=policy,
            trusted_policy=trusted_policy,
            tools=tools,
            job=ctx,
            workspace=data,
            shared_vars=initial,
            registry=registry,
            context_lookup=lookup_shared,
            context_bound=is_bound(ctx),
        )

    async def _save_workspace(self, job_id: str, step: int, data: Any) -> dict[str, Any] | None:
        from statek_bus.runtime import workspace

        ref = await workspace.save_workspace(self.js, job_id, step, data, self.settings.workspace_inline_max)
        return msgspec.to_builtins(ref)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=4096)
def _event_names(job_id: str) -> tuple[str, str]:
    """(events subject, escaped id) of a job; cached because escaping is per character."""
    return job_events_subject(job_id), token(job_id)


_POLICIES: dict[tuple[object, ...], Any] = {}


def _policy(settings: Settings, hidden: frozenset[str]) -> Any:
    """The sandbox policy of a job: STATEK's settings (limits, imports, tools let through) and its hidden tools."""
    from statek_bus.sandbox.restricted import DEFAULT_ALLOWED_IMPORTS, SandboxPolicy

    # keyed on the fields that shape a policy (hashing all of Settings on every step would cost more)
    key = (
        settings.restricted_mode,
        settings.python_sandbox_max_source_bytes,
        settings.python_sandbox_max_ast_nodes,
        settings.python_sandbox_allowed_imports,
        settings.python_sandbox_allowed_tools,
        hidden,
    )
    found = _POLICIES.get(key)
    if found is None:
        imports = _names(settings.python_sandbox_allowed_imports)
        found = _POLICIES[key] = SandboxPolicy(
            allowed_imports=imports or DEFAULT_ALLOWED_IMPORTS,
            max_bytes=settings.python_sandbox_max_source_bytes,
            max_nodes=settings.python_sandbox_max_ast_nodes,
            hidden_names=hidden - _names(settings.python_sandbox_allowed_tools),
            restricted=settings.restricted_mode,
        )
    return found


def _names(csv: str) -> frozenset[str]:
    return frozenset(n.strip() for n in csv.split(",") if n.strip())


def _outcome(committed: JobRecord | None) -> str:
    """The ``statek_steps`` outcome label of a committed step (``superseded``: committed elsewhere)."""
    if committed is None:
        return "superseded"
    if committed.status is JobStatus.DONE:
        return "error" if committed.error is not None else "done"
    return "suspended" if committed.status is JobStatus.SUSPENDED else "running"
