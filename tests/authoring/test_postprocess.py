"""Post-processors: FinalCheck holds the first final draft back once; the contract and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from statek_bus.authoring.postprocess import (
    FinalCheck,
    LLMStep,
    PostProcessor,
    StepContext,
    apply_post_processors,
    parse_post_processors,
    post_processor,
)
from statek_bus.mesh.settings import Settings
from tests.agents_fixture import chat_log, services, submit, wait_done


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """Provider, submission and an executor serving the fixture agents."""
    async with services(settings, "provider", "submission", "executor") as s:
        yield s


async def test_final_check_holds_back_the_first_final_draft_and_sends_the_second(
    mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_pp_final"))
    assert record.usage.llm_calls == 2 and record.error is None
    log = chat_log(record)
    checks = [i.text for i in log if i.kind == "system"]
    assert len(checks) == 1 and checks[0].startswith("Final check:")
    assert checks[0].endswith("Draft answer:\nThe answer is 4.")
    assert [i.dialog for i in log if i.kind == "llm"] == [
        "The answer is 4, checked."
    ]  # the draft was dropped

    plain = await wait_done(js, await submit(js, "t_pp_none"))
    assert plain.usage.llm_calls == 1  # without the processor the first answer ends the job


def _ctx(calls: int = 1, fired: frozenset[str] = frozenset()) -> StepContext:
    return StepContext(job_id="j", agent="a", llm_calls=calls, fired=fired)


def test_final_check_acts_once_and_only_early() -> None:
    check = FinalCheck(max_llm_actions=2)
    final = LLMStep(text="4", dialog="4", final=True)
    assert apply_post_processors([check], final, _ctx()).step is None
    assert apply_post_processors([check], final, _ctx(fired=frozenset({check.key()}))).step is final
    assert apply_post_processors([check], final, _ctx(calls=2)).step is final
    code = LLMStep(text="x = 1", code="x = 1")
    assert apply_post_processors([check], code, _ctx()).step is code


def test_a_message_with_a_step_keeps_the_step_and_makes_it_not_final_and_a_dropped_step_ends_the_chain() -> (
    None
):
    @post_processor
    class Note(PostProcessor):
        def process(self, step: LLMStep, ctx: StepContext) -> tuple[LLMStep | str, ...]:
            return (step, "noted")

    step = LLMStep(text="4", dialog="4", final=True)
    done = apply_post_processors([Note(), FinalCheck()], step, _ctx())
    assert done.messages[0] == "noted" and done.step is None and done.acted
    kept = apply_post_processors([Note()], step, _ctx())
    assert kept.step is step and kept.messages == ("noted",) and kept.acted


def test_processors_returning_the_wrong_thing_are_errors() -> None:
    class Bad(PostProcessor):
        def process(self, step: LLMStep, ctx: StepContext):  # type: ignore[no-untyped-def]
            return 42

    class Two(PostProcessor):
        def process(self, step: LLMStep, ctx: StepContext) -> tuple[LLMStep | str, ...]:
            return (step, step)

    step = LLMStep(text="x")
    with pytest.raises(TypeError):
        apply_post_processors([Bad()], step, _ctx())
    with pytest.raises(ValueError, match="at most one"):
        apply_post_processors([Two()], step, _ctx())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("FinalCheck(max_llm_actions=", "cannot parse"),
        ("Nope()", "unknown post-processor 'Nope'"),
        ("FinalCheck(2)", "keyword arguments only"),
        ("FinalCheck(max_llm_actions=len('x'))", "literal"),
        ("FinalCheck(max_llm_actions=0)", "positive int"),
        ("FinalCheck(colour=1)", "unexpected keyword"),
    ],
)
def test_bad_metadata_is_a_clear_error_naming_the_agent(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="agent 'helper': POST_PROCESSORS") as err:
        parse_post_processors(spec, "helper")
    assert message in str(err.value)


def test_metadata_names_several_processors_in_order() -> None:
    found = parse_post_processors("FinalCheck(max_llm_actions=2), FinalCheck", "helper")
    assert [p.key() for p in found] == ["FinalCheck(max_llm_actions=2)", "FinalCheck(max_llm_actions=3)"]
