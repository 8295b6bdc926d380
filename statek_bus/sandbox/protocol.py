"""The wire protocol between the executor and a sandbox worker process: msgspec JSON over a socket.

Every frame is a 4-byte big-endian length and one JSON message (a tagged union on ``k``); nothing
is pickled, so a compromised worker can send the executor only data, and data it sends is decoded
with typed decoders (a malformed frame is an error, never an object the executor runs). Values
inside messages (tool arguments and results, the workspace, exit values) are the tagged JSON of
:mod:`statek_bus.wire.values`.

One step, seen from the executor::

    executor                                  worker (a fresh process per step)
      StepStart  ───────────────────────────▶  restore workspace, run units
                 ◀───────────────────────────  ToolCall / RemoteOp   (model code called a tool,
      CallReply  ───────────────────────────▶        / CtxGet          read a future or a shared variable)
                 ◀───────────────────────────  StepDone              (results, new workspace)

The control channel to the fork server (:mod:`statek_bus.runtime.worker`) carries :class:`Spawned`
and :class:`Exited` notes the other way.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgspec

__all__ = [
    "MAX_FRAME",
    "NO_WORKSPACE",
    "TOOL_REF",
    "CallReply",
    "CtxGet",
    "Exited",
    "FrameError",
    "Hello",
    "NsGet",
    "NsValue",
    "Ready",
    "RemoteOp",
    "Spawned",
    "StepDone",
    "StepStart",
    "ToolCall",
    "ToolSpec",
    "TypeSpec",
    "UnitOut",
    "UnitSpec",
    "WorkerMessage",
    "decode_control",
    "encode_control",
    "is_null",
    "read_frame",
    "write_frame",
]

MAX_FRAME = 64 * 1024 * 1024
"""Largest frame either side accepts (a bigger length prefix is a protocol error)."""


TOOL_REF = "statek_bus.runtime.procrunner:ToolRef"
"""Tagged-JSON class name of a tool passed as an argument (``docstr(add)``)."""


NO_WORKSPACE = msgspec.Raw(b"null")
"""A frame's workspace when there is none."""


def is_null(raw: msgspec.Raw) -> bool:
    """Whether ``raw`` is JSON's ``null`` (msgspec keeps no whitespace around a raw value)."""
    return len(raw) == 4 and bytes(raw) == b"null"


class FrameError(Exception):
    """The peer closed the socket, or sent a frame that is too large or malformed."""


class ToolSpec(msgspec.Struct, kw_only=True, frozen=True):
    """A tool as the worker knows it: a name to call back, nothing of the host object."""

    name: str
    """The tool's name."""
    hidden: bool = False
    """Callable from trusted (hidden warmup) code only."""
    takes_futures: bool = False
    """Receives futures unresolved (``get_all``)."""
    summary: str = ""
    """One-line description (``repr`` of the stub)."""


class TypeSpec(msgspec.Struct, kw_only=True, frozen=True):
    """A class whose values may cross: the worker builds a stand-in with the same name."""

    name: str
    """``module:Qualname``, the class's name in the tagged encoding."""
    kind: str
    """``data`` (dataclass or Struct), ``enum``, or ``remote`` (a future or job handle: behaviour
    stays in the executor and is reached by :class:`RemoteOp`)."""
    fields: list[str] = []
    """Field names (``data`` and ``remote``)."""
    members: dict[str, Any] = {}
    """Enum member name → tagged value (``enum``)."""
    properties: list[str] = []
    """Read-only attributes computed by the executor (``remote``)."""
    methods: list[str] = []
    """Public methods run by the executor (``remote``)."""
    future: bool = False
    """Reading an instance resolves it (or suspends the job)."""


class UnitSpec(msgspec.Struct, kw_only=True, frozen=True):
    """One unit of the step (see :class:`statek_bus.runtime.coderunner.ExecUnit`)."""

    kind: str
    """``code``, ``cli``, ``cli-extra`` or ``tool``."""
    code: str = ""
    """Source of code units."""
    tool: str = ""
    """Tool name of a ``tool`` unit."""
    arguments: Any = None
    """Tagged-JSON arguments of a ``tool`` unit."""
    trusted: bool = False
    """A hidden warmup block."""
    site: str = ""
    """Call-site prefix of the unit."""
    start: int = 0
    """First statement to run."""
    skip: bool = False
    """Already ran before the job suspended."""


