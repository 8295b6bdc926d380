"""Scripted agents for the red-team tests: a first reply of hostile plain-data code, then exit("after")."""

from __future__ import annotations

from statek_bus.authoring.agents import Agent
from tests.tier_agents import scripted

AGENTS_SPEC = "tests.redteam.agents:AGENTS"

AGENTS: list[Agent] = [
    scripted("rt_surrogate_print", "print(chr(55296))"),
    scripted("rt_surrogate_var", "s = chr(55296)"),
]
