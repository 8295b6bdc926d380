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
        code, got = await cli("get", "--task-id", f"user@example.com/{uid}", "--agent-id", "a b", "--json")
        assert code == 0 and got["id"] == st["id"]
        code, up = await cli(
            "update", st["id"], "--state", '{"n": 2}', "--expected-revision", str(st["revision"])
        )
        assert code == 0 and up["state"] == {"n": 2}
        assert (
            await cli("update", st["id"], "--state", '{"n": 3}', "--expected-revision", str(st["revision"]))
        )[0] == 1
        code, listed = await cli("list", "--task-id", f"user@example.com/{uid}", "--json")
        assert [s["id"] for s in listed] == [st["id"]]
        code, hist = await cli("history", st["id"], "--json")
        assert [h["state"]["n"] for h in hist] == [2, 1]
        code, gone = await cli("delete", st["id"])
        assert code == 0 and gone["state"] == {"n": 2}
        code, missing = await cli("get", st["id"])
        assert code == 1 and missing is None


async def test_cli_takes_the_object_as_the_last_argument_and_reads_print_text(settings, uid, capsys):
    url = ["--nats-url", settings.nats_url]
    async with running_service(build, settings, name=SERVICE_STATE):
        code = await asyncio.to_thread(
            main, ["states", *url, "create", "--task-id", uid, "--agent-id", "a1", '{"count": 0}']
        )
        created = json.loads(capsys.readouterr().out)
        assert code == 0 and created["state"] == {"count": 0}
        code = await asyncio.to_thread(main, ["states", *url, "list", "--task-id", uid])
        out = capsys.readouterr().out.splitlines()
        assert code == 0 and out[0].split() == ["ID", "TASK", "AGENT", "REV", "UPDATED", "STATE"]
        assert out[1].startswith(created["id"]) and out[1].endswith('{"count": 0}')
        code = await asyncio.to_thread(main, ["states", *url, "get", created["id"]])
        assert code == 0 and 'state      {"count": 0}' in capsys.readouterr().out
        both = ["states", *url, "update", created["id"], '{"count": 1}', "--state", '{"count": 2}']
        assert await asyncio.to_thread(main, both) == 2  # the object once, not twice
        assert "give the state once" in capsys.readouterr().err
