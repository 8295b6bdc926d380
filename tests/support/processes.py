"""Service processes (``statek-bus serve <kind>``) for the tests that need real ones, started once
per module: the bad-input regressions and the schema-driven fuzz run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from statek_bus.mesh.connection import connect
from statek_bus.mesh.discovery import ping
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from tests.agents_fixture import AGENTS_SPEC

ENV = {"STATEK_LOG_LEVEL": "WARNING", "STATEK_RECOVERY_INTERVAL": "3600"}
"""Quiet logs, and no recovery pass writing during a test (it purges old markers)."""


@dataclass
class Mesh:
    """Running service processes and the instance id each answered ``$SRV.PING`` with at start."""

    url: str
    """The server they use."""
    ids: dict[str, str]
    """ADR-32 service name -> instance id."""
    procs: list[ServiceProcess]
    """The processes."""


async def _start(url: str, kinds: Sequence[str]) -> Mesh:
    procs = [
        ServiceProcess(k, url, env=ENV, args=["--agents", AGENTS_SPEC] if k == "executor" else [])
        for k in kinds
    ]
    for p in procs:
        p.spawn()
    for p in procs:
        await p.wait_ready()
    nc = await connect(Settings.from_env({}, nats_url=url), name="statek-test")
    try:
        ids = {}
        for p in procs:
            (reply,) = await ping(nc, p.service_name, wait=1.0)
            ids[p.service_name] = str(reply["id"])
    finally:
        await nc.close()
    return Mesh(url=url, ids=ids, procs=procs)


async def _stop(procs: Sequence[ServiceProcess]) -> None:
    for p in procs:
        await p.stop(grace=10)


@contextmanager
def service_processes(data_dir: Path, kinds: Sequence[str]) -> Iterator[Mesh]:
    """A nats-server of its own (so no other test's jobs run or write here) and one process per
    service kind (the executor serves the fixture agents), until exit."""
    server = NatsServer(data_dir=data_dir)
    asyncio.run(server.start())
    mesh: Mesh | None = None
    try:
        mesh = asyncio.run(_start(server.url, kinds))
        yield mesh
    finally:
        if mesh is not None:
            asyncio.run(_stop(mesh.procs))
        asyncio.run(server.stop())