class StepStart(msgspec.Struct, kw_only=True, frozen=True, tag="start", tag_field="k"):
    """Executor → worker: everything one step's code needs, as data."""

    units: list[UnitSpec]
    """What to run, in order."""
    deadline_seconds: float
    """Wall-clock budget of all units."""
    restricted: bool = True
    """Restricted mode (False: STATEK's ``off`` mode)."""
    allowed_imports: list[str] = []
    """Importable modules."""
    hidden: list[str] = []
    """Hidden tool names (refused to untrusted code)."""
    max_bytes: int = 200_000
    """Largest source accepted."""
    max_nodes: int = 20_000
    """Largest source accepted, in AST nodes."""
    tools: list[ToolSpec] = []
    """Tools in scope (stubs in the worker)."""
    types: list[TypeSpec] = []
    """Classes values may hold."""
    workspace: msgspec.Raw = NO_WORKSPACE
    """The stored workspace (:class:`~statek_bus.runtime.workspace.WorkspaceData` as JSON, or
    ``null``: none), each value restored apart (one that does not decode is that value's warning,
    not the frame's end)."""
    shared_vars: dict[str, Any] = {}
    """Tagged-JSON initial variables (used when there is no workspace)."""
    job_id: str = ""
    """The job (for ``repr`` only)."""
    context_bound: bool = False
    """The job is bound to a shared context: names missing from the workspace are asked with :class:`CtxGet`."""


class CallReply(msgspec.Struct, kw_only=True, frozen=True, tag="reply", tag_field="k"):
    """Executor → worker: the outcome of a :class:`ToolCall` or :class:`RemoteOp`."""

    value: Any = None
    """Tagged-JSON result."""
    console: list[str] = []
    """What the tool printed (console entries)."""
    error: str | None = None
    """``<Type>: <message>`` raised by the tool (the worker raises it again as that type if it can)."""
    error_type: str = ""
    """The exception class name of :attr:`error`."""
    suspended: bool = False
    """A future was not ready: the job suspends at the current statement."""
    exited: bool = False
    """The tool ended the job (``exit_job``)."""
    exit_value: Any = None
    """Tagged-JSON exit value when :attr:`exited`."""


class ToolCall(msgspec.Struct, kw_only=True, frozen=True, tag="call", tag_field="k"):
    """Worker → executor: model code called a tool."""

    tool: str
    """The tool's name."""
    args: list[Any] = []
    """Tagged-JSON positional arguments."""
    kwargs: dict[str, Any] = {}
    """Tagged-JSON keyword arguments."""
    site: str = ""
    """The statement's call-site prefix."""


class RemoteOp(msgspec.Struct, kw_only=True, frozen=True, tag="op", tag_field="k"):
    """Worker → executor: an operation on a ``remote`` value (resolve a future, read a job's status)."""

    value: Any
    """The tagged-JSON value."""
    op: str
    """``resolve``, ``getattr``, ``call`` or a dunder (``__str__``, ``__iter__``, ...)."""
    name: str = ""
    """Attribute or method name (``getattr``/``call``)."""
    args: list[Any] = []
    """Tagged-JSON arguments."""
    site: str = ""
    """The statement's call-site prefix."""


class CtxGet(msgspec.Struct, kw_only=True, frozen=True, tag="ctxget", tag_field="k"):
    """Worker → executor: model code read a name the workspace lacks; the reply is its shared-context
    value, or a ``KeyError`` (then it is a ``NameError``)."""

    name: str
    """The variable."""


class NsGet(msgspec.Struct, kw_only=True, frozen=True, tag="nsget", tag_field="k"):
    """Executor → worker, while a tool runs: the tool reads a workspace variable (``namespace[name]``)."""

    name: str = ""
    """The variable; empty: the list of names."""


class NsValue(msgspec.Struct, kw_only=True, frozen=True, tag="nsvalue", tag_field="k"):
    """Worker → executor: the answer to :class:`NsGet`."""

    found: bool = False
    """The variable exists and its value can cross."""
    value: Any = None
    """Tagged-JSON value (or the list of names)."""


