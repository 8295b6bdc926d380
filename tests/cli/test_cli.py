"""The CLI as scripts use it, through real processes: exit codes, stdout/stderr, --var, --json,
tables, broken pipes, timeouts, Ctrl-C during --wait, and NATS unreachable (issue 19, points 2-3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from statek_bus import __version__
from statek_bus.ops.launcher import free_port
from tests.support.extras import without_litellm

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "statek_bus"]


def cli(
    *args: str, url: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``statek-bus ARGS`` (against ``url``) and capture its output."""
    full_env = without_litellm({**os.environ, **env})
    if url:
        full_env["NATS_URL"] = url
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``statek-bus up`` serving the demo and the CLI test agents; yields its NATS URL."""
    data = tmp_path_factory.mktemp("cli-mesh")
    proc = subprocess.Popen(
        [*CLI, "up", "--port", "0", "--data-dir", str(data), "--agents", "tests.cli_agents:AGENTS"],
        cwd=ROOT,
        env=without_litellm(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("NATS_URL="), line
    yield line.split("=", 1)[1]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    proc.stdout.close()


def _job(stdout: str) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(stdout)
    return job


def test_version_is_the_package_version() -> None:
    r = cli("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"statek-bus {__version__}")


def test_nothing_listening_is_one_clear_line() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    r = cli("submit", "demo", url=url, timeout=30)  # the bound is a hang detector, not a timing
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1
    assert len(lines) == 1, r.stderr  # one attempt: not a WARNING per reconnect attempt
    assert url in lines[0] and "statek-bus up" in lines[0]


def test_submit_wait_done_exits_0_with_id_first_on_stderr(mesh: str) -> None:
    r = cli("submit", "demo", "--var", "numbers=[1, 2, 3]", "--locale", "EN-US", "--wait", url=mesh)
    assert r.returncode == 0, r.stderr
    job = _job(r.stdout)
    assert (job["status"], job["exit_status"], job["error"]) == ("DONE", "Success: total=6, mean=2.000", None)
    lines = r.stderr.splitlines()
    assert lines[0] == f"submitted job {job['id']} (agent demo, status READY)"
    assert lines[-1] == f"job {job['id']}: DONE"


def test_a_job_ending_in_an_error_exits_3_and_explains_the_harness_message(mesh: str) -> None:
    r = cli("submit", "cli_failing", "--wait", url=mesh)
    assert r.returncode == 3, r.stderr
    job = _job(r.stdout)
    assert "Maximum consecutive exceptions exceeded: 2/1" in job["error"]  # STATEK's text, kept
    assert "raised an exception 2 times in a row; the limit is 1" in r.stderr  # and what it means
    w = cli("jobs", "watch", job["id"], url=mesh)
    assert w.returncode == 3 and "in a row" in w.stderr


def test_timeout_is_one_line_and_exit_5_and_cancel_then_exits_4(mesh: str) -> None:
    r = cli("submit", "cli_sleeper", "--wait", "--timeout", "1", url=mesh)
    assert r.returncode == 5, r.stderr
    assert "Traceback" not in r.stderr
    job_id = r.stderr.splitlines()[0].split()[2]
    assert r.stderr.splitlines()[-1].startswith(f"statek-bus: job {job_id} is not DONE after 1s")
    c = cli("jobs", "cancel", job_id, "--reason", "not needed", url=mesh)
    assert c.returncode == 0, c.stderr
    w = cli("jobs", "watch", job_id, url=mesh)
    assert w.returncode == 4
    assert "Cancelled: not needed" in w.stdout


def test_ctrl_c_during_wait_keeps_the_id_and_exits_130(mesh: str) -> None:
    proc = subprocess.Popen(
        [*CLI, "submit", "cli_sleeper", "--wait"],
        cwd=ROOT,
        env=without_litellm({**os.environ, "NATS_URL": mesh}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("submitted job "), first  # printed at once, before any waiting
    job_id = first.split()[2]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err and f"job {job_id} keeps running" in err
    assert cli("jobs", "cancel", job_id, url=mesh).returncode == 0


def test_var_that_looks_like_json_must_parse_and_nothing_is_sent(mesh: str) -> None:
    job_id = f"bad-var-{uuid.uuid4().hex[:8]}"
    r = cli("submit", "demo", "--job-id", job_id, "--var", "numbers=[1, 2,", url=mesh)
    assert r.returncode == 2
    assert "--var numbers" in r.stderr and "not valid JSON" in r.stderr
    assert cli("jobs", "get", job_id, url=mesh).returncode == 1  # not found: nothing was submitted
    ok = cli(
        "submit", "demo", "--var", "numbers=[4]", "--param", "label=plain words", "--param", "n=-3", url=mesh
    )
    assert ok.returncode == 0, ok.stderr
    assert _job(ok.stdout)["params"] == {"label": "plain words", "n": -3}  # words stay strings


def test_reads_print_tables_by_default_and_json_with_the_flag(mesh: str) -> None:
    done = cli("submit", "demo", "--var", "numbers=[5]", "--wait", url=mesh)
    assert done.returncode == 0
    job_id = _job(done.stdout)["id"]
    reads = {
        "agents": ("jobs", "agents"),
        "agents_json": ("jobs", "agents", "--json"),
        "list": ("jobs", "list", "--agent", "demo", "--status", "done"),  # any case
        "list_json": ("jobs", "list", "--agent", "demo", "--status", "Done", "--json"),
        "get": ("jobs", "get", job_id),
        "get_json": ("jobs", "get", job_id, "--json"),
        "history": ("jobs", "history", job_id),
        "status": ("status",),
    }
    with ThreadPoolExecutor(len(reads)) as pool:  # in parallel: interpreter start-up dominates
        futures = {name: pool.submit(cli, *args, url=mesh) for name, args in reads.items()}
        out = {name: f.result() for name, f in futures.items()}
    assert all(r.returncode == 0 for r in out.values()), {n: r.stderr for n, r in out.items()}
    table = out["agents"].stdout.splitlines()
    assert table[0].split() == ["AGENT", "KIND", "MODEL", "SERVED", "TOOLS", "DESCRIPTION"]
    assert len(table) == 4  # header + three agents, not hundreds of JSON lines
    agents = json.loads(out["agents_json"].stdout)
    assert {a["role"]: a["served"] for a in agents} == {
        "demo": True,
        "cli_failing": True,
        "cli_sleeper": True,
    }
    assert out["list"].stdout.startswith("ID ") and f"{job_id}  demo   DONE" in out["list"].stdout
    listed = json.loads(out["list_json"].stdout)
    assert job_id in {j["id"] for j in listed} and {j["status"] for j in listed} == {"DONE"}
    assert out["get"].stdout.splitlines()[0].split() == ["id", job_id]
    assert json.loads(out["get_json"].stdout)["id"] == job_id
    assert "[step 0] assistant:" in out["history"].stdout and "  > numbers: [5]" in out["history"].stdout
    assert "statek-executor" in out["status"].stdout and "requests=" in out["status"].stdout


def test_a_reader_that_stops_early_ends_the_command_quietly(mesh: str) -> None:
    # ~300 KB of JSON: far over a pipe buffer, so the writer really meets the closed pipe
    task = f"pipe-{uuid.uuid4().hex[:8]}"
    code = (
        "import asyncio, sys\n"
        "from statek_bus import AsyncStatekClient\n"
        "async def main():\n"
        "    async with AsyncStatekClient() as c:\n"
        "        await asyncio.gather(*(c.states.create(sys.argv[1], f'a{i}', {'pad': 'x' * 1000})\n"
        "                               for i in range(300)))\n"
        "asyncio.run(main())\n"
    )
    env = without_litellm({**os.environ, "NATS_URL": mesh})
    subprocess.run([sys.executable, "-c", code, task], env=env, check=True, timeout=60)
    r = subprocess.run(
        f"{sys.executable} -m statek_bus states list --task-id {task} --limit 300 --json | head -1",
        shell=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "["
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
