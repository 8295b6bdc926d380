"""Agents for the executor tests (``--agents tests.agents_fixture:AGENTS``), all on the scripted model."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from statek_bus.authoring.agents import Agent, HandlerAgent, HandlerContext, HandlerEvent, SupervisedAgent
from statek_bus.authoring.tools import current_job, tool
from statek_bus.authoring.waiting import create_new_job, subtask


@dataclass
class Point:
    """A dataclass the workspace may hold (declared by this module)."""

    x: int
    y: int


@tool
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first number.
        b: the second number.
    """
    print("add called", a, b)
    return a + b


@tool
def whoami() -> str:
    """The id of the job calling this tool."""
    return current_job().job_id


@tool
def fail(reason: str) -> None:
    """Always raises.

    Args:
        reason: the error message.
    """
    raise ValueError(reason)


@tool(hidden=True)
def secret_tool() -> str:
    """A hidden tool: trusted warmup code only."""
    return "classified"


HANDLED: list[tuple[Any, str | None]] = []
"""What ``_on_error`` received (the in-process executor of a test shares this module)."""


def _on_error(context: Any, error: str | None = None) -> None:
    HANDLED.append((context, error))


@tool(error_handler=_on_error)
def register(name: str) -> str:
    """Register an error handler bound to ``name``.

    Args:
        name: the handler's context.
    """
    return name


def scripted(role: str, script: list[Any], **kw: Any) -> SupervisedAgent:
    """A SupervisedAgent on the scripted model."""
    metadata = {"MODEL": f"scripted/{role}", "SCRIPT": script, **kw.pop("metadata", {})}
    tools = [add, whoami, fail, secret_tool, register, *kw.pop("tools", [])]
    return SupervisedAgent(role, "You write Python.\n{tools}", tools, metadata, **kw)


BASIC = scripted("t_basic", ["x = 1", 'exit("ok")'], warmup='print("received event:", event)')

WORKSPACE = scripted(
    "t_workspace",
    [
        "secret = 42\nwhen = None\n"
        "def double(v):\n    return v * 2\n\n"
        "class Box:\n    def __init__(self, v):\n        self.v = v\n    def get(self):\n        return double(self.v)\n\n"
        "box = Box(5)\nhalf = lambda v: v // 2\n",
        "import time\ntime.sleep(1.0)\nprint('slept')",
        "print(double(secret), Box(secret).get())\n"
        "exit(str(double(secret)) + '/' + str(Box(1).get()) + '/' + str(box.get()) + '/' + str(half(secret)))",
    ],
)

TYPES = scripted(
    "t_types",
    [
        "print(dt, d, t)\nimport decimal\nisinstance(dec, decimal.Decimal)",
        "print(dt.year, d.month, t.hour, dec + 1, str(u)[:4], tup[0], sorted(st), sorted(fs), by, pt.x + pt.y, nested['k'][1])\n"
        "exit('types ok')",
    ],
)

UNPERSISTABLE = scripted(
    "t_unpersistable",
    ["gen = (i for i in range(3))\nkeep = 5\nprint('made')", "print(keep)\nexit('after drop')"],
)

CONSOLE = scripted(
    "t_console",
    [
        "print({'a': 2})\n[i * i for i in range(4)]\nlist(range(30))\n'text'",
        "1 / 0",
        'exit("recovered")',
    ],
)

TURNS = scripted("t_turns", ["x = 1"] * 6)
CONSECUTIVE = scripted("t_consecutive", ["1 / 0", "[][1]", 'exit("never")'])
TOKENS = scripted("t_tokens", ["x = '" + "a" * 60_000 + "'", 'exit("never")'])
BARE_EXIT = scripted("t_bare_exit", ["exit()\nprint('still here')", 'exit("finished")'])

SANDBOX_ATTEMPTS = [
    "import os",
    "open('/etc/passwd')",
    "eval('1+1')",
    "getattr(1, 'real')",
    "type(1)",
    "().__class__",
    "x = [1]\nx._private",
    "secret_tool()",
    "import subprocess",
    "from os import path",
    "__import__('os')",
    "exec('x = 1')",
    "globals()['x'] = 1",
    "vars()",
    "breakpoint()",
    "print.__self__",
    "(lambda: 0).__globals__",
    "'{0.__class__}'.format(1)",
    "import collections.abc",
    "add.fn = print",
]
SANDBOX = [scripted(f"t_sandbox_{i}", [code, 'exit("refused")']) for i, code in enumerate(SANDBOX_ATTEMPTS)]
SANDBOX_OK = scripted(
    "t_sandbox_ok",
    ["import json, math, datetime\nprint(json.dumps({'a': 1}), math.sqrt(16))", 'exit("allowed")'],
)
BIG_SOURCE = scripted("t_big_source", ["x=1\n" * 50_001, 'exit("refused")'])

