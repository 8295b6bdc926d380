"""Agents for the knowledge tests (``--agents tests.knowledge_agents:AGENTS``), all on the scripted model.

Their prompts, metadata and warmups come partly from the knowledge files each test publishes.
"""

from __future__ import annotations

from statek_bus.authoring.agents import Agent, SupervisedAgent
from statek_bus.authoring.tools import tool


@tool
def donor_tool(n: int) -> str:
    """A tool only the donor agent has.

    Args:
        n: a number.
    """
    return f"donor says {n * 10}"


@tool(name="clash")
def donor_clash() -> str:
    """The donor's tool named like one of the receiver's."""
    return "donor clash"


@tool(name="clash")
def receiver_clash() -> str:
    """The receiver's own tool of that name (it wins)."""
    return "receiver clash"


def _scripted(
    role: str, script: list[object], prompt: str = "Code prompt of {role}.\n{tools}", **meta: object
) -> SupervisedAgent:
    metadata = {"MODEL": f"scripted/{role}", "SCRIPT": script, **meta}
    return SupervisedAgent(role, prompt.replace("{role}", role), [], metadata)


PROMPTED = _scripted("k_prompt", ["panic()", "exit('done')"])
"""Its prompt file has an H-only XML section."""

DONOR = Agent(
    "k_donor",
    "Donor.",
    [donor_tool, donor_clash],
    {"MODEL": "scripted/k_donor", "SCRIPT": ["exit('donor')"]},
)

RECEIVER = SupervisedAgent(
    "k_receiver",
    "Receiver tools:\n{tools}",
    [receiver_clash],
    {
        "MODEL": "scripted/k_receiver",
        "EXTRA_RESOURCES": "(H:k_donor)",
        "SCRIPT": [
            "print(donor_tool(2))",
            "panic()",
            "print(donor_tool(3))\nprint(clash())\nexit('ok')",
        ],
    },
)

LIBRARY = _scripted(
    "k_library",
    [
        "list_of_examples()\nshow_example(1)",
        "list_of_documents()\nlist_of_documents(0)\nshow_document('refund')\nshow_document('nothing like it')",
        "exit('read')",
    ],
)

WARMED = _scripted("k_warm", ["exit(str(greeting))"])
"""Its warmup comes from a warmup def."""

PLAIN = _scripted("k_plain", ["print(donor_tool(4))\nexit('job donors')"])
"""No EXTRA_RESOURCES of its own: a job brings them."""

AGENTS = [PROMPTED, DONOR, RECEIVER, LIBRARY, WARMED, PLAIN]
