"""The sandbox worker: a fork server and the per-step processes it forks, where model code runs.

``python -I -m statek_bus.runtime.worker <control fd> <limits JSON>`` is started by
:class:`~statek_bus.runtime.procrunner.ProcessCodeRunner` with an empty environment, an empty
working directory and no inherited descriptor but its control socket. It imports everything model
code may need (the sandbox, the allowed modules' shims), then forks one worker per step on request:
the executor sends one end of a fresh socket pair with the request, the fork server forks, and the
worker locks itself down (:func:`statek_bus.sandbox.isolation.lock_down`, on top of what the fork
server sealed itself with at start, :func:`~statek_bus.sandbox.isolation.seal_server`) *before* it
reads its step. A worker runs exactly one step and exits, so nothing a step does to the interpreter
(``Fraction.register(str)``, a patched shim, a leaked reference) reaches another step or job.
A fork is not an interpreter start, but it is not free either: on the 2-core virtual machine this
was measured on, a trivial step costs the fork server ~2 ms to fork and the worker ~850 page faults
(~6 ms of CPU, mostly the kernel copying pages on first write); ``python -m bench sandbox`` prints
both for the machine it runs on.

Inside a worker, model code sees only data and stubs:

* tools are :class:`ToolStub` objects: calling one sends a :class:`~statek_bus.sandbox.protocol.ToolCall`
  and waits for the reply; the tool runs in the executor;
* values of application classes are stand-ins rebuilt from :class:`~statek_bus.sandbox.protocol.TypeSpec`
  (same ``module:Qualname``, same fields, no application code);
* futures and job handles are ``remote`` stand-ins: reading one sends a
  :class:`~statek_bus.sandbox.protocol.RemoteOp` and the executor resolves it (or the job suspends).
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import gc
import importlib
import os
import select
import signal
import socket
import sys
from typing import Any

import msgspec

from statek_bus.authoring import futures
from statek_bus.authoring.console import error_line, format_value
from statek_bus.authoring.futures import CallSites, Suspend
from statek_bus.authoring.tools import JobContext, describe
from statek_bus.runtime.coderunner import ExecRequest, ExecUnit, SandboxSession, execute
from statek_bus.runtime.workspace import (
    MAX_DEFINITIONS_BYTES,
    MAX_WORKSPACE_BYTES,
    WorkspaceData,
    decode_stored_workspace,
    definitions_too_large,
)
from statek_bus.sandbox import restricted
from statek_bus.sandbox.isolation import (
    Limits,
    Prepared,
    address_space_cap,
    fork_bare,
    lock_down,
    prepare,
    seal_server,
)
from statek_bus.sandbox.protocol import (
    NO_WORKSPACE,
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
    UnitOut,
    encode_control,
    is_null,
    read_frame,
    write_frame,
)
from statek_bus.sandbox.replay import refuse_during_replay
from statek_bus.sandbox.runtime import Clock, Importer
from statek_bus.wire.values import TypeRegistry, from_json, to_json

__all__ = ["ToolStub", "main"]


_ENCODER = msgspec.json.Encoder()
_CTL_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


# ==================================================================================================
# The channel to the executor, stubs and stand-ins
# ==================================================================================================


class _Channel:
    """The worker's end of its socket, and what the step needs to tag its calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.registry = TypeRegistry()
        self.env: _WorkerEnv | None = None
        self.session: SandboxSession | None = None

    def request(self, message: ToolCall | RemoteOp | CtxGet) -> Any:
        write_frame(self.sock, message)
        while isinstance(reply := read_frame(self.sock), NsGet):  # the tool reads the workspace
            write_frame(self.sock, self._lookup(reply.name))
        if not isinstance(reply, CallReply):
            raise RuntimeError("the executor sent an unexpected message")
        for entry in reply.console:
            sys.stdout.write(entry + "\n")
        if reply.exited and self.session is not None:
            self.session._exit(from_json(reply.exit_value, self.registry))
        if reply.suspended:  # a tool read a future that is not ready
            if self.env is not None:
                self.env.suspended = _SUSPENDED
            raise Suspend(_SUSPENDED)
        if reply.error is not None:
            raise _exception(reply.error_type, reply.error)
        return from_json(reply.value, self.registry)

    def _lookup(self, name: str) -> NsValue:
        ns = self.session.ns if self.session is not None else {}
        base = self.session.base_names if self.session is not None else set()
        if not name:
            return NsValue(found=True, value=[n for n in ns if n not in base and not n.startswith("__")])
        if name not in ns or name.startswith("__"):
            return NsValue()
        try:
            return NsValue(found=True, value=self.encode(ns[name], name))
        except Exception:  # not data: it stays in the worker
            return NsValue()

    def site(self) -> str:
        return self.env.sites.prefix if self.env is not None else ""

    def encode(self, value: Any, path: str) -> Any:
        if isinstance(value, ToolStub):
            return {"$t": "obj", "cls": TOOL_REF, "v": {"name": value.name}}
        return to_json(value, self.registry, path)


