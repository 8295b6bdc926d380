"""Model code in worker processes, through a real mesh (invariant 6): denials of service and crashes
end their own job with a clear error while other jobs carry on; the OS layers hold with restricted
mode off; the red team's escapes are refused; tools, futures and binding by name cross as calls."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client

from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import SERVICE_KINDS
from statek_bus.wire.messages import JobStatus
from tests.agents_fixture import console, submit, wait_done
from tests.sandbox_agents import DOS, ESCAPES

SECRET = "sk-sandbox-test-secret-value"


@contextlib.asynccontextmanager
async def _mesh(settings: Settings, agents: str, step_timeout: float = 3.0) -> AsyncIterator[Settings]:
    s = settings.replace(agents=agents, step_timeout=step_timeout, max_token_usage=1_000_000)
    async with contextlib.AsyncExitStack() as stack:
        for kind in ("provider", "executor"):
            factory = importlib.import_module(f"statek_bus.services.{kind}").build
            await stack.enter_async_context(running_service(factory, s, name=SERVICE_KINDS[kind]))
        yield s


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """A provider and an executor (restricted mode, process runner) serving the sandbox agents."""
    async with _mesh(settings, "tests.sandbox_agents:AGENTS") as s:
        yield s


@pytest.fixture
async def open_mesh(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Settings]:
    """The same with restricted mode off, in an executor whose own environment holds a secret."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    async with _mesh(settings.replace(restricted_mode=False), "tests.sandbox_agents:UNRESTRICTED") as s:
        yield s


def _first_error(record: Any) -> str:
    return next(line for line in console(record) if ":" in line)


async def test_hostile_steps_end_their_own_jobs_while_a_quick_job_finishes(
    mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    hostile = {k: await submit(js, f"sb_dos_{k}") for k in DOS if k != "c_stack"}  # its own test, below
    quick = await wait_done(js, await submit(js, "sb_quick"))
    assert quick.exit_status == "quick"
    loop_job, _ = await (await _store(js)).get(hostile["c_loop"])
    assert loop_job.status is not JobStatus.DONE  # still in its 3 s step: it held no other job up
    records = {k: await wait_done(js, j) for k, j in hostile.items()}
    for kind, record in records.items():
        assert record.exit_status == "after", (kind, console(record))  # the error was the job's, once
    assert _first_error(records["c_loop"]).startswith("StepTimeout: your code ran longer than 3 s")
    assert _first_error(records["regex"]).startswith("StepTimeout: your code ran longer than 3 s")
    assert _first_error(records["memory"]) == "MemoryError: your code used more than 512 MiB"
    assert _first_error(records["big_pow"]).startswith(("StepTimeout", "MemoryError", "ResourceError"))


async def test_a_c_stack_overflow_crashes_only_its_worker_and_is_its_steps_error(
    settings: Settings, nc: Client
) -> None:
    # A step of its own with a wide wall-clock budget: beside three CPU-bound hostile steps on a
    # loaded machine, building the 200,000 nested iterators could outlast a 3 s limit and end as a
    # StepTimeout, which is not what this checks.
    async with _mesh(settings, "tests.sandbox_agents:AGENTS", step_timeout=60.0):
        js = nc.jetstream()
        record = await wait_done(js, await submit(js, "sb_dos_c_stack"))
    assert record.exit_status == "after", console(record)  # the crash was the step's error, once
    assert _first_error(record).startswith("WorkerCrash: your code crashed the interpreter"), console(record)


async def _store(js: Any) -> Any:
    from statek_bus.jobs.store import JobStore

    return await JobStore.open(js)


async def test_model_code_finds_no_secret_no_network_and_no_processes(
    open_mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "sb_probe", {"epid": os.getpid()}))
    out = "\n".join(console(record))
    assert SECRET not in out and "OPENAI" not in out, out
    lines = out.splitlines()
    assert lines[0] == "env LANG,PYTHONHASHSEED", lines  # nothing of the executor's environment
    assert lines[1] == "environ refused: PermissionError", lines  # the executor's /proc/<pid>/environ
    assert lines[3:] == [
        "socket refused: PermissionError",
        "process refused: PermissionError",
        "fork refused: PermissionError",
        "write refused: PermissionError",
    ], lines


