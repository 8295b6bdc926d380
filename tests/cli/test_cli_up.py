"""`statek-bus up` and `statek-bus status` as a user runs them: real processes, real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from statek_bus.mesh.discovery import info
from statek_bus.ops.launcher import NatsServer
from tests.support.extras import without_litellm

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "statek_bus"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _start_up(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*CLI, "up", "--port", "0", "--data-dir", str(tmp_path / "data"), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("NATS_URL=nats://127.0.0.1:"), line
    return proc, line.split("=", 1)[1]


def test_up_runs_four_services_then_stops_cleanly(tmp_path: Path) -> None:
    proc, url = _start_up(tmp_path)
    try:
        descendants = _children(proc.pid)
        assert len(descendants) == 5  # nats-server + four services
        status = subprocess.run(
            [*CLI, "status", "--json", "--nats-url", url], capture_output=True, text=True, timeout=60
        )
        rows = json.loads(status.stdout)
        assert sorted(r["name"] for r in rows) == [
            "statek-executor",
            "statek-provider",
            "statek-state",
            "statek-submission",
        ]
        assert all(r["description"] and r["endpoints"] for r in rows)
        human = subprocess.run(
            [*CLI, "status", "--nats-url", url], capture_output=True, text=True, timeout=60
        )
        assert "statek.states.create" in human.stdout and "requests=" in human.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in descendants), "up left processes running"


def test_up_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "other")
    asyncio.run(server.start())
    try:
        r = subprocess.run(
            [*CLI, "up", "--port", str(server.port), "--data-dir", str(tmp_path / "d")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        asyncio.run(server.stop())
    assert r.returncode == 1
    assert f"port {server.port} is already in use" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("statek-bus:")]) == 1


def test_up_data_dir_locked_is_one_clear_line(tmp_path: Path) -> None:
    proc, _ = _start_up(tmp_path)
    try:
        r = subprocess.run(
            [*CLI, "up", "--port", "0", "--data-dir", str(tmp_path / "data")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1
        assert "is in use by statek-bus pid" in r.stderr and "--data-dir" in r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()


def test_serve_joins_a_running_server(nats_server: NatsServer) -> None:
    proc = subprocess.Popen(
        [*CLI, "serve", "state", "--nats-url", nats_server.url], cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run(
                [*CLI, "status", "--json", "--nats-url", nats_server.url], capture_output=True, text=True
            )
            if any(row["name"] == "statek-state" for row in json.loads(r.stdout or "[]")):
                break
            time.sleep(0.2)
        else:
            pytest.fail("serve state did not register")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


# --- issue 19, point 4: --agents, readiness, failed starts, log level -----------------------------
MYAPP = """
from statek_bus import SupervisedAgent

