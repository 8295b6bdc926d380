"""The built-in ``demo`` agent: what ``statek-bus demo`` runs, with the scripted model (no API key).

The job starts with ``numbers`` in its workspace. Its warmup block prints them; the scripted
model then (1) computes a total and a maximum, (2) defines a function, which persists to the
next step as source, and (3) uses it and exits with a value. Four steps, three LLM calls.
"""

from __future__ import annotations

from statek_bus.authoring.agents import SupervisedAgent

__all__ = ["AGENTS", "DEMO", "DEMO_SCRIPT", "DEMO_SHARED_VARS"]

DEMO_SHARED_VARS: dict[str, object] = {"numbers": [3, 1, 4, 1, 5, 9, 2, 6]}
"""The shared variables a demo job is submitted with."""

DEMO_SCRIPT: list[str] = [
    "total = sum(numbers)\nbiggest = max(numbers)\nprint('total', total, 'max', biggest)",
    "def mean(xs):\n    return sum(xs) / len(xs)\n\nspread = biggest - min(numbers)\nprint('spread', spread)",
    'print("mean is", round(mean(numbers), 3))\nexit(f"Success: total={total}, mean={mean(numbers):.3f}")',
    # the reply to a message sent to the DONE job (`statek-bus jobs send`): the workspace persisted
    'print("noted; the total is still", total)\nexit(f"Noted: total={total}")',
]
"""The scripted model's replies, one per LLM call."""

DEMO = SupervisedAgent(
    "demo",
    system_prompt=(
        "You are a data assistant. Write Python to analyse the variables in your workspace "
        "({shared_var_names}). Call exit(result) when done.\n\nTools:\n{tools}"
    ),
    metadata={"MODEL": "scripted/demo", "SCRIPT": DEMO_SCRIPT},
    description="Built-in demo: computes statistics of a list with the scripted model.",
    warmup='print("numbers:", numbers)',
)
"""The demo agent."""

AGENTS = [DEMO]
"""What the executor serves when no ``--agents`` is given."""
