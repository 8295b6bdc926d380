"""STATEK's FULL_AGENT_TRACE, STATEK_LOGS_PATH and limit_extension_per_completion, through a real executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from statek_bus.jobs.log import read_job_log
from statek_bus.mesh.settings import Settings
from tests.agents_fixture import services, submit, wait_done

AGENTS = "tests.runtime.trace_agents:AGENTS"


async def test_a_traced_job_has_redacted_trace_events_in_its_stream_a_file_and_its_log(
    settings: Settings, nc: Client, tmp_path: Path
) -> None:
    traced = settings.replace(
        full_agent_trace=True, full_agent_trace_path=str(tmp_path / "trace.jsonl"), logs_path=str(tmp_path / "logs")
    )
    js = nc.jetstream()
    async with services(traced, "provider", "executor", agents=AGENTS):
        record = await wait_done(js, await submit(js, "tr_login"))
    assert record.exit_status == "traced"
    events = await read_job_log(js, record.id)
    trace = [(e.name, e.data) for e in events if e.kind == "trace"]
    names = [n for n, _ in trace]
    assert names == [
        "llm.request", "llm.response", "llm.parsed_tool_calls",            # step 0: the first call
        "tool.request", "tool.output", "tool.request", "tool.error",        # step 1: its tool calls...
        "llm.request", "llm.response",                                      # ...then the second call
    ]
    request = dict(trace[0][1])
    assert request["model"] == "scripted/tr_login" and request["tools"] == []
    assert request["messages"][-1]["content"].startswith("Begin")
    assert trace[3][1]["arguments"] == {"user": "ann", "password": "[REDACTED]"}
    assert trace[4][1]["output"] == "welcome ann"
    assert trace[5][1]["arguments"] == {"authorization": "[REDACTED]"}
    assert trace[6][1]["output"] == "NameError: tool 'nope' not found"
    assert trace[1][1]["usage"]["input_tokens"] >= 0
    assert record.usage.bytes_sent > 0 and record.usage.bytes_received > 0

    filed = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    mine = [e for e in filed if e["job_id"] == record.id]
    assert [e["name"] for e in mine] == names
    everything = (tmp_path / "trace.jsonl").read_text() + "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert "hunter2" not in everything

    log_file = tmp_path / "logs" / f"tr_login_{record.id}.log"
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [e.get("text") for e in lines if e["kind"] == "console"] == ["hello"]
    assert [e["status"] for e in lines if e["kind"] == "status"][-1] == "DONE"


async def test_python_cli_calls_are_traced_with_their_output_or_error(settings: Settings, nc: Client) -> None:
    js = nc.jetstream()
    traced = settings.replace(full_agent_trace=True, full_agent_trace_path="")  # empty: the stream only
    async with services(traced, "provider", "executor", agents=AGENTS):
        record = await wait_done(js, await submit(js, "tr_direct"))
    cli = [(e.name, e.data) for e in await read_job_log(js, record.id) if e.kind == "trace" and "python_cli" in (e.name or "")]
    assert cli == [
        ("python_cli.request", {"id": cli[0][1]["id"], "name": "python_cli", "code": "print(6 * 7)"}),
        ("python_cli.output", {"id": cli[0][1]["id"], "name": "python_cli", "output": "42"}),
        ("python_cli.request", {"id": cli[2][1]["id"], "name": "python_cli", "code": "1 / 0"}),
        ("python_cli.error", {"id": cli[2][1]["id"], "name": "python_cli", "output": "ZeroDivisionError: division by zero"}),
    ]


@pytest.mark.parametrize(
    ("extension", "message"),
    [(0.0, "Maximum number of turns exceeded: 3/2"), (0.25, "Maximum number of turns exceeded: 4/3.50")],
)
async def test_limit_extension_per_completion_raises_every_limit_with_each_call(
    settings: Settings, nc: Client, extension: float, message: str
) -> None:
    js = nc.jetstream()
    limited = settings.replace(max_turns=2, limit_extension_per_completion=extension)
    async with services(limited, "provider", "executor", agents=AGENTS):
        record = await wait_done(js, await submit(js, "tr_turns"))
    assert record.error == message
