"""Post-processors: code that sees each LLM reply before it is committed, and may hold it back.

An agent lists them in its metadata, as STATEK does::

    SupervisedAgent("helper", prompt, tools, {"MODEL": ..., "POST_PROCESSORS": "FinalCheck(max_llm_actions=2)"})

After the model replies and before the reply joins the chat log, every processor runs in order
with the reply as an :class:`LLMStep`. A processor returns

- the step (the same, or a replaced one): it is committed;
- a ``str``: a system message is added to the chat and the step is **dropped** (the next step asks
  the model again, with that message), which ends the chain;
- a tuple of at most one step and any number of strings: the messages are added, the step (if
  any) committed.

When a processor acts (a message, or a replaced step), the step is not final: the job goes on.
:class:`FinalCheck` is the one STATEK ships; an application registers its own with
:func:`post_processor` and names them in the metadata the same way. The metadata is parsed when
the executor loads the agent, so a typo stops the executor at start rather than a job later.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = [
    "FinalCheck",
    "LLMStep",
    "PostProcessor",
    "ProcessedStep",
    "StepContext",
    "agent_post_processors",
    "apply_post_processors",
    "job_post_processors",
    "parse_post_processors",
    "post_processor",
]

P = TypeVar("P", bound="type[PostProcessor]")


@dataclasses.dataclass(frozen=True)
class LLMStep:
    """One model reply, as post-processors see it."""

    text: str
    """The reply's text."""
    dialog: str = ""
    """Its prose for the user (dialog chat styles)."""
    code: str = ""
    """Its code, to run next step."""
    tool_calls: tuple[str, ...] = ()
    """Names of the tools it calls."""
    final: bool = False
    """Whether it would end the job (a dialog reply with no code and no tool calls)."""


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a processor may know about the job."""

    job_id: str
    """The job."""
    agent: str
    """Its agent's role."""
    llm_calls: int
    """LLM calls this run of the job has made, this one included."""
    fired: frozenset[str]
    """Processors (by :meth:`PostProcessor.key`) that already acted in this job."""


class PostProcessor:
    """Base class: override :meth:`process`. Instances are built from metadata keyword arguments."""

    def key(self) -> str:
        """Identity of this processor in a job (its class and arguments), for :attr:`StepContext.fired`."""
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()))
        return f"{type(self).__name__}({args})"

    def process(self, step: LLMStep, ctx: StepContext) -> LLMStep | str | tuple[LLMStep | str, ...]:
        """The step to commit, a message that drops it, or both (see the module docstring)."""
        return step


_REGISTRY: dict[str, Callable[..., PostProcessor]] = {}


def post_processor(cls: P) -> P:
    """Register a :class:`PostProcessor` subclass under its class name, for agents' metadata."""
    if not (isinstance(cls, type) and issubclass(cls, PostProcessor)):
        raise TypeError(f"@post_processor needs a PostProcessor subclass, not {cls!r}")
    _REGISTRY[cls.__name__] = cls
    return cls


@post_processor
class FinalCheck(PostProcessor):
    """Hold back the first final answer once and ask the model to check it.

    It acts when the reply is final, the job has made fewer than ``max_llm_actions`` LLM calls, and
    it has not acted in this job before: the draft is dropped and the model sees it again in a
    system message asking for a review. The next final answer goes through.

    Args:
        max_llm_actions: only replies among the first ``max_llm_actions - 1`` calls are checked.
    """

    def __init__(self, max_llm_actions: int = 3) -> None:
        if not isinstance(max_llm_actions, int) or max_llm_actions < 1:
            raise ValueError(f"FinalCheck: max_llm_actions must be a positive int, not {max_llm_actions!r}")
        self.max_llm_actions = max_llm_actions

    def process(self, step: LLMStep, ctx: StepContext) -> LLMStep | str | tuple[LLMStep | str, ...]:
        """Drop the first final draft (with a review request), pass everything else."""
        if not step.final or ctx.llm_calls >= self.max_llm_actions or self.key() in ctx.fired:
            return step
        draft = step.dialog or step.text
        return (
            "Final check: reflect on whether the draft below fully and correctly answers the request, "
            "then give your final answer.\nDraft answer:\n" + draft
        )


