"""States survive crashes: the state service SIGKILLed mid-workload, and a nats-server restart."""

from __future__ import annotations

import asyncio
import time

from statek_bus.services.state import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.errors import ConflictError, ServiceUnavailableError
from statek_bus.wire.subjects import SERVICE_STATE


async def _retry(op, *, seconds: float = 20.0):
    """Run ``op`` until the service answers (it is down while being restarted)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await op()
        except ServiceUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_service_killed_mid_workload_loses_nothing_acknowledged(settings, uid):
    settings = settings.replace(request_timeout=1.0)
    proc = ServiceProcess("state", settings.nats_url)
    await proc.start()
    acked: dict[str, str] = {}  # agent -> state id, once the service acknowledged it
    counter_acked = 0
    try:
        async with AsyncStatekClient(settings=settings) as client:
            states = client.states
            counter = await states.create(f"t{uid}", "counter", {"n": 0})

            async def create(agent: str) -> None:
                try:
                    st = await _retry(lambda: states.create(f"t{uid}", agent, {"agent": agent}))
                except ConflictError as exc:  # an attempt landed but its reply was lost
                    acked[agent] = exc.details["state_id"]
                    return
                acked[agent] = st.id

            async def workload() -> None:
                nonlocal counter_acked
                for i in range(120):
                    await create(f"a{i:03d}")
                    await _retry(lambda: states.transact(counter.id, lambda s: {"n": s["n"] + 1}))
                    counter_acked += 1

            work = asyncio.create_task(workload())
            while len(acked) < 40:
                await asyncio.sleep(0.01)
            proc.kill()
            await proc.start()
            await work
            assert len(acked) == 120
            listed = []
            for page in range(1, 10):
                got = await states.list(task_id=f"t{uid}", limit=100, page_number=page)
                if not got:
                    break
                listed.extend(got)
            by_agent = {s.agent_id: s.id for s in listed}
            assert {a: i for a, i in by_agent.items() if a != "counter"} == acked
            assert len(listed) == 121  # no duplicate for any pair
            final = await states.retrieve(counter.id)
            assert final.state["n"] >= counter_acked == 120
    finally:
        await proc.stop()


async def test_states_survive_nats_server_restart(fresh_server: NatsServer, uid):
    settings = Settings.from_env({}, nats_url=fresh_server.url, drain_timeout=3.0, request_timeout=2.0)
    async with (
        running_service(build, settings, name=SERVICE_STATE),
        AsyncStatekClient(settings=settings) as client,
    ):
        made = [await client.states.create(f"t{uid}", f"a{i}", {"i": i}) for i in range(5)]
        await client.states.update(made[0].id, {"i": "updated"})
    fresh_server.kill()
    await fresh_server.start()
    async with (
        running_service(build, settings, name=SERVICE_STATE),
        AsyncStatekClient(settings=settings) as client,
    ):
        listed = await _retry(lambda: client.states.list(task_id=f"t{uid}"))
        assert [s.id for s in listed] == [m.id for m in made]
        assert listed[0].state == {"i": "updated"}
        assert (await client.states.retrieve(made[3].id)).state == {"i": 3}
