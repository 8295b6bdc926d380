"""`statek-bus up` and `statek-bus status` as a user runs them: real processes, real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statek_bus.ops.launcher import NatsServer

ROOT = Path(__file__).resolve().parent.parent
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


def _start_up(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*CLI, "up", "--port", "0", "--data-dir", str(tmp_path / "data"), *extra],
        cwd=ROOT,
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
    import asyncio

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
