"""``statek-bus states ...`` against the running state service."""

from __future__ import annotations

import asyncio
import json

from statek_bus.services.state import build

from statek_bus.cli import main
from statek_bus.mesh.service import running_service
from statek_bus.wire.subjects import SERVICE_STATE


async def test_cli_round_trip(settings, uid, capsys):
    url = ["--nats-url", settings.nats_url]

    async def cli(*argv: str) -> tuple[int, object]:
        code = await asyncio.to_thread(main, ["states", *url, *argv])
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None

    async with running_service(build, settings, name=SERVICE_STATE):
        code, st = await cli(
            "create", "--task-id", f"user@example.com/{uid}", "--agent-id", "a b", "--state", '{"n": 1}'
        )
        assert code == 0 and st["state"] == {"n": 1}
        code, got = await cli("get", "--task-id", f"user@example.com/{uid}", "--agent-id", "a b")
        assert code == 0 and got["id"] == st["id"]
        code, up = await cli(
            "update", st["id"], "--state", '{"n": 2}', "--expected-revision", str(st["revision"])
        )
        assert code == 0 and up["state"] == {"n": 2}
        assert (
            await cli("update", st["id"], "--state", '{"n": 3}', "--expected-revision", str(st["revision"]))
        )[0] == 1
        code, listed = await cli("list", "--task-id", f"user@example.com/{uid}")
        assert [s["id"] for s in listed] == [st["id"]]
        code, hist = await cli("history", st["id"])
        assert [h["state"]["n"] for h in hist] == [2, 1]
        code, gone = await cli("delete", st["id"])
        assert code == 0 and gone["state"] == {"n": 2}
        code, missing = await cli("get", st["id"])
        assert code == 1 and missing is None