_SUSPENDED = "suspended"
"""The worker's mark of a suspension (the executor keeps the real future)."""

_CHANNEL: _Channel | None = None


def _channel() -> _Channel:
    if _CHANNEL is None:
        raise RuntimeError("no executor connection")
    return _CHANNEL


def _exception(type_name: str, message: str) -> Exception:
    found = getattr(builtins, type_name, None)
    cls: type[Exception] = (
        found
        if isinstance(found, type) and issubclass(found, Exception)
        else type(type_name or "RuntimeError", (Exception,), {"__module__": "builtins"})
    )
    try:
        return cls(message)
    except Exception:
        return RuntimeError(message)


class _WorkerEnv:
    """The worker's stand-in for the step's wait environment: call sites and the suspension flag."""

    def __init__(self) -> None:
        self.sites = CallSites()
        self.suspended: Any = None
        self.subtask_done: Any = None


class ToolStub:
    """A tool in the worker: calling it asks the executor to run the real tool."""

    __slots__ = ("hidden", "name", "summary", "takes_futures")

    def __init__(self, spec: ToolSpec) -> None:
        self.name = spec.name
        self.hidden = spec.hidden
        self.takes_futures = spec.takes_futures
        self.summary = spec.summary

    def __repr__(self) -> str:
        return f"<tool {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        refuse_during_replay(f"{self.name}()")
        ch = _channel()
        if self.name in ("docstr", "brief") and args:
            target = args[0]
            if isinstance(target, str) and ch.session is not None and target in ch.session.ns:
                target = ch.session.ns[target]
            if not isinstance(target, ToolStub | str):
                # A model object: described here, from its signature, never evaluating annotations.
                method = kwargs.get("method_name", args[1] if len(args) > 1 else None)
                print(describe(target, method, detailed=self.name == "docstr"))
                return None
            args = (target, *args[1:])
        call = ToolCall(
            tool=self.name,
            args=[ch.encode(a, f"args[{i}]") for i, a in enumerate(args)],
            kwargs={k: ch.encode(v, k) for k, v in kwargs.items()},
            site=ch.site(),
        )
        result = ch.request(call)
        if self.name == "init_shared_context" and ch.session is not None:
            ch.session.enable_context()  # later statements of this step read its variables too
        return result


class _Remote:
    """Base of stand-ins whose behaviour stays in the executor (futures, job handles)."""

    _spec: TypeSpec

    def _op(self, op: str, name: str = "", *args: Any) -> Any:
        refuse_during_replay("reading a future" if op == "resolve" else "a job handle")
        ch = _channel()
        value = ch.encode(self, "value")
        message = RemoteOp(
            value=value, op=op, name=name, args=[ch.encode(a, "arg") for a in args], site=ch.site()
        )
        try:
            return ch.request(message)
        except Suspend:
            if ch.env is not None:
                ch.env.suspended = self
            raise Suspend(self) from None

    def __str__(self) -> str:
        return str(self._op("__str__"))

    def __llm_repr__(self) -> str:
        return str(self._op("__llm_repr__"))


class _RemoteFuture(_Remote):
    def __statek_resolve__(self) -> Any:
        return self._op("resolve")

    def __format__(self, spec: str) -> str:
        return str(self._op("__format__", "", spec))

    def __bool__(self) -> bool:
        return bool(self._op("__bool__"))

    def __len__(self) -> int:
        return int(self._op("__len__"))

    def __getitem__(self, key: Any) -> Any:
        return self._op("__getitem__", "", key)

    def __iter__(self) -> Any:
        return iter(self._op("__iter__"))


def _remote_member(kind: str, name: str) -> Any:
    if kind == "property":
        return property(lambda self: self._op("getattr", name))

    def method(self: _Remote, *args: Any) -> Any:
        return self._op("call", name, *args)

    method.__name__ = name
    return method


_STAND_INS: dict[bytes, type] = {}
"""Stand-ins built by the fork server before forking (the futures' classes), by encoded spec."""


def _stand_in(spec: TypeSpec) -> type:
    key = _ENCODER.encode(spec)
    found = _STAND_INS.get(key)
    if found is None:
        found = _STAND_INS[key] = _build_stand_in(spec)
    return found