class UnitOut(msgspec.Struct, kw_only=True, frozen=True):
    """One unit's result (see :class:`statek_bus.runtime.coderunner.UnitResult`)."""

    console: list[str] = []
    """Console entries."""
    error: str | None = None
    """The error that stopped the unit."""
    sandbox: bool = False
    """A sandbox refusal."""
    timeout: bool = False
    """Stopped by the wall-clock limit."""
    suspended: bool = False
    """The unit suspended at :attr:`statement`."""
    statement: int = 0
    """Where it suspended."""


class StepDone(msgspec.Struct, kw_only=True, frozen=True, tag="done", tag_field="k"):
    """Worker → executor: the step's outcome."""

    units: list[UnitOut]
    """One per unit that ran."""
    exited: bool = False
    """``exit(value)`` ran."""
    exit_value: Any = None
    """Tagged-JSON exit value."""
    workspace: msgspec.Raw = NO_WORKSPACE
    """The new workspace (JSON of ``WorkspaceData``, or ``null``: none), kept in its bytes where
    it is read: the executor decodes only what a step in it names."""
    dropped: list[str] = []
    """Names that could not be persisted."""
    notes: list[str] = []
    """Restore warnings."""
    suspended_at: tuple[int, int] = (0, 0)
    """(unit, statement) where the job suspends."""
    seconds: float = 0.0
    """Time spent in the worker."""


class Ready(msgspec.Struct, kw_only=True, frozen=True, tag="ready", tag_field="k"):
    """Worker → executor, first on its socket, once it has read its step and before any of the
    step's code runs. A step whose worker never said so never started (a spare that died while it
    waited, with its fork server or killed from outside): the executor runs it in another worker
    instead of reporting a crash the code did not cause."""

    pid: int
    """The worker's pid."""


class Hello(msgspec.Struct, kw_only=True, frozen=True, tag="hello", tag_field="k"):
    """Fork server → executor, once: the isolation layers a worker gets on this machine."""

    layers: dict[str, str]
    """Layer → ``on`` or why it is off."""
    pid: int
    """The fork server's pid."""


class Spawned(msgspec.Struct, kw_only=True, frozen=True, tag="spawned", tag_field="k"):
    """Fork server → executor: a worker was forked for the socket sent with the request."""

    pid: int
    """The worker's pid."""


class Exited(msgspec.Struct, kw_only=True, frozen=True, tag="exited", tag_field="k"):
    """Fork server → executor: a worker ended."""

    pid: int
    """The worker's pid."""
    status: int
    """``os.waitpid`` status."""


WorkerMessage = (
    StepStart
    | CallReply
    | ToolCall
    | RemoteOp
    | CtxGet
    | NsGet
    | NsValue
    | StepDone
    | Ready
    | Hello
    | Spawned
    | Exited
)
"""Every message of the protocol."""

_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[WorkerMessage] = msgspec.json.Decoder(WorkerMessage)
_HEADER = struct.Struct(">I")


def write_frame(sock: socket.socket, message: WorkerMessage) -> None:
    """Send one message."""
    body = _ENCODER.encode(message)
    sock.sendall(_HEADER.pack(len(body)) + body)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise FrameError("the peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> WorkerMessage:
    """Receive one message; :class:`FrameError` on EOF, an oversized or a malformed frame."""
    (size,) = _HEADER.unpack(_read_exact(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    try:
        return _DECODER.decode(_read_exact(sock, size))
    except msgspec.DecodeError as exc:
        raise FrameError(f"malformed frame: {exc}") from None
    except RecursionError:  # msgspec's own limit on nesting
        raise FrameError("malformed frame: nested too deeply") from None


def encode_control(message: Hello | Spawned | Exited) -> bytes:
    """One control-channel message (a ``SOCK_SEQPACKET`` datagram: no length prefix)."""
    return _ENCODER.encode(message)


def decode_control(data: bytes) -> WorkerMessage:
    """Invert :func:`encode_control`; :class:`FrameError` when malformed."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise FrameError(f"malformed control message: {exc}") from None