async def test_host_class_state_does_not_carry_to_the_next_job(open_mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    first = await wait_done(js, await submit(js, "sb_register"))
    assert console(first)[-1] == "True"  # restricted mode off: the registration ran, in its worker
    second = await wait_done(js, await submit(js, "sb_isinstance"))
    assert console(second) == ["False"]


async def test_an_agents_warmup_runs_in_the_executor_and_model_code_in_a_worker(
    open_mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    lines = console(await wait_done(js, await submit(js, "sb_where")))
    assert lines == [f"warmup {os.getpid()}", lines[1]], lines  # this process runs the executor
    assert lines[1].startswith("model ") and lines[1] != f"model {os.getpid()}", lines


async def test_a_job_bringing_its_own_warmup_code_runs_every_warmup_in_a_worker(
    open_mesh: Settings, nc: Client
) -> None:
    from statek_bus.client.core import AsyncStatekClient

    submission = importlib.import_module("statek_bus.services.submission").build
    async with running_service(submission, open_mesh, name=SERVICE_KINDS["submission"]):
        client = AsyncStatekClient(settings=open_mesh, nc=nc)
        job = await client.jobs.submit_new_job("sb_where", warmup_code="import os\nprint('own', os.getpid())")
    lines = console(await wait_done(nc.jetstream(), job.id))
    assert [line.split()[0] for line in lines] == ["own", "warmup", "model"], lines
    assert os.getpid() not in {int(line.split()[1]) for line in lines}, lines  # the job's code came first


async def test_with_app_code_in_process_off_the_warmup_runs_in_a_worker_too(
    settings: Settings, nc: Client
) -> None:
    s = settings.replace(restricted_mode=False, app_code_in_process=False)
    async with _mesh(s, "tests.sandbox_agents:UNRESTRICTED"):
        js = nc.jetstream()
        lines = console(await wait_done(js, await submit(js, "sb_where")))
    assert [line.split()[0] for line in lines] == ["warmup", "model"], lines
    assert os.getpid() not in {int(line.split()[1]) for line in lines}, lines


@pytest.mark.parametrize("name", sorted(ESCAPES))
async def test_each_escape_is_refused_through_the_mesh(mesh: Settings, nc: Client, name: str) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, f"sb_esc_{name}"))
    out = console(record)
    assert record.exit_status == "after", out
    assert "EVALUATED" not in out and not any("module" in line for line in out), out
    expected = {
        "attrgetter": "SandboxViolation: attribute '__class__'",
        "update_wrapper": "SandboxViolation: update_wrapper",
        "super_format": "SandboxViolation: format field",
        "template_cache": "SandboxViolation: format field",
        "register": "SandboxViolation: cannot register",
        "repeat": "StepTimeout",
        "tool_object": "AttributeError",
    }
    if name == "annotations":
        assert out[0].startswith("def f(x: ") and out[1].startswith("f(x)"), out
    else:
        assert any(line.startswith(expected[name]) for line in out), out


async def test_a_definition_hidden_in_a_string_never_replays(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "sb_replay"))
    assert "100000000000000000000" in console(record) and "classified" not in console(record)


async def test_tools_futures_and_binding_by_name_cross_the_boundary(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "sb_tools"))
    out = console(record)
    assert out[:4] == ["add called 5 1", "6", "add called 5 2", "7"], out
    assert out[4].startswith("def add(a: ") and "Add two numbers." in out[4], out
    assert out[5] == "None" and record.exit_status == "after", out


async def test_the_executor_reports_its_isolation_layers(mesh: Settings, nc: Client) -> None:
    from statek_bus.wire.messages import ExecutorStatus, decode
    from statek_bus.wire.subjects import EXECUTOR_STATUS

    for _ in range(100):  # the fork server reports its layers once it has started
        reply = decode((await nc.request(EXECUTOR_STATUS, b"{}", timeout=5)).data, ExecutorStatus)
        if reply.sandbox:
            break
        await asyncio.sleep(0.05)
    assert reply.sandbox["process"] == "on"
    assert reply.sandbox["rlimits"] == "on" and reply.sandbox["no_new_privs"] == "on"