def _build_stand_in(spec: TypeSpec) -> type:
    module, _, qualname = spec.name.partition(":")
    short = qualname.rsplit(".", 1)[-1]
    cls: Any
    if spec.kind == "enum":
        make_enum: Any = enum.Enum
        cls = make_enum(short, {k: from_json(v) for k, v in spec.members.items()})
    else:
        base: tuple[type, ...] = ()
        ns: dict[str, Any] = {}
        if spec.kind == "remote":
            base = (_RemoteFuture if spec.future else _Remote,)
            ns["_spec"] = spec
            for p in spec.properties:
                ns[p] = _remote_member("property", p)
            for m in spec.methods:
                ns[m] = _remote_member("method", m)
        cls = dataclasses.make_dataclass(
            short,
            [(f, Any, dataclasses.field(default=None)) for f in spec.fields],
            bases=base,
            namespace=ns,
            eq=spec.kind != "remote",
        )
        if spec.future:
            restricted.register_future_type(cls)
    cls.__module__, cls.__qualname__ = module, qualname
    return cls  # type: ignore[no-any-return]


# ==================================================================================================
# One step
# ==================================================================================================


def _run_step(sock: socket.socket, start: StepStart) -> StepDone:
    global _CHANNEL
    ch = _CHANNEL = _Channel(sock)
    ch.registry = TypeRegistry([_stand_in(spec) for spec in start.types])
    policy = restricted.SandboxPolicy(
        allowed_imports=frozenset(start.allowed_imports),
        max_bytes=start.max_bytes,
        max_nodes=start.max_nodes,
        hidden_names=frozenset(start.hidden),
        restricted=start.restricted,
    )
    trusted = restricted.SandboxPolicy(
        allowed_imports=policy.allowed_imports,
        max_bytes=start.max_bytes,
        max_nodes=start.max_nodes,
        restricted=start.restricted,
    )
    env = ch.env = _WorkerEnv()
    job = JobContext(job_id=start.job_id, agent="", params={}, namespace={}, extras={"env": env})
    workspace: WorkspaceData | None = None
    if not is_null(start.workspace):
        workspace = decode_stored_workspace(start.workspace)  # each value restored apart
    session = ch.session = SandboxSession(
        policy=policy,
        trusted_policy=trusted,
        tools={t.name: ToolStub(t) for t in start.tools},
        job=job,
        workspace=workspace,
        shared_vars={k: from_json(v, ch.registry) for k, v in start.shared_vars.items()},
        registry=ch.registry,
        context_lookup=lambda name: ch.request(CtxGet(name=name)),
        context_bound=start.context_bound,
    )
    units = [
        ExecUnit(
            kind=u.kind,
            code=u.code,
            tool=u.tool,
            arguments=dict(from_json(u.arguments, ch.registry) or {}),
            trusted=u.trusted,
            site=u.site,
            start=u.start,
            skip=u.skip,
        )
        for u in start.units
    ]
    result = execute(ExecRequest(session=session, units=units, deadline_seconds=start.deadline_seconds))
    exit_value: Any = None
    if result.exited:
        try:
            exit_value = to_json(result.exit_value, ch.registry, "exit")
        except Exception:
            exit_value = format_value(result.exit_value)
    ws = msgspec.Raw(_ENCODER.encode(result.workspace)) if result.workspace is not None else NO_WORKSPACE
    notes = list(result.notes)
    if (size := len(ws)) > MAX_WORKSPACE_BYTES:
        ws = NO_WORKSPACE  # the job keeps the workspace it had before this step
        notes.append(
            f"Warning: the workspace is {size} bytes; the limit is {MAX_WORKSPACE_BYTES}: "
            "this step's variables were not saved"
        )
    elif result.workspace is not None and (defs := definitions_too_large(result.workspace, size)):
        ws = NO_WORKSPACE
        notes.append(
            f"Warning: the workspace's definitions (def, class, import) are {defs} bytes; the limit is "
            f"{MAX_DEFINITIONS_BYTES}: this step's variables were not saved"
        )
    return StepDone(
        units=[
            UnitOut(
                console=u.console,
                error=u.error,
                sandbox=u.sandbox,
                timeout=u.timeout,
                suspended=u.suspended is not None,
                statement=u.statement,
            )
            for u in result.units
        ],
        exited=result.exited,
        exit_value=exit_value,
        workspace=ws,
        dropped=result.dropped,
        notes=notes,
        suspended_at=result.suspended_at,
        seconds=result.seconds,
    )


