"""The provider micro service through a real nats-server: scripted model, litellm's offline
mock_response path, key checks, the models listing, and startup (PING before litellm)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from statek_bus.services.provider import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.connection import connect
from statek_bus.mesh.discovery import ping
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.provider.scripted import SCRIPT_DIR_ENV
from statek_bus.wire.errors import BadRequestError, PayloadTooLargeError
from statek_bus.wire.messages import ChatMessage, CompleteReply, CompleteRequest, Empty, ModelsReply
from statek_bus.wire.subjects import LLM_COMPLETE, LLM_MODELS, SERVICE_PROVIDER

# litellm silences this pydantic warning with a global filter at import; pytest resets global filters
# per test, so a litellm import or lazy schema build that spans tests needs the same filter here.

USER = [ChatMessage(role="user", content="hello")]


@pytest.fixture
def script_dir(tmp_path: Path) -> Path:
    """The provider's script directory (setting ``script_dir``, env ``STATEK_SCRIPT_DIR``)."""
    path = tmp_path / "scripts"
    path.mkdir()
    return path


@pytest.fixture
async def client(settings: Settings, tmp_path: Path, script_dir: Path) -> AsyncIterator[AsyncStatekClient]:
    prices = tmp_path / "prices.csv"
    prices.write_text(
        "PROVIDER,MODEL,MODEL_FAMILY,INPUT_PRICE_PER_M,INPUT_PRICE_PER_CACHED_M,OUTPUT_PRICE_PER_M\n"
        "scripted,priced,,1000,,2000\n"
    )
    settings = settings.replace(  # litellm loads in ~5 s
        llm_price_table=str(prices), request_timeout=60.0, script_dir=str(script_dir)
    )
    async with (
        running_service(build, settings, name=SERVICE_PROVIDER),
        AsyncStatekClient(settings=settings) as c,
    ):
        yield c


async def complete(client: AsyncStatekClient, **kw: object) -> CompleteReply:
    kw.setdefault("messages", USER)
    return await client.request(LLM_COMPLETE, CompleteRequest(**kw), CompleteReply)  # type: ignore[arg-type]


async def test_scripted_model_answers_from_a_shell_shaped_request(client: AsyncStatekClient) -> None:
    raw = {
        "model": "scripted/x",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"SCRIPT": ["hello"]},
    }
    reply = await client.request(LLM_COMPLETE, raw, CompleteReply)
    assert (reply.text, reply.tool_calls, reply.model) == ("hello", [], "scripted/x")
    assert reply.usage.input_tokens > 0 and reply.usage.cost == 0.0


async def test_scripted_model_walks_its_script_and_then_errors(client: AsyncStatekClient) -> None:
    script = [
        "x = 1",
        {"text": "", "tool_calls": [{"name": "python_cli", "arguments": {"code": "exit('ok')"}}]},
    ]
    meta = {"SCRIPT": script}
    first = await complete(client, model="scripted/t", metadata=meta, call_index=0)
    second = await complete(client, model="scripted/t", metadata=meta, call_index=1, job_id="j1")
    assert first.text == "x = 1"
    assert second.tool_calls[0].name == "python_cli" and second.tool_calls[0].arguments == {
        "code": "exit('ok')"
    }
    with pytest.raises(BadRequestError) as err:
        await complete(client, model="scripted/t", metadata=meta, call_index=2)
    assert err.value.field == "$.metadata.SCRIPT"
    assert "no reply for LLM call 3" in err.value.message and "2 replies" in err.value.message


async def test_without_call_index_the_assistant_turns_pick_the_reply(client: AsyncStatekClient) -> None:
    history = [*USER, ChatMessage(role="assistant", content="one"), ChatMessage(role="user", content="more")]
    reply = await complete(client, model="scripted/t", messages=history, metadata={"SCRIPT": ["one", "two"]})
    assert reply.text == "two"


