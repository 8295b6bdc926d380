"""STATEK's environment variables: each one honoured, or refused at start in one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from statek_bus.mesh.settings import REFUSED_STATEK_VARIABLES, Settings, SettingsError
from statek_bus.ops.launcher import NatsServer


def test_statek_harness_and_sandbox_variables_are_honoured_under_statek_names() -> None:
    s = Settings.from_env(
        {
            "STATEK_MAX_TURNS": "7",
            "STATEK_MAX_EXCEPTIONS": "4",
            "STATEK_MAX_CONSECUTIVE_EXCEPTIONS": "2",
            "STATEK_MAX_TOKEN_USAGE": "123",
            "STATEK_LOG_LEVEL": "DEBUG",
            "STATEK_PYTHON_SANDBOX_MODE": "off",
            "STATEK_PYTHON_SANDBOX_MAX_SOURCE_BYTES": "1000",
            "STATEK_PYTHON_SANDBOX_MAX_AST_NODES": "50",
            "STATEK_PYTHON_SANDBOX_ALLOWED_IMPORTS": "math,json",
            "STATEK_PYTHON_SANDBOX_ALLOWED_TOOLS": "secret_tool",
        }
    )
    assert (s.max_turns, s.max_exceptions, s.max_consecutive_exceptions, s.max_token_usage) == (7, 4, 2, 123)
    assert (s.log_level, s.restricted_mode) == ("DEBUG", False)
    assert (s.python_sandbox_max_source_bytes, s.python_sandbox_max_ast_nodes) == (1000, 50)
    assert (s.python_sandbox_allowed_imports, s.python_sandbox_allowed_tools) == ("math,json", "secret_tool")
    with pytest.raises(SettingsError, match="STATEK_PYTHON_SANDBOX_MODE='sandboxed'"):
        Settings.from_env({"STATEK_PYTHON_SANDBOX_MODE": "sandboxed"})


@pytest.mark.parametrize(
    "name",
    [
        *sorted(REFUSED_STATEK_VARIABLES),
        "OPENAI_API_URL",
        "OPENAI_RESPONSE_FORMAT_FILE",
        "CLAUDE_USE_PROMPT_CACHING",
    ],
)
def test_each_statek_variable_statek_bus_does_not_honour_is_refused_by_name(name: str) -> None:
    with pytest.raises(SettingsError, match=name) as refused:
        Settings.from_env({name: "1"})
    why = str(refused.value).split(name, 1)[1]
    assert why.startswith(" (") and len(why) > 10  # the replacement (or the reason) follows the name


def test_statek_trace_log_and_limit_variables_are_honoured() -> None:
    s = Settings.from_env(
        {
            "STATEK_LOGS_PATH": "/tmp/statek-logs",
            "FULL_AGENT_TRACE": "1",
            "FULL_AGENT_TRACE_PATH": "/tmp/trace.jsonl",
            "FULL_AGENT_TRACE_MAX_BYTES": "2048",
            "FULL_AGENT_TRACE_BACKUP_COUNT": "5",
            "STATEK_LIMIT_EXTENSION_PER_COMPLETION": "0.25",
            "STATEK_DEFAULT_DIFFICULTY": "high",
            "STATEK_XML_BOX_CONSOLE": "console",
        }
    )
    assert (s.logs_path, s.full_agent_trace, s.full_agent_trace_path) == (
        "/tmp/statek-logs",
        True,
        "/tmp/trace.jsonl",
    )
    assert (s.full_agent_trace_max_bytes, s.full_agent_trace_backup_count) == (2048, 5)
    assert (s.limit_extension_per_completion, s.default_difficulty, s.xml_box_console) == (
        0.25,
        "H",
        "console",
    )
    with pytest.raises(SettingsError, match="STATEK_DEFAULT_DIFFICULTY"):
        Settings.from_env({"STATEK_DEFAULT_DIFFICULTY": "extreme"})


def test_a_service_started_with_a_refused_variable_stops_in_one_line(nats_server: NatsServer) -> None:
    env = {**os.environ, "STATEK_RPC_HOST": "example.org", "STATEK_DEFAULT_ACL": "ALLOW"}
    r = subprocess.run(
        [sys.executable, "-m", "statek_bus", "serve", "state", "--nats-url", nats_server.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "STATEK_RPC_HOST" in lines[0] and "STATEK_DEFAULT_ACL" in lines[0]


async def test_statek_sandbox_settings_reach_the_policy_model_code_runs_under(settings: Settings, nc) -> None:  # type: ignore[no-untyped-def]
    from tests.agents_fixture import console, services, submit, wait_done

    js = nc.jetstream()
    async with services(settings, "provider", "submission", "executor"):
        refused = console(await wait_done(js, await submit(js, "t_sb_import")))
    assert any("secrets" in line and "not allowed" in line for line in refused), refused
    allowed = settings.replace(python_sandbox_allowed_imports="secrets,math")
    async with services(allowed, "provider", "submission", "executor"):
        ran = console(await wait_done(js, await submit(js, "t_sb_import")))
    assert ran == ["8"]
    tiny = settings.replace(python_sandbox_max_source_bytes=10)
    async with services(tiny, "provider", "submission", "executor"):
        too_big = console(await wait_done(js, await submit(js, "t_sb_import")))
    assert any("bytes" in line for line in too_big), too_big
