"""Agents the CLI tests serve (``--agents tests.cli_agents:AGENTS``), all on the scripted model."""

from __future__ import annotations

from statek_bus import SupervisedAgent
from statek_bus.authoring.demo import DEMO

__all__ = ["AGENTS", "FAILING", "SLEEPER"]


def _scripted(role: str, script: list[str]) -> SupervisedAgent:
    return SupervisedAgent(role, "You write Python.", [], {"MODEL": f"scripted/{role}", "SCRIPT": script})


FAILING = _scripted("cli_failing", ["1 / 0", "[][1]", 'exit("never")'])
"""Raises twice in a row: the job ends with STATEK's "Maximum consecutive exceptions exceeded: 2/1"."""

SLEEPER = _scripted("cli_sleeper", ["sleep(600)", 'exit("woke")'])
"""Waits ten minutes on a durable timer (SUSPENDED): a job to time out on, interrupt or cancel."""

AGENTS = [DEMO, FAILING, SLEEPER]
"""What ``--agents tests.cli_agents:AGENTS`` serves (the built-in demo too)."""
