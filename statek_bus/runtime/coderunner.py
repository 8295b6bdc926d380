"""The code-runner seam: where model-written Python runs, and how its console is captured.

A step hands the runner an :class:`ExecRequest`: a session (:class:`SessionInputs`: the policy,
the tools in scope, the job context and the stored workspace) and a list of :class:`ExecUnit`
(formal tool calls and code blocks, in order). The runner executes them off the event loop and
returns an :class:`ExecResult`: each unit's console output, the first error, the exit value and
the new workspace snapshot.

Two runners share that seam:

* :class:`~statek_bus.runtime.procrunner.ProcessCodeRunner` (the default) reads only the session's
  *inputs* and runs the units in a separate, locked-down worker process
  (:mod:`statek_bus.runtime.worker`); tools and futures stay here and are reached by calls over a
  socket, so model code never shares a process with a host object.
* :class:`ThreadCodeRunner` (``code_runner = "in-process"``, trusted development only) calls the
  live session (:class:`CodeSession`) in a worker thread of this process, under the sandbox policy
  and the step's wall-clock deadline; it has no memory or CPU limit and a single C call can hold
  the GIL past the deadline.

:class:`SandboxSession` implements both protocols; the worker process uses it too, with tool stubs.

Console formatting (STATEK's) lives in :mod:`statek_bus.authoring.console`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import decimal
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from statek_bus.authoring.console import MAX_ITEMS, error_line, format_value
from statek_bus.sandbox.fallback import FallbackBuiltins, assigned_names
from statek_bus.sandbox.replay import replaying

__all__ = [
    "MAX_CONSOLE_CHARS",
    "MAX_EXIT_CHARS",
    "MAX_ITEMS",
    "CodeRunner",
    "CodeSession",
    "Console",
    "ExecRequest",
    "ExecResult",
    "ExecUnit",
    "ExitSignal",
    "SessionInputs",
    "StepSession",
    "ThreadCodeRunner",
    "UnitResult",
    "check_exit_size",
    "error_line",
    "execute",
    "format_value",
    "install_stdout_capture",
]  # fmt: skip


# ==================================================================================================
# Console capture
# ==================================================================================================


MAX_CONSOLE_CHARS = 100_000
"""Console text one unit keeps; the rest is cut with a note (the chat log lives in the job record)."""
MAX_EXIT_CHARS = 64 * 1024
"""Largest exit status, encoded (it is stored in the job record and read by parent jobs)."""


class Console:
    """The console of one unit: one entry per ``print`` call, echoed value or error line.

    At most :data:`MAX_CONSOLE_CHARS` are kept; output past it is counted and replaced by one
    note, and a few short lines after it (an error line) still get through.
    """

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._partial: list[str] = []
        self._chars = 0
        self._cut = 0
        self._late = 0

    def print(self, *args: Any, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
        """The job's ``print``: values formatted as the model sees them."""
        text = (" " if sep is None else str(sep)).join(format_value(a) for a in args)
        self.write(text + ("\n" if end is None else str(end)))

    def write(self, text: str) -> int:
        """Append raw text; a trailing newline closes the entry."""
        if self._cut:
            self._cut += len(text)
            return len(text)
        self._partial.append(text)
        self._chars += len(text)
        if self._chars > MAX_CONSOLE_CHARS or text.endswith("\n"):
            self.flush()
        return len(text)

    def flush(self) -> None:
        """Close a pending partial entry."""
        if self._partial:
            joined = "".join(self._partial)
            self._partial.clear()
            self._add(joined[:-1] if joined.endswith("\n") else joined)

    def append(self, line: str) -> None:
        """Add a whole entry."""
        self.flush()
        self._chars += len(line)
        self._add(line)

    def _add(self, line: str) -> None:
        if self._cut:
            if len(line) < 1000 and self._late < 20:
                self._late += 1
                self.entries.insert(len(self.entries) - 1, line)  # before the note
            else:
                self._cut += len(line)
            return
        over = self._chars - MAX_CONSOLE_CHARS
        if over <= 0:
            self.entries.append(line)
            return
        keep = max(0, len(line) - over)
        if keep:
            self.entries.append(line[:keep])
        self._cut = len(line) - keep
        self.entries.append(f"Warning: console output cut at {MAX_CONSOLE_CHARS} characters")


_current_console: contextvars.ContextVar[Console | None] = contextvars.ContextVar(
    "statek_console", default=None
)


