"""Agents of the shared-context tests: a writer, a reader bound to a superset of its specifiers, an outsider."""

from __future__ import annotations

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
        'exit("written")',
    ],
)
READER = _agent(
    "ctx_reader",
    [
        "print(tone, customer['name'])\nprint_locals('ENTITY')",
        'tone = "casual"',
        'shared_context_set_var("PREFERENCE", "tone", "casual", "alice likes it casual")\nexit(tone)',
    ],
    user="alice",
)
OUTSIDER = _agent("ctx_outsider", ["print(tone)", 'exit("never bound to acme")'], user="")
OUTSIDER.update_warmup_def("x = 0\n")

AGENTS = [WRITER, READER, OUTSIDER]
