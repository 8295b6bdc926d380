"""The floor every other benchmark compares with: raw nats-py request/reply and KV put/get.

The responder is a plain nats-py subscription in another process (as our services are); KV uses
a file-storage bucket with ``direct=True`` like ours. 1 and 100 operations in flight. The ratio
column puts each operation beside raw request/reply at the same number in flight: what a
JetStream write or a direct get costs against one core-NATS round trip.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import nats
from nats.js.api import KeyValueConfig, StorageType

from bench.common import closed_loop, print_table, ratio
from statek_bus.ops.launcher import NatsServer

_RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def cb(m): await m.respond(m.data)
    await nc.subscribe("bench.echo", "q", cb=cb)
    await nc.flush(); print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

PAYLOAD = b'{"task_id":"bench-task","agent_id":"bench-agent","state":{"step":1,"items":[1,2,3]}}' * 2


async def measure(url: str, *, seconds: float) -> list[dict[str, object]]:
    """Rows for request/reply, KV put and KV get at 1 and 100 in flight against ``url``."""
    proc = subprocess.Popen([sys.executable, "-c", _RESPONDER, url], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    await asyncio.to_thread(proc.stdout.readline)
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(
        KeyValueConfig(bucket="bench_floor", storage=StorageType.FILE, direct=True)
    )
    for i in range(1000):
        await kv.put(f"k{i}", PAYLOAD)
    rows: list[dict[str, object]] = []
    echo: dict[int, float] = {}
    ops = {
        "request/reply (raw nats-py)": lambda i: nc.request("bench.echo", PAYLOAD, timeout=5),
        "kv.put (raw)": lambda i: kv.put(f"k{i % 1000}", PAYLOAD),
        "kv.get (raw, direct)": lambda i: kv.get(f"k{i % 1000}"),
    }
    try:
        for name, op in ops.items():
            for n in (1, 100):
                r = await closed_loop(op, in_flight=n, seconds=seconds)
                echo.setdefault(n, r.rate)  # the first operation: request/reply
                rows.append(
                    {
                        "operation": name,
                        "in flight": n,
                        "ops/s": r.rate,
                        "p50 ms": r.p(50),
                        "p99 ms": r.p(99),
                        ratio("request/reply ops/s"): r.rate / echo[n],
                    }
                )
    finally:
        await nc.close()
        proc.kill()
        proc.wait()
    return rows


async def run(quick: bool) -> list[dict[str, object]]:
    """The floor table, on an embedded server of its own."""
    async with NatsServer() as server:
        return await measure(server.url, seconds=1.0 if quick else 3.0)


if __name__ == "__main__":
    print_table("floor: raw nats-py on this machine", asyncio.run(run("--quick" in sys.argv)))
