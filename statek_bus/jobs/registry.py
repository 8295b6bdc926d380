"""The agent registry as submission sees it: descriptions executors wrote to ``statek_agents``.

Submission never imports user code: it validates agent names against these descriptions, kept
current by a KV watch.

A description outlives the executor that wrote it (an earlier run's agents stay in the bucket), so
the directory also tracks which agents a *live* executor serves now: every executor instance lists
its agents in its ``$SRV.INFO`` metadata (``agents``), which the directory gathers every
:data:`LIVE_REFRESH` seconds and again whenever an executor registers an agent. Listings mark each
description ``served`` or not, and a submit to an agent nobody serves is still accepted (the job
waits durably, as work does on a queue with no workers) with ``agent_served=False`` in its reply.
Submit reads the last gathering (it never waits for one); listings gather afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from statek_bus.jobs.store import scan
from statek_bus.mesh.connection import pause_before_retry, raise_if_cancelled, stop_tasks
from statek_bus.mesh.discovery import info
from statek_bus.wire.errors import BadRequestError, NotFoundError
from statek_bus.wire.messages import AgentDescription, decode
from statek_bus.wire.subjects import SERVICE_EXECUTOR, token

__all__ = ["LIVE_REFRESH", "AgentDirectory"]

log = logging.getLogger(__name__)

LIVE_REFRESH = 2.0
"""Seconds between two gatherings of the live executors' agents."""
_GATHER_WINDOW = 0.5  # seconds $SRV.INFO replies are collected (a loaded executor answers late)
_QUICK = (0.25, 0.5, 1.0)  # re-gather soon after a registration: the executor's $SRV comes after it
_SETTLE = 1.0  # a "no" counts only from a gathering that began this long after the registration


class AgentDirectory:
    """The agents executors registered in ``statek_agents``, cached by a KV watch.

    A miss in the cache is confirmed with a direct read, so an agent registered a moment ago is
    never refused because the watch has not caught up.

    Args:
        kv: the ``statek_agents`` bucket.
        nc: the connection ``$SRV.INFO`` requests go out on (without one, ``served`` stays ``None``).
    """

    def __init__(self, kv: KeyValue, nc: Client | None = None) -> None:
        self.kv = kv
        self.nc = nc
        self._known: dict[str, AgentDescription] = {}
        self._ready = asyncio.Event()
        self._live: set[str] | None = None  # roles live executors serve; None until first gathered
        self._live_started = 0.0  # loop time the last completed gathering began
        self._registered: dict[str, float] = {}  # role -> loop time its registration was seen
        self._opened = 0.0  # loop time the directory began (replayed registrations count from it)
        self._refresh = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Keep the cache and the live-executor view current while the block runs."""
        self._opened = asyncio.get_running_loop().time()
        tasks = [asyncio.create_task(self._follow())]
        if self.nc is not None:
            tasks.append(asyncio.create_task(self._follow_live()))
        try:
            yield
        finally:
            await stop_tasks(*tasks)

    async def _gather_live(self) -> set[str]:
        assert self.nc is not None
        started = asyncio.get_running_loop().time()
        live: set[str] = set()
        for reply in await info(self.nc, SERVICE_EXECUTOR, wait=_GATHER_WINDOW):
            agents = (reply.get("metadata") or {}).get("agents") or ""
            live.update(a for a in agents.split(",") if a)
        if started >= self._live_started:
            self._live, self._live_started = live, started
        return live

    async def _follow_live(self) -> None:
        quick = list(_QUICK)
        while True:
            raise_if_cancelled()  # a cancel as the wait below timed out came as TimeoutError
            try:
                await self._gather_live()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("could not gather the live executors", exc_info=True)
            if self._refresh.is_set():
                quick = list(_QUICK)
            self._refresh.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh.wait(), quick.pop(0) if quick else LIVE_REFRESH)

    async def served(self, role: str) -> bool | None:
        """Whether a live executor serves ``role``, as last gathered (``None``: not known yet).

        Never waits: a submit pays nothing for it. An executor lists itself in ``$SRV`` a moment
        after it registers its agents, so a "no" is only said from a gathering that began
        :data:`_SETTLE` seconds after the agent's registration was seen (before that: ``None``).
        The answer may lag an executor's stop by up to :data:`LIVE_REFRESH` seconds plus the
        gathering window; listings gather afresh.
        """
        if self.nc is None or self._live is None:
            return None
        if role in self._live:
            return True
        seen = self._registered.get(role, self._opened)
        return False if self._live_started >= seen + _SETTLE else None

    async def _follow(self) -> None:
        while True:
            try:
                watcher = await self.kv.watchall()
                try:
                    async for entry in watcher:
                        if entry is None:
                            self._ready.set()
                        elif entry.operation in ("DEL", "PURGE") or not entry.value:
                            self._known = {r: d for r, d in self._known.items() if token(r) != entry.key}
                        else:
                            desc = decode(entry.value, AgentDescription)
                            self._known[desc.role] = desc
                            if self._ready.is_set():  # a registration now, not a replayed one
                                self._registered[desc.role] = asyncio.get_running_loop().time()
                                self._refresh.set()  # an executor (re)registered: look again soon
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("agent registry watch failed; restarting it", exc_info=True)
                await pause_before_retry(1.0)

    async def get(self, role: str) -> AgentDescription:
        """The agent ``role``; :class:`NotFoundError` naming it and listing the known roles."""
        if not role:
            raise BadRequestError("agent must be a non-empty role name", field="agent")
        found = self._known.get(role)
        if found is not None:
            return found
        try:
            entry = await self.kv.get(token(role))
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            return decode(entry.value, AgentDescription)
        roles = sorted(d.role for d in await self.registered())
        known = ", ".join(roles) if roles else "none (is an executor running?)"
        raise NotFoundError(
            f"unknown agent {role!r}; known agents: {known}", field="agent", details={"known": roles}
        )

    async def describe(self, role: str) -> AgentDescription:
        """:meth:`get`, with ``served`` saying whether a live executor serves it now."""
        desc = await self.get(role)
        return msgspec.structs.replace(desc, served=await self.served(role))

    async def all(self) -> list[AgentDescription]:
        """Every registered agent, by role, each marked ``served`` (a live executor serves it now)
        or not (only remembered from an earlier registration)."""
        found = await self.registered()
        if self.nc is None:
            return found
        live = await self._gather_live()
        return [msgspec.structs.replace(d, served=d.role in live) for d in found]

    async def registered(self) -> list[AgentDescription]:
        """Every agent description in the bucket, by role, live or not."""
        if not self._ready.is_set():
            found = [decode(v, AgentDescription) for _, v in await scan(self.kv, ">")]
            return sorted(found, key=lambda d: d.role)
        return sorted(self._known.values(), key=lambda d: d.role)
