"""The chat log of a job, chat styles, and the next LLM request's history.

The chat log is a list of :class:`LogItem` kept in the job record (engine state), so it is
committed atomically with the step that wrote it. Each item is one turn: a user message, a
warmup block, an LLM reply (its code, formal tool calls and their results, and the console its
code produced when it ran in the next step), a notification, or a system notice.

Chat styles decide how a reply is parsed and how the console is shown back:

========== ========================================================= ===========================
style      code in a reply                                           console shown as
========== ========================================================= ===========================
CONSOLE    the whole text; with fences, the fenced blocks (prose     ``> `` prefixed lines
           becomes ``# `` comments); with tool calls, prose is
           commented out (STATEK executed it: defect 2)
MARKDOWN   only ```python fences; other text becomes ``# `` comments plain text
MD_DIALOG  as MARKDOWN; prose is sent to the user at once; a reply    ``<CONSOLE>…</CONSOLE>``
           with no code and no tool calls ends the job
DIRECT     never: only formal ``python_cli`` calls run code; prose   plain text
           is dialog; a reply without tool calls ends the job
========== ========================================================= ===========================

The first request of a job always carries a user turn (STATEK sent an empty history: defect 15).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from statek_bus.wire.messages import ChatMessage, ToolCall

__all__ = [
    "ChatStyle",
    "LogItem",
    "LoggedCall",
    "ParsedReply",
    "build_messages",
    "drop_oldest",
    "parse_reply",
    "render_console",
]

_FENCE = re.compile(r"```([^\n`]*)\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = {"python", "py", "python3"}
_WS = re.compile(r"\s+")


class ChatStyle(enum.StrEnum):
    """How replies are parsed and the console is rendered (``CHAT_STYLE`` metadata)."""

    CONSOLE = "CONSOLE"
    MARKDOWN = "MARKDOWN"
    MD_DIALOG = "MD_DIALOG"
    DIRECT = "DIRECT"

    @classmethod
    def of(cls, value: Any) -> ChatStyle:
        """Parse a style name (``None``: CONSOLE); ``ValueError`` names the bad value."""
        if value is None or value == "":
            return cls.CONSOLE
        try:
            return cls(str(value).upper())
        except ValueError:
            raise ValueError(f"unknown CHAT_STYLE {value!r}; expected one of {', '.join(cls)}") from None

    @property
    def dialog(self) -> bool:
        """MD_DIALOG and DIRECT: prose goes to the user and a reply can end the job."""
        return self in (ChatStyle.MD_DIALOG, ChatStyle.DIRECT)


class LoggedCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A formal tool call in the log, with its result once it ran."""

    id: str
    """Call id (the provider's, or ``STATEK-...``)."""
    name: str
    """Tool name."""
    arguments: dict[str, Any] = {}
    """Arguments by name (literal JSON)."""
    result: str | None = None
    """Result text (``<Type>: <message>`` on error); ``None`` until it ran."""


class LogItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One turn of a job's chat log."""

    kind: Literal["user", "warmup", "llm", "notification", "system", "difficulty"]
    """What it is (``difficulty``: the job's difficulty changed, STATEK's ``DifficultyChangeLogItem``;
    not part of the model's history)."""
    step: int
    """The step that wrote it."""
    text: str = ""
    """User message, raw LLM reply, notification or system text."""
    code: str | None = None
    """Code to run (warmup block, or the code extracted from the reply); ``None``: the same as
    ``text`` (a console-style reply is its own code, and is stored once)."""
    calls: list[LoggedCall] = []
    """Formal tool calls."""
    console: list[str] = []
    """Console entries produced when the code ran."""
    executed: bool = False
    """The code and calls have run (in step ``ran_at``)."""
    ran_at: int | None = None
    """The step in which it ran."""
    hidden: bool = False
    """Left out of the model's history (hidden warmup)."""
    dialog: str = ""
    """Prose sent to the user (dialog styles)."""
    reasoning: str | None = None
    """Provider reasoning text, replayed as it came to the model that produced it."""
    reasoning_model: str | None = None
    """The model that produced ``reasoning``: it is replayed only to that model."""
    reminder: bool = False
    """A system item that is a dialog agent's reminder."""

    @property
    def source(self) -> str:
        """The code this item runs."""
        return self.text if self.code is None else self.code


