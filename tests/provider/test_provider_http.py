"""The provider against a local OpenAI-compatible HTTP server (started here, on loopback), through
the real litellm code: retries, Retry-After, refusals, malformed answers, limits, key hygiene."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
from statek_bus.services.provider import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.client.llm import ProviderModel
from statek_bus.mesh.connection import connect
from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import BadRequestError, ServiceUnavailableError, StatekError
from statek_bus.wire.messages import ChatMessage, CompleteReply, CompleteRequest, ToolCall
from statek_bus.wire.subjects import LLM_COMPLETE, SERVICE_PROVIDER

SECRET = "sk-test-SECRET123"
LIMIT = 4


class FakeOpenAI:
    """Chat completions whose behaviour the model name picks; counts requests and peak in-flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with fake.lock:
                    fake.in_flight += 1
                    fake.peak = max(fake.peak, fake.in_flight)
                    n = fake.requests[body["model"]] = fake.requests.get(body["model"], 0) + 1
                    fake.bodies.append(body)
                try:
                    self.answer(body, n)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def answer(self, body: dict[str, Any], n: int) -> None:
                model = body["model"]
                if model == "rate-limited" and n == 1:
                    return self.send(
                        429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "1"}
                    )
                if model == "refuses":
                    return self.send(
                        400, {"error": {"message": f"bad request, your key {SECRET}", "type": "x"}}
                    )
                if model == "down":
                    return self.send(503, {"error": {"message": f"overloaded {SECRET}"}})
                if model == "no-choices":
                    return self.send(
                        200,
                        {"id": "x", "object": "chat.completion", "created": 1, "model": model, "choices": []},
                    )
                if model == "slow":
                    time.sleep(0.005)
                if model.startswith("sleep-"):  # an upstream slower than its callers wait
                    time.sleep(float(model.removeprefix("sleep-")))
                message: dict[str, Any] = {"role": "assistant", "content": f"hello from {model}"}
                if model == "echoes-key":  # an upstream that repeats its caller's key back
                    message["content"] = f"your key is {SECRET}, Bearer {SECRET}"
                    message["tool_calls"] = [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": json.dumps({"q": SECRET})},
                        }
                    ]
                if model == "tools":
                    message["tool_calls"] = [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                        }
                    ]
                self.send(
                    200,
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 1,
                        "model": model,
                        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                        "usage": {
                            "prompt_tokens": 12,
                            "completion_tokens": 5,
                            "total_tokens": 17,
                            "prompt_tokens_details": {"cached_tokens": 2},
                        },
                    },
                )

            def send(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url)  # litellm's convention for openai/<model>
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        yield server


@pytest.fixture
async def client(settings: Settings, fake: FakeOpenAI) -> AsyncIterator[AsyncStatekClient]:
    s = settings.replace(
        request_timeout=60.0,
        llm_retry_attempts=3,
        llm_retry_base=0.01,
        llm_retry_cap=0.02,
        llm_model_concurrency=LIMIT,
    )
    async with running_service(build, s, name=SERVICE_PROVIDER), AsyncStatekClient(settings=s) as c:
        yield c


async def complete(client: AsyncStatekClient, model: str, **kw: Any) -> CompleteReply:
    kw.setdefault("messages", [ChatMessage(role="user", content="hi")])
    return await client.request(LLM_COMPLETE, CompleteRequest(model=f"openai/{model}", **kw), CompleteReply)


async def test_a_reply_with_tool_calls_usage_and_history(client: AsyncStatekClient, fake: FakeOpenAI) -> None:
    history = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="find x"),
        ChatMessage(
            role="assistant", content="", tool_calls=[ToolCall(name="lookup", arguments={"q": "x"}, id="c0")]
        ),
        ChatMessage(role="tool", content="found", tool_call_id="c0"),
    ]
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    reply = await complete(client, "tools", messages=history, tools=tools, temperature=0.5)
    assert reply.tool_calls == [ToolCall(name="lookup", arguments={"q": "x"}, id="c1")]
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.cached_tokens) == (12, 5, 2)
    sent = fake.bodies[-1]
    assert sent["temperature"] == 0.5 and sent["tools"] == tools
    assert sent["messages"][2]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"q": "x"}'}
    assert sent["messages"][3]["tool_call_id"] == "c0"


async def test_429_with_retry_after_is_retried_and_succeeds(
    client: AsyncStatekClient, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="statek_bus.provider.retry"):
        reply = await complete(client, "rate-limited")
    assert reply.text == "hello from rate-limited"
    assert fake.requests["rate-limited"] == 2
    assert "retry 1/2 in 1.00s (Retry-After)" in caplog.text


async def test_400_is_not_retried_and_is_a_clear_error(client: AsyncStatekClient, fake: FakeOpenAI) -> None:
    with pytest.raises(BadRequestError) as err:
        await complete(client, "refuses")
    assert fake.requests["refuses"] == 1
    assert "refused the request (400)" in err.value.message and "bad request" in err.value.message
    assert "SECRET123" not in err.value.message


async def test_a_provider_that_stays_down_is_503_after_the_policy(
    client: AsyncStatekClient, fake: FakeOpenAI
) -> None:
    with pytest.raises(ServiceUnavailableError) as err:
        await complete(client, "down")
    assert fake.requests["down"] == 3
    assert "after 3 attempts" in err.value.message and err.value.details == {"attempts": 3}
    assert "SECRET123" not in err.value.message


async def test_malformed_response_is_a_clear_error(client: AsyncStatekClient) -> None:
    with pytest.raises(StatekError) as err:
        await complete(client, "no-choices")
    assert err.value.code == 503 and "choices" in err.value.message


