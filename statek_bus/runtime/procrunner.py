"""The process code runner: each step's model code runs in a fresh, locked-down worker process.

:class:`ProcessCodeRunner` is the executor's default :class:`~statek_bus.runtime.coderunner.CodeRunner`.
It starts one fork server (:mod:`statek_bus.runtime.worker`) with an empty environment, keeps a
few workers forked ahead, and drives one worker per step from a thread of its own:

1. send the step (:class:`~statek_bus.sandbox.protocol.StepStart`: policy, units, stored workspace,
   tool names, value classes: data only, read from the session's :class:`SessionInputs`);
2. answer the worker's calls while it runs: a :class:`~statek_bus.sandbox.protocol.ToolCall` runs the
   real tool here (bound to the job, its ``print`` captured for the worker's console); a
   :class:`~statek_bus.sandbox.protocol.RemoteOp` resolves a future or reads a job handle here;
3. take its :class:`~statek_bus.sandbox.protocol.StepDone` (console, errors, exit value, new
   workspace) as the step's :class:`~statek_bus.runtime.coderunner.ExecResult`.

A worker that passes the step's deadline (plus a grace second) is killed; one that dies (a
segfault, the CPU limit, the memory limit) is reported to the job as an error line naming the
cause, like an exception: the step commits, the job's workspace stays as it was before the step,
and no other step notices (each has its own process; the executor only waits on a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from statek_bus.authoring import futures
from statek_bus.authoring.console import format_value
from statek_bus.authoring.tools import Tool, bind_job
from statek_bus.runtime.coderunner import (
    Console,
    ExecRequest,
    ExecResult,
    ExitSignal,
    ThreadCodeRunner,
    UnitResult,
    _current_console,
    _settle,
    check_exit_size,
    install_stdout_capture,
)
from statek_bus.runtime.tierrunner import DataTier
from statek_bus.runtime.workspace import decode_reported_workspace
from statek_bus.sandbox.isolation import LAYERS, Limits, protect_executor
from statek_bus.sandbox.protocol import (
    TOOL_REF,
    CallReply,
    CtxGet,
    Exited,
    FrameError,
    Hello,
    NsGet,
    NsValue,
    Ready,
    RemoteOp,
    Spawned,
    StepDone,
    StepStart,
    ToolCall,
    ToolSpec,
    TypeSpec,
    UnitSpec,
    decode_control,
    read_frame,
    write_frame,
)
from statek_bus.wire.values import TypeRegistry, from_json, to_json

__all__ = [
    "AppCodeRouter",
    "ProcessCodeRunner",
    "ToolRef",
    "describe_layers",
    "make_code_runner",
    "runner_layers",
    "type_spec",
]

log = logging.getLogger(__name__)

_GRACE = 1.0
"""Seconds past the step deadline before a worker is killed (the in-worker clock stops loops first)."""
_READY_ATTEMPTS = 3
"""Workers tried for one step when the first ones die before they are ready."""
_READY_TIMEOUT = 30.0
"""Seconds a fresh worker has to lock itself down and say so (a fork on a loaded machine)."""


@dataclasses.dataclass
class ToolRef:
    """A tool passed as an argument from the worker (``docstr(add)``); swapped for the tool here."""

    name: str
    """The tool's name."""


ToolRef.__module__, ToolRef.__qualname__ = TOOL_REF.split(":")

_BOOT = (
    "import importlib.util, sys, types\n"
    "spec = importlib.util.find_spec('statek_bus')\n"
    "pkg = types.ModuleType('statek_bus')\n"
    "pkg.__path__ = list(spec.submodule_search_locations)\n"
    "sys.modules['statek_bus'] = pkg\n"
    "from statek_bus.runtime.worker import main\n"
    "main(sys.argv)\n"
)
"""The fork server's start: skip the package front door, which imports the client and NATS. A
smaller fork server forks faster (26 MB instead of 40 MB: ~2.7 ms instead of ~4 ms a fork here)."""

