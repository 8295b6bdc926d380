"""The knowledge system tools: ``list_of_examples``, ``show_example``, ``list_of_documents``, ``show_document``.

They run in the executor (tools are the application's side of the sandbox boundary) against the
knowledge version the step holds (``JobContext.extras["knowledge"]``, a
:class:`~statek_bus.authoring.knowledge.KnowledgeView`), and print text for the model: a document
is data shown to the model, never code run here. What they remember between steps
(``last_example_id``, ``last_topic_id``) lives in ``JobContext.extras["library"]``, which the
engine commits with the step.

Lookups (:func:`find_entry`) go by id, then exact title (any case), then a unique fragment (any
case), then the closest fuzzy match with a ratio of at least 0.9; several fragments matching is an
``Ambiguous …`` ``ValueError`` listing them, as STATEK raises.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from statek_bus.authoring.tools import JobContext, current_job, tool
from statek_bus.wire.difficulty import DIFFICULTIES, Difficulty

if TYPE_CHECKING:  # the agents module imports these tools, and knowledge imports the agents module
    from statek_bus.authoring.knowledge import Document, Example

__all__ = [
    "LIBRARY_TOOLS",
    "Library",
    "example_names",
    "find_entry",
    "format_example",
    "list_of_documents",
    "list_of_examples",
    "serve_library",
    "show_document",
    "show_example",
]

_FUZZY = 0.9
"""Least similarity ratio of a fuzzy match (STATEK's)."""


@runtime_checkable
class Library(Protocol):
    """What the tools read: a :class:`~statek_bus.authoring.knowledge.KnowledgeView`."""

    @property
    def agents(self) -> Mapping[str, Any]:
        """The served agents, by role."""
        ...

    def examples(self, role: str, difficulty: str, extra: str | None = None) -> list[Example]:
        """The examples a job of ``role`` sees at ``difficulty`` (with the job's own ``extra_resources``)."""
        ...

    def documents(self, role: str) -> list[Document]:
        """The documents ``role`` may read."""
        ...


_served: list[Library] = []
"""The version this process's executor serves now (set by :func:`serve_library`)."""


def serve_library(view: Library) -> None:
    """Make ``view`` the version :func:`example_names` reads outside a step (the executor calls it)."""
    _served[:] = [view]


def example_names(role: str) -> list[str]:
    """Names of ``role``'s own examples: in the step's knowledge version inside a step, else in the
    version this process serves; ``[]`` in a process that serves none (a client)."""
    try:
        view = _view(current_job())
    except RuntimeError:
        view = None
    view = view or (_served[0] if _served else None)
    return [e.name for e in view.examples(role, "L") if e.role == role] if view else []


def _extra(ctx: JobContext) -> str | None:
    """The job's own ``extra_resources``, if it has them."""
    extra = getattr(ctx.extras.get("job_options"), "extra_resources", None)
    return extra if isinstance(extra, str) else None


def _view(ctx: JobContext) -> Library | None:
    view = ctx.extras.get("knowledge")
    return view if isinstance(view, Library) else None


def _memory(ctx: JobContext) -> dict[str, Any]:
    memory = ctx.extras.get("library")
    if not isinstance(memory, dict):
        memory = ctx.extras["library"] = {}
    return memory


def find_entry(names: Sequence[str], key: object, what: str) -> int | None:
    """The index of ``key`` in ``names`` (see the module docstring); ``None``: not found."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key if 0 <= key < len(names) else None
    text = str(key).strip()
    if text.isdigit():
        i = int(text)
        return i if i < len(names) else None
    low = text.lower()
    exact = [i for i, n in enumerate(names) if n.lower() == low]
    if exact:
        return exact[0]
    fragment = [i for i, n in enumerate(names) if low and low in n.lower()]
    if len(fragment) == 1:
        return fragment[0]
    if len(fragment) > 1:
        raise ValueError(f"Ambiguous {what} {text!r}, matches: {', '.join(names[i] for i in fragment)}")
    scored = [(difflib.SequenceMatcher(None, low, n.lower()).ratio(), i) for i, n in enumerate(names)]
    best = max(scored, default=(0.0, -1))
    return best[1] if best[0] >= _FUZZY else None


def format_example(example: Example, chat_style: str, box: str | None = None) -> str:
    """An example as the model sees it: code as its chat style writes code, then the console it printed."""
    console_style = chat_style.upper() == "CONSOLE"
    lines: list[str] = []
    for part in (*example.warmup, *example.parts):
        if part.kind == "code":
            lines.append(part.text if console_style else f"```python\n{part.text}\n```")
        else:
            lines.append("\n".join(f"> {x}" for x in part.text.splitlines()) if console_style else part.text)
    body = "\n".join(lines)
    if box:
        return f"<{box}>\n{body}\n</{box}>"
    return f"# --- EXAMPLE: {example.name} ---\n{body}\n# --- END OF EXAMPLE ---"


@tool(system=True)
def list_of_examples(start_index: int = 0, limit: int = 10) -> None:
    """List the worked examples available to this job (use show_example to read one).

    Args:
        start_index: the first example id to list.
        limit: how many to list.
    """
    ctx = current_job()
    view = _view(ctx)
    examples = view.examples(ctx.agent, ctx.difficulty, _extra(ctx)) if view else []
    if not examples:
        print("# No examples found")
        return
    start = max(0, int(start_index))
    print(f"# Example ID: Example name ({len(examples)} total)")
    for i, ex in enumerate(examples[start : start + max(0, int(limit))], start):
        print(f"{i}: {ex.name}")


@tool(system=True)
def show_example(example_id: int | None = None) -> None:
    """Show one worked example; a harder example raises the task difficulty for the rest of the job.

    Args:
        example_id: the id from list_of_examples (default: the variable default_example_id).
    """
    ctx = current_job()
    view = _view(ctx)
    examples = view.examples(ctx.agent, ctx.difficulty, _extra(ctx)) if view else []
    if example_id is None:
        example_id = ctx.namespace.get("default_example_id") if ctx.namespace else None
    if example_id is None:
        print(f"# Example None not found (total: {len(examples)})")
        return
    index = find_entry([e.name for e in examples], example_id, "example")
    if index is None:
        print(f"# Example {example_id} not found (total: {len(examples)})")
        return
    example = examples[index]
    memory = _memory(ctx)
    memory["last_example_id"], memory["last_example_source"] = index, example.role
    assert view is not None
    agent = view.agents.get(ctx.agent)
    style = str(getattr(agent, "chat_style", "CONSOLE"))
    box = getattr(agent, "metadata", {}).get("XML_BOX_EXAMPLE")
    print(format_example(example, style, str(box) if box else None))
    if example.difficulty and _rank(example.difficulty) > _rank(ctx.difficulty):  # up only, never down
        ctx.difficulty = example.difficulty
        ctx.difficulty_changed = True


def _rank(difficulty: str) -> int:
    return DIFFICULTIES.index(Difficulty(difficulty)) if difficulty in DIFFICULTIES else 1


def _topic(ctx: JobContext, docs: list[Document], topic: object) -> str | None:
    """The topic ``topic`` names (or the last one used); prints STATEK's not-found line when none."""
    topics = list(dict.fromkeys(d.topic for d in docs))
    if topic is None:
        last = _memory(ctx).get("last_topic_id")
        if last is None or not isinstance(last, int) or last >= len(topics):
            raise ValueError("no topic given and no topic was used before: call list_of_documents() first")
        return topics[last]
    index = find_entry(topics, topic, "topic")
    if index is None:
        print(f"# Topic '{topic}' not found")
        return None
    _memory(ctx)["last_topic_id"] = index
    return topics[index]


@tool(system=True)
def list_of_documents(topic: str | int | None = None, start_index: int = 0, limit: int = 25) -> None:
    """List the document topics, or the documents of one topic (use show_document to read one).

    Args:
        topic: a topic id or name (default: list the topics).
        start_index: the first entry to list.
        limit: how many to list.
    """
    ctx = current_job()
    view = _view(ctx)
    docs = view.documents(ctx.agent) if view else []
    start, count = max(0, int(start_index)), max(0, int(limit))
    if topic is None:
        topics = list(dict.fromkeys(d.topic for d in docs))
        if not topics:
            print("# No documents found")
            return
        print(f"# Topic ID: Topic ({len(topics)} total)")
        for i, name in enumerate(topics[start : start + count], start):
            print(f"{i}: {name} ({sum(d.topic == name for d in docs)} documents)")
        return
    chosen = _topic(ctx, docs, topic)
    if chosen is None:
        return
    in_topic = [d for d in docs if d.topic == chosen]
    print(f"# Documents in '{chosen}': Document ID: Title ({len(in_topic)} total)")
    for i, d in enumerate(in_topic[start : start + count], start):
        print(f"{i}: {d.title}")


@tool(system=True)
def show_document(
    key: str | int, topic: str | int | None = None, start_from: int = 0, limit: int = 50
) -> None:
    """Show a document's lines (by id, title, a unique part of the title, or a close spelling).

    Args:
        key: the document's id in its topic, or its title.
        topic: its topic id or name (default: the topic used last).
        start_from: the first line to show.
        limit: how many lines to show.
    """
    ctx = current_job()
    view = _view(ctx)
    docs = view.documents(ctx.agent) if view else []
    chosen = _topic(ctx, docs, topic)
    if chosen is None:
        return
    in_topic = [d for d in docs if d.topic == chosen]
    index = find_entry([d.title for d in in_topic], key, "document")
    if index is None:
        print(f"# Document '{key}' not found in topic '{chosen}'")
        return
    doc = in_topic[index]
    total = len(doc.lines)
    start = min(max(0, int(start_from)), total)
    end = min(total, start + max(0, int(limit)))
    print(f"# {doc.title} (lines {start}-{end}/{total})")
    for line in doc.lines[start:end]:
        print(line)


LIBRARY_TOOLS = (list_of_examples, show_example, list_of_documents, show_document)
"""The knowledge system tools, in the order they are offered."""
