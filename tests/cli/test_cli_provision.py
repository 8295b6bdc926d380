"""`statek-bus provision`: storage created as its own step, before any service runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import desired_streams, object_store_stream
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer

ROOT = Path(__file__).resolve().parents[2]


async def test_provision_creates_every_stream_then_exits(fresh_server: NatsServer) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "statek_bus", "provision", "--nats-url", fresh_server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"storage provisioned at {fresh_server.url}"
    settings = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(settings, name="t")
    try:
        names = {info.config.name for info in await nc.jetstream().streams_info()}
    finally:
        await nc.close()
    assert names == {c.name for c in desired_streams(settings)} | {object_store_stream()}
