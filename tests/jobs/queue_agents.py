"""Agents of the agent-queue tests (``--agents tests.jobs.queue_agents:AGENTS``)."""

from __future__ import annotations

from statek_bus.authoring.agents import SupervisedAgent

TRIAGE = SupervisedAgent(
    "q_triage",
    "You triage events.",
    [],
    {"MODEL": "scripted/q_triage", "SCRIPT": ['exit(event["kind"] + " handled")']},
    warmup='print("received", event["kind"], "at", event["at"])',
)
NO_EVENTS = SupervisedAgent(
    "q_no_events",
    "Its warmup reads two outside names, so it cannot take queue events.",
    [],
    {"MODEL": "scripted/q_no_events", "SCRIPT": ['exit("x")']},
    warmup="print(a, b)",
)
AGENTS = [TRIAGE, NO_EVENTS]