_REMOTE_DUNDERS = frozenset({"__str__", "__format__", "__bool__", "__len__", "__getitem__"})


# ==================================================================================================
# The fork server
# ==================================================================================================


class _ForkServer:
    """The worker fork server process and its control socket."""

    def __init__(self, limits: Limits, preload: tuple[str, ...] = ()) -> None:
        self.limits = limits
        self.preload = preload
        """Modules imported before any fork beyond the default allow-list (a locked-down worker opens no files)."""
        self.layers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._spawned: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._exits: dict[int, int] = {}
        self._exit_cond = threading.Condition()
        self._ready = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._dir = tempfile.mkdtemp(prefix="statek-sandbox-")  # the workers' empty, read-only cwd
        os.chmod(self._dir, 0o555)
        self.generation = 0
        self._closed = False

    def _popen(self, theirs: socket.socket, limits: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, str(theirs.fileno()), limits, ",".join(self.preload)],
            env={"LANG": "C.UTF-8", "PYTHONHASHSEED": "random"},
            cwd=self._dir,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("STATEK_SANDBOX_DEBUG") else subprocess.DEVNULL,
            close_fds=True,
        )

    def start(self) -> None:
        if self._ctl is not None:  # a previous server's socket: never left for the collector
            with contextlib.suppress(OSError):
                self._ctl.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        limits = msgspec.json.encode(self.limits).decode()
        try:
            self._proc = self._popen(theirs, limits)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._ctl = ours
        self._ready.clear()
        while not self._spawned.empty():  # a dead server's wake-up
            self._spawned.get_nowait()
        self.generation += 1
        threading.Thread(target=self._read, args=(ours,), name="statek-forkserver", daemon=True).start()
        if not self._ready.wait(60):
            raise RuntimeError("the sandbox fork server did not start")

    def _read(self, ctl: socket.socket) -> None:
        while True:
            try:
                data = ctl.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._ready.clear()
                self._spawned.put(-1)  # wakes a spawn waiting on a dead server
                return
            try:
                msg = decode_control(data)
            except FrameError:
                continue
            if isinstance(msg, Hello):
                self.layers = dict(msg.layers)
                self._ready.set()
            elif isinstance(msg, Spawned):
                self._spawned.put(msg.pid)
            elif isinstance(msg, Exited):
                with self._exit_cond:
                    self._exits[msg.pid] = msg.status
                    self._exit_cond.notify_all()

    def spawn(self) -> tuple[socket.socket, int, int]:
        """A fresh worker: (socket, pid, fork-server generation); a dead fork server is restarted."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the sandbox fork server is closed")
            for _ in range(2):
                if not self._ready.is_set():
                    self.close()
                    self.start()
                found = self._fork()
                if found is not None:
                    return found
                self._ready.clear()
            raise RuntimeError("the sandbox fork server keeps dying")

    def _fork(self) -> tuple[socket.socket, int, int] | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert self._ctl is not None
            socket.send_fds(self._ctl, [b"f"], [theirs.fileno()])
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
        pid = self._spawned.get(timeout=30)
        if pid < 0:
            ours.close()
            return None
        return ours, pid, self.generation

    def exit_status(self, pid: int, timeout: float) -> int | None:
        """The worker's wait status, once the fork server reaped it."""
        with self._exit_cond:
            self._exit_cond.wait_for(lambda: pid in self._exits, timeout)
            return self._exits.pop(pid, None)

    def forget(self, pid: int) -> None:
        """Drop a recorded exit status nobody will ask for."""
        with self._exit_cond:
            self._exits.pop(pid, None)

    def close(self, *, final: bool = False) -> None:
        """Stop the fork server (its workers die with it); ``final``: for good (no restart), and the
        work directory is removed."""
        if final:
            with self._lock:  # never while a spawn restarts the server
                self._closed = True
                self._shutdown()
                with contextlib.suppress(OSError):
                    os.rmdir(self._dir)
            return
        self._shutdown()

    def _shutdown(self) -> None:
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                self._ctl.close()
            self._ctl = None
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(Exception):
                self._proc.wait(5)
            self._proc = None