class _RoutingStdout:
    """``sys.stdout`` replacement: writes from a step (a tool's ``print``) go to that step's console."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback

    def write(self, text: str) -> int:
        console = _current_console.get()
        if console is None:
            return self.fallback.write(text)
        return console.write(text)

    def flush(self) -> None:
        console = _current_console.get()
        if console is None:
            self.fallback.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fallback, name)


_install_lock = threading.Lock()


def install_stdout_capture() -> None:
    """Route ``print`` inside tools to the job console (idempotent; the executor calls it once)."""
    with _install_lock:
        if not isinstance(sys.stdout, _RoutingStdout):
            sys.stdout = _RoutingStdout(sys.stdout)


# ==================================================================================================
# Requests and results
# ==================================================================================================


class CodeSession(Protocol):
    """A step's live namespace, as :class:`ThreadCodeRunner` (and the worker process) drive it."""

    exited: bool
    """``exit(value)`` ran."""
    exit_value: Any
    """The value passed to ``exit``."""
    restore_errors: list[str]
    """What restoring the workspace could not bring back."""

    def begin(self, deadline: float) -> None:
        """Build the namespace and restore the workspace; ``deadline`` is a monotonic time."""
        ...

    def run_code(self, unit: ExecUnit, console: Console) -> UnitResult:
        """Run a code unit statement by statement."""
        ...

    def run_tool(self, unit: ExecUnit, console: Console) -> UnitResult:
        """Run a formal tool call."""
        ...

    def snapshot(self) -> tuple[Any, list[str]]:
        """The workspace as storable data, and the names dropped."""
        ...

    def end(self) -> None:
        """The step is over (its snapshot taken): let go of its namespace."""
        ...


class SessionInputs(Protocol):
    """What a step's code needs, as a process runner reads it (it never calls the session)."""

    policy: Any
    """The :class:`~statek_bus.sandbox.policy.SandboxPolicy` for model code."""
    trusted_policy: Any
    """The policy for hidden warmup blocks."""
    tools: dict[str, Any]
    """Tools by name."""
    job: Any
    """The :class:`~statek_bus.authoring.tools.JobContext` tools see."""
    workspace_data: Any
    """The stored workspace, or None."""
    shared_vars: dict[str, Any]
    """Initial variables (no workspace yet)."""
    registry: Any
    """Classes workspace values may hold."""
    context_bound: bool
    """The job is bound to a shared context (missing names fall back to its variables)."""


class StepSession(CodeSession, SessionInputs, Protocol):
    """Both views of a session: what every runner accepts (:class:`SandboxSession` is one)."""


class ExitSignal(BaseException):
    """Raised by ``exit(value)`` to stop the block; a BaseException so ``except Exception`` passes it."""

    def __init__(self, value: Any) -> None:
        super().__init__("exit")
        self.value = value


@dataclasses.dataclass
class ExecUnit:
    """One thing to run: a code block, or a formal tool call."""

    kind: str
    """``code`` (a block into the job console), ``cli`` (python_cli: output is the tool result),
    or ``tool`` (a formal tool call)."""
    code: str = ""
    """Source of ``code``/``cli`` units."""
    tool: str = ""
    """Tool name of a ``tool`` unit."""
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Arguments of a ``tool`` unit."""
    trusted: bool = False
    """A hidden warmup block: hidden tools may be called."""
    site: str = ""
    """``<item>.<unit>``: names what the unit's statements create (see :class:`statek_bus.authoring.futures.CallSites`)."""
    start: int = 0
    """First top-level statement to run (a resumed unit starts where it suspended)."""
    skip: bool = False
    """Ran before the job suspended: not run again (its result is already recorded)."""


@dataclasses.dataclass
class UnitResult:
    """What one unit produced."""

    console: list[str]
    """Console entries (for ``tool``/``cli`` units: the result text, as entries)."""
    error: str | None = None
    """``<Type>: <message>`` of the error that stopped the unit."""
    sandbox: bool = False
    """The error was a sandbox refusal (nothing ran)."""
    timeout: bool = False
    """The step's wall-clock limit stopped it."""
    suspended: Any = None
    """The future whose read suspended the unit (it stopped at :attr:`statement`)."""
    statement: int = 0
    """The statement that suspended."""


