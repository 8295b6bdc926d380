"""The ``statek-submission`` service: wiring of :mod:`statek_bus.jobs.submission` into a micro service.

Endpoints decode to the request Structs of :mod:`statek_bus.wire.messages` and call the library; the
agent-registry watch, marker purging and the recovery pass run on the service's stack and stop
with it.
"""

from __future__ import annotations

from statek_bus.jobs.submission import Submission
from statek_bus.mesh.service import Endpoint, ServiceContext, ServiceSpec
from statek_bus.wire import subjects as s
from statek_bus.wire.messages import (
    AgentGetRequest,
    Empty,
    JobCancelRequest,
    JobGetRequest,
    JobListRequest,
    JobSendMessageRequest,
    JobSendNotificationRequest,
    SubmitBatchRequest,
    SubmitRequest,
)

__all__ = ["build"]


async def build(ctx: ServiceContext) -> ServiceSpec:
    """Open the submission library on ``ctx`` and describe its endpoints."""
    sub = await Submission.open(ctx.nc, ctx.js, ctx.settings)
    await ctx.stack.enter_async_context(sub.running())
    return ServiceSpec(
        name=s.SERVICE_SUBMISSION,
        description="statek-bus job submission: submit, query, cancel and message jobs; agent registry",
        endpoints=[
            Endpoint("submit", s.JOBS_SUBMIT, SubmitRequest, sub.submit, "create one job"),
            Endpoint(
                "submit_batch", s.JOBS_SUBMIT_BATCH, SubmitBatchRequest, sub.submit_batch, "create jobs"
            ),
            Endpoint("get", s.JOBS_GET, JobGetRequest, sub.get, "one job"),
            Endpoint("list", s.JOBS_LIST, JobListRequest, sub.list_jobs, "jobs by agent, status or parent"),
            Endpoint("cancel", s.JOBS_CANCEL, JobCancelRequest, sub.cancel, "cancel a job"),
            Endpoint(
                "send_message", s.JOBS_SEND_MESSAGE, JobSendMessageRequest, sub.send_message, "message a job"
            ),
            Endpoint(
                "send_notification",
                s.JOBS_SEND_NOTIFICATION,
                JobSendNotificationRequest,
                sub.send_notification,
                "notify a job",
            ),
            Endpoint("history", s.JOBS_HISTORY, JobGetRequest, sub.history, "chat log and console of a job"),
            Endpoint("agents_list", s.AGENTS_LIST, Empty, sub.agents_list, "registered agents"),
            Endpoint("agents_get", s.AGENTS_GET, AgentGetRequest, sub.agents_get, "one agent"),
        ],
    )
