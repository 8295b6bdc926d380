"""The provider on a read-only root, as the Kubernetes manifests run it: a private mount namespace
where `/` (so `/tmp` and the venv too) is read-only, with or without a writable temp dir."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer, free_port
from statek_bus.wire.messages import ChatMessage, CompleteReply, CompleteRequest
from statek_bus.wire.subjects import LLM_COMPLETE
from tests.mesh.test_health import _readyz, _until


def _provider_on_a_read_only_root(nats_url: str, port: int, writable: Path | None) -> subprocess.Popen[bytes]:
    serve = shlex.join([sys.executable, "-m", "statek_bus", "serve", "provider", "--nats-url", nats_url])
    steps = ["mount --make-rprivate /"]
    if writable is not None:  # what an emptyDir volume gives the pod
        steps.append(f"mount -t tmpfs -o size=64m tmpfs {shlex.quote(str(writable))}")
    steps += ["mount --bind / /", "mount -o remount,bind,ro /", f"exec {serve}"]
    env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    env.update(STATEK_HEALTH_PORT=str(port), STATEK_HEALTH_HOST="127.0.0.1")
    if writable is not None:
        env["TMPDIR"] = str(writable)
    return subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", " && ".join(steps)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_the_provider_serves_litellm_with_a_read_only_root_and_a_writable_temp_dir(
    nats_server: NatsServer, settings: Settings, tmp_path: Path
) -> None:
    writable = tmp_path / "emptydir"
    writable.mkdir()
    port = free_port()
    proc = _provider_on_a_read_only_root(nats_server.url, port, writable)
    try:
        ready = await _until(port, 200, seconds=90)  # litellm's import takes seconds
        assert ready["checks"]["litellm"] is True and ready["checks"]["temp_dir"] is True  # type: ignore[index]
        request = CompleteRequest(
            model="openai/gpt-4o-mini",
            messages=[ChatMessage(role="user", content="hi")],
            metadata={"MOCK_RESPONSE": "from litellm, offline"},
        )
        async with AsyncStatekClient(settings=settings) as client:
            reply = await client.request(LLM_COMPLETE, request, CompleteReply, timeout=30)
        assert reply.text == "from litellm, offline"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_without_a_writable_temp_dir_the_provider_says_it_is_not_ready(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    proc = _provider_on_a_read_only_root(nats_server.url, port, None)
    try:
        deadline = asyncio.get_running_loop().time() + 90
        while True:  # registered on NATS, but never ready: the temp dir (and so litellm) is unusable
            code, body = await _readyz(port)
            checks = body.get("checks", {})
            if code and checks.get("registered") and checks.get("temp_dir") is False:
                break
            assert asyncio.get_running_loop().time() < deadline, f"/readyz {code} {json.dumps(body)}"
            await asyncio.sleep(0.2)
        assert code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=30)
