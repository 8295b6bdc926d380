"""Chat styles: how replies are parsed and how the next request's history is built (§1.16)."""

from __future__ import annotations

import pytest

from statek_bus.runtime.chat import (
    ChatStyle,
    LoggedCall,
    LogItem,
    build_messages,
    parse_reply,
    render_console,
)


def test_console_style_whole_text_is_code() -> None:
    assert parse_reply("x = 5\nprint(x)", False, ChatStyle.CONSOLE).code == "x = 5\nprint(x)"


def test_console_style_fences_and_prose_become_comments() -> None:
    parsed = parse_reply("I will compute.\n```\nv = 3\n```\nDone.", False, ChatStyle.CONSOLE)
    assert parsed.code == "# I will compute.\nv = 3\n# Done."


def test_console_style_prose_with_tool_calls_is_not_executed() -> None:
    assert parse_reply("I will call add", True, ChatStyle.CONSOLE).code == "# I will call add"


def test_markdown_style_only_python_fences_are_code() -> None:
    text = "Let me compute.\n```python\nv = 3 * 3\nprint(v)\n```\nThen I'll stop."
    assert (
        parse_reply(text, False, ChatStyle.MARKDOWN).code
        == "# Let me compute.\nv = 3 * 3\nprint(v)\n# Then I'll stop."
    )
    assert parse_reply("```sh\nls\n```", False, ChatStyle.MARKDOWN).code == "# ```sh\n# ls\n# ```"


def test_md_dialog_prose_goes_to_the_user_and_text_only_is_final() -> None:
    parsed = parse_reply("The answer is\n   42.\n```python\nx = 1\n```", False, ChatStyle.MD_DIALOG)
    assert (parsed.code, parsed.dialog, parsed.final) == ("x = 1", "The answer is 42.", False)
    assert parse_reply("All done.", False, ChatStyle.MD_DIALOG).final


def test_direct_style_never_executes_prose() -> None:
    parsed = parse_reply("print('hi')", False, ChatStyle.DIRECT)
    assert (parsed.code, parsed.dialog, parsed.final) == ("", "print('hi')", True)
    assert not parse_reply("calling", True, ChatStyle.DIRECT).final


def test_unknown_style_names_the_value() -> None:
    with pytest.raises(ValueError, match="shouty"):
        ChatStyle.of("shouty")


def test_console_rendering_per_style() -> None:
    assert render_console(["x is 5", "6"], ChatStyle.CONSOLE) == "> x is 5\n> 6"
    assert render_console(["9"], ChatStyle.MARKDOWN, box="OUTPUT") == "<OUTPUT>\n9\n</OUTPUT>"
    assert render_console(["9"], ChatStyle.MD_DIALOG) == "<CONSOLE>\n9\n</CONSOLE>"


def test_first_request_always_carries_a_user_turn() -> None:
    msgs = build_messages([], style=ChatStyle.CONSOLE, system_prompt="sys", opening="Begin.")
    assert [(m.role, m.content) for m in msgs] == [("system", "sys"), ("user", "Begin.")]


def test_history_replays_code_tool_results_and_console() -> None:
    log = [
        LogItem(kind="warmup", step=0, code="print(1)", console=["1"], executed=True),
        LogItem(kind="warmup", step=1, code="secret = 1", executed=True, hidden=True),
        LogItem(
            kind="llm",
            step=1,
            text="x = 5",
            calls=[LoggedCall(id="c1", name="add", arguments={"a": 1}, result="2")],
            console=["5"],
            executed=True,
        ),
        LogItem(kind="user", step=2, text="thanks"),
        LogItem(kind="notification", step=2, text="child done", executed=True),
    ]
    msgs = build_messages(log, style=ChatStyle.CONSOLE, system_prompt="", opening="Begin.", hint="in English")
    assert [m.role for m in msgs] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "user",
        "user",
        "assistant",
        "tool",
    ]
    assert msgs[1].content == "```python\nprint(1)\n```"
    assert msgs[3].tool_calls is not None and msgs[3].tool_calls[0].id == "c1"
    assert msgs[4].content == "2" and msgs[5].content == "> 5"
    assert msgs[6].content == "thanks (in English)"
    assert msgs[7].tool_calls is not None and msgs[7].tool_calls[0].id == "STATEK-NOTIFICATION-001"


def test_direct_style_replays_warmup_as_python_cli() -> None:
    log = [LogItem(kind="warmup", step=0, code="y = 2", console=["ok"], executed=True)]
    msgs = build_messages(log, style=ChatStyle.DIRECT, system_prompt="", opening="Begin.")
    assert msgs[1].tool_calls is not None and msgs[1].tool_calls[0].name == "python_cli"
    assert (msgs[2].role, msgs[2].content, msgs[2].tool_call_id) == ("tool", "ok", "STATEK-WARMUP-001")
