"""The LLM seam of the executor: a :class:`~statek_bus.runtime.engine.Model` over the provider service."""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client

from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import error_from_reply
from statek_bus.wire.messages import CompleteReply, CompleteRequest, decode, encode
from statek_bus.wire.subjects import LLM_COMPLETE

__all__ = ["ProviderModel"]


class ProviderModel:
    """The :class:`~statek_bus.runtime.engine.Model` that asks the provider service (``statek.llm.complete``)."""

    def __init__(self, nc: Client, settings: Settings) -> None:
        self.nc = nc
        self.timeout = settings.llm_timeout

    async def complete(self, request: CompleteRequest) -> CompleteReply:
        """One completion; a failure is the :class:`StatekError` the provider answered."""
        from statek_bus.wire.errors import ServiceUnavailableError

        try:
            msg = await self.nc.request(LLM_COMPLETE, encode(request), timeout=self.timeout)
        except nats.errors.NoRespondersError:
            raise ServiceUnavailableError("no provider service is answering") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise ServiceUnavailableError(f"the provider did not answer within {self.timeout:g}s") from None
        err = error_from_reply(msg.headers, msg.data)
        if err is not None:
            raise err
        return decode(msg.data, CompleteReply)