TOOLS = scripted(
    "t_tools",
    [
        {
            "text": "",
            "tool_calls": [
                {"name": "add", "arguments": {"a": 2, "b": 40}},
                {"name": "nope", "arguments": {}},
                {"name": "fail", "arguments": {"reason": "boom"}},
            ],
        },
        "n = 5\nprint(add(n, 1), whoami())\nadd('n', 'n')",
        'exit("tools done")',
    ],
)

DIALOG = scripted(
    "t_dialog",
    ["Let me check.\n```python\nx = 6 * 7\nprint(x)\n```", "The answer is 42."],
    metadata={"CHAT_STYLE": "MD_DIALOG"},
)
DIRECT = scripted(
    "t_direct",
    [
        {
            "text": "Computing.",
            "tool_calls": [{"name": "python_cli", "arguments": {"code": "y = 2 ** 10\nprint(y)"}}],
        },
        "Done: 1024",
    ],
    metadata={"CHAT_STYLE": "DIRECT"},
)

LOOP = scripted("t_loop", ["n = 0\nwhile True:\n    n += 1", 'exit("survived")'])

RESTART = scripted("t_restart", ['exit("first")', 'exit("second")'])

SLOW = scripted(
    "t_slow",
    [
        "total = 0\ndef inc(v):\n    return v + 1\n",
        "import time\ntime.sleep(3)\ntotal = inc(total)",
        "total = inc(total)",
        'exit("total=" + str(total))',
    ],
)

NOTE = scripted("t_note", ["noted = 0", "import time\ntime.sleep(1.5)\nexit('early')", 'exit("after note")'])

HANDLERS = scripted("t_handlers", ['register("a")\nregister("b")', "1 / 0", "[][1]", 'exit("never")'])
SHORT = scripted("t_short", ["x = 1"])
PANIC = scripted("t_panic", ["panic()", "panic()", 'exit("escalated")'])

QUICK = scripted("t_quick", ['exit("done " + str(n))'])

SLOW_MODEL = scripted("t_slow_model", ['exit("answered")'], metadata={"SCRIPT_LATENCY": 3})

WARMUP_TOOL = SupervisedAgent(
    "t_warmup_tool",
    "",
    [add, secret_tool],
    {"MODEL": "scripted/warmup", "SCRIPT": ['exit(str(hidden_value) + " " + str(first))']},
    warmup=(
        "#STATEK: hidden = True\nhidden_value = secret_tool()\n"
        "# ----------\n"
        "add(1, 2)  #STATEK: as tool\nfirst = 1\n"
    ),
)

COUNTER = HandlerAgent("t_counter", "Counts the events sent to it in its state.")


@COUNTER.on_create
async def _counter_create(ctx: HandlerContext, params: dict[str, Any]) -> None:
    await ctx.state.create({"count": 0, "history": []})


@COUNTER.on_event
async def _counter_event(ctx: HandlerContext, event: HandlerEvent) -> None:
    state = await ctx.state.get()
    assert state is not None
    await ctx.state.update(
        {"count": state.state["count"] + 1, "history": [*state.state["history"], event.content.content]}
    )
    await ctx.send_message(f"count is {state.state['count'] + 1}")


ECHO = HandlerAgent("t_echo", "Answers every message with its first word: a handler that lives long.")


@ECHO.on_event
async def _echo_event(ctx: HandlerContext, event: HandlerEvent) -> None:
    await ctx.send_message(f"got {event.content.content.split(':')[0]}")


SLOW_COUNTER = HandlerAgent("t_slow_counter", "Takes 50 ms per event: a crash lands in the middle of a step.")


@SLOW_COUNTER.on_event
async def _slow_event(ctx: HandlerContext, event: HandlerEvent) -> None:
    import asyncio

    await asyncio.sleep(0.05)


# --- waiting: child jobs, futures, timers, sub-tasks (tests/runtime/test_waits*.py) --------------------------


