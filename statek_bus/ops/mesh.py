"""Running the mesh: service processes, readiness by ``$SRV.PING``, and ``statek-bus up``.

``up`` starts an embedded nats-server (unless given ``--nats-url``), provisions storage, starts
each service as its own process (``python -m statek_bus serve <name>``, what a Kubernetes
Deployment runs), waits until every one answers ``$SRV.PING``, prints ``NATS_URL=...`` and stays
up until SIGTERM/SIGINT; then it stops the services (SIGTERM: they drain) and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from statek_bus.mesh.connection import connect
from statek_bus.mesh.discovery import ping
from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import LauncherError, NatsServer, terminate
from statek_bus.provider.redaction import secret_env_names
from statek_bus.wire.subjects import (
    SERVICE_EXECUTOR,
    SERVICE_PROVIDER,
    SERVICE_STATE,
    SERVICE_SUBMISSION,
)

__all__ = ["SERVICE_KINDS", "Mesh", "ServiceProcess", "up"]

SERVICE_KINDS: dict[str, str] = {
    "submission": SERVICE_SUBMISSION,
    "executor": SERVICE_EXECUTOR,
    "state": SERVICE_STATE,
    "provider": SERVICE_PROVIDER,
}
"""``serve`` argument → ADR-32 service name."""


class ServiceProcess:
    """One service in its own process (``python -m statek_bus serve <kind>``).

    Args:
        kind: ``submission``, ``executor``, ``state`` or ``provider``.
        nats_url: where it connects.
        args: extra ``serve`` arguments (``--agents module:attr``).
        env: extra environment variables (``STATEK_*`` settings).
        log_path: where its stdout/stderr go (inherited when ``None``).
    """

    def __init__(
        self,
        kind: str,
        nats_url: str,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        if kind not in SERVICE_KINDS:
            raise ValueError(f"unknown service {kind!r}; expected one of {', '.join(SERVICE_KINDS)}")
        self.kind = kind
        self.nats_url = nats_url
        self.args = list(args)
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def service_name(self) -> str:
        """The ADR-32 name this process registers."""
        return SERVICE_KINDS[self.kind]

    def spawn(self) -> None:
        """Start the process (readiness: :meth:`wait_ready`)."""
        env = {**os.environ, **self.env, "NATS_URL": self.nats_url}
        if self.kind != "provider":  # provider keys live only in the provider (invariant 6)
            for name in secret_env_names(env):
                env.pop(name)
        cmd = [sys.executable, "-m", "statek_bus", "serve", self.kind, *self.args]
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        if out:
            out.close()  # the child holds its own descriptor

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until this process's service answers ``$SRV.PING``."""
        assert self.proc is not None
        settings = Settings.from_env(nats_url=self.nats_url)
        nc = await connect(settings, name="statek-up")
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise LauncherError(f"service {self.kind} exited with code {self.proc.returncode}")
                if any(
                    p.get("name") == self.service_name for p in await ping(nc, self.service_name, wait=0.2)
                ):
                    return
                if time.monotonic() > deadline:
                    raise LauncherError(f"service {self.kind} did not answer $SRV.PING within {timeout:.0f}s")
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn and wait until ready."""
        self.spawn()
        await self.wait_ready(timeout)

    async def stop(self, grace: float = 25.0) -> int | None:
        """SIGTERM (the service drains), SIGKILL after ``grace``; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        return await terminate(proc, grace)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Mesh:
    """An embedded server (optional) plus one process per service, as an async context manager.

    Args:
        settings: ``nats_url`` is used when ``embedded`` is false.
        embedded: start a nats-server under ``data_dir``.
        data_dir: JetStream storage of the embedded server (temporary when ``None``).
        port: client port of the embedded server (0: free port).
        kinds: which services to start.
        agents: ``module:attr`` of the executor's agents.
        env: extra environment for the service processes.
        log_dir: where each process writes ``<kind>.log`` (inherit stdout when ``None``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        embedded: bool = True,
        data_dir: str | Path | None = None,
        port: int = 0,
        kinds: Sequence[str] = tuple(SERVICE_KINDS),
        agents: str | None = None,
        env: dict[str, str] | None = None,
        log_dir: str | Path | None = None,
    ) -> None:
        self.settings = settings
        self.server = NatsServer(data_dir=data_dir, port=port) if embedded else None
        self.kinds = list(kinds)
        self.agents = agents
        self.env = env or {}
        self.log_dir = Path(log_dir) if log_dir else None
        self.services: dict[str, ServiceProcess] = {}

    @property
    def nats_url(self) -> str:
        """URL of the mesh's NATS server."""
        return self.server.url if self.server else self.settings.nats_url

    async def __aenter__(self) -> Mesh:
        if self.server:
            await self.server.start()
        try:
            nc = await connect(self.settings.replace(nats_url=self.nats_url), name="statek-up")
            try:
                await provision(nc.jetstream(), self.settings)
            finally:
                await nc.close()
            for kind in self.kinds:
                args = ["--agents", self.agents] if kind == "executor" and self.agents else []
                log = self.log_dir / f"{kind}.log" if self.log_dir else None
                self.services[kind] = ServiceProcess(
                    kind, self.nats_url, args=args, env=self.env, log_path=log
                )
                self.services[kind].spawn()
            await asyncio.gather(*(p.wait_ready() for p in self.services.values()))
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop every service (they drain), then the embedded server."""
        await asyncio.gather(*(p.stop() for p in self.services.values()), return_exceptions=True)
        if self.server:
            await self.server.stop(remove=False)


async def up(settings: Settings, *, embedded: bool, data_dir: str, port: int, agents: str | None) -> None:
    """``statek-bus up``: run the mesh until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Mesh(settings, embedded=embedded, data_dir=data_dir, port=port, agents=agents) as mesh:
        print(f"NATS_URL={mesh.nats_url}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await stop.wait()
