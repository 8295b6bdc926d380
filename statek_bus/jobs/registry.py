"""The agent registry as submission sees it: descriptions executors wrote to ``statek_agents``.

Submission never imports user code: it validates agent names against these descriptions, kept
current by a KV watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from statek_bus.jobs.store import scan
from statek_bus.wire.errors import BadRequestError, NotFoundError
from statek_bus.wire.messages import AgentDescription, decode
from statek_bus.wire.subjects import token

__all__ = ["AgentDirectory"]

log = logging.getLogger(__name__)


class AgentDirectory:
    """The agents executors registered in ``statek_agents``, cached by a KV watch.

    A miss in the cache is confirmed with a direct read, so an agent registered a moment ago is
    never refused because the watch has not caught up.
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._known: dict[str, AgentDescription] = {}
        self._ready = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Keep the cache current while the block runs."""
        task = asyncio.create_task(self._follow())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

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
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("agent registry watch failed; restarting it", exc_info=True)
                await asyncio.sleep(1.0)

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
        roles = sorted(d.role for d in await self.all())
        known = ", ".join(roles) if roles else "none (is an executor running?)"
        raise NotFoundError(
            f"unknown agent {role!r}; known agents: {known}", field="agent", details={"known": roles}
        )

    async def all(self) -> list[AgentDescription]:
        """Every registered agent, by role."""
        if not self._ready.is_set():
            found = [decode(v, AgentDescription) for _, v in await scan(self.kv, ">")]
            return sorted(found, key=lambda d: d.role)
        return sorted(self._known.values(), key=lambda d: d.role)
