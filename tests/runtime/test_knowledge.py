"""Knowledge through the mesh: prompt files, warmup defs, EXTRA_RESOURCES donors, examples and documents,
published to ``statek_knowledge`` and served by executor processes, with the scripted model.

What the provider received is read off the wire: a plain subscription on ``statek.llm.complete``
gets a copy of every request the provider's queue group answers.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from statek_bus.services import provider as provider_service
from statek_bus.services import submission as submission_service

from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.knowledge import KnowledgeStore
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import LauncherError, NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.messages import CompleteRequest, decode
from statek_bus.wire.subjects import LLM_COMPLETE
from tests.agents_fixture import chat_log, console, submit, wait_done

SPEC = "tests.knowledge_agents:AGENTS"

PROMPT_FILE = """# DESCRIPTION: Reads its prompt from a file
# System Prompt
You are the file prompt.
<HARD difficulty="H">
Only at high difficulty.
</HARD>
"""

LIBRARY_PROMPT = """# EXTRA_RESOURCES: (M:k_donor)
# System Prompt
Library prompt.
"""

OWN_EXAMPLE = """# name: Greeting a customer
# seq_id: 1
```python
print("hello")
```
hello
"""

DONOR_EXAMPLE = """# name: Escalating a refund
# difficulty: H
```python
refund(42)
```
> refunded 42
"""


def _document(body: str) -> str:
    return f"# ord_no: 1\n# topic: Policies\n# title: Refund policy\n{body}\n"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


class Requests:
    """Every request the provider received, by job."""

    def __init__(self) -> None:
        self.seen: dict[str, list[CompleteRequest]] = {}

    async def on(self, msg: object) -> None:
        req = decode(msg.data, CompleteRequest)  # type: ignore[attr-defined]
        self.seen.setdefault(req.job_id or "", []).append(req)

    def system(self, job_id: str) -> list[str]:
        return [r.messages[0].content or "" for r in self.seen[job_id] if r.messages[0].role == "system"]


@pytest.fixture
async def bus(fresh_server: NatsServer) -> AsyncIterator[tuple[Settings, Client, Requests]]:
    """A server of the test's own, its provider in-process, and a tap on the provider's requests."""
    s = Settings.from_env({}, nats_url=fresh_server.url, drain_timeout=3.0)
    nc = await connect(s, name="statek-test")
    await provision(nc.jetstream(), s)
    requests = Requests()
    await nc.subscribe(LLM_COMPLETE, cb=requests.on)
    async with running_service(provider_service.build, s, name="statek-provider"):
        yield s, nc, requests
    await nc.close()


def _executor(s: Settings, log: Path, env: dict[str, str] | None = None) -> ServiceProcess:
    return ServiceProcess("executor", s.nats_url, args=["--agents", SPEC], env=env or {}, log_path=log)


async def _one_job(s: Settings, nc: Client, tmp: Path, role: str, env: dict[str, str] | None = None) -> Any:
    """Run one job of ``role`` on an executor process started with ``env``; its final record."""
    executor = _executor(s, tmp / "executor.log", env)
    await executor.start()
    try:
        return await wait_done(nc.jetstream(), await submit(nc.jetstream(), role))
    finally:
        await executor.stop()


async def _publish_cli(url: str, root: Path, *extra: str, code: int = 0) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "statek_bus",
        "knowledge",
        "--nats-url",
        url,
        "publish",
        str(root),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == code, err.decode()
    return out.decode()


async def test_a_prompt_file_section_for_high_difficulty_appears_only_after_panic(
    bus: tuple[Settings, Client, Requests], tmp_path: Path
) -> None:
    s, nc, requests = bus
    prompts = _tree(tmp_path / "prompts", {"k_prompt.md": PROMPT_FILE})
    record = await _one_job(s, nc, tmp_path, "k_prompt", {"STATEK_PROMPT_FILES_DIR": str(prompts)})
    assert record.exit_status == "done"
    at_medium, at_high = requests.system(record.id)
    assert at_medium.startswith("You are the file prompt.") and "Only at high difficulty" not in at_medium
    assert "Code prompt" not in at_medium  # the file replaced the agent's own prompt
    assert at_high == "You are the file prompt.\n<HARD>\nOnly at high difficulty.\n</HARD>"
    assert [r.metadata["DIFFICULTY"] for r in requests.seen[record.id]] == ["M", "H"]
    changes = [i.text for i in chat_log(record) if i.kind == "difficulty"]
    assert len(changes) == 1 and changes[0].startswith("Difficulty M -> H at ")
    agents = await nc.jetstream().key_value("statek_agents")
    assert b"Reads its prompt from a file" in (await agents.get("k_prompt")).value  # DESCRIPTION


async def test_extra_resources_give_the_donors_tool_at_high_difficulty_only(
    bus: tuple[Settings, Client, Requests], tmp_path: Path
) -> None:
    s, nc, requests = bus
    record = await _one_job(s, nc, tmp_path, "k_receiver")
    assert record.exit_status == "ok"
    lines = console(record)
    assert lines[0] == "NameError: name 'donor_tool' is not defined"  # at M the donor's tool is absent
    assert lines[-2:] == ["donor says 30", "receiver clash"]  # at H it is there; the receiver's own wins
    prompts = requests.system(record.id)
    assert "donor_tool" not in prompts[0] and "donor_tool" not in prompts[1]
    assert "donor_tool(n)" in prompts[2]


async def test_a_file_without_the_system_prompt_header_stops_the_executor_at_start(
    bus: tuple[Settings, Client, Requests], tmp_path: Path
) -> None:
    s, _, _ = bus
    prompts = _tree(tmp_path / "prompts", {"k_prompt.md": "# MODEL: scripted/x\nno header here\n"})
    executor = _executor(s, tmp_path / "executor.log", {"STATEK_PROMPT_FILES_DIR": str(prompts)})
    with pytest.raises(
        LauncherError, match=r"STATEK_PROMPT_FILES_DIR: .*prompts/k_prompt\.md: no '# System Prompt'"
    ):
        await executor.start()
    executor.kill()


async def test_a_warmup_def_becomes_the_agents_warmup(
    bus: tuple[Settings, Client, Requests], tmp_path: Path
) -> None:
    s, nc, _ = bus
    warmups = _tree(tmp_path / "warmups", {"k_warm.py": "greeting = 'warmed ' + str(6 * 7)\n"})
    record = await _one_job(s, nc, tmp_path, "k_warm", {"STATEK_WARMUP_DEFS_DIR": str(warmups)})
    assert record.exit_status == "warmed 42"


async def test_examples_and_documents_update_on_two_running_executors_without_a_restart(
    bus: tuple[Settings, Client, Requests], tmp_path: Path
) -> None:
    s, nc, requests = bus
    js = nc.jetstream()
    files = {
        "prompts/k_library.md": LIBRARY_PROMPT,
        "examples/k_library/greeting.md": OWN_EXAMPLE,
        "examples/k_donor/hard/refund.md": DONOR_EXAMPLE,
        "documents/policies/refund.md": _document("Refunds within 30 days.\nKeep the receipt."),
        "documents/internal.txt": "# ord_no: 2\n# topic: Policies\n# title: Staff only\n# audience: k_donor\nsecret\n",
    }
    first = await _publish_cli(s.nats_url, _tree(tmp_path / "v1", files))
    executors = [_executor(s, tmp_path / f"executor{i}.log") for i in (1, 2)]
    for e in executors:
        await e.start()
    try:
        store = await KnowledgeStore.open(js)
        manifest, _ = await store.manifest()
        assert manifest is not None and manifest.version in first
        served = await store.served()
        assert sorted(x.version for x in served.values()) == [manifest.version] * 2  # both serve it
        before = await wait_done(js, await submit(js, "k_library"))

        files["documents/policies/refund.md"] = _document("Refunds within 14 days.")
        second = await _publish_cli(s.nats_url, _tree(tmp_path / "v2", files), "--wait", "30")
        manifest2, _ = await store.manifest()
        assert manifest2 is not None and manifest2.version != manifest.version
        assert second.count(f": {manifest2.version}") == 2  # --wait: each executor serves the new one
        after = await wait_done(js, await submit(js, "k_library"))

        # a version these executors cannot apply (a donor they do not serve) is refused by both
        files["prompts/k_library.md"] = LIBRARY_PROMPT.replace("k_donor", "k_nobody")
        refused = await _publish_cli(s.nats_url, _tree(tmp_path / "v3", files), "--wait", "30", code=1)
        assert refused.count(f": {manifest2.version} (version ") == 2 and "'k_nobody'" in refused
        still = await wait_done(js, await submit(js, "k_library"))
    finally:
        for e in executors:
            await e.stop()

    lines = console(before)
    assert lines[:3] == [
        "# Example ID: Example name (2 total)",
        "0: Greeting a customer",
        "1: Escalating a refund",
    ]
    assert (
        "# --- EXAMPLE: Escalating a refund ---\nrefund(42)\n> refunded 42\n# --- END OF EXAMPLE ---" in lines
    )
    assert "0: Policies (1 documents)" in lines  # the staff-only document is not for this role
    assert lines[-4:-1] == ["# Refund policy (lines 0-2/2)", "Refunds within 30 days.", "Keep the receipt."]
    assert lines[-1] == "# Document 'nothing like it' not found in topic 'Policies'"
    assert console(after)[-3:-1] == ["# Refund policy (lines 0-1/1)", "Refunds within 14 days."]
    # the harder example raised the job to H for its next request, and each step says its version
    assert [r.metadata["DIFFICULTY"] for r in requests.seen[before.id]] == ["M", "H", "H"]
    assert {r.metadata["KNOWLEDGE"] for r in requests.seen[before.id]} == {manifest.version}
    assert {r.metadata["KNOWLEDGE"] for r in requests.seen[after.id]} == {manifest2.version}
    assert {r.metadata["KNOWLEDGE"] for r in requests.seen[still.id]} == {manifest2.version}


async def test_publishing_a_bad_file_names_it_and_publishes_nothing(
    bus: tuple[Settings, Client, Requests], tmp_path: Path
) -> None:
    s, nc, _ = bus
    root = _tree(
        tmp_path / "k", {"examples/k_library/x.md": "# name: X\nprose first\n```python\nx = 1\n```\n"}
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "statek_bus",
        "knowledge",
        "--nats-url",
        s.nats_url,
        "publish",
        str(root),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert (
        "nothing published: " in err.decode()
        and "examples/k_library/x.md: line 2: text before the first code block" in err.decode()
    )
    assert (await (await KnowledgeStore.open(nc.jetstream())).manifest())[0] is None


async def test_a_jobs_own_extra_resources_give_it_the_donors_tools(
    bus: tuple[Settings, Client, Requests], tmp_path: Path
) -> None:
    s, nc, _ = bus
    executor = _executor(s, tmp_path / "executor.log")
    await executor.start()
    try:
        async with running_service(submission_service.build, s, name="statek-submission"):
            client = AsyncStatekClient(settings=s, nc=nc)
            given = await client.jobs.submit_new_job("k_plain", extra_resources="(L:k_donor)")
            unknown = await client.jobs.submit_new_job("k_plain", extra_resources="(L:k_nobody)")
            done = await wait_done(nc.jetstream(), given.id)
            failed = await wait_done(nc.jetstream(), unknown.id)
    finally:
        await executor.stop()
    assert (done.exit_status, console(done)) == ("job donors", ["donor says 40"])
    assert failed.error is not None and "extra_resources names role 'k_nobody'" in failed.error


async def test_the_knowledge_watch_stops_when_asked_after_its_connection_closed(fresh_server: NatsServer) -> None:
    """Its clean-up on a closed connection raised ``connection closed`` in place of the cancel and
    the watch's retry loop caught that: it retried every second for good, and an executor told to
    stop after its server went away never exited (a killed ``statek-bus up`` left it running)."""
    from statek_bus.runtime.knowledge import KnowledgeWatcher
    from tests.knowledge_agents import PLAIN

    s = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(s, name="statek-test")
    await provision(nc.jetstream(), s)
    watcher = await KnowledgeWatcher(nc.jetstream(), s, {PLAIN.role: PLAIN}, "gone").__aenter__()
    assert watcher._task is not None
    await asyncio.sleep(0.2)  # the watch is listening
    await nc.close()
    stopping = asyncio.create_task(watcher.__aexit__(None, None, None))
    done, _ = await asyncio.wait([stopping], timeout=10)
    for _ in range(3):  # a watch that outlived its cancel: ended here, not left to the next test
        watcher._task.cancel()
        await asyncio.sleep(0)
    assert done, "the knowledge watch kept retrying after it was cancelled"
    assert watcher._task.done()
