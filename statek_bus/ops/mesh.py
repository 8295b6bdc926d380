"""Running the mesh: service processes, readiness by ``$SRV.PING``, ``statek-bus up`` and ``serve``.

``up`` starts an embedded nats-server (unless given ``--nats-url``; with ``--auth`` one that
authenticates every connection, each service as its own least-privilege user), provisions storage, starts
each service as its own process (``python -m statek_bus serve <name>``, what a Kubernetes
Deployment runs), waits until every one of *its own* processes answers ``$SRV.PING`` (each carries
a launch id in its metadata, so another mesh's instances on the same server do not count), prints
``NATS_URL=...`` and stays up until SIGTERM/SIGINT; then it stops the services (SIGTERM: they
drain) and the server. A signal at any moment ends it (:mod:`.signals`): while starting, it
cancels the start and stops what was started; while serving, it stops gracefully; a second signal
kills what is left. A failed start leaves nothing in the data dir that was not there before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiofiles
import anyio

from statek_bus.mesh.connection import connect
from statek_bus.mesh.discovery import ping
from statek_bus.mesh.permissions import ADMIN, CLIENT, role
from statek_bus.mesh.provision import provision
from statek_bus.mesh.service import (
    ServiceContext,
    ServiceFactory,
    ServiceSpec,
    load_service_factory,
    running_service,
)
from statek_bus.mesh.settings import Settings
from statek_bus.ops.credentials import Identities, identities
from statek_bus.ops.launcher import LauncherError, NatsServer, die_with_parent, terminate
from statek_bus.ops.signals import StopSignals
from statek_bus.provider.redaction import secret_env_names
from statek_bus.runtime.loading import load_agents
from statek_bus.wire.subjects import (
    SERVICE_EXECUTOR,
    SERVICE_PROVIDER,
    SERVICE_STATE,
    SERVICE_SUBMISSION,
)

__all__ = [
    "LAUNCH_ID_ENV",
    "SERVICE_KINDS",
    "Mesh",
    "ServiceProcess",
    "check_agents",
    "serve",
    "up",
]

log = logging.getLogger(__name__)

SERVICE_KINDS: dict[str, str] = {
    "submission": SERVICE_SUBMISSION,
    "executor": SERVICE_EXECUTOR,
    "state": SERVICE_STATE,
    "provider": SERVICE_PROVIDER,
}
"""``serve`` argument → ADR-32 service name."""

LAUNCH_ID_ENV = "STATEK_LAUNCH_ID"
"""Environment variable a launcher sets for a service process; ``serve`` puts its value in the
instance's ``$SRV`` metadata (key :data:`LAUNCH_ID_KEY`), so the launcher knows its own instances."""
LAUNCH_ID_KEY = "launch_id"
"""``$SRV`` metadata key holding the launch id."""

SERVER_GRACE = 5.0
"""Seconds an embedded nats-server gets to stop before SIGKILL."""


def check_agents(spec: str) -> None:
    """Import ``--agents module:attr`` as the executor will (the current directory first on the path).

    Raises:
        LauncherError: one line naming the spec and the import error, instead of a child's traceback.
    """
    if not spec:
        return
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does; the console script would not
    try:
        load_agents(spec)
    except Exception as exc:
        raise LauncherError(
            f"--agents {spec}: cannot load the agents: {type(exc).__name__}: {exc} "
            f"(the module is imported from {os.getcwd()} and the Python path)"
        ) from None


