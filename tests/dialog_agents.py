"""Agents for the dialog, reminder, researcher, dispatcher and provider-parameter tests
(``--agents tests.dialog_agents:AGENTS``), all on the scripted model."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from statek_bus import DialogAgent, MessageDispatcher, RecurringReminder, Researcher, SupervisedAgent, tool

AGENTS_SPEC = "tests.dialog_agents:AGENTS"

SENT: list[tuple[str, str | None]] = []
"""What the agents' ``send_message`` received (the in-process executor of a test shares this module)."""
DISPATCHED: list[str] = []
"""Where the dispatcher sent conversations."""


_sent = threading.Condition()


def send(body: str, media: str | None = None) -> str:
    """Record a message to the user; the user's reply to a question is ``1969``."""
    with _sent:
        SENT.append((body, media))
        _sent.notify_all()
    return "1969"


async def sent(n: int, timeout: float = 30.0) -> list[tuple[str, str | None]]:
    """:data:`SENT` once it holds ``n`` messages (woken by each send, no polling)."""

    def wait() -> bool:
        with _sent:
            return _sent.wait_for(lambda: len(SENT) >= n, timeout)

    if not await asyncio.to_thread(wait):
        raise TimeoutError(f"{len(SENT)} messages sent, not {n}: {SENT}")
    return list(SENT)


def broken_send(body: str, media: str | None = None) -> None:
    """A chat backend that is down."""
    raise RuntimeError("chat service down")


def _meta(role: str, script: list[Any], **extra: Any) -> dict[str, Any]:
    return {"MODEL": f"scripted/{role}", "SCRIPT": script, **extra}


CHAT = DialogAgent(
    send,
    role="t_d_chat",
    system_prompt="You chat with the user.\n{tools}",
    metadata=_meta(
        "t_d_chat",
        [
            "Let me work it out.\n```python\nx = 6 * 7\nprint(x)\n```",
            "The answer is 42. See /media/img/chart.png",
            "```python\nanswer('Here is the chart again.', media='/media/img/chart.png')\n```",
        ],
    ),
)
CHAT.set_reminder(RecurringReminder("Remind the user that the chart can be sent again.", min_dialog_len=2))

LINKS = DialogAgent(
    send,
    role="t_d_links",
    metadata=_meta("t_d_links", ["Read [the guide](https://example.org/guide) and /media/a.png"]),
)
BROKEN = DialogAgent(broken_send, role="t_d_broken", metadata=_meta("t_d_broken", ["Hello there."]))

RESEARCHER = Researcher(
    send,
    role="t_d_research",
    system_prompt="You research.\n{tools}",
    metadata=_meta("t_d_research", ['year = ask("Which year?")\nprint("user said", year)', 'answer("It was " + year)']),
)


def chat_history() -> list[str]:
    """The conversation to route."""
    return ["user: my invoice is wrong"]


def start_new_thread(topic: str) -> str:
    """Start a new chat thread.

    Args:
        topic: what the thread is about.
    """
    return f"thread:{topic}"


def dispatch_to(agent: str) -> str:
    """Hand the conversation to an agent.

    Args:
        agent: the agent's role.
    """
    DISPATCHED.append(agent)
    return f"sent to {agent}"


DISPATCHER = MessageDispatcher(
    chat_history,
    start_new_thread,
    dispatch_to,
    role="t_d_dispatch",
    metadata=_meta(
        "t_d_dispatch",
        ['h = chat_history()\nprint(h[0])\nprint(start_new_chat_thread("billing"))\nprint(dispatch_to("billing"))', 'exit("routed")'],
    ),
)

def _coder(role: str, script: list[Any], model: str | None = None, **kw: Any) -> SupervisedAgent:
    """A SupervisedAgent writing Python on the scripted model ``model`` (default ``scripted/<role>``)."""
    meta = {"MODEL": model or f"scripted/{role}", "SCRIPT": script, **kw.pop("metadata", {})}
    return SupervisedAgent(role, "You write Python.", kw.pop("tools", ()), meta, **kw)


REASONING = _coder(
    "t_d_reasoning",
    [{"text": "x = 1", "reasoning": "x should start at one"}, "print('''{{reasoning}}''')", 'exit("reasoned")'],
)
REASONING_SWITCH = _coder(
    "t_d_reasoning_switch",
    [{"text": "panic()", "reasoning": "mid-level thoughts"}, "print('''{{reasoning}}''')", 'exit("switched")'],
    model="L:scripted/low,M:scripted/mid,H:scripted/high",
)
PARAMS = _coder(
    "t_d_params",
    ["print('''{{params}}''')", 'exit("ok")'],
    model="scripted/t_d_params/top_p=0.5&seed=7&rl=60&temperature=0.3",
)
BAD_PARAMS = _coder("t_d_bad_params", ['exit("never")'], model="scripted/t_d_bad_params/api_base=http://127.0.0.1:9")
FORMAT = _coder("t_d_format", ['{"python_code": "exit(\'from the json reply\')"}'])
@tool(hidden=True)
def vault() -> str:
    """A hidden tool: the agent's own trusted warmup only."""
    return "classified"


JOB = _coder(
    "t_d_job", ['exit(str(x + 2) + " " + str(y))'], warmup='print("agent warmup")\ny = "agent"', tools=[vault]
)
JOB_DIALOG = _coder(
    "t_d_job_dialog", ["The answer is 4.", "The answer is 4, checked."], metadata={"CHAT_STYLE": "MD_DIALOG"}
)
PARENT = _coder(
    "t_d_parent",
    ['base = 4\ns, j = delegate_task("t_d_job", warmup_code="x = base + 1")\nprint(s)', "exit(s)"],
)

AGENTS = [
    *(JOB, JOB_DIALOG, PARENT, CHAT, LINKS, BROKEN, RESEARCHER, DISPATCHER),
    *(REASONING, REASONING_SWITCH, PARAMS, BAD_PARAMS, FORMAT),
]

NO_MODEL = [SupervisedAgent("t_d_no_model", "You write Python.")]
"""An agents list an executor must refuse to load."""
