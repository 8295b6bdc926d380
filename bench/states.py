"""States API benchmark: the service against raw KV in the same run, and list cost vs bucket size.

Starts its own nats-server (temporary, file storage) and the state service as its own process,
like a deployment; the client runs here. Closed loops with 1 and 100 requests in flight:

- ``create`` / ``update`` / ``retrieve`` through the service, each as a ratio to raw ``kv.put`` /
  ``kv.put`` / ``kv.get`` on the same bucket;
- ``list(task_id=X)`` latency (X holds 10 states) with 1,000 and with 100,000 states in the bucket
  (10,000 in quick mode): it should not grow with the bucket.

Run: ``python -m bench.states [--quick]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Result, closed_loop, print_table, progress, ratio
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.states.store import StateStore
from statek_bus.wire.subjects import STATES_BUCKET

__all__ = ["run"]

Row = dict[str, Any]


_VS_RAW = ratio("raw kv (put or get)")
_VS_SMALL = ratio("1,000-state list", "lower = faster")


def _row(op: str, in_flight: int, res: Result, base: Result | None) -> Row:
    return {
        "operation": op,
        "in flight": in_flight,
        "ops/s": float(round(res.rate)),
        "p50 ms": res.p(50),
        "p99 ms": res.p(99),
        _VS_RAW: res.rate / base.rate if base else 1.0 if op.startswith("raw") else None,
    }


async def run(quick: bool) -> list[Row]:
    """Run the benchmark; returns one row per measurement."""
    seconds = 1.0 if quick else 3.0
    big = 10_000 if quick else 100_000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=tmp)
        await server.start()
        settings = Settings.from_env({}, nats_url=server.url)
        proc = ServiceProcess("state", server.url, log_path=Path(tmp) / "state.log")  # logs out of the table
        try:
            nc = await connect(settings, name="bench")
            js = nc.jetstream()
            await provision(js, settings)
            await proc.start()
            kv = await js.key_value(STATES_BUCKET)
            async with AsyncStatekClient(settings=settings) as client:
                states = client.states
                value = b'{"step":1,"history":["hello","world"],"count":42}'
                obj = {"step": 1, "history": ["hello", "world"], "count": 42}
                for n in (1, 100):
                    progress(f"states: create/update/retrieve against raw kv, {n} in flight")
                    put = await closed_loop(
                        lambda i: kv.put(f"bench.raw.{i % 1000}", value), in_flight=n, seconds=seconds
                    )
                    get = await closed_loop(
                        lambda i: kv.get(f"bench.raw.{i % 1000}"), in_flight=n, seconds=seconds
                    )
                    tag = f"c{n}"
                    create = await closed_loop(
                        lambda i, tag=tag: states.create(tag, f"a{i}", obj), in_flight=n, seconds=seconds
                    )
                    own = [await states.create(f"u{n}", f"w{w}", obj) for w in range(n)]
                    update = await closed_loop(
                        lambda i, own=own: states.update(own[i % len(own)].id, obj),
                        in_flight=n,
                        seconds=seconds,
                    )
                    retrieve = await closed_loop(
                        lambda i, own=own: states.retrieve(own[i % len(own)].id), in_flight=n, seconds=seconds
                    )
                    rows += [
                        _row("raw kv.put", n, put, None),
                        _row("raw kv.get", n, get, None),
                        _row("states.create (vs put)", n, create, put),
                        _row("states.update (vs put)", n, update, put),
                        _row("states.retrieve (vs get)", n, retrieve, get),
                    ]

                store = StateStore(js, settings)
                for i in range(10):
                    await states.create("the-task", f"agent-{i}", obj)
                sem = asyncio.Semaphore(200)

                async def fill(i: int) -> None:
                    async with sem:
                        await store.create(f"filler-{i // 4}", f"agent-{i % 4}", obj)

                have = 0
                small: Result | None = None
                for target in (1_000, big):
                    progress(f"states: list(task_id=X) with {target:,} states in the bucket")
                    await asyncio.gather(*(fill(i) for i in range(have, target)))
                    have = target
                    count = (await kv.status()).values
                    res = await closed_loop(
                        lambda i: states.list(task_id="the-task"), in_flight=1, seconds=seconds
                    )
                    small = small or res
                    row = _row(f"list(task_id=X) with {target:,} states ({count:,} msgs)", 1, res, None)
                    row[_VS_SMALL] = res.p(50) / small.p(50)  # p50 latency: flat when it does not grow
                    rows.append(row)
            await nc.close()
        finally:
            await proc.stop()
            await server.stop()
    return rows


def main() -> None:
    """Print the benchmark as a table (``--quick`` for a short run)."""
    quick = "--quick" in sys.argv[1:]
    print_table(f"states{' (quick)' if quick else ''}", asyncio.run(run(quick)))


if __name__ == "__main__":
    main()
