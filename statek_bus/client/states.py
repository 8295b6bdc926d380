"""The States API client: ``AsyncStatekClient().states`` (and, blocking, ``StatekClient().states``).

Every call but :meth:`AsyncStates.watch` is one request to the ``statek-state`` service; errors
come back as their :class:`~statek_bus.wire.errors.StatekError` class (404 :class:`NotFoundError`,
409 :class:`ConflictError` with ``details["current_revision"]``...). ``watch`` subscribes the
bucket's subjects of the states it follows (each commit wakes it) and reads what was committed
with batched direct gets, in order and with revisions: no consumer on the server, so a client
needs only read permissions (docs/permissions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from statek_bus.client.transport import Transport
from statek_bus.mesh.availability import retry_transient
from statek_bus.mesh.direct import direct_get
from statek_bus.states.store import STREAM, StateStore, change_from_msg, watch_subject
from statek_bus.wire import subjects as s
from statek_bus.wire.errors import ConflictError, NotFoundError
from statek_bus.wire.messages import (
    State,
    StateChange,
    StateCreateRequest,
    StateDeleteRequest,
    StateGetOrCreateRequest,
    StateHistoryRequest,
    StateListRequest,
    StateRetrieveRequest,
    StateUpdateRequest,
)

__all__ = ["AsyncStates", "StateListResponse", "StateWatch", "TaskState"]

_States = list[State]
_RECHECK = 5.0  # seconds a watch goes without a wake-up before it reads again (a reconnect may hide one)
_SETTLE = (0.02, 0.1, 0.5)  # seconds between re-reads after a wake-up that found nothing stored yet

Mutation = Callable[[dict[str, Any]], dict[str, Any]]
"""A pure function from the current object to the next (may be retried on conflict)."""


class StateListResponse(msgspec.Struct, kw_only=True):
    """One page of :meth:`AsyncStates.list`: iterable, indexable, sized like a list of State."""

    data: list[State]
    """The states of this page, ordered by ``created_at`` then ``id``."""
    page_number: int
    """This page's number (from 1)."""
    limit: int | None
    """The page size asked for (``None``: the service default)."""

    def __iter__(self) -> Iterator[State]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> State:
        return self.data[index]

    def __bool__(self) -> bool:
        return bool(self.data)


