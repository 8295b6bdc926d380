"""Every Prometheus metric of statek-bus, defined in one place (exposed at ``/metrics``).

One service runs per process, so the metrics live in prometheus-client's default registry and
each process exposes only what it does: an executor its steps, a provider its LLM calls. Label
values are bounded: agent roles and model names come from configuration, outcomes and codes from
the closed sets named below, never from request input.

Client errors (4xx) are counted apart from server errors (5xx): ``statek_requests_total`` carries
``code_class`` (``2xx``, ``4xx``, ``5xx``), so an alert on ``5xx`` ignores a user's typo.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "DATA_TIER_STEPS",
    "JOBS",
    "LLM_CALLS",
    "LLM_COST",
    "LLM_SECONDS",
    "LLM_TOKENS",
    "REDELIVERIES",
    "REQUESTS",
    "REQUEST_SECONDS",
    "RETRIES",
    "SANDBOX_REFUSALS",
    "STEPS",
    "STEPS_IN_FLIGHT",
    "STEP_SECONDS",
    "TIMER_LATENESS",
    "code_class",
]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter(
    "statek_requests", "Requests answered, by service endpoint and code class.", ["endpoint", "code_class"]
)
"""Requests answered by a service; ``code_class`` is ``2xx``, ``4xx`` or ``5xx``."""
REQUEST_SECONDS = Histogram(
    "statek_request_seconds", "Time to answer a request, by endpoint.", ["endpoint"], buckets=_LATENCY
)
"""Request latency by endpoint."""
STEPS = Counter("statek_steps", "Job steps committed, by agent and outcome.", ["agent", "outcome"])
"""Steps by agent and outcome (``running``, ``suspended``, ``done``, ``error``, ``retried``, ``superseded``)."""
STEP_SECONDS = Histogram(
    "statek_step_seconds", "Wall time of one job step, by agent.", ["agent"], buckets=_LATENCY
)
"""Step latency by agent."""
STEPS_IN_FLIGHT = Gauge("statek_steps_in_flight", "Steps this executor is running now.")
"""Steps running in this executor."""
REDELIVERIES = Counter("statek_redeliveries", "Work messages received more than once.")
"""Work messages delivered again (a crashed or slow replica's steps)."""
RETRIES = Counter("statek_retries", "Retries, by what was retried.", ["what"])
"""Retries: ``step`` (a dependency was down), ``commit`` (a compare-and-set lost), ``llm`` (provider)."""
JOBS = Gauge("statek_jobs", "Jobs not yet DONE, by status (read from the job store).", ["status"])
"""Jobs by status (``READY``, ``WARMING_UP``, ``STARTED``, ``SUSPENDED``), counted by each submission
replica from the live-job index every ``jobs_gauge_interval`` seconds: every replica reports the
same numbers (aggregate with ``max``), whichever executor moved the jobs, across restarts. DONE
jobs are not a gauge (they only grow, until retention removes them): ``statek_steps_total``
with ``outcome="done"`` counts jobs ending."""
SANDBOX_REFUSALS = Counter("statek_sandbox_refusals", "Model code refused by the sandbox policy.")
DATA_TIER_STEPS = Counter(
    "statek_data_tier_steps",
    "Steps with model code, by route: tier (ran in the executor's data tier), aborted (the tier gave "
    "up; a worker process ran it), process (outside the tier's subset: a worker process).",
    ["route"],
)
"""Model code the static check or a run-time guard refused."""
TIMER_LATENESS = Histogram(
    "statek_timer_lateness_seconds",
    "How late a timer's wake-up ran after its due time.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
"""Seconds between a timer's due time and the step it woke."""
LLM_CALLS = Counter("statek_llm_calls", "LLM calls, by model and outcome.", ["model", "outcome"])
"""Provider calls by model and outcome (``ok``, ``error``, ``timeout``, ``dropped``)."""
LLM_SECONDS = Histogram("statek_llm_seconds", "LLM call latency, by model.", ["model"], buckets=_LATENCY)
"""Provider call latency by model."""
LLM_TOKENS = Counter("statek_llm_tokens", "LLM tokens, by model and kind.", ["model", "kind"])
"""Tokens by model and kind (``input``, ``output``, ``cached``)."""
LLM_COST = Counter("statek_llm_cost_usd", "LLM cost in USD, by model.", ["model"])
"""Cost by model."""


def code_class(code: int) -> str:
    """``2xx``, ``4xx`` or ``5xx`` for a reply code (anything else counts as ``5xx``)."""
    if 200 <= code < 300:
        return "2xx"
    if 400 <= code < 500:
        return "4xx"
    return "5xx"
