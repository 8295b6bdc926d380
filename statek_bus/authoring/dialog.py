"""Dialog agents: one-to-one chat agents whose prose goes to the user (STATEK's ``DialogAgent``).

A :class:`DialogAgent` talks in the ``MD_DIALOG`` chat style by default: the prose of each reply
(the text outside ```python fences) is handed to its ``send_message(body, media=None)`` once the
step is committed, split by :func:`split_media` into a body and one media reference (a media path
or a markdown image); a text holding markdown links goes out whole. Its ``answer(body, media=None)``
tool prints a log line, sends the answer and ends the job with ``"Success"``.

``send_message`` is checked when the agent is built (:func:`check_send_message`): it must be
callable, accept ``body``, and not be ``@temporal``. A failing ``send_message`` shows on the job's
console (``Error: send_message failed: <Type>: <message>``), besides the executor's log.

Reminders (:class:`RecurringReminder`): when a dialog reply would end the job and the agent's
reminder is ready, the reminder joins the chat as a system message and the job goes on. STATEK's
reminder fired on every final reply, so a reminder that stays ready kept a job talking until a
harness limit; here it fires at most once per user turn.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.authoring.messaging import check_send_message, deliver_message
from statek_bus.authoring.tools import Tool, await_result, exit_job

__all__ = [
    "MD_DIALOG",
    "DialogAgent",
    "RecurringReminder",
    "RecursiveReminder",
    "Reminder",
    "agent_reminder",
    "dialog_turns",
]

MD_DIALOG = "MD_DIALOG"
"""The chat style a :class:`DialogAgent` uses unless told otherwise."""


class Reminder:
    """Base class of reminders: a text that joins the chat when :meth:`ready` says so."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a reminder needs a non-empty text")
        self.text = text

    def ready(self, dialog_len: int) -> bool:
        """Whether to fire now; ``dialog_len`` is the number of user and agent dialog turns so far."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"


class RecurringReminder(Reminder):
    """Fires whenever the dialog holds at least ``min_dialog_len`` turns (always, if ``None``).

    Args:
        text: what the model is reminded of.
        min_dialog_len: the fewest dialog turns (user messages and agent replies) before it fires.
    """

    def __init__(self, text: str, min_dialog_len: int | None = None) -> None:
        super().__init__(text)
        if min_dialog_len is not None and (
            isinstance(min_dialog_len, bool) or not isinstance(min_dialog_len, int) or min_dialog_len < 0
        ):
            raise ValueError("min_dialog_len must be a non-negative int or None")
        self.min_dialog_len = min_dialog_len

    def ready(self, dialog_len: int) -> bool:
        """At least ``min_dialog_len`` dialog turns."""
        return self.min_dialog_len is None or dialog_len >= self.min_dialog_len


RecursiveReminder = RecurringReminder
"""STATEK's other name for :class:`RecurringReminder`."""

_REMINDER_TYPES: dict[str, type[RecurringReminder]] = {
    "RECURRING": RecurringReminder,
    "RECURSIVE": RecurringReminder,
}


def _answer_tool(send_message: Callable[..., Any]) -> Tool:
    def answer(body: str, media: str | None = None) -> None:
        """Send the final answer to the user and end the job.

        Args:
            body: the answer's text.
            media: a media path or URL sent with it (optional).
        """
        print(f"log: answer(body={body!r}, media={media!r})")
        result = deliver_message(send_message, body, media)
        if inspect.isawaitable(result):
            await_result(result)
        exit_job("Success")

    return Tool(answer)


def _send_tool(send_message: Callable[..., Any]) -> Tool:
    def _send_message(body: str, media: str | None = None) -> None:
        """Send a message to the user without ending the job.

        Args:
            body: the text.
            media: a media path or URL (optional).
        """
        result = deliver_message(send_message, body, media)
        if inspect.isawaitable(result):
            await_result(result)

    return Tool(_send_message)


class DialogAgent(SupervisedAgent):
    """A one-to-one chat agent (STATEK's ``DialogAgent``); see the module docstring.

    Args:
        send_message: ``send_message(body, media=None)``, called with each reply's prose.
        tools: the agent's own tools.
        role: the name jobs are submitted to.
        add_answer_tool: offer the ``answer(body, media=None)`` tool that sends and ends the job.
        system_prompt: the prompt.
        metadata: as :class:`~statek_bus.authoring.agents.Agent`; ``CHAT_STYLE`` defaults to
            ``MD_DIALOG``.
        chat_style: overrides the ``CHAT_STYLE`` metadata.
        **kwargs: passed to :class:`~statek_bus.authoring.agents.SupervisedAgent` (``warmup``,
            ``description``, ``params``, ``types``).
    """

    def __init__(
        self,
        send_message: Callable[..., Any],
        tools: Iterable[Callable[..., Any] | Tool] | None = None,
        role: str = "dialog_agent",
        add_answer_tool: bool = True,
        system_prompt: str = "",
        metadata: dict[str, Any] | None = None,
        *,
        chat_style: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_send_message(send_message)
        meta = dict(metadata or {})
        if chat_style is not None:
            meta["CHAT_STYLE"] = chat_style
        meta.setdefault("CHAT_STYLE", MD_DIALOG)
        super().__init__(role, system_prompt, tools or (), meta, send_message=send_message, **kwargs)
        self.reminder: Reminder | None = None
        own = {t.name for t in self.tools}
        self.add_tool(_send_tool(send_message))
        if add_answer_tool and "answer" not in own:
            self.add_tool(_answer_tool(send_message))

    @property
    def chat_style(self) -> str:
        """``CHAT_STYLE`` metadata (default ``MD_DIALOG``)."""
        return str(self.metadata.get("CHAT_STYLE") or MD_DIALOG).upper()

    def set_new_reminder(
        self, text: str, type: str = "RECURRING", min_dialog_len: int | None = None
    ) -> Reminder:
        """Make a reminder of ``type`` (``RECURRING``, or its alias ``RECURSIVE``) the agent's reminder.

        Raises:
            ValueError: an unknown type, an empty text or a bad ``min_dialog_len``.
        """
        kind = _REMINDER_TYPES.get(str(type).upper())
        if kind is None:
            raise ValueError(f"unknown reminder type {type!r}; expected RECURRING")
        reminder = kind(text, min_dialog_len=min_dialog_len)
        self.set_reminder(reminder)
        return reminder

    def set_reminder(self, reminder: Reminder | None) -> Reminder | None:
        """Set (or, with ``None``, clear) the agent's reminder; ``TypeError`` for anything else."""
        if reminder is not None and not isinstance(reminder, Reminder):
            raise TypeError(f"a reminder must be a Reminder, not {type(reminder).__name__}")
        self.reminder = reminder
        return reminder


def agent_reminder(agent: Any) -> Reminder | None:
    """The reminder of ``agent`` (only dialog agents have one)."""
    found = getattr(agent, "reminder", None)
    return found if isinstance(found, Reminder) else None


def dialog_turns(kinds: Sequence[tuple[str, bool]]) -> int:
    """The dialog length STATEK counts: user messages and replies that said something to the user.

    Args:
        kinds: ``(kind, has dialog)`` of each chat-log item.
    """
    return sum(1 for kind, said in kinds if kind == "user" or (kind == "llm" and said))
