"""STATEK step semantics through a real executor, provider (scripted model) and NATS server.

Behaviour reference §4: 1 (steps), 3 (status machine), 5 (console and errors), 6 (harness limits),
8 (tools), 9 (chat styles); plus the per-step wall-clock limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from statek_bus.jobs.store import JobStore
from statek_bus.mesh.settings import Settings
from statek_bus.wire.messages import JobEvent, JobStatus, decode
from statek_bus.wire.subjects import job_events_subject
from tests.agents_fixture import chat_log, console, services, submit, wait_done


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """A provider and an executor (serving the fixture agents) on the session server."""
    # a step limit that ends t_loop's endless loop, yet lets a loaded machine finish a real step
    async with services(settings.replace(step_timeout=8.0), "provider", "executor") as s:
        yield s


async def test_steps_warmup_then_two_llm_turns(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_basic", {"event": {"a": 2, "b": 3}})
    record = await wait_done(js, job)
    assert record.exit_status == "ok"
    assert record.step == 2  # one step per model call, the warmup in the first
    assert record.usage.llm_calls == 2
    assert console(record)[0] == 'received event: {"a":2,"b":3}'
    assert [i.kind for i in chat_log(record)] == ["warmup", "llm", "llm"]


async def test_status_events_in_order(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    events: list[JobEvent] = []
    job_id = "job-status-" + str(id(events))

    async def collect(msg: Msg) -> None:
        events.append(decode(msg.data, JobEvent))

    sub = await nc.subscribe(job_events_subject(job_id), cb=collect)
    await submit(js, "t_basic", {"event": 1}, job_id=job_id)
    await wait_done(js, job_id)
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    statuses = [e.status for e in events if e.kind == "status"]
    assert statuses == [JobStatus.WARMING_UP, JobStatus.STARTED, JobStatus.DONE]
    assert any(e.kind == "console" and e.text == "received event: 1" for e in events)
    assert [e.exit_status for e in events if e.kind == "status"][-1] == "ok"


async def test_bare_exit_does_not_end_the_job(mesh: Settings, nc: Client) -> None:
    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), "t_bare_exit"))
    assert record.exit_status == "finished"
    assert "still here" in console(record)


async def test_console_formatting_and_runtime_errors(mesh: Settings, nc: Client) -> None:
    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), "t_console"))
    assert record.exit_status == "recovered"
    out = console(record)
    assert out[:2] == ['{"a":2}', "[0,1,4,9]"]
    assert out[2].endswith(", ...] (30 items total)")
    assert out[3] == "text"
    assert "ZeroDivisionError: division by zero" in out
    assert load_exceptions(record) == 0  # counters reset when the run ended


def load_exceptions(record: object) -> int:
    from statek_bus.runtime.engine_state import load_state

    return load_state(record).exceptions  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        ("t_turns", "Error: Maximum number of turns exceeded: 6/5"),
        ("t_consecutive", "Error: Maximum consecutive exceptions exceeded: 2/1"),
        ("t_tokens", "Error: Maximum token usage exceeded"),
    ],
)
async def test_harness_limits_end_the_job(mesh: Settings, nc: Client, agent: str, message: str) -> None:
    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), agent))
    assert record.status is JobStatus.DONE
    assert str(record.exit_status).startswith(message)
    assert record.error is not None and message.removeprefix("Error: ") in record.error


async def test_formal_and_inline_tool_calls(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_tools")
    record = await wait_done(js, job)
    assert record.exit_status == "tools done"
    first = chat_log(record)[0]
    results = {c.name: c.result for c in first.calls}
    assert results == {
        "add": "add called 2 40\n42",
        "nope": "NameError: tool 'nope' not found",
        "fail": "ValueError: boom",
    }
    out = console(record)
    assert "add called 5 1" in out
    assert f"6 {job}" in out
    assert "10" in out  # 'n' bound by name to the workspace variable n


async def test_md_dialog_style(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_dialog"))
    log = chat_log(record)
    assert log[0].dialog == "Let me check."
    assert log[0].console == ["42"]
    assert log[1].text == "The answer is 42."
    assert record.exit_status is None and record.error is None
    assert record.usage.llm_calls == 2


async def test_direct_style_runs_only_python_cli(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_direct"))
    log = chat_log(record)
    assert [c.result for c in log[0].calls] == ["1024"]
    assert log[0].console == []
    assert record.status is JobStatus.DONE and record.error is None


async def test_infinite_loop_is_stopped_and_the_job_continues(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_loop"))
    assert record.exit_status == "survived"
    assert any(line.startswith("StepTimeout:") for line in console(record))


async def test_hidden_warmup_and_as_tool_lines(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_warmup_tool"))
    assert record.exit_status == "classified 1"
    log = chat_log(record)
    assert log[0].hidden and log[1].calls[0].result == "add called 1 2\n3"


async def test_message_restarts_a_done_job(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    job = await submit(js, "t_restart")
    record = await wait_done(js, job)
    assert record.exit_status == "first"
    store = await JobStore.open(js)

    def restart(r):  # type: ignore[no-untyped-def]
        from statek_bus.jobs.store import utcnow

        r.inbox = [*r.inbox, JobEvent(job_id=r.id, kind="message", at=utcnow(), text="again")]
        r.status, r.exit_status = JobStatus.STARTED, None
        return r

    record, _, _ = await store.transition(job, restart)
    await store.enqueue(job, record.step, agent=record.agent)
    await asyncio.sleep(0.05)
    record = await wait_done(js, job)
    assert record.exit_status == "second"
    assert [i.kind for i in chat_log(record)] == ["llm", "user", "llm"]


async def test_error_handlers_are_called_once_with_their_context(mesh: Settings, nc: Client) -> None:
    from tests.agents_fixture import HANDLED

    HANDLED.clear()
    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), "t_handlers"))
    assert str(record.exit_status).startswith("Error: Maximum consecutive exceptions exceeded")
    assert [c for c, _ in HANDLED] == ["a", "b"]
    assert all(e is not None and "consecutive" in e for _, e in HANDLED)


async def test_a_provider_error_ends_the_job_with_it(mesh: Settings, nc: Client) -> None:
    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), "t_short"))
    assert str(record.exit_status).startswith("Error: LLM call failed:")
    assert record.usage.llm_calls == 1


async def test_panic_raises_the_difficulty_once_per_level(mesh: Settings, nc: Client) -> None:
    from statek_bus.runtime.engine_state import load_state

    record = await wait_done(nc.jetstream(), await submit(nc.jetstream(), "t_panic"))
    assert record.exit_status == "escalated"
    assert console(record) == [
        "# Difficulty increased to high. Continue with the harder task.",
        "RuntimeError: Job is already at high difficulty: high",
    ]
    assert load_state(record).difficulty == "H"
