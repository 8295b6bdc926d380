"""The ``statek-provider`` micro service: ``statek.llm.complete`` and ``statek.llm.models``.

Wiring only; the work is :class:`statek_bus.provider.Provider`. litellm is imported in the
background once the service is registered, so ``$SRV.PING`` answers while it loads (requests that
need it wait for it; scripted-model requests never do).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator

from statek_bus.mesh.service import Endpoint, ServiceContext, ServiceSpec
from statek_bus.provider import Provider
from statek_bus.provider.keys import load_key_files
from statek_bus.wire.messages import CompleteRequest, Empty
from statek_bus.wire.subjects import LLM_COMPLETE, LLM_MODELS, SERVICE_PROVIDER

__all__ = ["build"]


async def build(ctx: ServiceContext) -> ServiceSpec:
    """Open the provider on ``ctx.stack`` and describe its endpoints."""
    if ctx.settings.llm_keys_dir:  # before the provider's redactor learns which values are secrets
        load_key_files(ctx.settings.llm_keys_dir)
    provider = await ctx.stack.enter_async_context(Provider(ctx.settings))
    await ctx.stack.enter_async_context(_load_when_registered(ctx, provider))
    return ServiceSpec(
        name=SERVICE_PROVIDER,
        description="LLM calls through litellm: model routing, retries, rate/concurrency limits, usage and cost",
        endpoints=[
            Endpoint(
                "complete",
                LLM_COMPLETE,
                request=CompleteRequest,
                handler=provider.complete,
                doc="One LLM completion: {model, messages, tools?, temperature?, job_id?, metadata?}",
            ),
            Endpoint(
                "models",
                LLM_MODELS,
                request=Empty,
                handler=provider.models,
                doc="The models this instance serves, with limits and key status",
            ),
        ],
        metadata={"litellm": "loaded in the background after registration"},
        checks={"litellm": lambda: provider.litellm.usable, "temp_dir": _temp_dir_usable},
    )


def _temp_dir_usable() -> bool:
    # litellm (and httpx) need a writable temp dir; a read-only root without an emptyDir has none
    try:
        with tempfile.TemporaryFile():
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def _load_when_registered(ctx: ServiceContext, provider: Provider) -> AsyncIterator[None]:
    # litellm's import holds the GIL for seconds: start it only once $SRV.PING answers.
    async def wait_then_load() -> None:
        await ctx.ready.wait()
        provider.start_loading()

    task = asyncio.create_task(wait_then_load())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
