# A STATEK 1.4.2 program, unchanged except for the settings block: test_port.py rewrites its
# imports with the table in docs/migrating-from-statek.md and runs the result on the mesh.
# (It imports `statek`, so nothing imports this file as it stands.)
from statek.agents import DialogAgent, SupervisedAgent
from statek.shared_context import ContextCategory
from statek.statek_client_api import StatekClientAPI
from statek.statek_push_queue import StatekPushQueue
from statek.system import tool
from statek.task import delegate_task
from statek.utils import get_current_agent_name, perm_ctx_get, perm_ctx_set_unique

# --- settings ---------------------------------------------------------------------------------------
TRIAGE_METADATA = {"MODEL": "openrouter/anthropic/claude-sonnet-4"}
RESEARCHER_METADATA = {"MODEL": "openrouter/openai/gpt-4.1-mini"}
AUDITOR_METADATA = {"MODEL": "openrouter/openai/gpt-4.1-mini"}
CONCIERGE_METADATA = {"MODEL": "openrouter/anthropic/claude-sonnet-4"}
# ------------------------------------------------------------------------------------------------------

ORDER = ContextCategory("ORDER")
ORDERS = {"A-17": {"id": "A-17", "status": "shipped", "total": 42.5}}


@tool
def lookup_order(order_id: str, **kwargs) -> dict:
    """Look an order up by its id.

    Args:
        order_id: the order's id, e.g. A-17.
    """
    perm_ctx_set_unique("looked_up", order_id)
    return ORDERS[order_id]


@tool
def handled_orders(**kwargs) -> list:
    """The orders this job looked up so far."""
    found, n = [perm_ctx_get("looked_up")], 1
    while perm_ctx_get(f"looked_up_{n}", None) is not None:
        found.append(perm_ctx_get(f"looked_up_{n}"))
        n += 1
    print("handled by", get_current_agent_name())
    return found


researcher = SupervisedAgent(
    "researcher", "You answer the question in `question` and exit with the answer.", []
)
researcher.update_metadata(RESEARCHER_METADATA)

triage = SupervisedAgent(
    "triage",
    "You handle the support ticket in `ticket`. Tools:\n{tools}",
    [lookup_order, handled_orders, delegate_task],
)
triage.update_metadata(TRIAGE_METADATA)
triage.update_warmup_def(
    "#STATEK: hidden = True\n"
    'init_shared_context("helpdesk")\n'
    "# ----------\n"
    'print("ticket:", ticket["subject"])\n'
)

auditor = SupervisedAgent("auditor", "You check what the helpdesk remembers.", [])
auditor.update_metadata(AUDITOR_METADATA)
auditor.update_warmup_def('#STATEK: hidden = True\ninit_shared_context("helpdesk")\n')



def send_to_customer(body, media=None):
    """The chat backend (here: the executor's log)."""
    print("to the customer:", body, media or "")


# Its prompt and description come from STATEK_PROMPT_FILES_DIR (prompts/concierge.md), its worked
# examples from STATEK_EXAMPLES_DIR (examples/concierge/*.md).
concierge = DialogAgent(send_to_customer, tools=[lookup_order], role="concierge")
concierge.update_metadata(CONCIERGE_METADATA)

AGENTS = [triage, researcher, auditor, concierge]


def open_tickets() -> list:
    """The client side: one ticket submitted, one pushed to the triage agent's queue."""
    job = StatekClientAPI().submit_new_job(
        agent=triage,
        shared_vars={"ticket": {"subject": "where is A-17", "order_id": "A-17"}},
        source="email",
    )
    StatekPushQueue().push_to_agent_queue(triage, {"subject": "refund for A-17", "order_id": "A-17"})
    return [job.id]
