"""A STATEK program ported by changing only its imports (per docs/migrating-from-statek.md) and settings.

``statek_helpdesk.py`` is written against STATEK 1.4.2: agents, tools, a delegate, a hidden warmup
binding a shared context, the persistent job context, a dialog agent whose prompt comes from a
prompt file and whose examples from an examples directory, ``StatekClientAPI`` and
``StatekPushQueue``.
The test rewrites each ``from statek... import`` line with the import table of the migration guide
(so the guide cannot drift from the code), replaces the settings block (the models: the scripted
model here), and runs the result as the agents module of real service processes.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from statek_bus import JobStatus, StatekClient, StatekClientAPI
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "migrating-from-statek.md"
PROGRAM = Path(__file__).with_name("statek_helpdesk.py")
ENV = {"STATEK_LOG_LEVEL": "WARNING", "STATEK_RECOVERY_INTERVAL": "3600"}

SETTINGS = '''\
TRIAGE_METADATA = {"MODEL": "scripted/triage", "SCRIPT": [
    'order = lookup_order(ticket["order_id"])\\nprint(order["status"])',
    'answer, child = delegate_task("researcher", shared_vars={"question": ticket["subject"]})\\nprint(answer)',
    'shared_context_set_var("ORDER", "last_order", order["id"], "the last order handled")\\n'
    'print(handled_orders())\\nexit(answer)',
]}
RESEARCHER_METADATA = {"MODEL": "scripted/researcher", "SCRIPT": ['exit("answer to: " + question)']}
AUDITOR_METADATA = {"MODEL": "scripted/auditor", "SCRIPT": ["exit(last_order)"]}
CONCIERGE_METADATA = {"MODEL": "scripted/concierge", "SCRIPT": [
    "Let me look that up.\\n```python\\nlist_of_examples()\\nstatus = lookup_order('A-17')['status']\\n```",
    "```python\\nanswer('Your order A-17 has ' + status + '.')\\n```",
]}
'''

PROMPT_FILE = """\
# DESCRIPTION: Talks to customers about their orders
# System Prompt
You talk to customers about their orders. Tools:
{tools}
"""
EXAMPLE = """\
# name: Track an order
```python
print(lookup_order("A-17")["status"])
```
shipped
"""


def import_table() -> dict[str, str]:
    """``statek.module.Name`` → ``statek_bus.Name`` from the guide's tables ("—" rows left out)."""
    rows = re.findall(r"^\| `(statek\.[\w.]+)` \| `(statek_bus\.[\w.]+)` \|", GUIDE.read_text(), re.MULTILINE)
    return dict(rows)


def port(source: str, table: dict[str, str]) -> str:
    """``source`` with its STATEK imports rewritten and its settings block replaced."""
    out: list[str] = []
    for line in source.splitlines():
        m = re.fullmatch(r"from (statek(?:\.\w+)*) import (.+)", line)
        if m:
            for name in (n.strip() for n in m.group(2).split(",")):
                target = table.get(f"{m.group(1)}.{name}")
                assert target is not None, f"the guide has no statek-bus name for {m.group(1)}.{name}"
                module, _, attr = target.rpartition(".")
                out.append(f"from {module} import {attr}" + (f" as {name}" if attr != name else ""))
            continue
        out.append(line)
    text = "\n".join(out) + "\n"
    start, end = text.index("# --- settings"), text.index("# -----", text.index("# --- settings") + 10)
    return text[: text.index("\n", start) + 1] + SETTINGS + text[end:]


@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The ported module in a directory of its own, and a mesh of service processes serving it."""
    (tmp_path / "ported_helpdesk.py").write_text(port(PROGRAM.read_text(), import_table()))
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "concierge.md").write_text(PROMPT_FILE)
    (tmp_path / "examples" / "concierge").mkdir(parents=True)
    (tmp_path / "examples" / "concierge" / "track.md").write_text(EXAMPLE)
    server = NatsServer(data_dir=tmp_path / "nats")
    asyncio.run(server.start())
    env = {**ENV, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    knowledge = {"STATEK_PROMPT_FILES_DIR": str(tmp_path / "prompts"), "STATEK_EXAMPLES_DIR": str(tmp_path / "examples")}
    procs = [
        ServiceProcess("provider", server.url, env=env),
        ServiceProcess("submission", server.url, env=env),
        ServiceProcess("executor", server.url, env={**env, **knowledge}, args=["--agents", "ported_helpdesk:AGENTS"]),
    ]

    async def start() -> None:
        for p in procs:
            p.spawn()
        for p in procs:
            await p.wait_ready()

    async def stop() -> None:
        for p in procs:
            await p.stop(grace=10)

    monkeypatch.setenv("NATS_URL", server.url)  # what StatekClientAPI and StatekPushQueue connect to
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        asyncio.run(start())
        yield server.url
    finally:
        StatekClientAPI().close()  # the connection the program's StatekClientAPI/StatekPushQueue shared
        asyncio.run(stop())
        asyncio.run(server.stop())
        sys.modules.pop("ported_helpdesk", None)


def test_the_guides_import_table_ports_a_statek_program_that_runs_on_the_mesh(mesh: str) -> None:
    import ported_helpdesk  # type: ignore[import-not-found]

    (submitted,) = ported_helpdesk.open_tickets()
    with StatekClient(settings=Settings.from_env({}, nats_url=mesh)) as client:
        done = client.jobs.wait(submitted, timeout=60)
        assert done.status is JobStatus.DONE and done.exit_status == "answer to: where is A-17", done
        # the job's event stream, replayed up to its DONE (history may lag the record by a publish)
        console = [e.text for e in client.jobs.watch(submitted) if e.kind == "console"]
        assert console == ["ticket: where is A-17", "shipped", "answer to: where is A-17", "handled by triage", '["A-17"]']
        assert done.usage.llm_calls == 4  # three turns of its own, one of the researcher it delegated to

        # the pushed event became a job of its own (queue → job), which also ran to the end
        queued = [j for j in client.jobs.list(agent="triage") if j.id != submitted]
        assert len(queued) == 1 and queued[0].id.startswith("event:triage:seq-")
        assert client.jobs.wait(queued[0].id, timeout=60).exit_status == "answer to: refund for A-17"
        assert [j.params for j in client.jobs.list(agent="triage") if j.id == submitted] == [{"source": "email"}]

        # what the triage jobs wrote to the shared context, a job of another agent reads by name
        audit = client.jobs.submit("auditor")
        assert client.jobs.wait(audit.id, timeout=60).exit_status == "A-17"

        # a dialog agent whose prompt and description came from a prompt file, with an example file
        assert client.jobs.agent("concierge").description == "Talks to customers about their orders"
        chat = client.jobs.submit("concierge")
        ended = client.jobs.wait(chat.id, timeout=60)
        assert ended.exit_status == "Success" and ended.error is None, ended
        lines = [e.text for e in client.jobs.watch(chat.id) if e.kind == "console"]
        assert "# Example ID: Example name (1 total)" in lines and "0: Track an order" in lines, lines
        assert "log: answer(body='Your order A-17 has shipped.', media=None)" in lines, lines
