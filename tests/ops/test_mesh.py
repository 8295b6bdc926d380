"""Service processes: provider keys reach only the provider (invariant 6)."""

from __future__ import annotations

from pathlib import Path

from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess

SECRET = "sk-test-SECRET123-mesh"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_only_the_provider_process_sees_llm_keys(nats_server: NatsServer) -> None:
    env = {"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": SECRET, "STATEK_LOG_LEVEL": "WARNING"}
    state = ServiceProcess("state", nats_server.url, env=env)
    provider = ServiceProcess("provider", nats_server.url, env=env)
    try:
        await state.start()
        await provider.start()
        assert state.proc is not None and provider.proc is not None
        state_env, provider_env = _environ(state.proc.pid), _environ(provider.proc.pid)
        assert SECRET not in state_env.values()
        assert "STATEK_LOG_LEVEL" in state_env and state_env["NATS_URL"] == nats_server.url
        assert provider_env["OPENAI_API_KEY"] == SECRET
    finally:
        await state.stop()
        await provider.stop()