def _request(code: str, deadline: float = 5.0, *tools: Any) -> Any:
    from statek_bus.authoring.futures import REGISTRY, StepRuntime
    from statek_bus.authoring.tools import SYSTEM_TOOLS, JobContext
    from statek_bus.runtime.coderunner import ExecRequest, ExecUnit, SandboxSession
    from statek_bus.sandbox.restricted import SandboxPolicy

    env = StepRuntime("job1", None, None, None)
    ctx = JobContext(job_id="job1", agent="a", params={}, namespace={}, extras={"env": env})
    session = SandboxSession(
        policy=SandboxPolicy(restricted=False),
        trusted_policy=SandboxPolicy(restricted=False),
        tools={t.name: t for t in (*SYSTEM_TOOLS, *tools)},
        job=ctx,
        workspace=None,
        shared_vars={},
        registry=REGISTRY,
    )
    unit = ExecUnit(kind="code", code=code, site="0.0")
    return ExecRequest(session=session, units=[unit], deadline_seconds=deadline)


async def test_a_worker_killed_from_outside_is_its_steps_error_and_the_runner_goes_on() -> None:
    from statek_bus.runtime.procrunner import ProcessCodeRunner

    runner = ProcessCodeRunner(workers=2)
    try:
        code = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
        result = await runner.run(_request(code))
        assert result.units[0].error.startswith("WorkerCrash: your code crashed the interpreter (SIGKILL)")
        assert result.workspace is None  # the job keeps the workspace it had before the step
        after = await runner.run(_request("print('alive')"))
        assert after.units[0].console == ["alive"]
    finally:
        await runner.aclose()


async def test_a_dead_fork_server_is_restarted_for_the_next_step() -> None:
    import signal

    from statek_bus.runtime.procrunner import ProcessCodeRunner

    runner = ProcessCodeRunner(workers=1)
    try:
        await asyncio.to_thread(runner.wait_started)
        server = runner._server._proc
        assert server is not None
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.to_thread(server.wait)
        result = await runner.run(_request("print('after restart')"))
        assert result.units[0].console == ["after restart"], result.units
    finally:
        await runner.aclose()


async def test_a_spare_worker_that_died_before_its_step_is_nobodys_error() -> None:
    import signal
    import time

    from statek_bus.runtime.procrunner import ProcessCodeRunner

    runner = ProcessCodeRunner(workers=1, spare=2)
    try:
        await asyncio.to_thread(runner.wait_started)
        started = time.monotonic()
        while runner._spare.qsize() < 2:  # both spares forked ahead (a bound, not a timing)
            assert time.monotonic() - started < 60, "the spares were never forked"
            await asyncio.sleep(0.01)
        spares = [runner._spare.get_nowait() for _ in range(2)]
        for sock, pid, gen in spares:
            os.kill(pid, signal.SIGKILL)  # killed from outside while waiting: they never see a step
            runner._spare.put((sock, pid, gen))
        result = await runner.run(_request("print('ran')"))
        assert result.units[0].console == ["ran"], result.units
    finally:
        await runner.aclose()


async def test_an_oversized_workspace_is_not_saved_and_the_job_is_told() -> None:
    from statek_bus.runtime.procrunner import ProcessCodeRunner

    runner = ProcessCodeRunner(workers=1)
    try:
        result = await runner.run(_request("big = 'x' * (40 * 2**20)\nprint('made')"))
        assert result.units[0].console == ["made"] and result.workspace is None
        assert any(n.startswith("Warning: the workspace is ") for n in result.notes), result.notes
    finally:
        await runner.aclose()


async def test_a_compromised_worker_cannot_call_a_hidden_tool() -> None:
    from statek_bus.runtime.procrunner import ProcessCodeRunner
    from tests.sandbox_agents import secret_tool

    # Restricted mode off stands for a full escape: the code speaks the protocol itself.
    code = (
        "from statek_bus.runtime import worker\nfrom statek_bus.sandbox.protocol import ToolCall\n"
        "print(worker._channel().request(ToolCall(tool='secret_tool')))"
    )
    runner = ProcessCodeRunner(workers=1)
    try:
        result = await runner.run(_request(code, 5.0, secret_tool))
        assert result.units[0].console == ["NameError: tool 'secret_tool' is not exposed to this job"]
    finally:
        await runner.aclose()


async def test_a_compromised_worker_can_signal_only_itself() -> None:
    from statek_bus.runtime.procrunner import ProcessCodeRunner

    # Restricted mode off stands for a full escape. Spare workers (same uid, same process group)
    # are waiting beside it: on their own they would be reachable by kill(0) and kill(-1).
    code = (
        "import os\n"
        f"for target in (0, -1, os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        os.kill(target, 0)\n"
        "        print('reached', target)\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
        "os.kill(os.getpid(), 0)\n"
        "print('itself: reached')"
    )
    runner = ProcessCodeRunner(workers=1, spare=2)
    try:
        assert (await asyncio.to_thread(runner.wait_started))["seccomp"] == "on"
        result = await runner.run(_request(code))
        assert result.units[0].console == ["refused"] * 4 + ["itself: reached"], result.units
    finally:
        await runner.aclose()


