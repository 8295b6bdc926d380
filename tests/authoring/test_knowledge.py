"""Knowledge files as STATEK writes them: prompt sections, prompt files, examples, documents, donors, and
what the knowledge tools print for them (called as a step calls them, inside a job context)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from statek_bus.authoring.agents import Agent, SupervisedAgent
from statek_bus.authoring.knowledge import (
    Knowledge,
    KnowledgeError,
    KnowledgeView,
    build_knowledge,
    parse_document,
    parse_example,
    parse_extra_resources,
    parse_prompt_file,
)
from statek_bus.authoring.library import find_entry, list_of_documents, show_document, show_example
from statek_bus.authoring.prompts import PromptStyle, Template, fill_placeholders, render_prompt
from statek_bus.authoring.tools import JobContext, bind_job, tool, unbind_job
from statek_bus.jobs.knowledge import RawFile, read_directory
from statek_bus.wire.errors import PayloadTooLargeError
from statek_bus.wire.limits import MAX_KNOWLEDGE_FILE_BYTES

PROMPT = (
    "Intro.\n"
    '<RULES difficulty="H">\nOnly hard.\n</RULES>\n'
    "<NOTES target_difficulties='L,M'>\nEasy notes.\n</NOTES>\n"
    "--- MH:Tools ---\nuse them"
)


def test_an_xml_box_is_kept_only_at_its_difficulties() -> None:
    assert render_prompt(PROMPT, "M") == "Intro.\n<NOTES>\nEasy notes.\n</NOTES>\n--- Tools ---\nuse them"
    assert render_prompt(PROMPT, "H") == "Intro.\n<RULES>\nOnly hard.\n</RULES>\n--- Tools ---\nuse them"
    assert render_prompt(PROMPT, "L") == "Intro.\n<NOTES>\nEasy notes.\n</NOTES>"


def test_a_bad_difficulty_in_an_xml_box_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="invalid difficulty label 'X'"):
        render_prompt('<A difficulty="X">\ntext\n</A>', "M")


@pytest.mark.parametrize(
    ("style", "rendered"),
    [
        (PromptStyle.XML, "Intro.\n<RULES>\nOnly hard.\n</RULES>\n<Tools>\nuse them\n</Tools>"),
        (PromptStyle.DASHED, "Intro.\n--- RULES ---\nOnly hard.\n--- Tools ---\nuse them"),
        (PromptStyle.ASTERISK, "Intro.\n*** RULES ***\nOnly hard.\n*** Tools ***\nuse them"),
        (PromptStyle.MARKDOWN, "Intro.\n## RULES\nOnly hard.\n## Tools\nuse them"),
    ],
)
def test_a_prompt_style_renders_every_title_in_one_form(style: PromptStyle, rendered: str) -> None:
    assert render_prompt(PROMPT, "H", style) == rendered
    assert render_prompt(PROMPT, "H", style.value.lower()) == rendered


def test_an_unknown_prompt_style_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown PROMPT_STYLE 'fancy'"):
        render_prompt(PROMPT, "H", "fancy")


def test_a_placeholder_on_a_comment_line_becomes_a_block_comment() -> None:
    values = {"tools": "add(a, b)\n    Add two numbers."}
    assert fill_placeholders("# {tools}\nThen {tools}", values) == (
        "# add(a, b)\n#     Add two numbers.\nThen add(a, b)\n    Add two numbers."
    )
    assert fill_placeholders("# keep {unknown}", values) == "# keep {unknown}"


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    text=st.lists(
        st.sampled_from(["a", "{x}", "{y}", "{tools}", "\n", "# ", "  #", "{", "}", "{{x}}", " b"]),
        max_size=14,
    ).map("".join),
    tools=st.sampled_from(["", "t1\nt2", "{x}"]),
    x=st.one_of(st.none(), st.sampled_from(["", "1\n2", "{y}"])),
)
def test_a_prompt_prepared_once_fills_as_the_whole_text_does(text: str, tools: str, x: str | None) -> None:
    # An agent fills its tool texts once and the job's values on each step: the same text results
    # as filling everything at once, a value is never read again as placeholders.
    each = {"x": x} if x is not None else {}
    assert Template(text).partial({"tools": tools}).fill(each) == fill_placeholders(
        text, {"tools": tools, **each}
    )


def test_an_agents_prompt_style_and_comment_placeholders_reach_its_system_prompt() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: first.
            b: second.
        """
        return a + b

    agent = Agent("styled", "Intro.\n## H: Deep\n# {tools}", [add], {"PROMPT_STYLE": "DASHED"})
    assert agent.system_prompt(difficulty="M") == "Intro."
    assert agent.system_prompt(difficulty="H").startswith("Intro.\n--- Deep ---\n# add(a, b)\n#     Add two")


