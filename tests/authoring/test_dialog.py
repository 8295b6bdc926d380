"""Dialog agents, reminders, the Researcher and the MessageDispatcher, through the real mesh on the
scripted model: what the user receives, what the job's console and chat show, how the job ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from statek_bus import (
    AsyncStatekClient,
    DialogAgent,
    MessageDispatcher,
    RecurringReminder,
    RecursiveReminder,
    Researcher,
    SupervisedAgent,
    temporal,
)
from statek_bus.authoring.messaging import split_media
from statek_bus.mesh.settings import Settings
from statek_bus.runtime.loading import load_agents
from statek_bus.wire.messages import JobEvent, decode
from statek_bus.wire.subjects import job_events_subject
from tests import dialog_agents as fx
from tests.agents_fixture import chat_log, console, services, submit, wait_done


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """Provider, submission and an executor serving the dialog agents."""
    fx.SENT.clear()
    fx.DISPATCHED.clear()
    async with services(settings, "provider", "submission", "executor", agents=fx.AGENTS_SPEC) as s:
        yield s


async def test_a_dialog_sends_prose_with_its_media_fires_its_reminder_and_answer_ends_it(
    mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_chat"))
    assert record.exit_status == "Success" and record.error is None
    assert (
        record.usage.llm_calls == 3
    )  # the final-looking second reply did not end the job: the reminder did not let it
    assert await fx.sent(3) == [
        ("Let me work it out.", None),
        ("The answer is 42. See", "/media/img/chart.png"),
        ("Here is the chart again.", "/media/img/chart.png"),
    ]
    log = chat_log(record)
    reminders = [i for i in log if i.kind == "system"]
    assert [i.text for i in reminders] == ["Remind the user that the chart can be sent again."]
    assert [i.kind for i in log] == [
        "llm",
        "llm",
        "system",
        "llm",
    ]  # after the second reply, before the third
    assert "log: answer(body='Here is the chart again.', media='/media/img/chart.png')" in console(record)
    assert "42" in console(record)


async def test_a_reply_holding_a_link_is_sent_whole(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_links"))
    assert record.exit_status is None and record.usage.llm_calls == 1  # a final dialog reply ends the job
    assert await fx.sent(1) == [("Read [the guide](https://example.org/guide) and /media/a.png", None)]


async def test_a_failing_send_message_shows_on_the_jobs_console(mesh: Settings, nc: Client, uid: str) -> None:
    job_id = f"job-broken-{uid}"
    seen: asyncio.Queue[JobEvent] = asyncio.Queue()

    async def on_event(msg: object) -> None:
        await seen.put(decode(msg.data, JobEvent))  # type: ignore[attr-defined]

    sub = await nc.subscribe(job_events_subject(job_id), cb=on_event)
    try:
        await submit(nc.jetstream(), "t_d_broken", job_id=job_id)
        async with asyncio.timeout(30):
            while True:
                event = await seen.get()
                if event.kind == "console":
                    break
    finally:
        await sub.unsubscribe()
    assert event.text == "Error: send_message failed: RuntimeError: chat service down"
    history = await AsyncStatekClient(settings=mesh, nc=nc).jobs.history(job_id)
    assert "Error: send_message failed: RuntimeError: chat service down" in history.console


async def test_a_researcher_asks_and_answers_from_restricted_code(mesh: Settings, nc: Client) -> None:
    assert mesh.restricted_mode  # model code runs restricted; ask and answer are tools across the boundary
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_research"))
    assert record.exit_status == "Success" and record.error is None
    assert await fx.sent(2) == [("Which year?", None), ("It was 1969", None)]
    assert "user said 1969" in console(record)


async def test_a_dispatcher_routes_with_its_three_tools(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_dispatch"))
    assert record.exit_status == "routed", console(record)
    assert console(record) == ["user: my invoice is wrong", "thread:billing", "sent to billing"]
    assert fx.DISPATCHED == ["billing"]


def test_dialog_agents_default_to_md_dialog_and_offer_answer() -> None:
    agent = DialogAgent(fx.send, metadata={"MODEL": "scripted/x"})
    assert agent.role == "dialog_agent" and agent.chat_style == "MD_DIALOG"
    names = [t.name for t in agent.visible_tools()]
    assert "answer" in names and "_send_message" not in names
    assert "answer" not in [t.name for t in DialogAgent(fx.send, add_answer_tool=False).visible_tools()]
    assert DialogAgent(fx.send, chat_style="direct").chat_style == "DIRECT"
    assert SupervisedAgent("plain", metadata={"MODEL": "scripted/x"}).chat_style == "CONSOLE"


def _no_body(text: str) -> None:
    """Takes no ``body``."""


@temporal(complement=lambda f: f.state, condition=lambda f: True)
def _later(body: str) -> str:
    return body


def test_send_message_is_checked_when_the_agent_is_built() -> None:
    with pytest.raises(TypeError, match="callable"):
        DialogAgent(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'body'"):
        DialogAgent(_no_body)
    with pytest.raises(ValueError, match="temporal"):
        DialogAgent(_later)
    with pytest.raises(ValueError, match="'body'"):
        SupervisedAgent("plain", send_message=_no_body)


def test_reminders_have_a_type_and_a_threshold() -> None:
    agent = DialogAgent(fx.send)
    made = agent.set_new_reminder("Be brief.", min_dialog_len=3)
    assert isinstance(made, RecurringReminder) and agent.reminder is made
    assert not made.ready(2) and made.ready(3)
    assert RecurringReminder("Always.").ready(0)
    assert RecursiveReminder is RecurringReminder
    assert isinstance(agent.set_new_reminder("x", type="recursive"), RecurringReminder)
    with pytest.raises(ValueError, match="unknown reminder type"):
        agent.set_new_reminder("x", type="ONCE")
    with pytest.raises(TypeError, match="Reminder"):
        agent.set_reminder("x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42. See /media/img/chart.png", ("The answer is 42. See", "/media/img/chart.png")),
        ("Here:\n![chart](charts/q3.png)\nEnjoy.", ("Here: Enjoy.", "charts/q3.png")),
        (
            "Watch https://cdn.example.org/v/intro.mp4 now",
            ("Watch now", "https://cdn.example.org/v/intro.mp4"),
        ),
        ("See [docs](https://x.org) and /media/a.png", ("See [docs](https://x.org) and /media/a.png", None)),
        ("No   media\nhere.", ("No media here.", None)),
        (
            "version 1.2.png? no: a/b is a path but not media",
            ("version 1.2.png? no: a/b is a path but not media", None),
        ),
    ],
)
def test_prose_splits_into_body_and_media(text: str, expected: tuple[str, str | None]) -> None:
    assert split_media(text) == expected


def test_researcher_needs_a_sender_or_both_tools_and_yours_win() -> None:
    with pytest.raises(ValueError, match="send_message"):
        Researcher()

    def ask(question: str) -> str:
        """Ask.

        Args:
            question: the question.
        """
        return "mine"

    def answer(content: str) -> None:
        """Answer.

        Args:
            content: the content.
        """

    own = Researcher(tools=[ask, answer])
    assert {t.name: t.fn for t in own.tools if t.name in ("ask", "answer")} == {"ask": ask, "answer": answer}
    with_sender = Researcher(fx.send, tools=[ask])
    assert [t.fn for t in with_sender.tools if t.name == "ask"] == [ask]
    assert "answer" in [t.name for t in with_sender.visible_tools()]


def test_dispatcher_tools_carry_statek_names_and_need_callables() -> None:
    agent = MessageDispatcher(fx.chat_history, fx.start_new_thread, fx.dispatch_to)
    assert agent.role == "message_dispatcher"
    assert [t.name for t in agent.tools] == ["chat_history", "start_new_chat_thread", "dispatch_to"]
    assert agent.tools[1].parameters()["required"] == ["topic"]
    with pytest.raises(TypeError, match="dispatch_to must be callable"):
        MessageDispatcher(fx.chat_history, fx.start_new_thread, None)  # type: ignore[arg-type]


def test_updates_say_whether_they_changed_something() -> None:
    agent = SupervisedAgent("u", "old prompt", metadata={"MODEL": "scripted/u"}, description="d")
    assert agent.update_system_prompt("new prompt") and not agent.update_system_prompt("new prompt")
    assert agent.system_prompt() == "new prompt"
    assert agent.update_metadata({"MODEL": "scripted/v"}) and not agent.update_metadata(
        {"MODEL": "scripted/v"}
    )
    assert agent.model == "scripted/v"
    assert agent.update_description("e") and not agent.update_description("e")
    assert agent.description().description == "e"


def test_referenced_locals_are_the_names_warmup_reads_but_never_binds() -> None:
    agent = SupervisedAgent(
        "r",
        tools=[fx.dispatch_to],
        warmup=(
            'print("received event:", event)\nimport json\ntotal = len(items)\n'
            "def f(a):\n    return a + total\n# ----------\n"
            'dispatch_to(target)\nfor i in range(3):\n    print(i, json.dumps(f(i)))\nexit("x")'
        ),
    )
    assert agent.referenced_locals == ["event", "items", "target"]
    assert SupervisedAgent("none").referenced_locals == []


def test_an_agent_without_model_is_refused_when_the_executor_loads_it() -> None:
    with pytest.raises(ValueError, match="Agent 't_d_no_model' is missing required metadata field 'MODEL'"):
        load_agents("tests.dialog_agents:NO_MODEL")