# ==================================================================================================
# The runner
# ==================================================================================================


class ProcessCodeRunner:
    """Runs each step's code in a fresh worker process (see the module docstring).

    Args:
        workers: steps whose code runs at once (one driving thread and one process each).
        limits: per-step resource limits of a worker.
        spare: workers kept forked ahead of demand.
        preload: modules model code may import beyond the default list, imported by the fork server.
    """

    def __init__(
        self, workers: int = 8, limits: Limits | None = None, spare: int = 8, preload: tuple[str, ...] = ()
    ) -> None:
        self.limits = limits or Limits()
        self.protected = protect_executor()
        self._server = _ForkServer(self.limits, preload)
        self._spare: queue.SimpleQueue[tuple[socket.socket, int, int]] = queue.SimpleQueue()
        self._spare_target = max(0, spare)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._types: dict[int, tuple[TypeRegistry, TypeRegistry, list[TypeSpec], dict[type, TypeSpec]]] = {}
        self._threads = [
            threading.Thread(target=self._work, name=f"statek-sandbox_{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        self._want = threading.Semaphore(0)
        threading.Thread(target=self._boot, name="statek-sandbox-boot", daemon=True).start()
        threading.Thread(target=self._refill, name="statek-sandbox-refill", daemon=True).start()
        for t in self._threads:
            t.start()

    @property
    def layers(self) -> dict[str, str]:
        """Isolation layer → ``on`` or why it is off (empty until the fork server has started)."""
        if not self._server.layers:
            return {}
        return {"process": "on", **{k: self._server.layers.get(k, "off") for k in LAYERS},
                "executor_not_dumpable": self.protected}  # fmt: skip

    def wait_started(self, timeout: float = 60.0) -> dict[str, str]:
        """Block until the fork server is up; its layers."""
        self._started.wait(timeout)
        if self._start_error is not None:
            raise RuntimeError(f"the sandbox could not start: {self._start_error}")
        return self.layers

    def _boot(self) -> None:
        try:
            self._server.start()
            for _ in range(self._spare_target):
                self._want.release()
            log.info(
                "sandbox: process runner, %d workers; %s", len(self._threads), describe_layers(self.layers)
            )
        except BaseException as exc:
            self._start_error = exc
            log.error("sandbox: the worker fork server failed to start: %s", exc)
        finally:
            self._started.set()

    async def run(self, request: ExecRequest) -> ExecResult:
        """Execute ``request`` in a worker process, driven from one of this runner's threads."""
        if not self._threads:
            raise RuntimeError("the code runner is closed")
        import contextvars

        fut: asyncio.Future[ExecResult] = asyncio.get_running_loop().create_future()
        self._queue.put((fut.get_loop(), fut, contextvars.copy_context(), request))
        return await fut

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            loop, fut, ctx, request = job
            if fut.cancelled():
                continue
            try:
                result, exc = ctx.run(self.drive, request), None
            except BaseException as error:
                result, exc = None, error
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, fut, result, exc)

    async def aclose(self) -> None:
        """Stop the threads and the fork server (running workers die with it)."""
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []
        self._want.release()
        # a fork server still booting would open its control socket after the close: wait for it
        await asyncio.to_thread(self._started.wait, 70)
        await asyncio.to_thread(functools.partial(self._server.close, final=True))
        while True:
            try:
                sock, _, _ = self._spare.get_nowait()
            except queue.Empty:
                break
            sock.close()

    # --- one step ----------------------------------------------------------------------------------
    def _take(self) -> tuple[socket.socket, int]:
        self._started.wait(60)
        if self._start_error is not None:
            raise RuntimeError(f"the sandbox could not start: {self._start_error}")
        while True:
            try:
                sock, pid, gen = self._spare.get_nowait()
            except queue.Empty:
                sock, pid, gen = self._server.spawn()
                break
            self._want.release()
            if gen == self._server.generation:
                break
            sock.close()  # forked by a fork server that has since died: its worker died with it
        return sock, pid

    def _refill(self) -> None:
        """Keep ``spare`` workers forked ahead (a fork costs the fork server a few milliseconds)."""
        self._started.wait(60)
        while self._threads:
            self._want.acquire()
            if not self._threads:
                return
            try:
                spare = self._server.spawn()
                if not self._threads:  # closed meanwhile
                    spare[0].close()
                    return
                self._spare.put(spare)
            except (RuntimeError, queue.Empty):
                time.sleep(0.5)  # the fork server is restarting: the next spawn starts it again
                self._want.release()

    def drive(self, request: ExecRequest) -> ExecResult:
        """Run ``request`` in a worker from the calling thread (blocking); the runner's threads call it."""
        started = time.monotonic()
        session = request.session
        job = session.job
        env = job.extras.get("env")
        install_stdout_capture()  # a tool's print goes to the step's console
        bind_job(job)
        if env is not None:
            env.suspended = None
        step = _Step(self, request, self._registries(session.registry))
        job.extras["exit"] = step.exit_hook
        sock, pid = self._started_worker(step)
        job.namespace = _RemoteNamespace(sock, step)
        deadline = started + request.deadline_seconds + _GRACE
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                msg = read_frame(sock)
                if isinstance(msg, StepDone):
                    result = step.result(msg, time.monotonic() - started)
                    self._server.forget(pid)
                    return result
                called = time.monotonic()
                if isinstance(msg, ToolCall):
                    reply = step.call(msg)
                elif isinstance(msg, RemoteOp):
                    reply = step.remote(msg)
                elif isinstance(msg, CtxGet):
                    reply = step.shared(msg)
                else:
                    raise FrameError(f"unexpected {type(msg).__name__} from a worker")
                deadline += time.monotonic() - called  # time in a tool is not the model code's
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                write_frame(sock, reply)
        except TimeoutError:
            _kill(pid)
            self._server.exit_status(pid, 2.0)
            return step.failed(
                f"StepTimeout: your code ran longer than {request.deadline_seconds:g} s (its worker "
                "process was stopped); the workspace is as it was before this step",
                time.monotonic() - started,
                timeout=True,
            )
        except (FrameError, OSError) as exc:
            _kill(pid)
            status = self._server.exit_status(pid, 2.0)
            return step.failed(self._death(status, exc), time.monotonic() - started)
        finally:
            sock.close()

    def _started_worker(self, step: _Step) -> tuple[socket.socket, int]:
        """A worker that took the step (it answers :class:`~statek_bus.sandbox.protocol.Ready` before
        running any of it). One that died first (a spare that died while it waited) never ran the
        step: it is dropped and the step sent to another, so its death is nobody's step error. On the
        last try the worker is returned as it is, and what happens to it is the step's."""
        start = step.start()
        for attempt in range(_READY_ATTEMPTS):
            sock, pid = self._take()
            try:
                write_frame(sock, start)
                sock.settimeout(_READY_TIMEOUT)
                if isinstance(read_frame(sock), Ready):
                    return sock, pid
            except (FrameError, OSError):
                pass
            if attempt == _READY_ATTEMPTS - 1:
                return sock, pid  # the drive loop's read fails too and reports it as the step's
            _kill(pid)
            self._server.forget(pid)
            sock.close()
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns

    def _death(self, status: int | None, exc: BaseException) -> str:
        tail = "; the workspace is as it was before this step"
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return f"ResourceError: your code used more than {self.limits.cpu_seconds} CPU seconds{tail}"
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return f"WorkerCrash: your code crashed the interpreter ({name}){tail}"
        if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            return f"WorkerCrash: the worker process exited with status {os.WEXITSTATUS(status)}{tail}"
        return f"WorkerCrash: the worker process stopped answering ({exc}){tail}"

    def _registries(
        self, registry: Any
    ) -> tuple[TypeRegistry, TypeRegistry, list[TypeSpec], dict[type, TypeSpec]]:
        key = id(registry)
        found = self._types.get(key)
        if found is not None and found[0] is registry:
            return found
        classes = [*(registry.classes() if registry is not None else []), *futures.REGISTRY.classes()]
        combined = TypeRegistry([*classes, ToolRef])
        specs = [type_spec(c) for c in classes]
        remote = {c: s for c, s in zip(classes, specs, strict=True) if s.kind == "remote"}
        entry = (registry, combined, specs, remote)
        self._types[key] = entry
        return entry


class _RemoteNamespace(Mapping[str, Any]):
    """The job's workspace as tools see it (``current_job().namespace``): read from the worker.

    Tools run while the worker waits for their reply, so a read is one more request on the same
    socket (:class:`~statek_bus.sandbox.protocol.NsGet`); only values with a tagged encoding cross.
    """

    def __init__(self, sock: socket.socket, step: _Step) -> None:
        self._sock = sock
        self._step = step

    def _ask(self, name: str) -> NsValue:
        write_frame(self._sock, NsGet(name=name))
        reply = read_frame(self._sock)
        if not isinstance(reply, NsValue):
            raise FrameError("the worker answered a namespace read with something else")
        return reply

    def __getitem__(self, name: str) -> Any:
        reply = self._ask(str(name)) if name else NsValue()
        if not reply.found:
            raise KeyError(name)
        return from_json(reply.value, self._step.registry)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(name) and self._ask(name).found

    def __iter__(self) -> Iterator[str]:
        return iter([str(n) for n in self._ask("").value or []])

    def __len__(self) -> int:
        return len(list(iter(self)))


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def type_spec(cls: type) -> TypeSpec:
    """How a value class crosses into a worker (the worker builds a stand-in from it)."""
    import enum

    name = f"{cls.__module__}:{cls.__qualname__}"
    if issubclass(cls, enum.Enum):
        return TypeSpec(name=name, kind="enum", members={m.name: to_json(m.value) for m in cls})
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls)]
    else:
        fields = list(getattr(cls, "__struct_fields__", ()))
    members = {n: v for c in reversed(cls.__mro__) for n, v in vars(c).items() if not n.startswith("_")}
    behaviour = any(callable(v) or isinstance(v, property) for v in members.values())
    ours = cls.__module__.startswith("statek_bus.")  # our handles; application classes are data
    if cls in futures.FUTURE_TYPES or (ours and behaviour):
        return TypeSpec(
            name=name,
            kind="remote",
            fields=fields,
            properties=sorted(n for n, v in members.items() if isinstance(v, property)),
            methods=sorted(n for n, v in members.items() if callable(v) and not isinstance(v, type)),
            future=cls in futures.FUTURE_TYPES,
        )
    return TypeSpec(name=name, kind="data", fields=fields)


