"""The README is executable (issue 19, point 5): every shell and Python example in it runs here,
against a real mesh, so the README cannot drift from the product.

Each fenced ``bash``/``python`` block is run as written, with only these substitutions, which stand
for things the README leaves to the reader:

- ``<job-id>``: the job the block submitted (for ``jobs cancel``: a job that is still waiting, since
  a DONE job cannot be cancelled);
- ``nats://nats:4222`` (a Kubernetes service name): the URL of the mesh under test;
- ``/tmp/s``: a directory of this test's own;
- the default port 4222 becomes a free port (``STATEK_PORT=0``), as other meshes may hold 4222.

They run as after the README's ``pip install .``: without the ``[litellm]`` extra.

Commands that stay up (``up``, ``serve``, ``watch``) are stopped with a signal once they have shown
they work. ``pip install ...`` and ``pytest`` are not re-run: this suite is that command. ``nats``
lines use the ``nats`` CLI when it is installed, else the same requests through nats-py. A block
this file does not know how to run fails the test, so a new example cannot go untested.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats
import pytest

from bench.common import RATIO_HEADER
from statek_bus.mesh.discovery import ping
from tests.support.extras import without_litellm

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CLI = str(Path(sys.executable).parent / "statek-bus")  # the console script, as a user runs it
BIN = str(Path(sys.executable).parent)


def blocks() -> list[tuple[str, str, str]]:
    """``(section, language, code)`` of every fenced block, in order (section: the nearest heading)."""
    out, section = [], ""
    for m in re.finditer(r"^(#{2,3} [^\n]+)$|^```(\w*)\n(.*?)^```", README, re.M | re.S):
        if m.group(1):
            section = m.group(1).lstrip("# ").strip()
        else:
            out.append((section, m.group(2), m.group(3)))
    return out


BLOCKS = blocks()


def blocks_of(section: str, lang: str = "bash") -> list[str]:
    """The blocks of ``lang`` under ``section``, in order."""
    return [code for s, lg, code in BLOCKS if s == section and lg == lang]


def block(section: str, lang: str = "bash") -> str:
    """The one block of ``lang`` under ``section``."""
    found = blocks_of(section, lang)
    assert len(found) == 1, f"expected one {lang} block under {section!r}, found {len(found)}"
    return found[0]


def commands(code: str) -> list[str]:
    """The command lines of a shell block, without trailing comments."""
    out = []
    for line in code.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            out.append(shlex.join(tokens))
    return out


def env_for(cwd: Path, url: str | None = None) -> dict[str, str]:
    # as after the README's `pip install .` (no litellm extra: the examples need only the scripted model)
    env = without_litellm(
        {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "STATEK_PORT": "0"}
    )
    env.pop("NATS_URL", None)
    if url:
        env["NATS_URL"] = url
    return env


def sh(line: str, cwd: Path, url: str | None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one README command line in bash; it must succeed."""
    r = subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env_for(cwd, url), capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, f"{line!r} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def stays_up(line: str, cwd: Path, url: str | None, ready: str) -> tuple[subprocess.Popen[str], str]:
    """Start a command that stays up; return it once a stdout line starts with ``ready``."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {line}"],
        cwd=cwd,
        env=env_for(cwd, url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for out in proc.stdout:
        if out.startswith(ready):
            return proc, out.strip()
    _, err = proc.communicate()
    pytest.fail(f"{line!r} ended (code {proc.returncode}) before printing {ready!r}:\n{err}")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Stop a command that stays up; it must end cleanly. Returns its stderr."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding the README's ``myapp/agents.py``."""
    cwd = tmp_path_factory.mktemp("readme")
    code = block("Your agents", "python")
    first = code.splitlines()[0]
    assert first.startswith("# ") and first.endswith(".py"), first
    path = cwd / first[2:].strip()
    path.parent.mkdir(parents=True)
    path.write_text(code)
    return cwd


@pytest.fixture(scope="module")
def mesh(app: Path) -> Iterator[str]:
    """The mesh the README's examples run against: the demo plus a job that waits, for cancel."""
    proc, line = stays_up(
        f"{CLI} up --port 0 --data-dir {app / 'mesh'} --agents tests.cli_agents:AGENTS",
        ROOT,
        None,
        "NATS_URL=",
    )
    yield line.split("=", 1)[1]
    stop(proc)