def _worker(fd: int, limits: Limits, prepared: Prepared, cap: int, sealed: dict[str, str]) -> None:
    sock = socket.socket(fileno=fd)
    lock_down(limits, prepared, cap, sealed)
    try:
        start = read_frame(sock)
        if not isinstance(start, StepStart):
            return
        write_frame(sock, Ready(pid=os.getpid()))  # the step reached a live worker: it runs here
        try:
            done = _run_step(sock, start)
        except MemoryError:
            done = StepDone(units=[UnitOut(error="MemoryError")])
        except Exception as exc:  # a bug guard: the step still ends with a line, never silence
            done = StepDone(units=[UnitOut(console=[error_line(exc)], error=error_line(exc))])
        write_frame(sock, done)
    except (FrameError, OSError):
        return


# ==================================================================================================
# The fork server
# ==================================================================================================


def _preload(extra: list[str]) -> None:
    """Import and shim every allowed module now, so a locked-down worker needs no file access.

    ``extra``: the allow-list's additions (``STATEK_PYTHON_SANDBOX_ALLOWED_IMPORTS``); one that does
    not import stays absent, and model code importing it gets ``ModuleNotFoundError``.
    """
    importer = Importer(restricted.SandboxPolicy(), Clock(None))
    for name in sorted(restricted.DEFAULT_ALLOWED_IMPORTS):
        importlib.import_module(name)
        importer.shim(name)
    for name in sorted(set(extra) - restricted.DEFAULT_ALLOWED_IMPORTS):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        importer.shim(name)
    restricted.compile_block(
        "x = [i for i in range(3)]\ndef f(a):\n    return a\n", restricted.SandboxPolicy()
    )
    from statek_bus.runtime.procrunner import type_spec

    for cls in futures.REGISTRY.classes():
        _stand_in(type_spec(cls))


def _verified(layers: dict[str, str]) -> dict[str, str]:
    """``layers`` with ``seccomp`` checked by trying what it must refuse (in a locked-down worker)."""
    if layers.get("seccomp") != "on":
        return layers
    for what, attempt in (
        ("fork", os.fork),
        ("a signal to the fork server", lambda: os.kill(os.getppid(), 0)),
    ):
        try:
            if attempt() == 0:
                os._exit(0)  # a child that got through: gone at once
        except PermissionError:
            continue
        except OSError:
            pass
        return {**layers, "seccomp": f"off: {what} was not refused"}
    return layers


def _probe(limits: Limits, prepared: Prepared, sealed: dict[str, str]) -> dict[str, str]:
    """Fork one throw-away worker to see which layers hold here."""
    r, w = os.pipe()
    cap = address_space_cap(limits)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            layers = _verified(lock_down(limits, prepared, cap, sealed))
            os.write(w, _ENCODER.encode(layers))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    try:
        return dict(_CTL_DECODER.decode(data))
    except msgspec.DecodeError:
        return {"probe": "failed"}


def _send(ctl: socket.socket, message: Hello | Spawned | Exited) -> None:
    ctl.send(encode_control(message))


def _reap(ctl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctl, Exited(pid=pid, status=status))


def main(argv: list[str]) -> None:
    """Run the fork server on control socket ``argv[1]`` with the limits JSON ``argv[2]``."""
    ctl = socket.socket(fileno=int(argv[1]))
    limits = msgspec.json.decode(argv[2].encode(), type=Limits)
    _preload([n for n in (argv[3] if len(argv) > 3 else "").split(",") if n])
    prepared = prepare()
    sealed = seal_server(prepared)
    layers = _probe(limits, prepared, sealed)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    gc.freeze()  # forked workers share these pages: a collection must not touch (and copy) them
    _send(ctl, Hello(layers=layers, pid=os.getpid()))
    while True:
        ready, _, _ = select.select([ctl.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(ctl)
        if ctl.fileno() not in ready:
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 64, 1)
        except InterruptedError:
            continue
        except OSError:  # the executor is gone
            return
        if not msg:  # the executor is gone
            return
        if not fds:
            continue
        cap = address_space_cap(limits)
        pid = fork_bare()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (ctl.fileno(), wake_r, wake_w):
                os.close(fd)
            code = 0
            try:
                _worker(fds[0], limits, prepared, cap, sealed)
            except BaseException:
                code = 1
            finally:
                sys.stdout.flush = lambda: None  # type: ignore[method-assign]
                os._exit(code)
        os.close(fds[0])
        _send(ctl, Spawned(pid=pid))


if __name__ == "__main__":
    main(sys.argv)