@dataclass(frozen=True)
class ParsedReply:
    """A model reply split per chat style."""

    code: str
    """Code to run next step ("" for none)."""
    dialog: str
    """Prose for the user (dialog styles)."""
    final: bool
    """A dialog-style reply that ends the job (no code, no tool calls)."""


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() if line.strip() else "" for line in text.strip("\n").splitlines()]


def _split_fences(text: str, strict: bool) -> tuple[list[str], str, bool]:
    """(code lines with prose commented, prose only, found code)."""
    out: list[str] = []
    prose: list[str] = []
    pos = 0
    found = False
    for m in _FENCE.finditer(text):
        before = text[pos : m.start()]
        lang = m.group(1).strip().lower()
        is_code = lang in _PY_LANGS or not strict
        if before.strip():
            out += _comment(before)
            prose.append(before)
        if is_code:
            out += m.group(2).rstrip("\n").splitlines()
            found = True
        else:
            out += _comment(m.group(0))
            prose.append(m.group(0))
        pos = m.end()
    rest = text[pos:]
    if rest.strip():
        out += _comment(rest)
        prose.append(rest)
    return out, "\n".join(p.strip() for p in prose if p.strip()), found


def parse_reply(text: str, has_tool_calls: bool, style: ChatStyle) -> ParsedReply:
    """Split ``text`` into code and dialog per ``style`` (see the module docstring)."""
    if style is ChatStyle.DIRECT:
        return ParsedReply(code="", dialog=text.strip(), final=not has_tool_calls)
    if style is ChatStyle.CONSOLE and "```" not in text:
        if has_tool_calls:
            return ParsedReply(code="\n".join(_comment(text)), dialog="", final=False)
        return ParsedReply(code=text.strip("\n"), dialog="", final=False)
    lines, prose, found = _split_fences(text, strict=style is not ChatStyle.CONSOLE)
    code = "\n".join(lines).strip("\n") if found else ""
    if style is ChatStyle.MD_DIALOG:
        dialog = _WS.sub(" ", prose).strip()
        fenced = [m.group(2) for m in _FENCE.finditer(text) if m.group(1).strip().lower() in _PY_LANGS]
        code = "\n".join(c.rstrip("\n") for c in fenced)
        return ParsedReply(code=code, dialog=dialog, final=not code.strip() and not has_tool_calls)
    if not found and style is ChatStyle.MARKDOWN:
        code = "\n".join(lines)
    return ParsedReply(code=code, dialog="", final=False)


def render_console(entries: list[str], style: ChatStyle, box: str | None = None) -> str:
    """The console as the model sees it after its code ran."""
    text = "\n".join(entries)
    if style is ChatStyle.CONSOLE:
        text = "\n".join(f"> {line}" if line else ">" for line in text.splitlines()) or "> (no output)"
    elif style is ChatStyle.MD_DIALOG:
        box = box or "CONSOLE"
    elif not text:
        text = "(no output)"
    return f"<{box}>\n{text}\n</{box}>" if box else text