@subtask
def research(topic: str, **kwargs: Any) -> Any:
    """Start a research sub-task on ``topic``.

    Args:
        topic: what to research.
    """
    return create_new_job("t_w_sub_child", {"topic": topic})


W_CHILD = scripted("t_w_child", ['exit("child done")'])
W_SLOW_CHILD = scripted("t_w_slow_child", ['sleep(0.6)\nexit("slow done")'])
W_FAIL_CHILD = scripted("t_w_fail_child", ["1 / 0", "[][1]", 'exit("never")'])
W_PARENT = scripted(
    "t_w_parent",
    ['s, j = delegate_task("t_w_child")\nprint("before")\nprint(s)\nprint(j.id)', 'exit("parent " + str(s))'],
)
W_GRAND = scripted("t_w_grand", ['s, j = delegate_task("t_w_parent")\nprint(s)', 'exit("grand " + s)'])
W_PARENT_FAIL = scripted(
    "t_w_parent_fail",
    [
        's, j = delegate_task("t_w_fail_child")\nm = delegate_mute_task("t_w_fail_child")\nprint(s)\nprint(m)',
        "exit(s)",
    ],
)
W_ALL = scripted(
    "t_w_all",
    [
        'a = delegate_task("t_w_child")\nb = delegate_task("t_w_slow_child")\n'
        'c = delegate_mute_task("t_w_child")\nr = get_all(a, b, c)\nprint(r[0][0], r[1][0], r[2])\n'
        'first = get_any(delegate_task("t_w_slow_child"), sleep(30))\nprint(first[0])',
        'exit("all")',
    ],
)
W_TIMER = scripted("t_w_timer", ['print("start")\nsleep(5)\nprint("woke")', 'exit("timer ok")'])
W_LONG = scripted("t_w_long", ["sleep(3600)", 'exit("woke after an hour")'])
W_MANY = scripted("t_w_many", ["exit(s)"], warmup='s, j = delegate_task("t_w_child")\nprint(s)')
W_LOCALE = scripted(
    "t_w_locale",
    [
        'a = create_new_job("t_w_child")\nb = create_new_job("t_w_child", locale="en-US")\nprint(get_all(a, b))',
        'exit("ok")',
    ],
)
W_ERR = scripted(
    "t_w_err",
    [
        's, j = delegate_task("t_w_child")\nprint("a")\nprint(s)\n1 / 0\nprint("unreached")',
        'print("first")\nprint("second")\nexit("fine")',
    ],
)
W_SUB_PARENT = scripted(
    "t_w_sub_parent",
    [
        'h = research("cats", id="sq")\nprint("started", h.id)',
        'exit("parent done")',
        'exit("got " + str(find_sub_task_handler(id="sq")))',
    ],
    tools=[research],
)
W_SUB_CHILD = scripted("t_w_sub_child", ["complete_sub_task(result=len(topic) * 5)", 'exit("child ok")'])
W_HOLD = scripted("t_w_hold", ['sleep(1.0)\nprint("resumed")', 'exit("held")'])
MARKS: list[str] = []
"""What ``mark`` recorded (the in-process executor of a test shares this module)."""


@tool
def mark(text: str) -> str:
    """Record a side effect.

    Args:
        text: what to record.
    """
    MARKS.append(text)
    return text


F_POISON = scripted(
    "t_f_poison",
    [
        'armed = False\nclass P:\n    if armed:\n        exit("boom")\narmed = True\nprint("armed")',
        "print(2)",
        'exit("done")',
    ],
)
F_REPLAY = scripted(
    "t_f_replay",
    [
        'class Mailer:\n    status = mark("class body")\n'
        'def deco(f):\n    mark("decorator")\n    return f\n@deco\ndef g():\n    return 1\n'
        'def h():\n    return mark("called")\nprint(Mailer.status, g())',
        "print(h())",
        "print(3)",
        'exit("replayed")',
    ],
    tools=[mark],
)


class Poison(BaseException):
    """What a misbehaving application tool raises: not an ``Exception``, so no ``except`` of the
    model's code or of the engine takes it."""


@tool
def poison() -> str:
    """Raise a BaseException, as a library calling ``sys.exit`` or raising its own signal would."""
    raise Poison("a tool's BaseException")


TWIN_ENTERED = threading.Event()
"""Set when ``twin_gate`` is entered: the step holding it has read its record."""
TWIN_RELEASE = threading.Event()
"""What ``twin_gate`` waits for (the in-process executor of a test shares this module)."""