def test_the_two_commands_are_as_promised_and_the_demo_runs(app: Path) -> None:
    assert commands(block("The two commands")) == [
        "pip install . '&&' statek-bus demo",
        "pip install -e '.[dev]' '&&' pytest",
    ]
    r = sh("statek-bus demo", app, None)
    assert "exit status: 'Success: total=31, mean=3.875'" in r.stdout
    # the demo's output is read by people: nothing before "submitted job" but the mesh starting,
    # warmup code labelled as warmup (not assistant), a code block and its output under one label
    out = r.stdout.splitlines()
    submitted = next(i for i, ln in enumerate(out) if ln.startswith("submitted job"))
    assert not any("status" in ln for ln in out[:submitted]) and "status → READY" not in r.stdout
    assert out[out.index("[warmup] code:") + 1].strip() == 'print("numbers:", numbers)'
    assert "[warmup] > numbers: [3,1,4,1,5,9,2,6]" in out
    assert not any(ln.startswith("[turn") and "numbers:" in ln for ln in out)
    assert (
        out.index("[turn 1] assistant:")
        < out.index("[turn 1] > total 31 max 9")
        < out.index("[turn 2] assistant:")
    )
    assert "[turn 3] > mean is 3.875" in out


def test_run_the_mesh(app: Path, mesh: str, tmp_path: Path) -> None:
    up_block, serve_block = blocks_of("Run the mesh")
    lines = commands(up_block)
    assert len(lines) == 4 and all(ln.startswith("statek-bus up") for ln in lines)
    lines = [ln.replace("/tmp/s", str(tmp_path / "s")).replace("nats://nats:4222", mesh) for ln in lines]
    serve, status = (ln.replace("nats://nats:4222", mesh) for ln in commands(serve_block))

    def run(line: str, cwd: Path) -> None:
        proc, ready = stays_up(line, cwd, None, "NATS_URL=")
        try:
            if "--agents" in line:  # the README's agents module is served
                agents = sh("statek-bus jobs agents --json", cwd, ready.split("=", 1)[1]).stdout
                assert {a["role"]: a["served"] for a in json.loads(agents)}.get("triage_agent") is True
        finally:
            stop(proc)

    def serve_one() -> None:
        proc = subprocess.Popen(
            ["bash", "-c", serve], cwd=app, env=env_for(app), stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            while _instances(mesh, "statek-submission") < 2:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    "serve submission did not register"
                )
                time.sleep(0.2)
            assert "statek-submission" in sh(status, app, mesh).stdout
        finally:
            stop(proc)  # type: ignore[arg-type]

    # all at once; the plain `up` gets a directory of its own, as its ./.statek is the --agents one's
    plain = tmp_path / "plain"
    plain.mkdir()
    with ThreadPoolExecutor(len(lines) + 1) as pool:
        futures = [pool.submit(run, ln, plain if i == 0 else app) for i, ln in enumerate(lines)]
        futures.append(pool.submit(serve_one))
        for f in futures:
            f.result()


