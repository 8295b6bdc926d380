"""A job's own options (warmup code, post-processors, provider config, extra resources) through the
real mesh: they run, they are checked as untrusted input, and jobs with the same options share one
stored definition."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client

from statek_bus import AsyncStatekClient, BadRequestError, JobOptions
from statek_bus.jobs.store import JobStore
from statek_bus.mesh.settings import Settings
from statek_bus.wire.subjects import JOBDEFS_BUCKET, JOBS_SUBMIT
from tests import dialog_agents as fx
from tests.agents_fixture import console, services, wait_done


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Settings]:
    """Provider, submission and an executor serving the dialog agents."""
    async with services(settings, "provider", "submission", "executor", agents=fx.AGENTS_SPEC) as s:
        yield s


@pytest.fixture
def client(mesh: Settings, nc: Client) -> AsyncStatekClient:
    """A client on the test's connection."""
    return AsyncStatekClient(settings=mesh, nc=nc)


async def _record(nc: Client, job_id: str) -> Any:
    return await wait_done(nc.jetstream(), job_id)


async def test_a_jobs_warmup_runs_before_the_agents_and_jobs_with_the_same_options_share_a_definition(
    client: AsyncStatekClient, nc: Client
) -> None:
    code = 'x = 40\nprint("job warmup")'
    first = await client.jobs.submit_new_job("t_d_job", warmup_code=code, colour="red")
    second = await client.jobs.submit_new_job("t_d_job", warmup_code=code)
    other = await client.jobs.submit_new_job("t_d_job", warmup_code="x = 1")
    plain = await client.jobs.submit("t_d_job", {"x": 0})
    done = [await _record(nc, j.id) for j in (first, second, other, plain)]
    assert [r.exit_status for r in done] == ["42 agent", "42 agent", "3 agent", "2 agent"]
    assert console(done[0])[:2] == ["job warmup", "agent warmup"]
    assert first.params == {"colour": "red"}  # options are not parameters
    assert done[0].jobdef is not None and done[0].jobdef == done[1].jobdef != done[2].jobdef
    assert done[3].jobdef is None
    kv = await nc.jetstream().key_value(JOBDEFS_BUCKET)
    stored = json.loads((await kv.get(done[0].jobdef)).value)
    assert stored == {"agent": "t_d_job", "options": {"warmup_code": code}}


async def test_a_jobs_warmup_is_sandboxed_like_model_code(client: AsyncStatekClient, nc: Client) -> None:
    job = await client.jobs.submit_new_job("t_d_job", warmup_code="import os\nx = 1")
    record = await _record(nc, job.id)
    assert record.error is not None and record.error.startswith("warmup failed:")
    assert "os" in record.error
    hidden = await _record(nc, (await client.jobs.submit_new_job("t_d_job", warmup_code="x = vault()")).id)
    assert hidden.error is not None and hidden.error.startswith("warmup failed:")  # hidden tools: trusted code only
    assert "classified" not in " ".join(console(hidden))


async def test_a_child_job_gets_its_warmup_from_model_code(client: AsyncStatekClient, nc: Client) -> None:
    job = await client.jobs.submit("t_d_parent")
    record = await _record(nc, job.id)
    assert record.exit_status == "7 agent"


async def test_a_jobs_post_processing_holds_back_the_first_draft(client: AsyncStatekClient, nc: Client) -> None:
    checked = await client.jobs.submit_new_job("t_d_job_dialog", post_processing="FinalCheck(max_llm_actions=2)")
    plain = await client.jobs.submit_new_job("t_d_job_dialog")
    assert (await _record(nc, checked.id)).usage.llm_calls == 2
    assert (await _record(nc, plain.id)).usage.llm_calls == 1
    unknown = await client.jobs.submit_new_job("t_d_job_dialog", post_processing="Nope()")
    record = await _record(nc, unknown.id)
    assert record.error is not None and "post_processing of this job" in record.error and "'Nope'" in record.error


async def test_a_jobs_provider_config_reaches_the_model(client: AsyncStatekClient, nc: Client) -> None:
    config = {
        "scripted": {
            "t_d_params": {
                "reasoning": {
                    "reasoning_level": [{"range": {"from": 1, "to": 100}, "payload": {"reasoning_effort": "medium"}}]
                }
            }
        }
    }
    job = await client.jobs.submit("t_d_params", options=JobOptions(provider_config=config))
    record = await _record(nc, job.id)
    assert record.exit_status == "ok", record.error
    got = json.loads(next(line for line in console(record) if line.startswith("{")))
    assert got == {"reasoning_effort": "medium", "seed": 7, "temperature": 0.3, "top_p": 0.5}
    without = await _record(nc, (await client.jobs.submit("t_d_params")).id)
    assert without.error is not None and "no matching reasoning_level" in without.error


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"warmup_code": "x = (1"}, "$.options.warmup_code"),
        ({"warmup_code": "#STATEK: hidden = True\nx = secret_tool()"}, "$.options.warmup_code"),
        ({"warmup_code": "x = 1\n" * 20_000}, "$.options.warmup_code"),
        ({"post_processing": "FinalCheck(2)"}, "$.options.post_processing"),
        ({"post_processing": "FinalCheck(max_llm_actions=len('x'))"}, "$.options.post_processing"),
        ({"extra_resources": "assistant, researcher"}, "$.options.extra_resources"),
        ({"provider_config": {"openai": 3}}, "$.options.provider_config.openai"),
    ],
)
async def test_bad_options_are_a_400_naming_the_field_and_write_nothing(
    client: AsyncStatekClient, nc: Client, options: dict[str, Any], field: str, uid: str
) -> None:
    job_id = f"bad-options-{uid}"
    with pytest.raises(BadRequestError) as err:
        await client.jobs.submit("t_d_job", job_id=job_id, options=JobOptions(**options))
    assert err.value.field == field
    assert await (await JobStore.open(nc.jetstream())).find(job_id) is None


async def test_a_batch_shares_its_options_and_its_definition(client: AsyncStatekClient, nc: Client) -> None:
    jobs = await client.jobs.submit_new_jobs_batch("t_d_job", [None, None], warmup_code="x = 10", size="s")
    single = await client.jobs.submit_new_job("t_d_job", warmup_code="x = 10")
    done = [await _record(nc, j.id) for j in [*jobs, single]]
    assert [r.exit_status for r in done] == ["12 agent"] * 3
    assert len({r.jobdef for r in done}) == 1 and done[0].jobdef is not None
    assert jobs[0].params == {"size": "s"}


async def test_an_unknown_option_is_a_400_naming_it(mesh: Settings, nc: Client) -> None:
    reply = await nc.request(
        JOBS_SUBMIT, json.dumps({"agent": "t_d_job", "options": {"warmup": "x = 1"}}).encode(), timeout=10
    )
    error = json.loads(reply.data)["error"]
    assert error["code"] == 400 and error["field"] == "$.options.warmup"