@tool
def twin_gate() -> str:
    """Hold the step until the test lets it go (at most 30 s)."""
    TWIN_ENTERED.set()
    TWIN_RELEASE.wait(30)
    return "released"


F_POISON_TOOL = scripted("t_f_poison_tool", ["poison()", 'exit("never")'], tools=[poison])
F_TWIN = scripted("t_f_twin", ["twin_gate()", 'exit("twin done")'], tools=[twin_gate])
F_HOLD = scripted("t_f_hold", ['sleep(1.0)\nmark("resumed after cancel")', 'exit("held")'], tools=[mark])
F_WARM = scripted("t_f_warm", ['exit("never")'], warmup='mark("warmup ran")', tools=[mark])
FAULT_AGENTS = [F_POISON, F_REPLAY, F_HOLD, F_WARM, F_POISON_TOOL, F_TWIN]
PP_FINAL = scripted(
    "t_pp_final",
    ["The answer is 4.", "The answer is 4, checked."],
    metadata={"CHAT_STYLE": "MD_DIALOG", "POST_PROCESSORS": "FinalCheck(max_llm_actions=2)"},
)
SB_IMPORT = scripted("t_sb_import", ["import secrets\nprint(len(secrets.token_hex(4)))", 'exit("done")'])
PP_NONE = scripted("t_pp_none", ["The answer is 4."], metadata={"CHAT_STYLE": "MD_DIALOG"})
W_RESUME_PRINT = scripted(
    "t_w_resume_print",
    ["n = 0\nn = n + 1\nprint('before', n)\nsleep(1.0)\nprint('after', n)", "exit(str(n))"],
)

WAIT_AGENTS = [
    SB_IMPORT,
    PP_FINAL,
    PP_NONE,
    W_RESUME_PRINT,
    W_CHILD,
    W_SLOW_CHILD,
    W_FAIL_CHILD,
    W_PARENT,
    W_GRAND,
    W_PARENT_FAIL,
    W_ALL,
    W_TIMER,
    W_LONG,
    W_MANY,
    W_LOCALE,
    W_ERR,
    W_SUB_PARENT,
    W_SUB_CHILD,
    W_HOLD,
]

TALLIED: list[tuple[str, int]] = []


@tool
def tally(turn: int) -> None:
    """Note that the calling job's code ran for ``turn`` (each run of a step adds one).

    Args:
        turn: the job's turn.
    """
    TALLIED.append((current_job().job_id, turn))


LONG_TALK = scripted(
    "t_long_talk",
    ["turn += 1\ntally(turn)\nprint(str(turn % 10) * 90_000)"] * 14 + ['exit("talked")'],
    warmup="turn = 0",
    tools=[tally],
)
"""Each turn prints 90 kB, which its chat log keeps: the record outgrows 1 MB by turn 12."""

AGENTS: list[Agent | HandlerAgent] = [
    LONG_TALK,
    BASIC,
    WORKSPACE,
    TYPES,
    UNPERSISTABLE,
    CONSOLE,
    TURNS,
    CONSECUTIVE,
    TOKENS,
    BARE_EXIT,
    *SANDBOX,
    SANDBOX_OK,
    BIG_SOURCE,
    TOOLS,
    DIALOG,
    DIRECT,
    LOOP,
    RESTART,
    SLOW,
    QUICK,
    SLOW_MODEL,
    NOTE,
    HANDLERS,
    SHORT,
    PANIC,
    WARMUP_TOOL,
    COUNTER,
    ECHO,
    SLOW_COUNTER,
    *WAIT_AGENTS,
    *FAULT_AGENTS,
]


# ==================================================================================================
# Helpers shared by the executor tests (kept here: `tests` is importable by service processes too)
# ==================================================================================================

AGENTS_SPEC = "tests.agents_fixture:AGENTS"
"""What the test executors are started with."""


async def submit(
    js: Any, agent: str, shared_vars: dict[str, Any] | None = None, job_id: str | None = None
) -> str:
    """Create a job and queue its first step, exactly as ``statek.jobs.submit`` does."""
    import uuid

    from statek_bus.jobs.store import JobStore, utcnow
    from statek_bus.wire.messages import JobRecord
    from statek_bus.wire.values import TypeRegistry, to_json

    store = await JobStore.open(js)
    reg = TypeRegistry([Point])
    now = utcnow()
    record = JobRecord(
        id=job_id or f"job-{uuid.uuid4().hex[:12]}",
        agent=agent,
        created_at=now,
        updated_at=now,
        shared_vars={k: to_json(v, reg, k) for k, v in (shared_vars or {}).items()},
    )
    await store.create(record)
    await store.enqueue(record.id, 0, agent=agent)
    return record.id


