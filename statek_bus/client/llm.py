"""The LLM seam of the executor: a :class:`~statek_bus.runtime.engine.Model` over the provider service."""

from __future__ import annotations

import hashlib

import msgspec
from nats.aio.client import Client

from statek_bus.client.transport import request_reply
from statek_bus.mesh.settings import Settings
from statek_bus.wire.messages import CompleteReply, CompleteRequest, encode
from statek_bus.wire.subjects import LLM_COMPLETE

__all__ = ["ProviderModel", "call_identity"]


def call_identity(request: CompleteRequest) -> str | None:
    """The identity of a job's LLM call: the same for the call a retried step makes again.

    A step is re-run from the job's last committed state, so its n-th call has the same job,
    call index and content as before; a hash of those is the identity. Calls outside a job, or
    without a call index, have none (two equal questions are then two calls).
    """
    if request.job_id is None or request.call_index is None:
        return None
    content = encode(msgspec.structs.replace(request, deadline_s=None, call_id=None))
    return hashlib.sha256(content).hexdigest()


class ProviderModel:
    """The :class:`~statek_bus.runtime.engine.Model` that asks the provider service (``statek.llm.complete``)."""

    def __init__(self, nc: Client, settings: Settings) -> None:
        self.nc = nc
        self.timeout = settings.llm_timeout

    async def complete(self, request: CompleteRequest) -> CompleteReply:
        """One completion; a failure is the :class:`StatekError` the provider answered.

        The request carries how long this caller waits (``deadline_s``), so the provider drops it
        rather than pay for a call nobody reads, and, for a job's call, its identity
        (``call_id``): a retried step sends the same call again, and gets the first one's result.
        """
        request = msgspec.structs.replace(
            request, deadline_s=self.timeout, call_id=request.call_id or call_identity(request)
        )
        return await request_reply(self.nc, LLM_COMPLETE, request, CompleteReply, timeout=self.timeout)
