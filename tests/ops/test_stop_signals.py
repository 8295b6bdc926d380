"""SIGINT (a terminal's Ctrl-C, sent to the whole process group) and SIGTERM (Kubernetes, systemd)
at every moment of ``demo``, ``up`` and ``serve``: each ends within 5 s, with no traceback, and leaves
no process behind (issue 19, point 4). Every process a command starts inherits a marker variable,
so a leftover is found even after its parent died."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from statek_bus.ops.launcher import free_port
from tests.support.extras import without_litellm

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "statek_bus"]
MARK = "STATEK_TEST_MARK"
EXIT_WITHIN = 5.0  # seconds after the (last) signal; the bound


def marked(mark: str) -> list[str]:
    """Command lines of the live (non-zombie) processes carrying ``mark`` in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in env.split(b"\0") and state != "Z":
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


class Run:
    """One command in its own session (so a group SIGINT is a terminal's Ctrl-C)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.mark = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [*CLI, *args],
            cwd=ROOT,
            env=without_litellm({**os.environ, **(env or {}), MARK: self.mark}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_for_process(self, needle: str, timeout: float = 60) -> None:
        """Wait until a process of this run has ``needle`` in its command line."""
        deadline = time.monotonic() + timeout
        while not any(needle in p for p in marked(self.mark)):
            assert self.proc.poll() is None, "the command ended early"
            assert time.monotonic() < deadline, f"no {needle!r} process within {timeout}s"
            time.sleep(0.01)

    def wait_for_line(self, prefix: str) -> None:
        """Read stdout until a line starting with ``prefix``."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return
        pytest.fail(f"stdout ended without a {prefix!r} line")

    def wait_for_stderr(self, text: str) -> None:
        """Read stderr until a line holding ``text`` (what the process is doing, seen, not assumed)."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if text in line:
                return
        pytest.fail(f"stderr ended without a line holding {text!r}")

    def ctrl_c(self) -> None:
        """SIGINT to the whole process group, as a terminal does."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def sigterm(self) -> None:
        """SIGTERM to the command only, as Kubernetes does to PID 1."""
        self.proc.send_signal(signal.SIGTERM)

    def finish(self) -> tuple[int, str]:
        """Assert it exits (30 s: a hang detector, not a timing), with no traceback and nothing left; its exit code."""
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
            pytest.fail("the command ignored the signal for 30 s")
        deadline = time.monotonic() + 2.0
        while marked(self.mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = marked(self.mark)
        for p in left:
            os.kill(int(p.split(":")[0]), signal.SIGKILL)
        assert not left, f"left running: {left}"
        assert "Traceback" not in err, err
        return self.proc.returncode, err


Moment = Callable[[Run], None]


def before_nats_answers(run: Run) -> None:
    run.wait_for_process("nats-server")


def while_services_start(run: Run) -> None:
    run.wait_for_process(" serve provider")


@pytest.mark.parametrize(
    ("moment", "send"),
    [
        (before_nats_answers, Run.ctrl_c),
        (before_nats_answers, Run.sigterm),
        (while_services_start, Run.ctrl_c),
        (while_services_start, Run.sigterm),
    ],
    ids=[
        "nats-starting-ctrl-c",
        "nats-starting-sigterm",
        "services-starting-ctrl-c",
        "services-starting-sigterm",
    ],
)
def test_demo_stops_cleanly_while_starting(moment: Moment, send: Callable[[Run], None]) -> None:
    run = Run(["demo"])
    moment(run)
    send(run)
    code, _ = run.finish()
    assert code == 130


def test_demo_stops_cleanly_while_its_job_runs_and_while_it_shuts_down() -> None:
    run = Run(["demo"])
    run.wait_for_line("submitted job")
    run.ctrl_c()
    code, _ = run.finish()
    assert code == 130
    run = Run(["demo"])
    run.wait_for_line("LLM calls:")  # the job is done: the mesh is being stopped now
    run.ctrl_c()
    code, _ = run.finish()
    assert code in (0, 130)


@pytest.mark.parametrize(
    ("moment", "send"),
    [(before_nats_answers, Run.sigterm), (while_services_start, Run.ctrl_c)],
    ids=["nats-starting-sigterm", "services-starting-ctrl-c"],
)
def test_up_stops_cleanly_while_starting(tmp_path: Path, moment: Moment, send: Callable[[Run], None]) -> None:
    run = Run(["up", "--port", "0", "--data-dir", str(tmp_path / "data")])
    moment(run)
    send(run)
    code, err = run.finish()
    assert code == 130
    assert "KeyboardInterrupt" not in err


def test_up_stops_cleanly_while_serving_and_a_second_signal_cuts_the_stop_short(tmp_path: Path) -> None:
    run = Run(["up", "--port", "0", "--data-dir", str(tmp_path / "data")])
    run.wait_for_line("NATS_URL=")
    run.ctrl_c()
    code, _ = run.finish()
    assert code == 0
    run = Run(["up", "--port", "0", "--data-dir", str(tmp_path / "data")])
    run.wait_for_line("NATS_URL=")
    run.sigterm()
    time.sleep(0.2)  # shutting down
    run.ctrl_c()
    code, _ = run.finish()
    assert code in (0, 130)


@pytest.mark.parametrize("send", [Run.ctrl_c, Run.sigterm], ids=["ctrl-c", "sigterm"])
def test_serve_against_an_unreachable_server_still_stops(send: Callable[[Run], None]) -> None:
    run = Run(["serve", "state", "--nats-url", f"nats://127.0.0.1:{free_port()}"])
    run.wait_for_stderr("Connection refused")  # connecting, and retrying forever as a service does
    assert run.proc.poll() is None
    send(run)
    run.finish()


def test_even_a_killed_up_leaves_nothing_running(tmp_path: Path) -> None:
    run = Run(["up", "--port", "0", "--data-dir", str(tmp_path / "data")])
    run.wait_for_line("NATS_URL=")
    run.proc.kill()  # SIGKILL: no handler runs; the children's parent-death signal stops them
    with contextlib.suppress(subprocess.TimeoutExpired):  # a child holding the pipes is named below
        run.proc.communicate(timeout=30)
    deadline = time.monotonic() + EXIT_WITHIN
    while marked(run.mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = marked(run.mark)
    for p in left:
        os.kill(int(p.split(":")[0]), signal.SIGKILL)
    run.proc.communicate()  # its pipes closed and the process reaped, whatever is asserted next
    assert not left, f"left running: {left}"