def test_a_prompt_file_holds_metadata_before_its_header() -> None:
    parsed = parse_prompt_file(
        "triage.md", '# model: scripted/x\n# SCRIPT: ["exit(1)"]\n\n# System Prompt\nHello.\n'
    )
    assert (parsed.role, parsed.system) == ("triage", "Hello.")
    assert parsed.metadata == {"MODEL": "scripted/x", "SCRIPT": ["exit(1)"]}


def test_a_prompt_file_without_the_header_names_the_file() -> None:
    with pytest.raises(KnowledgeError, match=r"^prompts/triage\.md: no '# System Prompt' header"):
        parse_prompt_file("triage.md", "# MODEL: x\nHello.\n")


def test_a_bad_xml_label_in_a_prompt_file_names_its_line() -> None:
    with pytest.raises(KnowledgeError, match=r"prompts/t\.md: line 4: invalid difficulty label 'Q'"):
        parse_prompt_file("t.md", "# System Prompt\nIntro.\n\n<A difficulty='Q'>\nx\n</A>\n")


EXAMPLE = """# name: Refund a late order
# seq_id: 3
# difficulty: high
```python
order = find_order(7)
```
# ----------
```python
print(order.status)
refund(order)
```
late
refunded
"""


def test_an_example_has_metadata_a_warmup_part_code_and_console() -> None:
    ex = parse_example("helpdesk", "refunds/late.md", EXAMPLE)
    assert (ex.name, ex.seq_id, ex.difficulty) == ("Refund a late order", 3, "H")
    assert [(p.kind, p.text) for p in ex.warmup] == [("code", "order = find_order(7)")]
    assert [(p.kind, p.text) for p in ex.parts] == [
        ("code", "print(order.status)\nrefund(order)"),
        ("console", "late\nrefunded"),
    ]


def test_a_console_style_example_has_plain_code_lines_and_prompted_output() -> None:
    ex = parse_example("a", "x.md", "# name: Sum\nx = 1 + 1\nprint(x)\n> 2\n")
    assert [(p.kind, p.text) for p in ex.parts] == [("code", "x = 1 + 1\nprint(x)"), ("console", "2")]


def test_text_before_the_first_code_block_names_the_file_and_line() -> None:
    with pytest.raises(KnowledgeError, match=r"examples/a/x\.md: line 2: text before the first code block"):
        parse_example("a", "x.md", "# name: Sum\nSome prose first.\n```python\nx = 1\n```\n")


def test_a_document_needs_its_headers() -> None:
    doc = parse_document(
        "p/r.md", "# ord_no: 2\n# topic: Policies\n# title: Refunds\n# audience: a, b\nline one\n"
    )
    assert (doc.topic, doc.title, doc.audience, doc.lines) == (
        "Policies",
        "Refunds",
        frozenset({"a", "b"}),
        ("line one",),
    )
    with pytest.raises(
        KnowledgeError, match=r"documents/p/r\.md: line 1: Missing required headers: ord_no, title"
    ):
        parse_document("p/r.md", "# topic: Policies\nbody\n")


def test_extra_resources_groups_and_their_errors() -> None:
    assert parse_extra_resources("(LM:assistant,researcher),(H:helpdesk)") == [
        ("L", ("assistant", "researcher")),
        ("H", ("helpdesk",)),
    ]
    for bad in ("assistant", "(LM assistant)", "(X:a)", "(H:)", "(H:a) trailing"):
        with pytest.raises(ValueError, match="EXTRA_RESOURCES"):
            parse_extra_resources(bad, agent="r")


def test_an_unknown_donor_role_is_an_error_when_the_agents_load() -> None:
    receiver = Agent("r", "p", [], {"EXTRA_RESOURCES": "(H:nobody)"})
    with pytest.raises(ValueError, match="agent 'r': EXTRA_RESOURCES names role 'nobody'"):
        KnowledgeView(Knowledge(version=""), {"r": receiver})


def test_a_warmup_def_with_bad_syntax_names_its_line() -> None:
    with pytest.raises(KnowledgeError, match=r"warmups/w\.py: line 2: invalid Python"):
        build_knowledge("v", [RawFile("warmups", "w.py", b"x = 1\nif\n")])