class ServiceProcess:
    """One service in its own process (``python -m statek_bus serve <kind>``).

    Args:
        kind: ``submission``, ``executor``, ``state`` or ``provider``.
        nats_url: where it connects.
        args: extra ``serve`` arguments (``--agents module:attr``).
        env: extra environment variables (``STATEK_*`` settings).
        log_path: where its stdout/stderr go (inherited when ``None``).
        probe_creds: credentials the readiness probe connects with (a mesh with auth: the client's).
    """

    def __init__(
        self,
        kind: str,
        nats_url: str,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        probe_creds: str = "",
    ) -> None:
        if kind not in SERVICE_KINDS:
            raise ValueError(f"unknown service {kind!r}; expected one of {', '.join(SERVICE_KINDS)}")
        self.kind = kind
        self.nats_url = nats_url
        self.args = list(args)
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else None
        self.probe_creds = probe_creds
        self.proc: subprocess.Popen[bytes] | None = None
        self._spawned: subprocess.Popen[bytes] | None = None  # kept through stop, for force_kill
        self.launch_id = uuid.uuid4().hex
        """Put in this process's ``$SRV`` metadata: readiness counts only this instance."""

    @property
    def service_name(self) -> str:
        """The ADR-32 name this process registers."""
        return SERVICE_KINDS[self.kind]

    def spawn(self) -> None:
        """Start the process (readiness: :meth:`wait_ready`)."""
        env = {**os.environ, **self.env, "NATS_URL": self.nats_url, LAUNCH_ID_ENV: self.launch_id}
        if self.kind != "provider":  # provider keys live only in the provider (invariant 6)
            for name in secret_env_names(env):
                env.pop(name)
        cmd = [sys.executable, "-m", "statek_bus", "serve", self.kind, *self.args]
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop
        # its own session: a terminal's Ctrl-C reaches only the launcher, which stops it in order
        self.proc = self._spawned = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=die_with_parent,  # only a prctl call, resolved before the fork
        )
        if out:
            out.close()  # the child holds its own descriptor

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until this process's own instance answers ``$SRV.PING`` (by its launch id)."""
        assert self.proc is not None
        settings = Settings.from_env(nats_url=self.nats_url)
        if self.probe_creds:
            settings = settings.replace(creds_file=self.probe_creds)
        nc = await connect(settings, name="statek-up")
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise LauncherError(
                        f"service {self.kind} exited with code {self.proc.returncode}{await self._last_words()}"
                    )
                if any(
                    p.get("name") == self.service_name
                    and (p.get("metadata") or {}).get(LAUNCH_ID_KEY) == self.launch_id
                    for p in await ping(nc, self.service_name, wait=0.2)
                ):
                    return
                if time.monotonic() > deadline:
                    raise LauncherError(f"service {self.kind} did not answer $SRV.PING within {timeout:.0f}s")
                await anyio.sleep(0.05)
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

    async def _last_words(self) -> str:
        if self.log_path is None:
            return ""
        try:
            async with aiofiles.open(self.log_path, encoding="utf-8", errors="replace") as f:
                lines = [ln for ln in (await f.read()).splitlines() if ln.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()} (log: {self.log_path})" if lines else ""

    def force_kill(self) -> None:
        """SIGKILL the process now, even while a :meth:`stop` is waiting for it to exit."""
        if self._spawned is not None and self._spawned.poll() is None:
            self._spawned.kill()

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
        auth: the embedded server authenticates every connection: one nkey user per role of the
            permission matrix (:mod:`statek_bus.ops.credentials`), storage provisioned as the
            administrator, each service with only its own permissions (``STATEK_PROVISION=verify``).
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
        auth: bool = False,
    ) -> None:
        if auth and not embedded:
            raise LauncherError(
                "--auth configures the embedded server: it cannot be combined with --nats-url"
            )
        self.settings = settings
        self.server = NatsServer(data_dir=data_dir, port=port) if embedded else None
        self.auth = auth
        self.identities: Identities | None = None
        self.kinds = list(kinds)
        self.agents = agents
        self.env = env or {}
        self.log_dir = Path(log_dir) if log_dir else None
        self.services: dict[str, ServiceProcess] = {}

    @property
    def nats_url(self) -> str:
        """URL of the mesh's NATS server."""
        return self.server.url if self.server else self.settings.nats_url

    def creds(self, role: str) -> str:
        """The credentials file of ``role`` (``client``, ``admin``, a service) in a mesh with auth, else ``""``."""
        return str(self.identities.seed_file(role)) if self.identities is not None else ""

    async def __aenter__(self) -> Mesh:
        try:
            if self.server:
                if self.auth:
                    self.identities = identities(self.server.data_dir)
                    self.server.config = self.identities.server_config
                await self.server.start()
            admin = self.settings.replace(nats_url=self.nats_url)
            if self.auth:
                admin = admin.replace(creds_file=self.creds(ADMIN), inbox_prefix="_INBOX")
            nc = await connect(admin, name="statek-provision")
            try:
                await provision(nc.jetstream(), admin)
            finally:
                await nc.close()
            for kind in self.kinds:
                args = ["--agents", self.agents] if kind == "executor" and self.agents else []
                log_path = self.log_dir / f"{kind}.log" if self.log_dir else None
                env = dict(self.env)
                if self.auth:
                    env.update(
                        STATEK_CREDS_FILE=self.creds(kind),
                        STATEK_INBOX_PREFIX=role(kind).inbox_prefix,
                        STATEK_PROVISION="verify",
                    )
                self.services[kind] = ServiceProcess(
                    kind, self.nats_url, args=args, env=env, log_path=log_path, probe_creds=self.creds(CLIENT)
                )
                self.services[kind].spawn()
            async with anyio.create_task_group() as tg:
                for p in self.services.values():
                    tg.start_soon(p.wait_ready)
        except BaseException as exc:
            await self.stop()
            if self.server and not isinstance(exc, anyio.get_cancelled_exc_class()):
                self.server.discard_created()  # a failed start leaves the data dir as it found it
            raise _first_error(exc) from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self, grace: float | None = None) -> None:
        """Stop every service (they drain), then the embedded server; shielded from cancellation.

        Args:
            grace: seconds each service gets to drain before SIGKILL (default: the settings'
                ``drain_timeout`` plus 5 s).
        """
        grace = self.settings.drain_timeout + 5.0 if grace is None else grace
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for p in self.services.values():
                    tg.start_soon(p.stop, grace)
            if self.server:
                await self.server.stop(grace=SERVER_GRACE, remove=False)

    def force_kill(self) -> None:
        """SIGKILL every process of the mesh now (a second Ctrl-C)."""
        for p in self.services.values():
            p.force_kill()
        if self.server:
            self.server.force_kill()