def _instances(url: str, name: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return len(await ping(nc, name, wait=0.5))
        finally:
            await nc.close()

    return asyncio.run(count())


def test_from_the_command_line(app: Path, mesh: str) -> None:
    lines = commands(block("From the command line"))
    job_id = ""
    waiting = json.loads(sh("statek-bus submit cli_sleeper", app, mesh).stdout)["id"]
    for line in lines:
        if "states watch" in line:
            continue
        if "jobs cancel" in line:
            line = line.replace("'<job-id>'", waiting).replace("<job-id>", waiting)
        line = line.replace("'<job-id>'", job_id).replace("<job-id>", job_id)
        r = sh(line, app, mesh)
        if line.startswith("statek-bus submit"):
            job_id = json.loads(r.stdout)["id"]
            assert "submitted job" in r.stderr
        if line.startswith("statek-bus jobs send"):  # the restarted job ends without an error
            assert (
                sh(f"statek-bus jobs watch {job_id}", app, mesh)
                .stdout.rstrip()
                .endswith('exit_status="Noted: total=6"')
            )
    assert job_id

    (watch,) = [ln for ln in lines if "states watch" in ln]
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {watch}"],
        cwd=app,
        env=env_for(app, mesh),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        time.sleep(1.0)  # the watch is open
        sh("statek-bus states create --task-id t1 --agent-id a2 '{\"count\": 5}'", app, mesh)
        change = json.loads(proc.stdout.readline())
        assert "a2" in json.dumps(change)
    finally:
        stop(proc, signal.SIGINT)  # type: ignore[arg-type]


def test_from_python(app: Path, mesh: str) -> None:
    r = subprocess.run(
        [sys.executable, "-c", block("From Python", "python")],
        cwd=app,
        env=env_for(app, mesh),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "DONE" in r.stdout and "Success: total=12, mean=4.000" in r.stdout


def test_from_a_shell(app: Path, mesh: str) -> None:
    lines = commands(block("From a shell"))
    if shutil.which("nats"):
        job_id = ""
        for line in lines:
            r = sh(line.replace("<job-id>", job_id), app, mesh)
            if "statek.jobs.submit" in line:
                job_id = json.loads(r.stdout.strip().splitlines()[-1])["id"]
        return
    asyncio.run(_shell_via_nats_py(lines, mesh))


async def _shell_via_nats_py(lines: list[str], url: str) -> None:
    """The ``nats`` CLI lines, sent as the same requests through nats-py."""
    nc = await nats.connect(url)
    job_id = ""
    try:
        for line in lines:
            words = shlex.split(line)
            assert words[0] == "nats", line
            if words[1] == "req":
                reply = json.loads((await nc.request(words[2], words[3].encode(), timeout=10)).data)
                assert not isinstance(reply, dict) or not isinstance(reply.get("error"), dict), (line, reply)
                job_id = reply["id"] if words[2] == "statek.jobs.submit" else job_id
            elif words[1:3] == ["kv", "get"]:
                key = words[4].replace("<job-id>", job_id)
                entry = await (await nc.jetstream().key_value(words[3])).get(key)
                assert json.loads(entry.value or b"")["id"] == job_id
            elif words[1:3] == ["micro", "ls"]:
                names = {p["name"] for p in await ping(nc, wait=0.5)}
                assert {"statek-submission", "statek-executor", "statek-state", "statek-provider"} <= names
            else:
                pytest.fail(f"no nats-py equivalent for {line!r}")
    finally:
        await nc.close()


def test_benchmarks() -> None:
    """The README's bench command prints tables whose every header has a ratio column in the one
    style (``x <floor> (higher = faster)``), and nothing but tables on stdout."""
    (line,) = commands(block("Benchmarks"))
    r = sh(line, ROOT, None, timeout=300)
    assert "| operation" in r.stdout
    tables = re.findall(r"^## (.+)\n\n(\|.*\|)\n\|[-|]+\|\n((?:\|.*\|\n)+)", r.stdout, re.M)
    assert tables, r.stdout
    for title, header, body in tables:
        cols = [c.strip() for c in header.strip("|").split("|")]
        ratios = [c for c in cols if RATIO_HEADER.match(c)]
        assert ratios, f"table {title!r} has no ratio column: {cols}"
        for row in body.splitlines():  # every row is measured against the floor
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert all(cells[cols.index(c)] for c in ratios), row
    printed = "\n".join(f"## {t}\n\n{h}" for t, h, _ in tables)
    other = [ln for ln in r.stdout.splitlines() if ln.strip() and not ln.startswith(("|", "## "))]
    assert not other, f"not a table line on stdout: {other} (tables: {printed})"


def test_every_block_is_run_by_a_test() -> None:
    known = {
        ("The two commands", "bash"),
        ("Run the mesh", "bash"),
        ("From the command line", "bash"),
        ("Your agents", "python"),
        ("From Python", "python"),
        ("From a shell", "bash"),
        ("Benchmarks", "bash"),
    }
    runnable = [(s, lg) for s, lg, _ in BLOCKS if lg in ("bash", "sh", "shell", "python", "")]
    assert set(runnable) <= known, f"examples no test runs: {set(runnable) - known}"