async def wait_status(js: Any, job_id: str, status: Any, timeout: float = 150.0) -> Any:
    """The job's record once it has ``status``: a KV watch on its key, woken by each commit (no polling)."""
    import asyncio

    from statek_bus.jobs.store import JobStore
    from statek_bus.wire.messages import JobRecord, decode
    from statek_bus.wire.subjects import job_key

    store = await JobStore.open(js)
    watcher = await store.kv.watch(job_key(job_id))
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue  # the end of the initial values, or a delete marker
                last = decode(entry.value, JobRecord)
                if last.status is status:
                    return last
    except TimeoutError:
        seen = f"{last.status} step {last.step}" if last is not None else "no record"
        raise TimeoutError(f"job {job_id} not {status} within {timeout}s: {seen}") from None
    finally:
        await watcher.stop()
    raise AssertionError("the watch ended")


async def wait_done(js: Any, job_id: str, timeout: float = 150.0) -> Any:
    """The job's record once it is DONE (event-driven, see :func:`wait_status`)."""
    from statek_bus.wire.messages import JobStatus

    return await wait_status(js, job_id, JobStatus.DONE, timeout)


async def wait_consumed(nc: Any, job_id: str, timeout: float = 120.0) -> Any:
    """The job's record once it is DONE with every inbox item stored so far consumed (a KV watch).

    Call it after the sends it waits for returned: the newest item's sequence is read first.
    """
    import asyncio

    from statek_bus.jobs.inbox import JobInbox
    from statek_bus.jobs.store import JobStore
    from statek_bus.mesh.settings import Settings
    from statek_bus.wire.messages import JobRecord, JobStatus, decode
    from statek_bus.wire.subjects import job_key

    js = nc.jetstream()
    last_seq = await JobInbox(nc, js, Settings()).last_seq(job_id)
    watcher = await (await JobStore.open(js)).kv.watch(job_key(job_id))
    try:
        async with asyncio.timeout(timeout):
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                record = decode(entry.value, JobRecord)
                if record.status is JobStatus.DONE and record.inbox_seq >= last_seq:
                    return record
    finally:
        await watcher.stop()
    raise AssertionError("the watch ended")


def chat_log(record: Any) -> Any:
    """The engine's chat log of a record."""
    from statek_bus.runtime.engine_state import load_state

    return load_state(record).log


def console(record: Any) -> list[str]:
    """Every console entry of a job, in order."""
    return [line for item in chat_log(record) for line in item.console]


def services(settings: Any, *kinds: str, agents: str = AGENTS_SPEC) -> Any:
    """An async context manager running the given services in this process (``executor`` serves
    ``agents``, by default the fixture agents), in order; for the ``mesh`` fixtures of the tests."""
    import contextlib
    import importlib

    from statek_bus.mesh.service import running_service
    from statek_bus.ops.mesh import SERVICE_KINDS

    @contextlib.asynccontextmanager
    async def run() -> Any:
        s = settings.replace(agents=agents)
        async with contextlib.AsyncExitStack() as stack:
            for kind in kinds:
                factory = importlib.import_module(f"statek_bus.services.{kind}").build
                await stack.enter_async_context(running_service(factory, s, name=SERVICE_KINDS[kind]))
            yield s

    return run()


def family(
    parent_id: str, status: Any, *, child: str = "0.0.0.0", exit_status: str = "done"
) -> tuple[Any, Any]:
    """A parent record at step 3 in ``status`` and its DONE child ``<parent_id>/<child>`` at step 2,
    not stored yet: the two sides of a wake-up for the tests that drive one by hand."""
    from statek_bus.jobs.store import utcnow
    from statek_bus.wire.messages import JobRecord, JobStatus

    now = utcnow()
    parent = JobRecord(
        id=parent_id, agent="t_w_parent", status=status, step=3, created_at=now, updated_at=now
    )
    kid = JobRecord(
        id=f"{parent_id}/{child}",
        agent="t_w_child",
        status=JobStatus.DONE,
        parent_id=parent_id,
        exit_status=exit_status,
        step=2,
        created_at=now,
        updated_at=now,
    )
    return parent, kid
