"""Shared contexts in JetStream: a job on one executor writes, a job on another reads (real processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from statek_bus.mesh.connection import connect
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.shared_context import SharedContextRecord
from statek_bus.wire.subjects import CONTEXT_BUCKET, context_key
from tests.agents_fixture import console, submit, wait_done

ENV = {"STATEK_LOG_LEVEL": "WARNING", "STATEK_RECOVERY_INTERVAL": "3600"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server of its own and a provider process."""
    nats = NatsServer(data_dir=tmp_path / "nats")
    await nats.start()
    provider = ServiceProcess("provider", nats.url, env=ENV)
    try:
        provider.spawn()
        await provider.wait_ready()
        yield nats
    finally:
        await provider.stop(grace=10)
        await nats.stop()


def _executor(url: str, runner: str) -> ServiceProcess:
    env = {**ENV, "STATEK_CODE_RUNNER": runner}
    return ServiceProcess(
        "executor", url, env=env, args=["--agents", "tests.authoring.context_agents:AGENTS"]
    )


@pytest.mark.parametrize("runner", ["process", "in-process"])
async def test_a_variable_written_on_one_executor_is_read_by_a_job_on_another(
    server: NatsServer, runner: str
) -> None:
    nc = await connect(Settings.from_env({}, nats_url=server.url), name="statek-test")
    first, second = _executor(server.url, runner), _executor(server.url, runner)
    try:
        js = nc.jetstream()
        first.spawn()
        await first.wait_ready()
        wrote = await wait_done(js, await submit(js, "ctx_writer"), timeout=60)
        await first.stop(grace=10)  # the reader's job runs on another executor process
        assert wrote.exit_status == "written", console(wrote)
        assert "formal 2" in console(wrote)
        refusal = (
            "refused: a shared variable holds data only: timer[0]: cannot encode a value of type TimerFuture"
        )
        assert refusal in console(wrote), console(wrote)

        second.spawn()
        await second.wait_ready()

        read = await wait_done(js, await submit(js, "ctx_reader"), timeout=60)
        lines = console(read)
        assert lines[0] == "formal ACME", lines
        assert any(
            line.startswith("# ENTITY variables (1)") and 'customer = {"name":"ACME","tier":2}' in line
            for line in lines
        ), lines
        assert "# PREFERENCE variables (0)" in lines  # "tone" is a str: filtered out by the type name
        refused = [line for line in lines if line.startswith("PermissionError")]
        assert refused and "Shared context variable is read-only: tone" in refused[0], lines
        assert read.exit_status == "casual"  # its own write, read back in the same step

        same = await wait_done(js, await submit(js, "ctx_same_step"), timeout=60)
        assert (console(same), same.exit_status) == (
            ["same step: formal"],
            "formal",
        )  # bound, then read at once

        perm = await wait_done(js, await submit(js, "ctx_perm"), timeout=60)
        assert console(perm) == ["note", "note_1", "first second none", "ctx_perm ctx_perm [('n', 3)]"]

        outsider = await wait_done(js, await submit(js, "ctx_outsider"), timeout=60)
        assert "NameError: name 'tone' is not defined" in console(outsider)

        kv = await js.key_value(CONTEXT_BUCKET)
        tenant = msgspec.json.decode((await kv.get(context_key(["acme"]))).value, type=SharedContextRecord)
        user = msgspec.json.decode(
            (await kv.get(context_key(["acme", "alice"]))).value, type=SharedContextRecord
        )
    finally:
        await second.stop(grace=10)
        await nc.close()
    assert tenant.vars["tone"].value == "formal" and tenant.vars["tone"].job_id == wrote.id
    assert user.vars["tone"].value == "casual" and user.vars["tone"].category == "PREFERENCE"
