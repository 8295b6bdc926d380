"""The embedded-server launcher: start, stop, port in use, data dir locked, restart, cluster."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import nats
import pytest

from statek_bus.ops.launcher import LauncherError, NatsCluster, NatsServer


async def test_start_reports_url_and_health_and_stop_ends_process(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "d")
    await server.start()
    pid = server.pid
    assert server.url.startswith("nats://127.0.0.1:")
    with urllib.request.urlopen(f"{server.monitor_url}/healthz") as r:
        assert r.status == 200
    nc = await nats.connect(server.url)
    assert (await nc.jetstream().account_info()).limits is not None
    await nc.close()
    await server.stop()
    assert server.pid is None
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


async def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "a") as first:
        with pytest.raises(LauncherError, match=rf"port {first.port} is already in use.*--port 0"):
            await NatsServer(data_dir=tmp_path / "b", port=first.port).start()


async def test_data_dir_in_use_is_one_clear_error(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "same"):
        with pytest.raises(LauncherError, match=r"data dir .*same is in use .*--data-dir"):
            await NatsServer(data_dir=tmp_path / "same").start()


async def test_restart_keeps_port_and_data(tmp_path: Path) -> None:
    async with NatsServer(data_dir=tmp_path / "d") as server:
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().create_key_value(bucket="keep")
        await kv.put("k", b"v")
        await nc.close()
        port = server.port
        server.kill()
        await server.start()
        assert server.port == port
        nc = await nats.connect(server.url)
        assert (await (await nc.jetstream().key_value("keep")).get("k")).value == b"v"
        await nc.close()


async def test_three_node_cluster_replicates(tmp_path: Path) -> None:
    async with NatsCluster(3, base_dir=tmp_path) as cluster:
        assert len(cluster.urls) == 3
        nc = await nats.connect(cluster.urls[0])
        js = nc.jetstream()
        for _ in range(40):  # the meta leader may still be electing
            try:
                kv = await js.create_key_value(bucket="r3", replicas=3)
                break
            except Exception:
                import asyncio

                await asyncio.sleep(0.25)
        await kv.put("k", b"v")
        info = await js.stream_info("KV_r3")
        assert info.config.num_replicas == 3
        await nc.close()


async def test_the_embedded_nats_server_never_holds_a_provider_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-NOTFORNATS123")
    server = NatsServer(data_dir=tmp_path / "nats")
    await server.start()
    try:
        assert server.pid is not None
        environ = Path(f"/proc/{server.pid}/environ").read_bytes()
    finally:
        await server.stop()
    assert b"NOTFORNATS123" not in environ and b"OPENAI_API_KEY" not in environ
    assert b"PATH=" in environ  # the rest of the environment is passed on