async def test_steps_in_fresh_workers_draw_different_random_numbers() -> None:
    from statek_bus.runtime.procrunner import ProcessCodeRunner

    runner = ProcessCodeRunner(workers=1, spare=2)
    try:
        code = "import random\nprint(random.getrandbits(64))"
        draws = [(await runner.run(_request(code))).units[0].console[0] for _ in range(3)]
        assert len(set(draws)) == 3, draws  # every worker reseeds: no two steps share a stream
    finally:
        await runner.aclose()


def _fork_servers_of_this_process() -> list[int]:
    import os
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if (
            ppid == os.getpid()
            and b"statek_bus.runtime.worker" in cmdline
            and stat.rsplit(")", 1)[1].split()[0].encode() != b"Z"
        ):
            found.append(int(proc.name))
    return found


async def test_a_runner_closed_while_it_boots_leaves_no_fork_server_and_no_open_socket() -> None:
    import asyncio
    import gc
    import warnings

    from statek_bus.runtime.procrunner import ProcessCodeRunner

    for _ in range(3):  # closed at once, while the fork server and the spare workers are starting
        runner = ProcessCodeRunner(workers=1, spare=2)
        await runner.aclose()
    await asyncio.sleep(1.0)  # a refill thread that raced the close would have restarted a server by now
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        gc.collect()
    assert _fork_servers_of_this_process() == []


def _sends(body: str) -> str:
    """Model code that, restricted mode off (a full escape), sends the frame ``body`` (a Python bytes
    expression) to the executor itself, then waits."""
    return (
        "from statek_bus.runtime import worker\nfrom statek_bus.sandbox import protocol\n"
        f"body = {body}\n"
        "worker._channel().sock.sendall(protocol._HEADER.pack(len(body)) + body)\n"
        "import time\ntime.sleep(5)"
    )


FORGED = {
    # a tool's argument whose payload is of the wrong type: AttributeError escaped the runner
    "tool argument": (
        "from statek_bus.runtime import worker\nfrom statek_bus.sandbox.protocol import ToolCall\n"
        "try:\n    worker._channel().request(ToolCall(tool='add', args=[{'$t': 'uuid', 'v': 1}, 1]))\n"
        "except Exception as e:\n    print(type(e).__name__)"
    ),
    # a step report whose exit value decodes to nothing: ValueError escaped the runner
    "step report": (
        "from statek_bus.runtime import worker\nfrom statek_bus.sandbox.protocol import StepDone, write_frame\n"
        "write_frame(worker._channel().sock, StepDone(units=[], exited=True, exit_value={'$t': 'zz'}))\n"
        "import time\ntime.sleep(5)"
    ),
    # a value msgspec keeps in bytes but cannot decode: the executor would fail as it saved it
    "undecodable value": _sends('b\'{"k":"done","units":[],"workspace":{"values":{"x":1e400}}}\''),
    # 1.6 MB of empty definitions beside a value that sends the workspace to the object store: each
    # decoded into an object on the executor's event loop (30 MB cost it 0.9 s a step)
    "definitions past the limit": _sends(
        "b'{\"k\":\"done\",\"units\":[],\"workspace\":{\"values\":{\"big\":\"' + b'x' * 300_000"
        " + b'\"},\"definitions\":[' + b','.join([b'{\"names\":[],\"source\":\"\"}'] * 60_000) + b']}}'"
    ),
    # a frame nested 5,000 deep: msgspec's RecursionError escaped the runner
    "deep frame": _sends(
        "b'{\"k\":\"done\",\"units\":[],\"exit_value\":' + b'[' * 5000 + b']' * 5000 + b'}'"
    ),
}