def parse_post_processors(spec: str, role: str = "") -> list[PostProcessor]:
    """The processors named by a ``POST_PROCESSORS`` metadata value (``"FinalCheck(max_llm_actions=2)"``).

    Raises:
        ValueError: bad syntax, an unknown name, a positional argument, a non-literal value, or a
            constructor that refuses its arguments; the message names the agent and the entry.
    """
    where = f"agent {role!r}: POST_PROCESSORS" if role else "POST_PROCESSORS"
    if not spec.strip():
        return []
    try:
        tree = ast.parse(f"({spec},)", mode="eval")
    except SyntaxError:
        raise ValueError(f"{where}: cannot parse {spec!r} (expected Name(key=value, ...), ...)") from None
    assert isinstance(tree.body, ast.Tuple)
    out: list[PostProcessor] = []
    for node in tree.body.elts:
        if isinstance(node, ast.Name):
            node = ast.Call(func=node, args=[], keywords=[])
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise ValueError(f"{where}: {ast.unparse(node)!r} is not a processor call such as FinalCheck()")
        name = node.func.id
        factory = _REGISTRY.get(name)
        if factory is None:
            known = ", ".join(sorted(_REGISTRY))
            raise ValueError(f"{where}: unknown post-processor {name!r} (known: {known})")
        if node.args:
            raise ValueError(f"{where}: {name} takes keyword arguments only")
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            try:
                kwargs[str(kw.arg)] = ast.literal_eval(kw.value)
            except ValueError:
                raise ValueError(f"{where}: {name}({kw.arg}=...) must be a literal value") from None
        try:
            out.append(factory(**kwargs))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {name}: {exc}") from None
    return out


@dataclasses.dataclass(frozen=True)
class ProcessedStep:
    """What the chain decided."""

    step: LLMStep | None
    """The step to commit, or ``None`` when a processor dropped it."""
    messages: tuple[str, ...] = ()
    """System messages to add to the chat, in order."""
    fired: tuple[str, ...] = ()
    """Keys of the processors that acted."""

    @property
    def acted(self) -> bool:
        """Whether any processor added a message or replaced the step (then it is not final)."""
        return bool(self.messages or self.fired)


def apply_post_processors(
    processors: Sequence[PostProcessor], step: LLMStep, ctx: StepContext
) -> ProcessedStep:
    """Run ``processors`` in order over ``step``; a dropped step stops the chain.

    Raises:
        TypeError: a processor returned something other than a step, a str or a tuple of them.
        ValueError: a processor returned a tuple with more than one step.
    """
    current: LLMStep | None = step
    messages: list[str] = []
    fired: list[str] = []
    for proc in processors:
        assert current is not None
        result = proc.process(current, ctx)
        parts = result if isinstance(result, tuple) else (result,)
        steps = [p for p in parts if isinstance(p, LLMStep)]
        texts = [p for p in parts if isinstance(p, str)]
        if len(steps) + len(texts) != len(parts):
            raise TypeError(
                f"{proc.key()} returned {type(result).__name__}: expected an LLMStep, a str or a tuple"
            )
        if len(steps) > 1:
            raise ValueError(f"{proc.key()} returned {len(steps)} steps; at most one")
        messages += texts
        new = steps[0] if steps else None
        if texts or new is not current:
            fired.append(proc.key())
        current = new
        if current is None:
            break
    return ProcessedStep(step=current, messages=tuple(messages), fired=tuple(fired))


_PARSED: dict[tuple[str, str], tuple[PostProcessor, ...]] = {}


def job_post_processors(spec: str, role: str) -> tuple[PostProcessor, ...]:
    """The processors a job's own ``post_processing`` names (parsed once per value; ``ValueError``)."""
    key = (f"job:{role}", spec)
    found = _PARSED.get(key)
    if found is None:
        if len(_PARSED) >= 1024:  # jobs' specs come from clients: keep the cache bounded
            _PARSED.clear()
        found = _PARSED[key] = tuple(parse_post_processors(spec, role))
    return found


def agent_post_processors(agent: Any) -> tuple[PostProcessor, ...]:
    """The processors an agent's ``POST_PROCESSORS`` metadata names (parsed once per value)."""
    metadata = getattr(agent, "metadata", None) or {}
    spec = str(metadata.get("POST_PROCESSORS") or "")
    if not spec:
        return ()
    key = (str(getattr(agent, "role", "")), spec)
    found = _PARSED.get(key)
    if found is None:
        found = _PARSED[key] = tuple(parse_post_processors(spec, key[0]))
    return found