triage = SupervisedAgent(role="triage_agent", system_prompt="You triage.", metadata={"MODEL": "scripted/t"})
AGENTS = [triage]
"""
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "statek-bus")


async def _executor_agents(url: str) -> str:
    """The agents every live executor on ``url`` lists in its ``$SRV.INFO`` metadata."""
    nc = await nats.connect(url)
    try:
        return ",".join(
            (r.get("metadata") or {}).get("agents", "") for r in await info(nc, "statek-executor")
        )
    finally:
        await nc.close()


def test_serve_executor_imports_agents_from_the_current_directory(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "agents.py").write_text(MYAPP)
    proc = subprocess.Popen(  # the console script, as a user runs it (not `python -m`)
        [
            CONSOLE_SCRIPT,
            "serve",
            "executor",
            "--agents",
            "myapp.agents:AGENTS",
            "--nats-url",
            nats_server.url,
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "triage_agent" not in asyncio.run(_executor_agents(nats_server.url)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the executor did not serve triage_agent"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize("command", [["serve", "executor"], ["up", "--port", "0"]], ids=["serve", "up"])
def test_a_bad_agents_spec_is_one_line_naming_the_import_error(tmp_path: Path, command: list[str]) -> None:
    extra = (
        ["--data-dir", str(tmp_path / "d")] if command[0] == "up" else ["--nats-url", "nats://127.0.0.1:1"]
    )
    r = subprocess.run(
        [CONSOLE_SCRIPT, *command, *extra, "--agents", "nosuchapp.agents:AGENTS"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "--agents nosuchapp.agents:AGENTS" in lines[0] and "No module named 'nosuchapp'" in lines[0]
    assert not (tmp_path / "d").exists()  # up checked the agents before starting anything


def test_up_on_a_shared_server_waits_for_its_own_instances(tmp_path: Path) -> None:
    first, url = _start_up(tmp_path, env=without_litellm())
    try:
        # a second mesh whose provider cannot start: the first mesh's provider must not stand in
        r = subprocess.run(
            [*CLI, "up", "--nats-url", url],
            cwd=ROOT,
            env=without_litellm(
                {**os.environ, "STATEK_LLM_PRICE_TABLE": str(tmp_path / "no-such-prices.csv")}
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 1
        assert "NATS_URL=" not in r.stdout
        assert "service provider exited" in r.stderr and "no-such-prices.csv" in r.stderr
        status = json.loads(
            subprocess.run(
                [*CLI, "status", "--json", "--nats-url", url], capture_output=True, text=True, timeout=60
            ).stdout
        )
        assert len(status) == 4  # the second mesh stopped what it had started
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        assert first.stdout is not None
        first.stdout.close()


def test_a_failed_up_leaves_the_data_dir_as_it_found_it(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "other")
    asyncio.run(server.start())
    try:
        fresh = tmp_path / "fresh"
        kept = tmp_path / "kept"
        kept.mkdir()
        (kept / "notes.txt").write_text("mine")
        for data_dir in (fresh, kept):
            r = subprocess.run(
                [*CLI, "up", "--port", str(server.port), "--data-dir", str(data_dir)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 1 and "already in use" in r.stderr
        assert not fresh.exists()
        assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    finally:
        asyncio.run(server.stop())


def test_log_level_reaches_the_services_up_starts(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "--log-level", "WARNING", "up", "--port", "0", "--data-dir", str(tmp_path / "d")],
        cwd=ROOT,
        env=without_litellm(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("NATS_URL=")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert " INFO " not in err, err  # the services' "ready" and "stopping" lines are INFO


# --- issue 19, point 6: agents nobody serves -------------------------------------------------------
def test_remembered_agents_are_shown_as_such_and_their_jobs_wait(tmp_path: Path) -> None:
    proc, url = _start_up(tmp_path, env=without_litellm())  # its executor serves only the built-in demo
    env = without_litellm({**os.environ, "NATS_URL": url})
    try:
        # an executor that serves cli_sleeper registers it, then goes away: the agent is remembered
        other = subprocess.Popen(
            [*CLI, "serve", "executor", "--agents", "tests.cli_agents:SLEEPER"], cwd=ROOT, env=env
        )
        deadline = time.monotonic() + 60
        while "cli_sleeper" not in asyncio.run(_executor_agents(url)):
            assert other.poll() is None and time.monotonic() < deadline, "the second executor did not start"
            time.sleep(0.2)
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=30) == 0

        agents = json.loads(
            subprocess.run(
                [*CLI, "jobs", "agents", "--json"], env=env, capture_output=True, text=True, timeout=60
            ).stdout
        )
        assert {a["role"]: a["served"] for a in agents} == {"demo": True, "cli_sleeper": False}
        table = subprocess.run([*CLI, "jobs", "agents"], env=env, capture_output=True, text=True, timeout=60)
        assert any(
            ln.startswith("cli_sleeper") and "no (remembered)" in ln for ln in table.stdout.splitlines()
        )

        deadline = time.monotonic() + 20  # submission settles its view a few seconds after a registration
        while True:
            r = subprocess.run(
                [*CLI, "submit", "cli_sleeper"], env=env, capture_output=True, text=True, timeout=60
            )
            assert r.returncode == 0, r.stderr
            job = json.loads(r.stdout)
            if job["agent_served"] is False or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert job["agent_served"] is False and job["status"] == "READY"
        assert "no live executor serves agent 'cli_sleeper'" in r.stderr
        # Accepted and queued, not refused. (Until work is routed by agent, a separate issue, the
        # demo executor that is live here may still take the job and end it with an error.)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