@pytest.mark.parametrize("name", list(FORGED))
async def test_a_compromised_workers_forged_frame_is_its_own_steps_error(name: str) -> None:
    """Never an exception out of the runner, which the executor took for its own fault (the step
    retried three times, then the job failed as an internal error)."""
    from statek_bus.runtime.procrunner import ProcessCodeRunner
    from tests.sandbox_agents import add

    runner = ProcessCodeRunner(workers=1)
    try:
        result = await runner.run(_request(FORGED[name], 10.0, add))
        if name == "tool argument":
            assert result.units[0].console == ["TypeError"], result.units
        else:
            assert (result.units[0].error or "").startswith("WorkerCrash: "), result.units
        again = await runner.run(_request("print(1 + 1)"))
        assert again.units[0].console == ["2"]
    finally:
        await runner.aclose()


async def test_a_workers_workspace_reaches_the_executor_in_its_bytes() -> None:
    """Never decoded there: 32 MB of 4,299-digit JSON ints (or of ``[[], ...]``) a compromised worker
    sent cost the executor 1.9-2.3 s a step to decode and encode again, on its event loop."""
    import msgspec

    from statek_bus.runtime.procrunner import ProcessCodeRunner

    ints = "b','.join([b'9' * 4299] * 400)"
    code = _sends(f'b\'{{"k":"done","units":[],"workspace":{{"values":{{"x":[\' + {ints} + b\']}}}}}}\'')
    runner = ProcessCodeRunner(workers=1)
    try:
        result = await runner.run(_request(code, 10.0))
        stored = result.workspace.values["x"]
        assert isinstance(stored, msgspec.Raw) and bytes(stored).startswith(b"[" + b"9" * 4299 + b","), result
    finally:
        await runner.aclose()


async def test_a_block_of_four_thousand_statements_runs_within_its_budget() -> None:
    """Each statement's source was cut by ``ast.get_source_segment``, which splits the whole block
    again on every call, character by character: 4,000 lines of ``x = n`` (48 kB, under the AST
    node limit) took over the step's 11 CPU seconds to compile (a ResourceError)."""
    from statek_bus.runtime.procrunner import ProcessCodeRunner

    code = "".join(f"x{i} = {i}\n" for i in range(4000)) + "print(x0 + x3999)"
    runner = ProcessCodeRunner(workers=1)
    try:
        result = await runner.run(_request(code, 60.0))
        assert [u.error for u in result.units] == [None], result.units
        assert result.units[0].console == ["3999"], result.units
    finally:
        await runner.aclose()


async def test_definitions_past_their_limit_are_not_saved_and_the_step_says_so() -> None:
    from statek_bus.runtime.procrunner import ProcessCodeRunner
    from statek_bus.runtime.workspace import MAX_DEFINITIONS_BYTES

    doc = "x" * 100_000
    runner = ProcessCodeRunner(workers=1)
    try:
        saved = None
        for i in range(11):  # a function of 100 kB a step: the eleventh passes 1 MiB
            request = _request(f'def f{i}():\n    "{doc}"\nn = {i}', 20.0)
            request.session.workspace_data = saved
            result = await runner.run(request)
            assert result.units[0].error is None, result.units
            saved = result.workspace or saved
            if i < 10:
                assert result.workspace is not None and not result.notes, (i, result.notes)
        assert result.workspace is None, "the job keeps the workspace it had"
        assert any(
            n.startswith("Warning: the workspace's definitions") and str(MAX_DEFINITIONS_BYTES) in n
            for n in result.notes
        ), result.notes
    finally:
        await runner.aclose()


async def test_a_large_workspaces_undecodable_value_is_that_values_warning_in_the_next_step() -> None:
    """Kept in its bytes by the executor, it reaches the next worker, which drops that value with a
    warning and restores the rest (the whole frame failed to decode there: a WorkerCrash a step)."""
    from statek_bus.runtime.procrunner import ProcessCodeRunner

    big = "b'\"' + b'x' * 1_200_000 + b'\"'"
    code = _sends(
        f'b\'{{"k":"done","units":[],"workspace":{{"values":{{"x":1e400,"big":\' + {big} + b\',"n":1}}}}}}\''
    )
    runner = ProcessCodeRunner(workers=1)
    try:
        first = await runner.run(_request(code, 10.0))
        assert first.workspace is not None and list(first.workspace.values) == ["x", "big", "n"], first
        request = _request("print(n, len(big))")
        request.session.workspace_data = first.workspace
        after = await runner.run(request)
        assert after.units[0].console == ["1 1200000"], after.units
        assert any(n.startswith("Warning: could not restore x") for n in after.notes), after.notes
    finally:
        await runner.aclose()
