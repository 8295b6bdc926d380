"""Agents of the trace and limit-extension tests (``tests.runtime.trace_agents:AGENTS``)."""

from __future__ import annotations

from statek_bus import tool
from statek_bus.authoring.agents import SupervisedAgent


@tool
def login(user: str, password: str) -> str:
    """Log a user in.

    Args:
        user: the user name.
        password: the password.
    """
    return f"welcome {user}"


TRACED = SupervisedAgent(
    "tr_login",
    "You write Python.",
    [login],
    {
        "MODEL": "scripted/tr_login",
        "SCRIPT": [
            {
                "text": "",
                "tool_calls": [
                    {"name": "login", "arguments": {"user": "ann", "password": "hunter2-argument"}},
                    {"name": "nope", "arguments": {"authorization": "Bearer hunter2-header"}},
                ],
            },
            'print("hello")\nexit("traced")',
        ],
    },
)
MANY_TURNS = SupervisedAgent(
    "tr_turns", "You write Python.", [], {"MODEL": "scripted/tr_turns", "SCRIPT": ["x = 1"] * 8}
)
DIRECT = SupervisedAgent(
    "tr_direct",
    "You call python_cli.",
    [],
    {
        "MODEL": "scripted/tr_direct",
        "CHAT_STYLE": "DIRECT",
        "SCRIPT": [
            {"text": "", "tool_calls": [{"name": "python_cli", "arguments": {"code": "print(6 * 7)"}}]},
            {"text": "", "tool_calls": [{"name": "python_cli", "arguments": {"code": "1 / 0"}}]},
            "All done.",
        ],
    },
)
AGENTS = [TRACED, MANY_TURNS, DIRECT]
