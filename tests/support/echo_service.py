"""A test-only service exercising the runner: echo, one endpoint per error class, a slow one.

Run as a process with ``python -m tests.support.echo_service`` (NATS_URL from the environment)
for kill/restart tests, or in-process with ``running_service(build, ...)``.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

from statek_bus.mesh.service import Endpoint, ServiceContext, ServiceSpec, run_service
from statek_bus.mesh.settings import Settings
from statek_bus.wire import errors

NAME = "statek-test-echo"
PREFIX = "test.echo"


class EchoRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text: str
    times: int = 1


class FailRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    code: int


class SlowRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seconds: float


class PoisonRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    subject_length: int


_BY_CODE = {
    400: errors.BadRequestError("bad thing", field="$.thing"),
    404: errors.NotFoundError("no such thing"),
    409: errors.ConflictError("stale", details={"current_revision": 7}),
    413: errors.PayloadTooLargeError("too big", details={"size": 10, "limit": 5}),
    503: errors.ServiceUnavailableError("down"),
    500: errors.InternalError("explicit internal"),
}


async def build(ctx: ServiceContext) -> ServiceSpec:
    async def echo(req: EchoRequest) -> dict[str, str]:
        return {"text": req.text * req.times}

    async def fail(req: FailRequest) -> None:
        if req.code == 0:
            raise RuntimeError("secret internals: password=hunter2")
        raise _BY_CODE[req.code]

    async def slow(req: SlowRequest) -> dict[str, float]:
        await asyncio.sleep(req.seconds)
        return {"slept": req.seconds}

    async def poison(req: PoisonRequest) -> None:
        # a protocol line over the server's 4 KiB limit: nats-server answers -ERR and closes the
        # connection, and nats-py never reconnects it (what a long id in a subject used to cause)
        await ctx.nc.publish("test.poison." + "x" * req.subject_length, b"")
        await ctx.nc.flush()

    return ServiceSpec(
        name=NAME,
        description="Test service for the runner",
        endpoints=[
            Endpoint("echo", f"{PREFIX}.echo", EchoRequest, echo, "echo text"),
            Endpoint("fail", f"{PREFIX}.fail", FailRequest, fail, "raise an error of a code"),
            Endpoint("slow", f"{PREFIX}.slow", SlowRequest, slow, "sleep then answer"),
            Endpoint("poison", f"{PREFIX}.poison", PoisonRequest, poison, "close the connection for good"),
        ],
    )


if __name__ == "__main__":
    settings = Settings.from_env(drain_timeout=5.0)
    if "--serve" in sys.argv:  # the way `statek-bus serve` runs a service (exit code by how it ended)
        from statek_bus.mesh.service import EXIT_CONNECTION_LOST
        from statek_bus.ops.mesh import serve_factory

        ended = asyncio.run(serve_factory(build, settings, name=NAME))
        sys.exit(EXIT_CONNECTION_LOST if ended == "connection_lost" else 0)
    asyncio.run(run_service(build, settings, name=NAME))