class _Step:
    """The executor's side of one worker conversation."""

    def __init__(
        self,
        runner: ProcessCodeRunner,
        request: ExecRequest,
        registries: tuple[TypeRegistry, TypeRegistry, list[TypeSpec], dict[type, TypeSpec]],
    ) -> None:
        self.runner = runner
        self.request = request
        self.session = request.session
        _, self.registry, self.specs, self.remote_specs = registries
        self.trusted = any(u.trusted for u in request.units)
        self.env = self.session.job.extras.get("env")
        self.exited = False
        self.exit_value: Any = None
        self.site = ""

    def exit_hook(self, value: Any = None) -> None:
        """``exit_job(value)`` from a tool: recorded here, then the worker stops the block."""
        if value is None:
            return
        self.exited, self.exit_value = True, value
        raise ExitSignal(value)

    def start(self) -> StepStart:
        s = self.session
        policy = s.policy
        ws = s.workspace_data  # encoded as it is: stored bytes stay bytes
        shared = {k: to_json(v, self.registry, k) for k, v in s.shared_vars.items()}
        tools = [
            ToolSpec(
                name=n,
                hidden=bool(getattr(t, "hidden", False)),
                takes_futures=bool(getattr(t, "takes_futures", False)),
                summary=str(getattr(t, "summary", "")),
            )
            for n, t in s.tools.items()
        ]
        units = [
            UnitSpec(
                kind=u.kind,
                code=u.code,
                tool=u.tool,
                arguments=to_json(u.arguments, self.registry, "arguments") if u.arguments else None,
                trusted=u.trusted,
                site=u.site,
                start=u.start,
                skip=u.skip,
            )
            for u in self.request.units
        ]
        return StepStart(
            units=units,
            deadline_seconds=self.request.deadline_seconds,
            restricted=policy.restricted,
            allowed_imports=sorted(policy.allowed_imports),
            hidden=sorted(policy.hidden_names),
            max_bytes=policy.max_bytes,
            max_nodes=policy.max_nodes,
            tools=tools,
            types=self.specs,
            workspace=ws,
            shared_vars=shared,
            job_id=s.job.job_id,
            context_bound=bool(getattr(s, "context_bound", False)),
        )

    def _enter(self, site: str) -> None:
        if self.env is not None and site != self.site:
            self.site = site
            self.env.sites.enter(site)

    def _decode(self, data: Any) -> Any:
        value = from_json(data, self.registry)
        if isinstance(value, ToolRef):
            return self.session.tools.get(value.name, value.name)
        return value

    def _outcome(self, fn: Any, console: Console) -> CallReply:
        token = _current_console.set(console)
        try:
            value = fn()
        except futures.Suspend:
            return CallReply(console=_entries(console), suspended=True)
        except ExitSignal:
            exit_value = self._encode(self.exit_value, "exit")
            return CallReply(console=_entries(console), exited=True, exit_value=exit_value)
        except Exception as exc:
            return CallReply(console=_entries(console), error=str(exc), error_type=type(exc).__name__)
        finally:
            _current_console.reset(token)
        try:
            encoded = to_json(value, self.registry, "result")
        except Exception as exc:
            return CallReply(console=_entries(console), error=str(exc), error_type="TypeError")
        return CallReply(console=_entries(console), value=encoded)

    def _encode(self, value: Any, path: str) -> Any:
        try:
            return to_json(value, self.registry, path)
        except Exception:
            return format_value(value)

    def call(self, msg: ToolCall) -> CallReply:
        """Run the tool a worker asked for, as the job (hidden tools only for a trusted step)."""
        t = self.session.tools.get(msg.tool)
        console = Console()
        if not isinstance(t, Tool) and not callable(t):
            return CallReply(error=f"tool '{msg.tool}' not found", error_type="NameError")
        if getattr(t, "hidden", False) and not self.trusted:
            return CallReply(error=f"tool '{msg.tool}' is not exposed to this job", error_type="NameError")
        try:
            args = [self._decode(a) for a in msg.args]
            kwargs = {k: self._decode(v) for k, v in msg.kwargs.items()}
        except (ValueError, TypeError, KeyError) as exc:
            return CallReply(error=f"arguments of '{msg.tool}' cannot cross: {exc}", error_type="TypeError")
        self._enter(msg.site)
        return self._outcome(lambda: t(*args, **kwargs), console)

    def shared(self, msg: CtxGet) -> CallReply:
        """The shared-context value model code read (``KeyError``: there is none, a ``NameError``)."""
        lookup = getattr(self.session, "context_lookup", None)
        if lookup is None:
            return CallReply(error=msg.name, error_type="KeyError")
        return self._outcome(lambda: _shared_value(lookup, msg.name), Console())

    def remote(self, msg: RemoteOp) -> CallReply:
        """Resolve a future or read a job handle for the worker."""
        try:
            real = from_json(msg.value, self.registry)
            args = [self._decode(a) for a in msg.args]
        except (ValueError, TypeError, KeyError) as exc:
            return CallReply(error=str(exc), error_type="TypeError")
        spec = self.remote_specs.get(type(real))
        if spec is None:
            return CallReply(error="not a remote value", error_type="TypeError")
        self._enter(msg.site)
        op, name = msg.op, msg.name
        fn: Any
        if op == "resolve" and spec.future:
            fn = lambda: futures.resolve(real)  # noqa: E731
        elif op == "__iter__":
            fn = lambda: list(iter(real))  # noqa: E731
        elif op == "__llm_repr__":
            fn = lambda: format_value(real)  # noqa: E731
        elif op in _REMOTE_DUNDERS and (spec.future or op == "__str__"):
            fn = lambda: getattr(real, op)(*args)  # noqa: E731
        elif op == "getattr" and name in spec.properties:
            fn = lambda: getattr(real, name)  # noqa: E731
        elif op == "call" and name in spec.methods:
            fn = lambda: getattr(real, name)(*args)  # noqa: E731
        else:
            return CallReply(error=f"operation {op} {name} is not allowed", error_type="TypeError")
        return self._outcome(fn, Console())

    def result(self, done: StepDone, seconds: float) -> ExecResult:
        """The worker's report as the engine's result (the suspension is the future seen here)."""
        suspended = self.env.suspended if self.env is not None else None
        units = [
            UnitResult(
                console=list(u.console),
                error=self._memory(u.error),
                sandbox=u.sandbox,
                timeout=u.timeout,
                suspended=(suspended if suspended is not None else "suspended") if u.suspended else None,
                statement=u.statement,
            )
            for u in done.units
        ]
        for u in units:
            u.console = [self._memory(line) or line for line in u.console]
        exited = done.exited or self.exited
        try:  # a worker's report is what it says: one that decodes to nothing is its fault
            exit_value = (
                self.exit_value
                if self.exited and not done.exited
                else from_json(done.exit_value, self.registry)
            )
            workspace = decode_reported_workspace(done.workspace)
        except ValueError as exc:
            raise FrameError(f"malformed step report: {exc}") from None
        last = units[-1] if units else None
        result = ExecResult(
            units=units,
            exit_value=exit_value,
            exited=exited,
            workspace=workspace,
            dropped=list(done.dropped),
            notes=list(done.notes),
            seconds=seconds,
            suspended=last.suspended if last is not None else None,
            suspended_at=tuple(done.suspended_at)
            if last is not None and last.suspended is not None
            else (0, 0),  # type: ignore[arg-type]
        )
        if result.exited and self.exited:  # a tool's exit_job: the worker did not see its value
            check_exit_size(result)
        return result

    def _memory(self, line: str | None) -> str | None:
        if line is None or not line.startswith("MemoryError"):
            return line
        mib = self.runner.limits.memory_bytes // (1024 * 1024)
        return f"MemoryError: your code used more than {mib} MiB"

    def failed(self, line: str, seconds: float, *, timeout: bool = False) -> ExecResult:
        """A worker that died or was killed: the first unit still to run carries the error."""
        units: list[UnitResult] = []
        for u in self.request.units:
            if u.skip:
                units.append(UnitResult(console=[]))
                continue
            units.append(UnitResult(console=[line], error=line, timeout=timeout))
            break
        return ExecResult(units=units, seconds=seconds, exited=self.exited, exit_value=self.exit_value)