@dataclasses.dataclass
class ExecRequest:
    """Everything a runner needs for one step's code."""

    session: StepSession
    """The step's session: a thread runner calls it (:class:`CodeSession`); a process runner reads
    its inputs (:class:`SessionInputs`) and runs an equivalent session in the worker."""
    units: list[ExecUnit]
    """What to run, in order."""
    deadline_seconds: float
    """Wall-clock budget of all units together."""
    app_code: bool = False
    """Only application code runs, in a namespace nothing model-written has reached (an agent's
    warmup before the job's first model-written code): a runner may run it in the executor."""


@dataclasses.dataclass
class ExecResult:
    """The outcome of an :class:`ExecRequest`."""

    units: list[UnitResult]
    """One result per unit that ran (units after an ``exit`` do not run)."""
    exit_value: Any = None
    """The value passed to ``exit(...)`` (``None``: the job did not exit)."""
    exited: bool = False
    """``exit(value)`` with a non-None value ran."""
    workspace: Any = None
    """The new workspace snapshot (runner-specific data the engine stores)."""
    dropped: list[str] = dataclasses.field(default_factory=list)
    """Names whose values could not be persisted."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Console lines about the workspace itself (what could not be restored)."""
    seconds: float = 0.0
    """Wall-clock time spent."""
    suspended: Any = None
    """The future the job now waits for (units after the suspended one did not run)."""
    suspended_at: tuple[int, int] = (0, 0)
    """(unit, statement) where to resume."""


class CodeRunner(Protocol):
    """Runs a step's code somewhere that is not the event loop."""

    async def run(self, request: ExecRequest) -> ExecResult:
        """Execute ``request`` and return its outcome (never raises for model errors)."""
        ...

    async def aclose(self) -> None:
        """Release threads or processes."""
        ...


class ThreadCodeRunner:
    """Runs each request in a worker thread of this process (restricted by the sandbox policy).

    A plain queue to the workers and ``call_soon_threadsafe`` back (``run_in_executor`` cost ~7x
    the CPU per hop: a ``concurrent.futures`` future, its condition, ``wrap_future``).

    Args:
        threads: worker threads (steps whose code runs at once).
    """

    def __init__(self, threads: int = 8) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"statek-code_{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for t in self._threads:
            t.start()

    async def run(self, request: ExecRequest) -> ExecResult:
        """Execute ``request`` in a worker thread, copying the caller's context variables."""
        if not self._threads:
            raise RuntimeError("the code runner is closed")
        fut: asyncio.Future[ExecResult] = asyncio.get_running_loop().create_future()
        self._queue.put((fut.get_loop(), fut, contextvars.copy_context(), request))
        return await fut  # a cancelled step cancels ``fut``: its code is skipped if not started

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            loop, fut, ctx, request = job
            if fut.cancelled():
                continue
            try:
                result, exc = ctx.run(execute, request), None
            except BaseException as error:  # delivered to the awaiting step, as run_in_executor does
                result, exc = None, error
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
                loop.call_soon_threadsafe(_settle, fut, result, exc)

    async def aclose(self) -> None:
        """Stop the worker threads (a runaway block ends at its deadline)."""
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # a cancelled step's result is dropped
        return
    if exc is None:
        fut.set_result(result)
        return
    if isinstance(exc, StopIteration | StopAsyncIteration):  # a Future refuses these: never hang
        exc = RuntimeError(f"{type(exc).__name__} escaped model code")
    fut.set_exception(exc)


def execute(request: ExecRequest) -> ExecResult:
    """Run every unit of ``request`` in the current thread, in a decimal context of its own (the
    thread runner and the worker process both call this).

    ``decimal.getcontext()`` is a mutable object reached through a context variable: a copied
    ``contextvars.Context`` still shares it, so ``getcontext().prec = 3`` would change arithmetic
    for later jobs and the host. Each request gets a fresh default context instead. The step's
    context variables (the job it binds for its tools, its console) are set in a copy of the
    caller's context, so the caller's thread is bound to no job once it returns.
    """
    return contextvars.copy_context().run(_execute_in_context, request)


def _execute_in_context(request: ExecRequest) -> ExecResult:
    with decimal.localcontext(decimal.Context()):
        result = _execute_units(request)
    if result.exited:
        check_exit_size(result)
    return result