class AsyncStates:
    """The States API.

    Args:
        client: the client whose connection and settings it uses.
    """

    def __init__(self, client: Transport) -> None:
        self._client = client
        self._store: StateStore | None = None

    async def create(
        self, task_id: str, agent_id: str, state: dict[str, Any], *, ttl_seconds: int | None = None
    ) -> State:
        """Create the state of ``(task_id, agent_id)``.

        Args:
            task_id: owning task (any string; a job id when a job owns it).
            agent_id: owning agent.
            state: a JSON object, at most ``state_max_bytes`` encoded.
            ttl_seconds: delete it this many seconds after creation.

        Raises:
            ConflictError: the pair has a state; ``details["state_id"]`` names it.
        """
        req = StateCreateRequest(task_id=task_id, agent_id=agent_id, state=state, ttl_seconds=ttl_seconds)
        return await self._client.request(s.STATES_CREATE, req, State)

    async def retrieve(
        self, state_id: str | None = None, *, task_id: str | None = None, agent_id: str | None = None
    ) -> State | None:
        """The state by id (missing: :class:`NotFoundError`), or by pair (missing: ``None``)."""
        req = StateRetrieveRequest(state_id=state_id, task_id=task_id, agent_id=agent_id)
        return await self._client.request(s.STATES_RETRIEVE, req, State | None)  # type: ignore[arg-type]

    async def update(
        self, state_id: str, state: dict[str, Any], expected_revision: int | None = None
    ) -> State:
        """Replace the object; bumps ``revision`` and ``updated_at``.

        Raises:
            NotFoundError: no such state (update never creates).
            ConflictError: ``expected_revision`` is stale; ``details["current_revision"]`` is current.
        """
        req = StateUpdateRequest(state_id=state_id, state=state, expected_revision=expected_revision)
        return await self._client.request(s.STATES_UPDATE, req, State)

    async def list(
        self,
        task_id: str | None = None,
        agent_id: str | None = None,
        limit: int | None = None,
        page_number: int | None = None,
    ) -> StateListResponse:
        """One page of states matching the filters exactly, by ``created_at`` then ``id``."""
        req = StateListRequest(task_id=task_id, agent_id=agent_id, limit=limit, page_number=page_number)
        data = await self._client.request(s.STATES_LIST, req, list[State])
        return StateListResponse(data=data, page_number=page_number or 1, limit=limit)

    async def delete(self, state_id: str) -> State:
        """Delete the state and free its pair; returns it as it was."""
        return await self._client.request(s.STATES_DELETE, StateDeleteRequest(state_id=state_id), State)

    async def get_or_create(self, task_id: str, agent_id: str, default: dict[str, Any]) -> State:
        """The pair's state, or a new one holding ``default``; concurrent callers get the same state."""
        req = StateGetOrCreateRequest(task_id=task_id, agent_id=agent_id, default=default)
        return await self._client.request(s.STATES_GET_OR_CREATE, req, State)

    async def history(self, state_id: str, limit: int | None = None) -> _States:
        """Kept revisions (``state_history`` of them), newest first; the first is the current one."""
        req = StateHistoryRequest(state_id=state_id, limit=limit)
        return await self._client.request(s.STATES_HISTORY, req, list[State])

    async def transact(self, state_id: str, fn: Mutation, *, attempts: int = 100) -> State:
        """Read, apply ``fn``, write with ``expected_revision``; on a conflict, back off and retry.

        Raises:
            ConflictError: still conflicting after ``attempts`` tries.
        """
        for attempt in range(attempts):
            current = await self.retrieve(state_id)
            assert current is not None
            try:
                return await self.update(state_id, fn(current.state), expected_revision=current.revision)
            except ConflictError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # full jitter
        raise AssertionError("unreachable")

    def watch(
        self,
        task_id: str | None = None,
        agent_id: str | None = None,
        state_id: str | None = None,
        *,
        since_revision: int | None = None,
    ) -> StateWatch:
        """Changes ``{op, state, revision}`` to the matching states, as they are committed.

        ``async for change in states.watch(task_id=t)``; ``w = await states.watch(...)`` subscribes
        before returning, so nothing committed afterwards is missed. See :class:`StateWatch`.
        """
        return StateWatch(
            self._get_store, task_id, agent_id, state_id, since_revision, self._client.connection
        )

    def for_task(self, task_id: str, agent_id: str) -> TaskState:
        """The state of one (task, agent) pair: ``ctx.state`` of handler agents."""
        return TaskState(self, task_id, agent_id)

    async def _get_store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(await self._client.jetstream(), self._client.settings)
        return self._store


class TaskState:
    """``create`` / ``get`` / ``update`` bound to one (task, agent) pair (seed 002's ``ctx.state``).

    Args:
        states: the States API to call.
        task_id: the task.
        agent_id: the agent.
    """

    def __init__(self, states: AsyncStates, task_id: str, agent_id: str) -> None:
        self._states = states
        self.task_id = task_id
        self.agent_id = agent_id

    async def create(self, state: dict[str, Any], *, ttl_seconds: int | None = None) -> State:
        """Create the pair's state (:class:`ConflictError` if it has one)."""
        return await self._states.create(self.task_id, self.agent_id, state, ttl_seconds=ttl_seconds)

    async def get(self) -> State | None:
        """The pair's state, or ``None``."""
        return await self._states.retrieve(task_id=self.task_id, agent_id=self.agent_id)

    async def get_or_create(self, default: dict[str, Any]) -> State:
        """The pair's state, created with ``default`` if there is none (atomic)."""
        return await self._states.get_or_create(self.task_id, self.agent_id, default)

    async def update(self, state: dict[str, Any], expected_revision: int | None = None) -> State:
        """Replace the pair's object (:class:`NotFoundError` if it has none)."""
        return await self._states.update(await self._id(), state, expected_revision)

    async def transact(self, fn: Mutation, *, attempts: int = 100) -> State:
        """Apply ``fn`` to the pair's object with compare-and-set, retrying on conflict."""
        return await self._states.transact(await self._id(), fn, attempts=attempts)

    async def delete(self) -> State:
        """Delete the pair's state; returns it as it was."""
        return await self._states.delete(await self._id())

    async def _id(self) -> str:
        current = await self.get()
        if current is None:
            raise NotFoundError(f"task {self.task_id!r} and agent {self.agent_id!r} have no state")
        return current.id