def _shared_value(lookup: Any, name: str) -> Any:
    try:
        return lookup(name)
    except KeyError:
        raise KeyError(name) from None  # the worker raises it again: a NameError in model code


def _entries(console: Console) -> list[str]:
    console.flush()
    return list(console.entries)


def describe_layers(layers: dict[str, str]) -> str:
    """One line for logs: the layers that are on, then the ones that are off and why."""
    on = [k for k, v in layers.items() if v == "on"]
    off = [f"{k} ({v})" for k, v in layers.items() if v != "on"]
    return f"on: {', '.join(on) or 'none'}; off: {', '.join(off) or 'none'}"


class AppCodeRouter:
    """A process runner that runs application code, and model code the data tier can prove is data
    only, in threads of the executor instead.

    A request marked :attr:`~statek_bus.runtime.coderunner.ExecRequest.app_code` holds only code
    the application wrote (an agent's warmup) running against values that are data (the job's
    parameters, what earlier warmup blocks made): nothing model-written is in its namespace, so a
    worker process would protect nothing and cost a fork. Model code goes to ``tier``
    (:class:`~statek_bus.runtime.tierrunner.DataTier`) when there is one, which sends what it cannot
    prove to the process runner; everything else goes to the process runner.
    """

    def __init__(
        self,
        process: ProcessCodeRunner,
        threads: ThreadCodeRunner,
        *,
        tier: DataTier | None = None,
        app_code: bool = True,
    ) -> None:
        self.process = process
        self.threads = threads
        self.tier = tier
        self.app_code = app_code

    @property
    def layers(self) -> dict[str, str]:
        """The process runner's layers (model code's) and, once they are known, the data tier's state."""
        layers = self.process.layers
        if not layers:
            return {}
        return {**layers, "data_tier": self.tier.describe() if self.tier is not None else "off"}

    async def run(self, request: ExecRequest) -> ExecResult:
        """Run ``request`` in a thread when it is application code, in the data tier when it can, else in
        a worker process."""
        if request.app_code and self.app_code:
            return await self.threads.run(request)
        return await (self.tier or self.process).run(request)

    async def aclose(self) -> None:
        """Close both runners."""
        await self.threads.aclose()
        await self.process.aclose()