def check_exit_size(result: ExecResult) -> None:
    """An exit status too large for the job record is the step's error, not an internal one."""
    import msgspec

    from statek_bus.wire.values import to_json

    try:
        size = len(msgspec.json.encode(to_json(result.exit_value)))
    except Exception:
        size = len(format_value(result.exit_value))
    if size <= MAX_EXIT_CHARS:
        return
    line = f"ValueError: the exit status is {size} bytes; the limit is {MAX_EXIT_CHARS}"
    result.exited, result.exit_value = False, None
    if result.units:
        result.units[-1].console.append(line)
        result.units[-1].error = result.units[-1].error or line


def _execute_units(request: ExecRequest) -> ExecResult:
    started = time.monotonic()
    install_stdout_capture()  # cheap; re-wraps if something (a test harness) swapped sys.stdout
    session = request.session
    session.begin(started + request.deadline_seconds)
    results: list[UnitResult] = []
    for unit in request.units:
        console = Console()
        token = _current_console.set(console)
        try:
            result = _run_unit(session, unit, console)
        finally:
            _current_console.reset(token)
        results.append(result)
        if session.exited or result.suspended is not None:
            break
    try:
        workspace, dropped = session.snapshot()
    finally:
        session.end()
    last = results[-1] if results else None
    suspended = last.suspended if last is not None else None
    return ExecResult(
        units=results,
        notes=[f"Warning: could not restore {e}" for e in session.restore_errors],
        exit_value=session.exit_value,
        exited=session.exited,
        workspace=workspace,
        dropped=dropped,
        seconds=time.monotonic() - started,
        suspended=suspended,
        suspended_at=(len(results) - 1, last.statement) if suspended is not None and last else (0, 0),
    )


def _run_unit(session: CodeSession, unit: ExecUnit, console: Console) -> UnitResult:
    if unit.skip:
        return UnitResult(console=[])
    run: Callable[..., UnitResult] = session.run_tool if unit.kind == "tool" else session.run_code
    try:
        result = run(unit, console)
    except BaseException as exc:  # the session reports model errors itself; this is a bug guard
        console.flush()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        # never show an internal signal's name (ExitSignal, Suspend) to the model
        line = error_line(exc) if isinstance(exc, Exception) else "RuntimeError: internal error"
        return UnitResult(console=console.entries, error=line)
    console.flush()
    return result


# ==================================================================================================
# The in-process session: one step's namespace under the sandbox policy
# ==================================================================================================