def _fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def build_messages(
    log: list[LogItem],
    *,
    style: ChatStyle,
    system_prompt: str,
    opening: str,
    hint: str | None = None,
    box: str | None = None,
) -> list[ChatMessage]:
    """The history of the next LLM request.

    Args:
        log: the chat log.
        style: the job's chat style.
        system_prompt: rendered system prompt (language rule included); omitted when empty.
        opening: the first user turn when the log does not start with a user message.
        hint: a language hint appended as `` (<hint>)`` to real user messages.
        box: an XML tag wrapping console output.
    """
    msgs: list[ChatMessage] = []
    if system_prompt:
        msgs.append(ChatMessage(role="system", content=system_prompt))
    if not log or log[0].kind != "user":
        msgs.append(ChatMessage(role="user", content=opening))
    suffix = f" ({hint})" if hint else ""
    n_warm = n_note = 0
    for item in log:
        if item.kind == "user":
            msgs.append(ChatMessage(role="user", content=item.text + suffix))
        elif item.kind == "system":
            msgs.append(ChatMessage(role="system", content=item.text))
        elif item.kind == "difficulty":
            continue
        elif item.kind == "notification" and item.calls:  # a sub-task's completion (STATEK's SubTaskLogItem)
            msgs.append(ChatMessage(role="system", content=item.text))
            calls = [ToolCall(name=c.name, arguments=c.arguments, id=c.id) for c in item.calls]
            msgs.append(ChatMessage(role="assistant", content=None, tool_calls=calls))
            msgs += [ChatMessage(role="tool", content=c.result or "", tool_call_id=c.id) for c in item.calls]
        elif item.kind == "notification":
            n_note += 1
            call_id = f"STATEK-NOTIFICATION-{n_note:03d}"
            call = ToolCall(
                name="python_cli", arguments={"code": "print(get_pending_notifications())"}, id=call_id
            )
            msgs.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
            msgs.append(ChatMessage(role="tool", content=item.text, tool_call_id=call_id))
        elif item.kind == "warmup":
            n_warm += 1
            if item.hidden:
                continue
            msgs += _turn(item, style, box, warmup_id=f"STATEK-WARMUP-{n_warm:03d}")
        else:
            msgs += _turn(item, style, box, warmup_id=None)
    return msgs


def _turn(item: LogItem, style: ChatStyle, box: str | None, warmup_id: str | None) -> list[ChatMessage]:
    calls = [ToolCall(name=c.name, arguments=c.arguments, id=c.id) for c in item.calls]
    content: str | None
    console_as_tool = False
    if warmup_id is not None:
        if style is ChatStyle.DIRECT and item.source.strip():
            calls.append(ToolCall(name="python_cli", arguments={"code": item.source}, id=warmup_id))
            content, console_as_tool = None, True
        else:
            content = _fenced(item.source) if item.source.strip() else None
    elif style.dialog:
        content = item.text or None
    else:
        content = _fenced(item.source) if item.source.strip() else (item.text or None)
    if content is None and not calls:
        content = item.text or "(empty reply)"
    out = [
        ChatMessage(
            role="assistant",
            content=content,
            tool_calls=calls or None,
            reasoning=item.reasoning,
            reasoning_model=item.reasoning_model if item.reasoning else None,
        )
    ]
    for c in item.calls:
        out.append(
            ChatMessage(role="tool", content=c.result if c.result is not None else "", tool_call_id=c.id)
        )
    if not item.executed:
        return out
    if console_as_tool:
        out.append(ChatMessage(role="tool", content="\n".join(item.console), tool_call_id=warmup_id))
    elif (item.source.strip() and style is not ChatStyle.DIRECT) or item.console:
        out.append(ChatMessage(role="user", content=render_console(item.console, style, box)))
    return out


_LOG_ITEM_ENCODER = msgspec.json.Encoder()


def drop_oldest(log: list[LogItem], *, before: int, max_bytes: int) -> int:
    """Drop the oldest items of ``log`` until the rest encodes to at most ``max_bytes``, but none
    from index ``before`` on (the current step's, which its events are derived from); how many
    went."""
    sizes = [len(_LOG_ITEM_ENCODER.encode(item)) for item in log]
    total, dropped = sum(sizes), 0
    while dropped < before and total > max_bytes:
        total -= sizes[dropped]
        dropped += 1
    del log[:dropped]
    return dropped