def make_code_runner(settings: Any) -> ProcessCodeRunner | ThreadCodeRunner | AppCodeRouter:
    """The code runner ``settings.code_runner`` names (``process`` unless told otherwise), with
    application code routed to threads unless ``settings.app_code_in_process`` is off, and model code
    to the data tier unless ``settings.data_tier`` is off."""
    if settings.code_runner == "in-process":
        log.warning(
            "sandbox: code_runner=in-process: MODEL CODE RUNS INSIDE THE EXECUTOR with no memory, CPU "
            "or process isolation; for trusted development only, never with untrusted input"
        )
        return ThreadCodeRunner(threads=max(4, min(32, settings.max_concurrency // 4)))
    if settings.code_runner != "process":
        raise ValueError(f"code_runner must be 'process' or 'in-process', not {settings.code_runner!r}")
    cpu = settings.sandbox_cpu_seconds or int(settings.step_timeout + 0.999) + 1
    limits = Limits(memory_bytes=settings.sandbox_memory_mb * 1024 * 1024, cpu_seconds=cpu)
    preload = tuple(n.strip() for n in settings.python_sandbox_allowed_imports.split(",") if n.strip())
    process = ProcessCodeRunner(workers=settings.sandbox_workers, limits=limits, preload=preload)
    if not settings.app_code_in_process and not settings.data_tier:
        return process
    threads = ThreadCodeRunner(threads=max(2, min(8, settings.max_concurrency // 8)))
    tier = DataTier(process, threads) if settings.data_tier else None
    return AppCodeRouter(process, threads, tier=tier, app_code=settings.app_code_in_process)


def runner_layers(runner: Any) -> dict[str, str]:
    """What isolates model code under ``runner`` (for ``statek.executor.status``)."""
    layers = getattr(runner, "layers", None)
    if isinstance(layers, dict):
        return dict(layers)
    return {"process": "off: in-process runner (trusted development only)"}
