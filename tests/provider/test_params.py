"""Provider parameters through the real mesh on the scripted model: reasoning replayed only to the
model that produced it, model-string parameters mapped through the provider config, parameters that
could redirect a call refused, and a response-format file (the scripted model shows what it got)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from statek_bus.mesh.settings import Settings
from statek_bus.provider.params import load_provider_config, request_params, split_model_params
from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.provider_config import check_provider_config
from tests import dialog_agents as fx
from tests.agents_fixture import console, services, submit, wait_done

CONFIG = {
    "SCRIPTED": {
        "t_d_params": {
            "reasoning": {
                "reasoning_level": [
                    {"range": {"from": 1, "to": 49}, "payload": {"reasoning_effort": "low"}},
                    {
                        "range": {"from": 50, "to": 100},
                        "payload": {"reasoning_effort": "high", "extra_body": {"thinking": {"budget": 2048}}},
                    },
                ],
                "ignore_parameters": ["temperature"],
            }
        }
    }
}


@pytest.fixture
async def mesh(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Settings]:
    """The mesh with an operator's provider config and a response-format file for the scripted model."""
    config = tmp_path / "provider.json"
    config.write_text(json.dumps(CONFIG))
    schema = tmp_path / "format.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"python_code": {"type": "string"}}}))
    monkeypatch.setenv("SCRIPTED_RESPONSE_FORMAT_FILE", str(schema))
    s = settings.replace(provider_config=str(config))
    async with services(s, "provider", "submission", "executor", agents=fx.AGENTS_SPEC) as running:
        yield running


async def test_reasoning_is_replayed_on_the_next_call(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_reasoning"))
    assert record.exit_status == "reasoned"
    assert '["x should start at one"]' in console(record)


async def test_reasoning_is_not_replayed_to_another_model(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_reasoning_switch"))
    assert record.exit_status == "switched"  # panic() moved the job from scripted/mid to scripted/high
    assert "[]" in console(record)


async def test_model_string_parameters_and_the_reasoning_level_reach_the_model(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_params"))
    assert record.exit_status == "ok", record.error
    got = json.loads(next(line for line in console(record) if line.startswith("{")))
    assert got["top_p"] == 0.5 and got["seed"] == 7
    assert got["reasoning_effort"] == "high" and got["extra_body"] == {"thinking": {"budget": 2048}}
    assert "temperature" not in got  # the config's ignore_parameters
    assert got["response_format"]["type"] == "json_schema"


async def test_a_parameter_that_could_redirect_the_call_ends_the_job_with_a_clear_error(
    mesh: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_bad_params"))
    assert record.error is not None and "parameter 'api_base' is not one the provider passes on" in record.error


async def test_a_response_format_reply_runs_its_python_code(mesh: Settings, nc: Client) -> None:
    js = nc.jetstream()
    record = await wait_done(js, await submit(js, "t_d_format"))
    assert record.exit_status == "from the json reply"


def test_model_strings_split_their_parameters() -> None:
    assert split_model_params("openai/gpt-4o", "$.model") == ("openai/gpt-4o", {})
    assert split_model_params("openrouter/openai/gpt-5/rl=30&top_p=0.9&stream=false", "$.model") == (
        "openrouter/openai/gpt-5",
        {"rl": 30, "top_p": 0.9, "stream": False},
    )
    for bad in ("openai/m/rl=", "openai/m/=3", "openai/m/a=1&a=2", "/rl=3"):
        with pytest.raises(BadRequestError) as err:
            split_model_params(bad, "$.model")
        assert err.value.field == "$.model"


def test_reasoning_levels_are_checked() -> None:
    config = check_provider_config(CONFIG, "$.provider_config")
    assert request_params("scripted/t_d_params", {"rl": 10}, config) == {"reasoning_effort": "low"}
    assert request_params("scripted/other", {"rl": 0}, config) == {}
    for params, message in (
        ({"rl": 101}, "0..100"),
        ({"rl": 5, "reasoning_level": 6}, "disagree"),
        ({"api_key": "x"}, "'api_key'"),
    ):
        with pytest.raises(BadRequestError, match=message):
            request_params("scripted/t_d_params", params, config)
    with pytest.raises(BadRequestError, match="no matching reasoning_level"):
        request_params("scripted/other", {"rl": 20}, config)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ([], "$.provider_config"),
        ({"reasoning": {}}, "$.provider_config.reasoning"),
        ({"p": {"reasoning": {"levels": []}}}, "$.provider_config.p.reasoning.levels"),
        ({"p": {"reasoning": {"reasoning_level": [{"range": {"from": 5, "to": 1}}]}}},
         "$.provider_config.p.reasoning.reasoning_level[0].range"),
        ({"p": {"f": {"m": {"x": {}}}}}, "$.provider_config.p.f.m.x"),
    ],
)
def test_a_malformed_provider_config_names_the_path(config: object, field: str) -> None:
    with pytest.raises(BadRequestError) as err:
        check_provider_config(config, "$.provider_config")
    assert err.value.field == field


def test_the_operators_config_file_is_checked_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"p": 3}')
    with pytest.raises(ValueError, match="STATEK_PROVIDER_CONFIG"):
        load_provider_config(str(bad))
    assert load_provider_config("") == {}