def test_lookups_by_id_title_fragment_and_fuzzy_match() -> None:
    names = ["Refund policy", "Refund limits", "Shipping times"]
    assert find_entry(names, 2, "document") == 2
    assert find_entry(names, "refund POLICY", "document") == 0
    assert find_entry(names, "shipping", "document") == 2
    assert find_entry(names, "Shiping times", "document") == 2  # ratio >= 0.9
    assert find_entry(names, "Shopping", "document") is None
    with pytest.raises(
        ValueError, match="Ambiguous document 'refund', matches: Refund policy, Refund limits"
    ):
        find_entry(names, "refund", "document")


def test_a_file_over_the_size_limit_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "big.md").write_bytes(b"x" * (MAX_KNOWLEDGE_FILE_BYTES + 1))
    with pytest.raises(PayloadTooLargeError, match=r"prompts/big\.md is \d+ bytes, over the \d+-byte limit"):
        read_directory("prompts", tmp_path)


# --- the tools, as a step calls them -------------------------------------------------------------------


def _view() -> KnowledgeView:
    files = [
        RawFile("examples", "helper/easy.md", b"# name: Easy one\n# difficulty: L\nx = 1\n> 1\n"),
        RawFile("examples", "helper/hard.md", b"# name: Hard one\n# difficulty: H\ny = 2\n"),
        RawFile(
            "documents", "a.md", b"# ord_no: 1\n# topic: Policies\n# title: Refund policy\none\ntwo\nthree\n"
        ),
        RawFile(
            "documents", "b.md", b"# ord_no: 2\n# topic: Policies\n# title: Staff\n# audience: other\nx\n"
        ),
    ]
    helper = SupervisedAgent("helper", "p", [], {"MODEL": "m"})
    return KnowledgeView(build_knowledge("v1", files), {"helper": helper})


@pytest.fixture
def job() -> Iterator[JobContext]:
    ctx = JobContext(job_id="j", agent="helper", params={}, namespace={}, extras={"knowledge": _view()})
    token = bind_job(ctx)
    yield ctx
    unbind_job(token)


def test_show_example_raises_the_difficulty_and_never_lowers_it(
    job: JobContext, capsys: pytest.CaptureFixture[str]
) -> None:
    show_example("Hard one")
    assert (job.difficulty, job.difficulty_changed) == ("H", True)
    job.difficulty_changed = False
    show_example(0)  # an easier example: the difficulty stays
    assert (job.difficulty, job.difficulty_changed) == ("H", False)
    out = capsys.readouterr().out
    assert "# --- EXAMPLE: Easy one ---\nx = 1\n> 1\n# --- END OF EXAMPLE ---" in out
    show_example(9)
    assert capsys.readouterr().out == "# Example 9 not found (total: 2)\n"


def test_documents_by_topic_audience_and_line_range(
    job: JobContext, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="no topic given"):
        show_document("refund")
    list_of_documents("policies")
    show_document("refund", start_from=1, limit=1)
    show_document("Staff")  # for another audience only
    list_of_documents("Shipping")
    assert capsys.readouterr().out.splitlines() == [
        "# Documents in 'Policies': Document ID: Title (1 total)",
        "0: Refund policy",
        "# Refund policy (lines 1-2/3)",
        "two",
        "# Document 'Staff' not found in topic 'Policies'",
        "# Topic 'Shipping' not found",
    ]
    assert job.extras["library"] == {"last_topic_id": 0}


def test_get_examples_names_the_agents_own_examples_in_the_served_version(job: JobContext) -> None:
    helper = job.extras["knowledge"].agents["helper"]
    assert helper.get_examples() == ["Easy one", "Hard one"]
    assert Agent("stranger", "p").get_examples() == []


def test_a_prompt_files_metadata_is_checked_when_it_is_applied() -> None:
    agent = SupervisedAgent("t", "p", [], {"MODEL": "m"})
    for line, error in [
        ("# PROMPT_STYLE: fancy", "unknown PROMPT_STYLE 'fancy'"),
        ("# DEFAULT_DIFFICULTY: extreme", "unknown difficulty 'extreme'"),
        ("# POST_PROCESSORS: Nope()", "Nope"),
    ]:
        files = [RawFile("prompts", "t.md", f"{line}\n# System Prompt\nHi.\n".encode())]
        with pytest.raises(KnowledgeError, match=rf"^prompts/t\.md: .*{error}"):
            KnowledgeView(build_knowledge("v", files), {"t": agent})
    warm = [RawFile("warmups", "plain.py", b"x = 1\n")]
    with pytest.raises(KnowledgeError, match=r"^warmups/plain\.py: agent 'plain' is not a SupervisedAgent"):
        KnowledgeView(build_knowledge("v", warm), {"plain": Agent("plain", "p")})