async def test_200_concurrent_requests_never_exceed_the_model_limit(
    client: AsyncStatekClient, fake: FakeOpenAI
) -> None:
    replies = await asyncio.gather(*(complete(client, "slow", job_id=f"j{i}") for i in range(200)))
    assert {r.text for r in replies} == {"hello from slow"}
    assert fake.requests["slow"] == 200
    assert 1 < fake.peak <= LIMIT


async def test_no_key_in_replies_errors_or_logs(
    client: AsyncStatekClient, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        seen.append(repr(await complete(client, "tools")))
        for model in ("refuses", "down", "no-choices"):
            with pytest.raises(StatekError) as err:
                await complete(client, model)
            seen.append(repr(err.value.detail()))
    assert fake.bodies  # the key did reach the provider...
    everything = "\n".join([*seen, caplog.text, *(r.getMessage() for r in caplog.records)])
    assert "SECRET123" not in everything  # ...and nowhere else


async def test_a_key_echoed_in_completion_content_never_reaches_the_reply(
    client: AsyncStatekClient, fake: FakeOpenAI
) -> None:
    reply = await complete(client, "echoes-key", job_id="j-echo")
    assert fake.requests["echoes-key"] == 1
    assert "SECRET123" not in msgspec.json.encode(reply).decode()
    assert reply.text.startswith("your key is ") and "[redacted OPENAI_API_KEY]" in reply.text
    assert reply.tool_calls[0].name == "lookup" and "SECRET123" not in str(reply.tool_calls[0].arguments)


async def _upstream_calls(fake: FakeOpenAI, model: str, at_least: int) -> None:
    for _ in range(500):
        if fake.requests.get(model, 0) >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{model} never reached the upstream")


def _call(job_id: str, model: str = "sleep-1.5") -> CompleteRequest:
    return CompleteRequest(
        model=f"openai/{model}", messages=[ChatMessage(role="user", content="hi")], job_id=job_id, call_index=0
    )


async def test_a_call_whose_caller_gave_up_while_queued_is_never_made(
    settings: Settings, fake: FakeOpenAI
) -> None:
    s = settings.replace(llm_model_concurrency=1, llm_retry_attempts=1)
    async with running_service(build, s, name=SERVICE_PROVIDER):
        nc = await connect(s, name="statek-test")
        try:
            patient = ProviderModel(nc, s.replace(llm_timeout=30.0))
            impatient = ProviderModel(nc, s.replace(llm_timeout=0.3))
            first = asyncio.create_task(patient.complete(_call("j-first")))
            await _upstream_calls(fake, "sleep-1.5", 1)  # it holds the model's only slot
            with pytest.raises(ServiceUnavailableError):
                await impatient.complete(_call("j-gave-up"))  # queued behind it, then gone
            await first
            await patient.complete(_call("j-after"))  # queued after it: it has had its turn
        finally:
            await nc.close()
    assert fake.requests["sleep-1.5"] == 2  # first and after; never the abandoned one


async def test_a_retried_call_gets_the_first_calls_result_not_a_second_paid_call(
    settings: Settings, fake: FakeOpenAI
) -> None:
    async with running_service(build, settings, name=SERVICE_PROVIDER):
        nc = await connect(settings, name="statek-test")
        try:
            gives_up = ProviderModel(nc, settings.replace(llm_timeout=0.3))
            retry = ProviderModel(nc, settings.replace(llm_timeout=30.0))
            with pytest.raises(ServiceUnavailableError):  # the executor's timeout: it retries the step
                await gives_up.complete(_call("j-retried"))
            reply = await retry.complete(_call("j-retried"))  # the same call of the re-run step
            other = await retry.complete(_call("j-other"))  # another job's call is its own
        finally:
            await nc.close()
    assert reply.text == other.text == "hello from sleep-1.5"
    assert fake.requests["sleep-1.5"] == 2


async def test_a_reused_call_id_with_other_content_is_a_call_of_its_own(
    client: AsyncStatekClient, fake: FakeOpenAI
) -> None:
    for text in ("first question", "another question"):
        await complete(client, "ledger", call_id="same-id", messages=[ChatMessage(role="user", content=text)])
    assert fake.requests["ledger"] == 2  # never the other request's reply
    assert [b["messages"][0]["content"] for b in fake.bodies if b["model"] == "ledger"] == [
        "first question",
        "another question",
    ]


async def test_model_parameters_and_reasoning_reach_the_upstream_request(
    client: AsyncStatekClient, fake: FakeOpenAI
) -> None:
    history = [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="x = 1", reasoning="mine", reasoning_model="openai/params"),
        ChatMessage(role="user", content="ok"),
        ChatMessage(role="assistant", content="y = 2", reasoning="theirs", reasoning_model="openai/other"),
        ChatMessage(role="user", content="go on"),
    ]
    reply = await complete(client, "params/top_p=0.5&seed=7", messages=history)
    assert reply.text == "hello from params"
    sent = fake.bodies[-1]
    assert sent["model"] == "params" and sent["top_p"] == 0.5 and sent["seed"] == 7
    assert sent["messages"][1].get("reasoning_content") == "mine"
    assert "reasoning_content" not in sent["messages"][3]  # another model's reasoning is not replayed
    before = len(fake.bodies)
    with pytest.raises(BadRequestError) as err:
        await complete(client, "params/api_base=http://127.0.0.1:9")
    assert err.value.field == "$.model" and len(fake.bodies) == before  # refused before any call
