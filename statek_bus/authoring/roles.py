"""Ready-made agents STATEK ships: :class:`Researcher` and :class:`MessageDispatcher`.

Their tools are application code (they run in the executor, bound to the job), so they work the
same whether model code runs restricted or not: model code calls them across the sandbox boundary.
STATEK's ``Researcher.answer`` failed in restricted mode (a private attribute read from the
sandbox) and, with the sandbox off, raised ``SystemExit`` through its worker; here ``answer`` ends
the job through :func:`~statek_bus.authoring.tools.exit_job`, as ``exit()`` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.authoring.messaging import check_send_message, deliver_message
from statek_bus.authoring.tools import Tool, as_tool, await_result, exit_job

__all__ = ["MessageDispatcher", "Researcher"]


def _sent(result: Any) -> Any:
    return await_result(result) if inspect.isawaitable(result) else result


class Researcher(SupervisedAgent):
    """An agent that researches a question, asking its user when it must (STATEK's ``Researcher``).

    Its tools are yours plus ``ask(question)`` (returns what ``send_message(question)`` returns) and
    ``answer(content)`` (sends ``content``, then ends the job with ``"Success"``). Tools of yours
    named ``ask`` or ``answer`` take their place.

    Args:
        send_message: ``send_message(body, media=None)``; may be ``None`` only if you give both
            ``ask`` and ``answer``.
        tools: the agent's own tools.
        role: the name jobs are submitted to.
        system_prompt: the prompt.
        metadata: as :class:`~statek_bus.authoring.agents.Agent` (``MODEL`` required).
        **kwargs: passed to :class:`~statek_bus.authoring.agents.SupervisedAgent`.

    Raises:
        ValueError: no ``send_message`` and not both ``ask`` and ``answer`` among ``tools``.
    """

    def __init__(
        self,
        send_message: Callable[..., Any] | None = None,
        tools: Iterable[Callable[..., Any] | Tool] | None = None,
        role: str = "researcher",
        system_prompt: str = "",
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        own = [as_tool(t) for t in tools or ()]
        names = {t.name for t in own}
        if send_message is None and not {"ask", "answer"} <= names:
            raise ValueError("Researcher needs send_message, or tools named both 'ask' and 'answer'")
        sender = check_send_message(send_message) if send_message is not None else None
        extra: list[Tool] = []
        if sender is not None and "ask" not in names:

            def ask(question: str) -> Any:
                """Ask the user a question and return the reply.

                Args:
                    question: what to ask.
                """
                return _sent(deliver_message(sender, question))

            extra.append(Tool(ask))
        if sender is not None and "answer" not in names:

            def answer(content: str) -> None:
                """Send the research result to the user and end the job.

                Args:
                    content: the result.
                """
                _sent(deliver_message(sender, content))
                exit_job("Success")

            extra.append(Tool(answer))
        super().__init__(role, system_prompt, [*own, *extra], metadata, **kwargs)


class MessageDispatcher(SupervisedAgent):
    """A router agent: reads a chat and hands it on (STATEK's ``MessageDispatcher``).

    Its tools, under STATEK's names, are ``chat_history`` (your ``chat_history``),
    ``start_new_chat_thread`` (your ``start_new_thread``) and ``dispatch_to`` (your
    ``dispatch_to``), each with your callable's own signature and docstring. (STATEK also kept
    argument-less wrappers that dropped whatever the model passed; the model calls yours directly.)

    Args:
        chat_history: returns the conversation to route.
        start_new_thread: starts a new chat thread.
        dispatch_to: hands the conversation to an agent or queue.
        role: the name jobs are submitted to.
        system_prompt: the prompt.
        metadata: as :class:`~statek_bus.authoring.agents.Agent` (``MODEL`` required).
        **kwargs: passed to :class:`~statek_bus.authoring.agents.SupervisedAgent`.

    Raises:
        TypeError: one of the three is not callable.
    """

    def __init__(
        self,
        chat_history: Callable[..., Any],
        start_new_thread: Callable[..., Any],
        dispatch_to: Callable[..., Any],
        role: str = "message_dispatcher",
        system_prompt: str = "",
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        named = {
            "chat_history": chat_history,
            "start_new_chat_thread": start_new_thread,
            "dispatch_to": dispatch_to,
        }
        tools: list[Tool] = []
        for name, fn in named.items():
            if not callable(fn):
                raise TypeError(f"MessageDispatcher: {name} must be callable, not {type(fn).__name__}")
            inner = fn.fn if isinstance(fn, Tool) else fn
            tools.append(Tool(inner, name=name))
        super().__init__(role, system_prompt, tools, metadata, **kwargs)
