"""The ``statek-executor`` micro service: runs job steps of the agents it serves from their work queues.

Wiring only: the consumer loop is :class:`statek_bus.runtime.executor.Executor`, entered on the service's
exit stack (it stops pulling when the stack closes, finishes in-flight steps within
``drain_timeout`` and leaves the rest for redelivery), then the
:class:`~statek_bus.runtime.queues.AgentEventPump` that turns agent-queue events into jobs. The one
endpoint reports this replica.
"""

from __future__ import annotations

import asyncio
import contextlib

from statek_bus.mesh.service import Endpoint, ServiceContext, ServiceSpec
from statek_bus.runtime.executor import Executor
from statek_bus.runtime.queues import AgentEventPump
from statek_bus.wire.messages import Empty
from statek_bus.wire.subjects import EXECUTOR_STATUS, SERVICE_EXECUTOR

__all__ = ["build"]


async def build(ctx: ServiceContext) -> ServiceSpec:
    """Start the executor on ``ctx.stack`` and describe the status endpoint."""
    executor = await ctx.stack.enter_async_context(
        Executor(ctx.nc, ctx.js, ctx.settings, agents=ctx.settings.agents, stopping=ctx.stopping)
    )

    pump = await ctx.stack.enter_async_context(
        AgentEventPump(ctx.js, executor.client, executor.agents, ctx.settings)
    )

    if ctx.settings.burst:  # stop once the queue is idle: the runner then drains and exits
        ctx.stack.push_async_callback(_cancel, asyncio.create_task(_finish_when_idle(ctx, executor, pump)))

    async def status(request: Empty) -> object:
        executor.instance_id = ctx.instance_id
        return await executor.status_handler(request)

    return ServiceSpec(
        name=SERVICE_EXECUTOR,
        description="Runs STATEK job steps (code-first and handler agents) of the agents it serves",
        endpoints=[
            Endpoint(
                "status",
                EXECUTOR_STATUS,
                request=Empty,
                handler=status,
                doc="This replica's running steps, concurrency and agents",
                stats=executor.concurrency,
            )
        ],
        metadata={
            "agents": ",".join(sorted(executor.agents)),
            "max_concurrency": str(ctx.settings.max_concurrency),
            "knowledge_id": executor.knowledge.instance if executor.knowledge is not None else "",
        },
    )


async def _finish_when_idle(ctx: ServiceContext, executor: Executor, pump: AgentEventPump) -> None:
    await ctx.ready.wait()
    await executor.wait_idle()
    while await pump.busy():  # queued events are work too: each becomes a job to run
        await executor.wait_idle()
    ctx.finished.set()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
