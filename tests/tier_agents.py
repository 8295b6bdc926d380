"""Agents for the data-tier tests (``--agents tests.tier_agents:AGENTS``): on the scripted model,
each a first reply of plain-data code (the bench's, or a hostile one), then ``exit("after")``."""

from __future__ import annotations

from statek_bus.authoring.agents import Agent, SupervisedAgent
from tests.sandbox_agents import add

AGENTS_SPEC = "tests.tier_agents:AGENTS"

BENCH_CODE = "result = n * 2\nexit(str(result))"
"""The peer bench's model reply (``bench/executor.py``, ``bench/peer_statek.py``)."""

HOSTILE = {
    "str_bomb": "s = 'a' * 10**9",
    "pow_bomb": "x = 10**10**10",
    "round_bomb": "r = round(1, -10**18)",
    "percent_bomb": "s = '%0999999999d' % 1",
    "nested": "a = [[0] * 500] * 500\nprint(len(str([a, a])), [a] == [a], len(sorted(a)))",
    "dag": "a = [0] * 999\nb = [a] * 999\nc = [b] * 999\nprint(len(c), len(c[0]), len(c[0][0]))",
    "budget": "a = [0] * 100000\n" + "b = a == a\n" * 30 + "print(b)",
}
"""Model code the tier must give up: the worker process's outcome is the job's."""


def scripted(role: str, code: str, then: str = 'exit("after")') -> SupervisedAgent:
    """A scripted agent whose first reply is ``code``."""
    return SupervisedAgent(role, "You write Python.", [add], {"MODEL": f"scripted/{role}", "SCRIPT": [code, then]})


AGENTS: list[Agent] = [
    scripted("tier_bench", BENCH_CODE),
    scripted("tier_two_steps", "a = n + 1\nprint(a)", "result = a * 2\nexit(str(result))"),
    scripted("tier_quick", 'exit("quick")', 'exit("never")'),
    *(scripted(f"tier_{k}", v) for k, v in HOSTILE.items()),
]