class StateWatch:
    """An async iterator of :class:`StateChange` (``op`` create/update/delete, ``state``, ``revision``).

    Await it, or enter it with ``async with``, to subscribe before acting; iterating an unstarted
    watch subscribes on the first step. It yields changes committed after it subscribed, or every
    kept change after ``since_revision``. A watch of one ``state_id`` ends after its deletion.
    Deletions carry the state as it was; a deletion stays replayable for
    :data:`~statek_bus.states.store.DELETE_MARKER_TTL` seconds only. Expiry by ``ttl_seconds`` is not an
    event.
    """

    def __init__(
        self,
        store: Callable[[], Any],
        task_id: str | None,
        agent_id: str | None,
        state_id: str | None,
        since_revision: int | None,
        connection: Callable[[], Awaitable[Client]],
    ) -> None:
        self._get_store = store
        self._connection = connection
        self._filter = (task_id, agent_id)
        self._state_id = state_id
        self._since = since_revision
        self._queue: asyncio.Queue[StateChange | None] = asyncio.Queue()
        self._sub: Any = None
        self._done = False
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._next = 1

    def __await__(self) -> Generator[Any, None, StateWatch]:
        return self.start().__await__()

    async def __aenter__(self) -> StateWatch:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> StateWatch:
        return self

    async def __anext__(self) -> StateChange:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        await self.start()
        change = await self._queue.get()
        if change is None:
            raise StopAsyncIteration
        if self._state_id is not None and change.op == "delete":
            await self.aclose()
        return change

    async def start(self) -> StateWatch:
        """Subscribe (once); returns the watch. A ``state_id`` that does not exist is 404."""
        if self._sub is not None or self._done:
            return self
        store: StateStore = await self._get_store()
        nc = await self._connection()
        task_id, agent_id = self._filter
        if self._state_id is not None:
            current = await store.retrieve(self._state_id)
            task_id, agent_id = current.task_id, current.agent_id
        subject = watch_subject(task_id, agent_id)

        async def wake(_: Msg) -> None:
            self._wake.set()

        self._sub = await nc.subscribe(subject, cb=wake)  # before the starting point is read
        if self._since is None:
            self._next = (await store.js.stream_info(STREAM)).state.last_seq + 1
        else:
            self._next = self._since + 1
            self._wake.set()
        self._reader = asyncio.create_task(self._read(nc, subject, store.settings.request_timeout))
        return self

    async def _read(self, nc: Client, subject: str, timeout: float) -> None:
        """Read what was committed after ``_next`` each time a commit wakes the watch.

        A wake-up may come before the stream has stored its message, so a read that finds nothing
        new is repeated after :data:`_SETTLE` delays; a read every :data:`_RECHECK` seconds
        catches anything a reconnect hid.
        """
        while not self._done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _RECHECK)
            self._wake.clear()
            for delay in (0.0, *_SETTLE):
                if delay:
                    await asyncio.sleep(delay)
                if await self._read_new(nc, subject, timeout):
                    break

    async def _read_new(self, nc: Client, subject: str, timeout: float) -> bool:
        found = False
        while not self._done:
            batch = await retry_transient(
                lambda: direct_get(
                    nc, STREAM, {"seq": self._next, "next_by_subj": subject, "batch": 256}, timeout=timeout
                )
            )
            for msg in batch.messages:
                seq = int((msg.headers or {}).get("Nats-Sequence") or 0)
                self._next = max(self._next, seq + 1)
                found = True
                self._deliver(msg, seq)
            if not batch.messages or not batch.pending:
                return found
        return found

    async def aclose(self) -> None:
        """Stop watching; changes already received are still yielded, then the iteration ends."""
        sub, self._sub = self._sub, None
        if not self._done:
            self._done = True
            self._queue.put_nowait(None)
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _deliver(self, msg: Msg, seq: int) -> None:
        change = change_from_msg(msg, seq)
        if change is None or self._done:
            return
        if self._state_id is None or change.state.id == self._state_id:
            self._queue.put_nowait(change)
