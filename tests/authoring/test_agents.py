"""Agents and tools: warmup parsing, descriptions, argument binding, tool scopes (§1.2, §1.4)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from statek_bus.authoring.agents import HandlerAgent, SupervisedAgent, parse_warmup
from statek_bus.authoring.console import format_value
from statek_bus.authoring.tools import JobContext, bind_job, select_tools, tool, unbind_job


@tool
def days_until(when: date, label: str = "") -> int:
    """Days from 2026-01-01 to ``when``.

    Args:
        when: the target date.
        label: a label to print.
    """
    return (when - date(2026, 1, 1)).days


@tool
def total(values: list) -> int:  # type: ignore[type-arg]
    """Sum a list.

    Args:
        values: numbers.
    """
    return sum(values)


def test_warmup_blocks_metadata_and_tool_lines() -> None:
    blocks = parse_warmup(
        "#STATEK: hidden = True\nsecret = 1\n# ----------\nadd(1, b=2)  #STATEK: as tool\nprint(secret)\n"
    )
    assert len(blocks) == 2
    assert blocks[0].hidden and blocks[0].code == "secret = 1"
    assert (
        blocks[1].calls[0].name == "add"
        and blocks[1].calls[0].args == (1,)
        and blocks[1].calls[0].kwargs == {"b": 2}
    )
    assert blocks[1].code == "print(secret)"


@pytest.mark.parametrize(
    "bad", ["#STATEK: hidden\nx = 1", "#STATEK: hidden = os.getcwd()", "f(x)  #STATEK: as tool"]
)
def test_malformed_warmup_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_warmup(bad)


def test_description_comes_from_signature_and_docstring() -> None:
    d = days_until.description()
    assert d.description == "Days from 2026-01-01 to ``when``."
    assert d.parameters["properties"]["when"] == {
        "type": "string",
        "format": "date",
        "description": "the target date.",
    }
    assert d.parameters["required"] == ["when"]
    assert days_until.brief_text() == "days_until(when, label='')\n    Days from 2026-01-01 to ``when``."


def test_string_arguments_are_bound_by_name_or_parsed() -> None:
    token = bind_job(JobContext(job_id="j", agent="a", params={}, namespace={"xs": [1, 2, 3]}))
    try:
        assert total("xs") == 6
        assert days_until("2026-01-31") == 30
    finally:
        unbind_job(token)


def test_positional_calls_bind_as_keyword_calls_do() -> None:
    token = bind_job(JobContext(job_id="j", agent="a", params={}, namespace={"xs": [1, 2, 3], "x": "y"}))
    try:
        assert days_until(date(2026, 1, 11)) == days_until(when=date(2026, 1, 11)) == 10  # passed as given
        assert (
            days_until("2026-01-31", "x") == days_until(when="2026-01-31", label="x") == 30
        )  # a date parsed
        assert total("xs") == total(values="xs") == 6  # a text naming a variable, for a list parameter
        for wrong in ((), (date(2026, 1, 2), "a", "b")):
            with pytest.raises(TypeError):
                days_until(*wrong)
    finally:
        unbind_job(token)


def test_a_tool_with_any_hint_is_built_and_called() -> None:
    def apply(fn: Callable[[int], str], x: int = 1) -> str:
        """Apply ``fn``.

        Args:
            fn: a function.
            x: its argument.
        """
        return fn(x)

    assert tool(apply)(str, 7) == "7"


def test_agent_description_and_prompt_placeholders() -> None:
    agent = SupervisedAgent(
        "helper",
        "Vars: {shared_var_names}. Source: {source}. Tools:\n{tools}",
        [days_until, total],
        {"MODEL": "scripted/x", "SCRIPT": ["x"]},
        warmup="print(1)",
    )
    desc = agent.description()
    assert desc.role == "helper" and desc.model == "scripted/x" and "SCRIPT" not in desc.metadata
    assert [t.name for t in desc.tools][:2] == ["days_until", "total"]
    prompt = agent.system_prompt(params={"source": "webhook"}, shared_var_names=["event"])
    assert prompt.startswith("Vars: event. Source: webhook. Tools:\ndays_until(when, label='')")
    assert HandlerAgent("h").description().kind == "handler"


def test_tool_scope_grammar() -> None:
    agent = SupervisedAgent("s", "", [days_until, total], {"MODEL": "m"})
    names = lambda scope: [t.name for t in select_tools(agent.all_tools(), scope, "CONSOLE")]  # noqa: E731
    assert names(None) == []
    assert names("APPLICATION") == ["days_until", "total"]
    assert names("APPLICATION +docstr -total") == ["days_until", "docstr"]
    assert "python_cli" not in names("ALL")
    with pytest.raises(ValueError):
        select_tools(agent.all_tools(), "EVERYTHING", "CONSOLE")


def test_llm_repr_formatting() -> None:
    from datetime import datetime

    assert format_value({"a": 2, "b": [1, "x"]}) == '{"a":2,"b":[1,"x"]}'
    assert format_value(datetime(2026, 1, 2, 3, 4)) == 'datetime("2026-01-02 03:04")'
    assert format_value(list(range(30))).endswith(",24, ...] (30 items total)")
    assert format_value("raw") == "raw"


def test_prompt_sections_follow_the_difficulty() -> None:
    from statek_bus.authoring.prompts import parse_difficulty, render_prompt

    prompt = "Intro.\n--- Basics ---\nalways\n--- MH:Advanced ---\nharder\n## H: Expert\nhardest"
    assert render_prompt(prompt, "L") == "Intro.\n--- Basics ---\nalways"
    assert render_prompt(prompt, "M") == "Intro.\n--- Basics ---\nalways\n--- Advanced ---\nharder"
    assert render_prompt(prompt, "H").endswith("## Expert\nhardest")
    assert render_prompt("Plain.\n--- Any ---\ntext", "L") == "Plain.\n--- Any ---\ntext"
    assert parse_difficulty("high") == "H"
    with pytest.raises(ValueError):
        parse_difficulty("extreme")


@tool
def fetch_order(order_id: str) -> str:
    """Fetch an order.

    Args:
        order_id: the order's id.
    """
    return order_id


@tool
def cancel_order(order_id: str) -> str:
    """Cancel an order.

    Args:
        order_id: the order's id.
    """
    return order_id


def test_a_prompt_follows_each_job_and_every_change_to_the_agent() -> None:
    agent = SupervisedAgent(
        "cached",
        "Source: {source}. Vars: {shared_var_names}. {unknown} {}\n{tools}\n--- H: Hard ---\nthink",
        [fetch_order],
        {"MODEL": "scripted/x"},
    )
    first = agent.system_prompt(params={"source": "mail"}, shared_var_names=["a"], difficulty="M")
    again = agent.system_prompt(params={"source": "web"}, shared_var_names=["b", "c"], difficulty="M")
    assert first.startswith("Source: mail. Vars: a. {unknown} {}\nfetch_order(order_id)")
    assert again.startswith("Source: web. Vars: b, c. {unknown} {}\nfetch_order(order_id)")
    assert "think" not in again and agent.system_prompt(difficulty="H").endswith("--- Hard ---\nthink")

    agent.tools[0] = cancel_order  # swapped in place: the next prompt describes the new tool
    swapped = agent.system_prompt(params={"source": "web"})
    assert "cancel_order(order_id)" in swapped and "fetch_order" not in swapped
    assert agent.all_tools()[0].name == "cancel_order"
    agent.add_tool(fetch_order)
    assert "fetch_order(order_id)" in agent.system_prompt()
    agent.prompt = "Only {detailed_tools}"
    assert agent.system_prompt().startswith("Only def cancel_order(order_id")


def test_a_prompt_without_placeholders_ignores_params() -> None:
    agent = SupervisedAgent("plain", "No {placeholders} here: {x", [fetch_order], {"MODEL": "m"})
    assert agent.system_prompt(params={"other": object()}) == "No {placeholders} here: {x"
    assert agent.system_prompt(params={"placeholders": 3}) == "No 3 here: {x"