class SandboxSession:
    """One step's namespace: tools and the job's ``print``/``exit`` in a restricted global scope.

    Used by :class:`ThreadCodeRunner` (in its worker thread); a process runner uses the same class
    inside its child process. ``begin`` builds the namespace and restores the workspace; code units
    are compiled under the policy and run statement by statement (an expression statement's value
    is echoed unless it is ``None``); ``snapshot`` captures the workspace for storage.

    Args:
        policy: the sandbox policy for untrusted code.
        trusted_policy: the policy for hidden warmup blocks (hidden tools allowed).
        tools: tools by name (every tool of the agent, system tools included).
        job: the job context tools see (its ``namespace`` is set by :meth:`begin`).
        workspace: the stored workspace data to restore, if any.
        shared_vars: the job's initial variables (used when there is no workspace yet).
        registry: classes the workspace may hold.
        context_lookup: ``name -> value`` of the job's shared-context variables (``KeyError`` if
            none): names missing from the workspace fall back to it while :attr:`context_bound`.
        context_bound: the job is bound to a shared context (``init_shared_context`` then calls
            :meth:`enable_context` through ``job.extras["bind_context"]``, or a worker's stub does).
    """

    def __init__(
        self,
        *,
        policy: Any,
        trusted_policy: Any,
        tools: dict[str, Any],
        job: Any,
        workspace: Any,
        shared_vars: dict[str, Any],
        registry: Any,
        context_lookup: Callable[[str], Any] | None = None,
        context_bound: bool = False,
    ) -> None:
        self.context_lookup = context_lookup
        self.context_bound = context_bound
        self.policy = policy
        self.trusted_policy = trusted_policy
        self.tools = tools
        self.job = job
        self.workspace_data = workspace
        self.shared_vars = shared_vars
        self.registry = registry
        self.deadline = float("inf")
        self.ns: dict[str, Any] = {}
        self.base_names: set[str] = set()
        self.exited = False
        self.exit_value: Any = None
        self.restore_errors: list[str] = []
        self._workspace: Any = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def begin(self, deadline: float) -> None:
        """Build the namespace and restore the workspace (in the runner's thread)."""
        from statek_bus.authoring.tools import Tool, bind_job
        from statek_bus.runtime import workspace
        from statek_bus.sandbox import restricted as sandbox

        self.deadline = deadline
        bind_job(self.job)
        ns = sandbox.sandbox_globals(self.policy, deadline=lambda: self.deadline)
        if self.context_bound and self.context_lookup is not None:
            ns["__builtins__"] = FallbackBuiltins(ns["__builtins__"], self._shared)
        self.job.extras["bind_context"] = self.enable_context
        ns.update({n: t.handle if isinstance(t, Tool) else t for n, t in self.tools.items()})
        ns["print"] = _console_print
        ns["exit"] = self._exit
        self.job.extras["exit"] = self._exit
        self.base_names = set(ns)
        self._workspace = workspace.Workspace()
        if self.workspace_data is not None:
            try:  # definitions replay with tools, exit and futures refusing: no side effects
                # (no stub is needed where no stored code looks a name up: values, imports)
                replayed = not all(sandbox.imports_only(d.source) for d in self.workspace_data.definitions)
                with replaying(ns, [*self.tools, "exit"] if replayed else []):
                    self._workspace.restore(
                        self.workspace_data,
                        ns,
                        policy=self.policy,
                        trusted_policy=self.trusted_policy,
                        registry=self.registry,
                    )
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # a definition the policy now refuses; a stray signal
                self.restore_errors.append(error_line(exc))
            self.restore_errors += self._workspace.restore_errors
            env = self.job.extras.get("env")
            if env is not None:
                env.suspended = None  # nothing waits before the step's own code runs
        else:
            ns.update(self.shared_vars)
        self.ns = ns
        self.job.namespace = ns

    def enable_context(self) -> None:
        """The job was just bound to a shared context: later statements fall back to its variables.

        Only a bound job's namespace gets :class:`FallbackBuiltins`: builtins in a dict subclass
        cost CPython its specialised global lookups (measured by ``python -m bench sandbox``: about
        10 % on an instrumented loop of builtin calls, 2-4x on plain code).
        """
        self.context_bound = True
        ns = self.ns
        if (
            self.context_lookup is not None
            and ns
            and not isinstance(ns.get("__builtins__"), FallbackBuiltins)
        ):
            ns["__builtins__"] = FallbackBuiltins(ns["__builtins__"], self._shared)

    def _shared(self, name: str) -> Any:
        if not self.context_bound or self.context_lookup is None:
            raise KeyError(name)
        return self.context_lookup(name)

    def _shared_assignment(self, stmt: Any) -> str | None:
        """The error line of a statement assigning to a shared variable (STATEK's PermissionError)."""
        candidates = [n for n in stmt.code.co_names if n not in self.ns]
        if not candidates:
            return None
        for name in assigned_names(stmt.source):
            if name not in candidates:
                continue
            try:
                self._shared(name)
            except KeyError:
                continue
            return (
                f"PermissionError: Shared context variable is read-only: {name}. Use "
                f"shared_context_set_var(category, {name!r}, value, description) to change it"
            )
        return None

    def _exit(self, value: Any = None) -> None:
        if value is None:  # a bare exit() does not end the job (STATEK)
            return
        self.exited, self.exit_value = True, value
        raise ExitSignal(value)

    def snapshot(self) -> tuple[Any, list[str]]:
        """The workspace as storable data, and the names that could not be stored."""
        data, dropped = self._workspace.snapshot(self.ns, base_names=self.base_names, registry=self.registry)
        return data, list(dropped)

    def end(self) -> None:
        """Break the step's reference cycles once its snapshot is taken, so they are freed at once.

        A namespace is the globals of every function defined in it, its builtins close over its
        clock and this session, and the job context's extras hold this session's ``exit``: each
        step left a few hundred objects in cycles that only the cyclic collector frees, and its
        passes over them (and over everything alive beside them) were a sixth of the executor's CPU.
        The step's values live on in the snapshot only; nothing runs in this namespace again.
        """
        ns, self.ns = self.ns, {}
        builtins_ = ns.get("__builtins__")
        if type(builtins_) is dict:  # made for this step by sandbox_globals, never shared
            builtins_.clear()
        ns.clear()
        self.job.namespace = {}
        for key in ("exit", "bind_context"):
            self.job.extras.pop(key, None)
        self._workspace = None

    # --- units -------------------------------------------------------------------------------------
    def run_code(self, unit: ExecUnit, console: Console) -> UnitResult:
        """Compile ``unit.code`` under the policy and run it statement by statement.

        Reading a future that is not ready stops the unit at that statement (``suspended``); an
        expression statement whose value is a future waits for it too (its value is echoed).
        """
        from statek_bus.authoring.futures import Suspend
        from statek_bus.sandbox import restricted as sandbox

        policy = self.trusted_policy if unit.trusted else self.policy
        try:
            block = self.compile(unit, policy)
        except sandbox.SandboxViolation as exc:
            console.append(error_line(exc))
            return UnitResult(console=console.entries, error=error_line(exc), sandbox=True)
        env = self.job.extras.get("env")
        for i, stmt in enumerate(block.statements):
            if i < unit.start:
                continue
            if env is not None:
                env.sites.enter(f"{unit.site}.{i}")
            text = None
            if self.context_bound and (refused := self._shared_assignment(stmt)) is not None:
                console.append(refused)
                return UnitResult(console=console.entries, error=refused)
            try:
                value = self._run_statement(stmt)
                if value is not None:  # formatting may read a future too (``[sleep(5)]``): it waits
                    value = sandbox.read_value(value)
                    text = None if value is None else format_value(value)
            except Suspend as signal:
                return UnitResult(console=console.entries, suspended=signal.future, statement=i)
            except ExitSignal:
                self._record(stmt, unit.trusted)
                break
            except sandbox.StepTimeout as exc:
                console.append(error_line(exc))
                return UnitResult(console=console.entries, error=error_line(exc), timeout=True)
            except Exception as exc:
                if self.exited:  # exit() ran and the model's code caught the signal's effects
                    break
                if env is not None and env.suspended is not None:  # caught the suspension, then failed
                    return UnitResult(console=console.entries, suspended=env.suspended, statement=i)
                console.append(error_line(exc))
                return UnitResult(console=console.entries, error=error_line(exc))
            if env is not None and env.suspended is not None:  # a bare ``except:`` swallowed it
                return UnitResult(console=console.entries, suspended=env.suspended, statement=i)
            self._record(stmt, unit.trusted)
            if text is not None:
                console.append(text)
            if self.exited:
                break
        return UnitResult(console=console.entries)

    def compile(self, unit: ExecUnit, policy: Any) -> Any:
        """``unit``'s code as a :class:`~statek_bus.sandbox.restricted.CompiledBlock` (the data tier's
        session compiles its own rewrite instead, :mod:`statek_bus.runtime.tierrunner`)."""
        from statek_bus.sandbox import restricted as sandbox

        return sandbox.compile_block(unit.code, policy)

    def _run_statement(self, stmt: Any) -> Any:
        if getattr(stmt, "echo", False):
            return eval(stmt.code, self.ns)
        exec(stmt.code, self.ns)
        return None

    def _record(self, stmt: Any, trusted: bool) -> None:
        if getattr(stmt, "is_definition", False):
            self._workspace.record(stmt, trusted=trusted)

    def run_tool(self, unit: ExecUnit, console: Console) -> UnitResult:
        """Run a formal tool call; its output and return value (or error) become the result."""
        t = self.tools.get(unit.tool)
        if t is None or not callable(t):
            return UnitResult(console=[f"NameError: tool '{unit.tool}' not found"])
        if getattr(t, "hidden", False) and not unit.trusted:
            return UnitResult(console=[f"NameError: tool '{unit.tool}' is not exposed to this job"])
        from statek_bus.authoring.futures import Suspend
        from statek_bus.sandbox.restricted import read_value

        args = dict(unit.arguments)
        positional = args.pop("__args__", [])
        env = self.job.extras.get("env")
        if env is not None:
            env.sites.enter(f"{unit.site}.0")
        text = None
        try:
            value = t(*positional, **args)
            if value is not None:
                value = read_value(value)
                text = None if value is None else format_value(value)
        except Suspend as signal:
            return UnitResult(console=[], suspended=signal.future)
        except ExitSignal:
            console.flush()
            return UnitResult(console=["\n".join(console.entries)])
        except Exception as exc:
            console.append(error_line(exc))
            return UnitResult(console=["\n".join(console.entries)])
        if text is not None:
            console.append(text)
        console.flush()
        return UnitResult(console=["\n".join(console.entries)])


def _console_print(*args: Any, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
    console = _current_console.get()
    if console is None:
        return
    console.print(*args, sep=sep, end=end)
