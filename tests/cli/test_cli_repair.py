"""``statek-bus jobs repair``: the operator's command after a lost or purged work stream."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

from statek_bus.jobs.store import JobStore
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.messages import JobRecord
from tests.jobs.test_submission import work_counts


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "statek_bus",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_jobs_repair_re_enqueues_a_stranded_job_once(fresh_server: NatsServer) -> None:
    nc = await connect(Settings.from_env({}, nats_url=fresh_server.url), name="repair-test")
    try:
        js = nc.jetstream()
        await provision(js, Settings.from_env({}, nats_url=fresh_server.url))
        store = await JobStore.open(js)
        old = datetime(2020, 1, 1, tzinfo=UTC)  # long past the repair's grace period
        await store.create(JobRecord(id="stranded", agent="a", created_at=old, updated_at=old))
        assert await work_counts(js, ["stranded"]) == {"stranded": 0}
        code, out = await _cli("jobs", "repair", "--json", "--nats-url", fresh_server.url)
        assert code == 0 and json.loads(out)["enqueued"] == 1
        code, out = await _cli("jobs", "repair", "--nats-url", fresh_server.url)
        assert code == 0 and "re-enqueued 0" in out  # idempotent
        assert await work_counts(js, ["stranded"]) == {"stranded": 1}
    finally:
        await nc.close()