def _first_error(exc: BaseException) -> BaseException:
    """The first real error inside an exception group (a task group wraps what its tasks raise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        inner = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (inner or list(exc.exceptions))[0]
    return exc


async def up(
    settings: Settings, *, embedded: bool, data_dir: str, port: int, agents: str | None, auth: bool = False
) -> bool:
    """``statek-bus up``: run the mesh until SIGTERM/SIGINT (``auth``: see :class:`Mesh`).

    Prints ``NATS_URL=...`` once it is ready, and with ``auth`` then ``NATS_CREDS=<the client's
    credentials file>``.

    Returns:
        ``True`` once it served and stopped on a signal; ``False`` when a signal cut its start short.
    """
    if agents:
        check_agents(agents)
    mesh = Mesh(settings, embedded=embedded, data_dir=data_dir, port=port, agents=agents, auth=auth)
    async with StopSignals() as signals, contextlib.AsyncExitStack() as stack:
        signals.on_force(mesh.force_kill)
        with signals.cancelling() as starting:
            await stack.enter_async_context(mesh)
        if starting.cancelled_caught:
            return False
        print(f"NATS_URL={mesh.nats_url}", flush=True)
        if auth:
            print(f"NATS_CREDS={mesh.creds(CLIENT)}", flush=True)
        await signals.wait()
    return True


def _tagged(factory: ServiceFactory, launch_id: str) -> ServiceFactory:
    async def build(ctx: ServiceContext) -> ServiceSpec:
        spec = await factory(ctx)
        spec.metadata = {**spec.metadata, LAUNCH_ID_KEY: launch_id}
        return spec

    return build


ServeEnd = Literal["served", "interrupted", "connection_lost"]
"""How ``statek-bus serve`` ended (the CLI maps it to an exit code)."""


async def serve(kind: str, settings: Settings) -> ServeEnd:
    """``statek-bus serve KIND``: :func:`serve_factory` with the service ``kind``'s factory."""
    factory = load_service_factory(kind)
    launch_id = os.environ.get(LAUNCH_ID_ENV)
    if launch_id:
        factory = _tagged(factory, launch_id)
    return await serve_factory(factory, settings, name=SERVICE_KINDS[kind])


async def serve_factory(factory: ServiceFactory, settings: Settings, *, name: str) -> ServeEnd:
    """One service until SIGTERM/SIGINT, then a graceful stop.

    A signal while it connects (NATS unreachable: it would retry forever) or provisions ends it at
    once; a signal while it serves stops it gracefully, and a second one cuts the drain short. If
    nats-py closes the connection for good (it never reconnects a closed one), the process ends
    with :data:`~statek_bus.mesh.service.EXIT_CONNECTION_LOST` so its supervisor restarts it,
    instead of living on without answering.

    Returns:
        How it ended: ``"served"`` (stopped by a signal after serving), ``"interrupted"`` (a
        signal before it was ready) or ``"connection_lost"``.
    """
    ctx: ServiceContext | None = None
    async with StopSignals() as signals, contextlib.AsyncExitStack() as stack:
        with signals.cancelling() as starting:
            ctx = await stack.enter_async_context(running_service(factory, settings, name=name))
        if starting.cancelled_caught or ctx is None:
            log.info("%s: stopped before it was ready", name)
            return "interrupted"
        closed = ctx.closed
        async with anyio.create_task_group() as tg:

            async def on_lost() -> None:
                await closed.wait()
                tg.cancel_scope.cancel()

            async def on_finished() -> None:
                await ctx.finished.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_lost)
            tg.start_soon(on_finished)
            await signals.wait()
            tg.cancel_scope.cancel()
        if closed.is_set() and not signals.requested.is_set():
            log.error("%s: the NATS connection is closed for good; exiting for a restart", name)
            with contextlib.suppress(Exception):
                await stack.aclose()
            return "connection_lost"
        log.info("%s stopping", name)
        with signals.cancelling(on_signal=2):
            await stack.aclose()
    return "served"
