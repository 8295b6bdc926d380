"""Provider bench: per-call overhead of the service (scripted model) against an in-process call,
and calls/s at 1 and 100 in flight.

Run: ``python -m bench.provider`` (``--quick`` for a short run). Starts its own nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from typing import Any

from statek_bus.services.provider import build

from bench.common import SLOWER, Result, closed_loop, print_table, progress, ratio
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.provider import Provider
from statek_bus.wire.messages import ChatMessage, CompleteReply, CompleteRequest
from statek_bus.wire.subjects import LLM_COMPLETE, SERVICE_PROVIDER

__all__ = ["run"]

REQUEST = CompleteRequest(
    model="scripted/bench",
    messages=[
        ChatMessage(role="system", content="You write Python."),
        ChatMessage(role="user", content="go"),
    ],
    metadata={"SCRIPT": ["print('hello')", "exit('ok')"]},
    call_index=1,
    job_id="bench",
)


async def run(quick: bool) -> list[dict[str, Any]]:
    """Measure and return one row per configuration."""
    seconds = 1.0 if quick else 5.0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=tmp)
        await server.start()
        try:
            settings = Settings.from_env({}, nats_url=server.url, request_timeout=30.0)
            progress("provider: in-process calls, then the service at 1 and 100 in flight")
            async with Provider(settings) as local:
                for in_flight in (1, 100):
                    r = await closed_loop(
                        lambda i: local.complete(REQUEST), in_flight=in_flight, seconds=seconds
                    )
                    rows.append(_row("in-process", in_flight, r))
            async with (
                running_service(build, settings, name=SERVICE_PROVIDER),
                AsyncStatekClient(settings=settings) as client,
            ):

                async def remote(i: int) -> CompleteReply:
                    return await client.request(LLM_COMPLETE, REQUEST, CompleteReply)

                # Steady state: wait until the service's background litellm import is done (a mock call
                # needs it), else the import thread competes for the GIL with the measurement.
                warm = CompleteRequest(
                    model="openai/gpt-4o-mini", messages=REQUEST.messages, metadata={"MOCK_RESPONSE": "x"}
                )
                await client.request(LLM_COMPLETE, warm, CompleteReply, timeout=120)
                await closed_loop(remote, in_flight=10, seconds=0.3)
                for in_flight in (1, 100):
                    r = await closed_loop(remote, in_flight=in_flight, seconds=seconds)
                    rows.append(_row("service", in_flight, r))
        finally:
            await server.stop()
    # the floor of each row is the in-process call at the same number in flight
    for row, floor in ((rows[0], rows[0]), (rows[1], rows[1]), (rows[2], rows[0]), (rows[3], rows[1])):
        row[ratio("in-process calls/s")] = row["calls/s"] / floor["calls/s"]
        row[ratio("in-process p50", SLOWER)] = row["p50 µs"] / floor["p50 µs"]
        row["service overhead p50 µs"] = row["p50 µs"] - floor["p50 µs"]
    return rows


def _row(path: str, in_flight: int, r: Result) -> dict[str, Any]:
    return {
        "path": f"{path} (scripted model)",
        "in flight": in_flight,
        "calls/s": r.rate,
        "p50 µs": r.p(50) * 1000,
        "p99 µs": r.p(99) * 1000,
    }


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s per configuration instead of 5 s")
    args = parser.parse_args()
    print_table(f"provider{' (quick)' if args.quick else ''}", asyncio.run(run(args.quick)))


if __name__ == "__main__":
    _main()