async def test_script_file_and_its_errors(client: AsyncStatekClient, script_dir: Path) -> None:
    (script_dir / "script.json").write_text(
        json.dumps(["from a file", {"text": "second", "reasoning": "because"}])
    )
    for name in ("script.json", str(script_dir / "script.json")):  # relative to the directory, or in it
        reply = await complete(client, model="scripted/f", metadata={"SCRIPT_FILE": name}, call_index=1)
        assert (reply.text, reply.reasoning) == ("second", "because")
    (script_dir / "bad.json").write_text("[1, 2]")
    with pytest.raises(BadRequestError) as err:
        await complete(client, model="scripted/f", metadata={"SCRIPT_FILE": "bad.json"})
    assert err.value.field is not None and err.value.field.startswith("$.metadata.SCRIPT_FILE[0]")
    with pytest.raises(BadRequestError, match="no such script") as err:
        await complete(client, model="scripted/f", metadata={"SCRIPT_FILE": "nope.json"})
    assert str(script_dir) not in err.value.message
    with pytest.raises(BadRequestError, match=r"\.json file"):
        await complete(client, model="scripted/f", metadata={"SCRIPT_FILE": "/etc/passwd"})


async def test_script_file_never_reads_outside_the_script_directory(
    client: AsyncStatekClient, script_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"  # a .json file on the provider host, outside the directory
    secret.write_text(json.dumps(["leaked"]))
    (script_dir / "link.json").symlink_to(secret)
    (script_dir / "sub").mkdir()
    (script_dir / "sub" / "up.json").symlink_to("../../secret.json")
    messages = set()
    for name in (
        str(secret),
        "../secret.json",
        "sub/../../secret.json",
        "link.json",  # a symbolic link escaping the directory
        "sub/up.json",
        str(tmp_path / "missing.json"),  # refused exactly like an existing file: no existence oracle
        "../missing.json",
    ):
        with pytest.raises(BadRequestError) as err:
            await complete(client, model="scripted/f", metadata={"SCRIPT_FILE": name})
        assert err.value.field == "$.metadata.SCRIPT_FILE"
        assert "outside the provider's script directory" in err.value.message
        assert str(tmp_path) not in err.value.message.replace(repr(name), "")  # only the name asked for
        messages.add(err.value.message.replace(repr(name), "<name>"))
    assert len(messages) == 1


async def test_script_file_is_disabled_without_a_script_directory(settings: Settings, tmp_path: Path) -> None:
    assert settings.script_dir == ""
    (tmp_path / "script.json").write_text(json.dumps(["hello"]))
    async with (
        running_service(build, settings, name=SERVICE_PROVIDER),
        AsyncStatekClient(settings=settings) as c,
    ):
        for name in (str(tmp_path / "script.json"), str(tmp_path / "missing.json")):
            with pytest.raises(BadRequestError) as err:
                await complete(c, model="scripted/f", metadata={"SCRIPT_FILE": name})
            assert err.value.field == "$.metadata.SCRIPT_FILE"
            assert "disabled" in err.value.message and SCRIPT_DIR_ENV in err.value.message
            assert str(tmp_path) not in err.value.message
        assert (await complete(c, model="scripted/x", metadata={"SCRIPT": ["inline"]})).text == "inline"


async def test_price_table_prices_the_scripted_model(client: AsyncStatekClient) -> None:
    reply = await complete(client, model="scripted/priced", metadata={"SCRIPT": ["abcdefgh"]})
    u = reply.usage
    assert u.output_tokens == 2
    assert u.cost == pytest.approx((u.input_tokens * 1000 + u.output_tokens * 2000) / 1e6)


async def test_bad_requests_name_their_field(client: AsyncStatekClient) -> None:
    with pytest.raises(BadRequestError) as err:
        await complete(client, model="scripted/x", metadata={"SCRIPT": ["a"], "SCIPT": ["b"]})
    assert err.value.field == "$.metadata.SCIPT" and "did you mean SCRIPT" in err.value.message
    with pytest.raises(BadRequestError) as err:
        await complete(client, model="L:scripted/a,M:scripted/b", metadata={"SCRIPT": ["a"]})
    assert err.value.field == "$.model"
    with pytest.raises(BadRequestError) as err:
        await client.request(LLM_COMPLETE, {"model": "scripted/x", "messages": [], "bogus": 1}, CompleteReply)
    assert err.value.field == "$.bogus"


async def test_difficulty_mapping_routes_through_the_service(client: AsyncStatekClient) -> None:
    meta = {"SCRIPT": ["scripted"], "DIFFICULTY": "H"}
    reply = await complete(client, model="L:scripted/low,M:scripted/mid,H:scripted/high", metadata=meta)
    assert reply.model == "scripted/high"


async def test_mock_response_runs_through_real_litellm_with_usage_and_cost(
    client: AsyncStatekClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    reply = await complete(
        client, model="openai/gpt-4o-mini", metadata={"MOCK_RESPONSE": "mocked answer"}, temperature=0.2
    )
    assert reply.text == "mocked answer" and reply.model == "openai/gpt-4o-mini"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.usage.cost > 0


async def test_missing_key_names_the_variable(
    client: AsyncStatekClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(BadRequestError) as err:
        await complete(client, model="anthropic/claude-3-5-sonnet-20240620")
    assert err.value.field == "$.model" and "ANTHROPIC_API_KEY" in err.value.message
    assert err.value.details == {"missing_env": ["ANTHROPIC_API_KEY"]}
    with pytest.raises(BadRequestError, match="names no provider"):
        await complete(client, model="nonsense/model")


async def test_models_lists_limits_and_key_status(
    client: AsyncStatekClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123")
    await complete(client, model="openai/gpt-4o-mini", metadata={"MOCK_RESPONSE": "m"})
    models = await client.request(LLM_MODELS, Empty(), ModelsReply)
    by_name = {m.name: m for m in models.models}
    assert "scripted/*" in by_name and "scripted/priced" not in by_name
    info = by_name["openai/gpt-4o-mini"]
    assert (info.key_env, info.key_present, info.concurrency) == ("OPENAI_API_KEY", True, 32)
    assert "SECRET123" not in repr(models)


async def test_oversized_request_is_413(settings: Settings) -> None:
    small = settings.replace(max_request_bytes=2000)
    async with running_service(build, small, name=SERVICE_PROVIDER), AsyncStatekClient(settings=small) as c:
        with pytest.raises(PayloadTooLargeError):
            await complete(c, model="scripted/x", metadata={"SCRIPT": ["x" * 5000]})


def test_only_the_provider_imports_litellm_and_only_when_it_runs() -> None:
    code = (
        "import sys, statek_bus, statek_bus.provider, statek_bus.client.core, statek_bus.wire.messages, statek_bus.services.provider;"
        "print('litellm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_process_answers_ping_before_litellm_loads_and_logs_no_key(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    log_path = tmp_path / "provider.log"
    secret = "sk-test-SECRET123"
    proc = ServiceProcess(
        "provider",
        nats_server.url,
        env={"OPENAI_API_KEY": secret, "STATEK_LOG_LEVEL": "DEBUG"},
        log_path=log_path,
    )
    await proc.start(timeout=60)
    try:
        settings = Settings.from_env({}, nats_url=nats_server.url)
        nc = await connect(settings, name="statek-test")
        try:
            assert [p["name"] for p in await ping(nc, SERVICE_PROVIDER, wait=0.5)] == [SERVICE_PROVIDER]
        finally:
            await nc.close()
        async with AsyncStatekClient(settings=settings) as c:
            assert (await complete(c, model="scripted/p", metadata={"SCRIPT": ["pong"]})).text == "pong"
            with pytest.raises(BadRequestError):
                await complete(c, model="openai/gpt-4o-mini", metadata={"TEMPERATURE": secret})
        for _ in range(600):  # the import starts right after registration; wait for its log line
            if "loading litellm" in log_path.read_text():
                break
            await asyncio.sleep(0.01)
    finally:
        assert await proc.stop() == 0
    log = log_path.read_text()
    ready, loading = log.find(f"{SERVICE_PROVIDER} "), log.find("loading litellm")
    assert 0 <= ready < loading, log  # registered (PING answered) before the import began
    assert "SECRET123" not in log
