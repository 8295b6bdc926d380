"""Agents of the shared-context tests: a writer, a reader bound to a superset of its specifiers, an outsider."""

from __future__ import annotations

from statek_bus import (
    find_locals,
    get_current_agent,
    get_current_agent_name,
    perm_ctx_get,
    perm_ctx_set_unique,
    tool,
)
from statek_bus.authoring.agents import SupervisedAgent

_BIND = '#STATEK: hidden = True\ninit_shared_context("acme"{user})\n'


def _agent(role: str, script: list[str], user: str = "") -> SupervisedAgent:
    return SupervisedAgent(
        role,
        "You write Python.",
        [],
        {"MODEL": f"scripted/{role}", "SCRIPT": script},
        warmup=_BIND.format(user=f", {user!r}" if user else ""),
    )


WRITER = _agent(
    "ctx_writer",
    [
        'shared_context_set_var("PREFERENCE", "tone", "formal", "how the tenant writes")\n'
        'shared_context_set_var("ENTITY", "customer", {"name": "ACME", "tier": 2}, "the customer")\n'
        "print(tone, customer['tier'])",
        'try:\n    shared_context_set_var("ENTITY", "timer", [sleep(60)], "a future")\n'
        'except TypeError as e:\n    print("refused:", str(e))\nexit("written")',
    ],
)
READER = _agent(
    "ctx_reader",
    [
        "print(tone, customer['name'])\nprint_locals('ENTITY')\nprint_locals('PREFERENCE', 'int')",
        'tone = "casual"',
        'shared_context_set_var("PREFERENCE", "tone", "casual", "alice likes it casual")\nexit(tone)',
    ],
    user="alice",
)
OUTSIDER = _agent("ctx_outsider", ["print(tone)", 'exit("never bound to acme")'], user="")
OUTSIDER.update_warmup_def("x = 0\n")


@tool
def remember(note: str) -> str:
    """Keep a note in the job's persistent context; returns the name it got.

    Args:
        note: the note.
    """
    return perm_ctx_set_unique("note", note)


@tool
def recall() -> None:
    """Print the notes, the agent, and the workspace's integers."""
    print(perm_ctx_get("note"), perm_ctx_get("note_1"), perm_ctx_get("note_2", "none"))
    print(get_current_agent_name(), get_current_agent().role, sorted(find_locals(int).items()))


PERM = SupervisedAgent(
    "ctx_perm",
    "You write Python.",
    [remember, recall],
    {
        "MODEL": "scripted/ctx_perm",
        "SCRIPT": ['n = 3\nprint(remember("first"))', 'print(remember("second"))\nrecall()', 'exit("ok")'],
    },
)

SAME_STEP = SupervisedAgent(
    "ctx_same_step",
    "You write Python.",
    [],
    {"MODEL": "scripted/ctx_same_step", "SCRIPT": ["exit(tone)"]},
    warmup='#STATEK: hidden = True\ninit_shared_context("acme")\nprint("same step:", tone)\n',
)

AGENTS = [WRITER, READER, OUTSIDER, PERM, SAME_STEP]
