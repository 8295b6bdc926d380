"""What one model call costs the provider: work that depends only on the environment, the model
string or the config is done once, and every guarantee of the per-call path still holds."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from statek_bus.services.provider import build

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.service import YOUNG_THRESHOLD, running_service
from statek_bus.mesh.settings import Settings
from statek_bus.provider import Provider, Redactor
from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.messages import ChatMessage, CompleteReply, CompleteRequest
from statek_bus.wire.subjects import LLM_COMPLETE, SERVICE_PROVIDER

USER = [ChatMessage(role="user", content="hi")]


class CountingEnv(dict[str, str]):
    """An environment that counts how often it is read through."""

    reads = 0

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return super().__iter__()


def test_the_redactor_reads_an_unchanged_environment_once_and_a_key_set_later_at_the_next_call() -> None:
    env = CountingEnv(OPENAI_API_KEY="sk-test-SECRET123", HOME="/root")
    redact = Redactor(env)
    for _ in range(50):
        assert redact("key sk-test-SECRET123") == "key [redacted OPENAI_API_KEY]"
    assert env.reads == 1
    env["HF_TOKEN"] = "hf_abcdefgh"
    assert redact("hf_abcdefgh and sk-test-SECRET123") == "[redacted HF_TOKEN] and [redacted OPENAI_API_KEY]"
    env["HF_TOKEN"] = "hf_changed1"
    assert redact("hf_abcdefgh, hf_changed1") == "hf_abcdefgh, [redacted HF_TOKEN]"
    del env["HF_TOKEN"]
    assert redact("hf_changed1") == "hf_changed1"
    assert env.reads == 4


@pytest.mark.parametrize(
    "secret",
    ["plain-SECRET-123456", 'with"quote\\and\nnewline', "ünïcødé-sëcret-☃", "tab\tand\x01control"],
)
async def test_a_secret_anywhere_in_a_reply_is_redacted_whatever_its_json_escaping(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_SERVICE_TOKEN", secret)
    script: list[Any] = [
        f"text\n{secret}\n",
        {"text": "", "tool_calls": [{"name": "t", "arguments": {secret: [secret, 1]}}]},
        {"text": "ok", "reasoning": f"x{secret}x"},
        "line\nBearer abcdef123456 and \tsk-abcdefghij",
    ]
    async with Provider(Settings.from_env({})) as provider:
        for i in range(len(script)):
            reply = await provider.complete(
                CompleteRequest(model="scripted/x", messages=USER, metadata={"SCRIPT": script}, call_index=i)
            )
            text = msgspec.json.encode(reply).decode()
            assert secret not in str(msgspec.to_builtins(reply)) and "abcdef123456" not in text
            assert "abcdefghij" not in text
            assert "[redacted" in text


_TRACING_SCRIPT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from statek_bus.mesh import tracing

incoming = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
with tracing.span("statek.llm.complete", incoming, kind="server"):
    # no tracer provider set: the caller's trace is passed on as it came, and nothing is made of it
    assert tracing.inject() == incoming, tracing.inject()
    assert tracing.current_trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert not trace.get_current_span().get_span_context().is_valid
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # an application sets one later: the next span is recorded
    with tracing.span("inner", kind="client"):
        sent = tracing.inject()["traceparent"]
(inner,) = exporter.get_finished_spans()
assert f"{inner.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
assert inner.parent is not None and f"{inner.parent.span_id:016x}" == "00f067aa0ba902b7"
assert sent.split("-")[2] == f"{inner.context.span_id:016x}" and tracing.inject() is None
print("ok")
"""


def test_without_a_tracer_provider_a_request_span_passes_the_trace_on_and_makes_nothing() -> None:
    # its own process: a tracer provider can be set once per process, and other tests set one
    out = subprocess.run([sys.executable, "-c", _TRACING_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


async def test_an_agents_calls_share_one_plan_and_any_field_it_depends_on_makes_another() -> None:
    meta = {"MODEL": "scripted/x", "SCRIPT": ["a", "b"]}
    async with Provider(Settings.from_env({})) as provider:
        for i in range(20):  # twenty jobs of one agent, each its own conversation
            messages = [ChatMessage(role="user", content=f"job {i}")]
            reply = await provider.complete(
                CompleteRequest(
                    model="", messages=messages, metadata=dict(meta), call_index=i % 2, job_id=f"j{i}"
                )
            )
            assert reply.text == "ab"[i % 2] and reply.model == "scripted/x"
        assert provider.plans.built == 1
        others = [
            CompleteRequest(model="", messages=USER, metadata={**meta, "SCRIPT": ["c"]}),
            CompleteRequest(model="", messages=USER, metadata={**meta, "SCRIPT": ["c"], "TEMPERATURE": 0.5}),
            CompleteRequest(model="", messages=USER, metadata={**meta, "SCRIPT": ["c"]}, temperature=0.5),
            CompleteRequest(model="scripted/y", messages=USER, metadata={"SCRIPT": ["c"]}),
        ]
        assert [(await provider.complete(o)).text for o in others] == ["c"] * 4
        assert provider.plans.built == 5
        assert (await provider.complete(others[3])).model == "scripted/y" and provider.plans.built == 5


def _errors(model: str) -> float:
    return REGISTRY.get_sample_value("statek_llm_calls_total", {"model": model, "outcome": "error"}) or 0.0


async def test_a_request_that_cannot_be_planned_is_refused_every_time() -> None:
    before = _errors("scripted/x")
    async with Provider(Settings.from_env({})) as provider:
        for _ in range(3):
            with pytest.raises(BadRequestError) as err:
                await provider.complete(
                    CompleteRequest(
                        model="scripted/x", messages=USER, metadata={"SCRIPT": ["a"], "TEMPRATURE": 1}
                    )
                )
            assert err.value.field == "$.metadata.TEMPRATURE"
            with pytest.raises(BadRequestError) as err:
                await provider.complete(
                    CompleteRequest(model="scripted/x", messages=USER, metadata={"SCRIPT": [3]})
                )
            assert err.value.field == "$.metadata.SCRIPT[0]"
        assert len(provider.plans) == 1  # the bad script's route is kept; it is refused at each call
    assert _errors("scripted/x") == before + 3  # a bad script is an error of its model's calls


async def test_a_running_provider_keeps_its_heap_out_of_collections_until_it_stops(
    settings: Settings,
) -> None:
    assert gc.get_freeze_count() == 0  # no service runs in this process between tests
    thresholds = gc.get_threshold()
    async with (
        running_service(build, settings.replace(request_timeout=60.0), name=SERVICE_PROVIDER),
        AsyncStatekClient(settings=settings.replace(request_timeout=60.0)) as client,
    ):
        scripted = CompleteRequest(model="scripted/x", messages=USER, metadata={"SCRIPT": ["a"]})
        assert (await client.request(LLM_COMPLETE, scripted, CompleteReply)).text == "a"
        mock = CompleteRequest(model="openai/gpt-4o-mini", messages=USER, metadata={"MOCK_RESPONSE": "m"})
        assert (await client.request(LLM_COMPLETE, mock, CompleteReply, timeout=120)).text == "m"
        # litellm is loaded: what it and the service built to start is frozen, the rest is little
        assert gc.get_freeze_count() > 5 * len(gc.get_objects())
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])  # young collections rarer

        class Node:
            other: object = None

        node = Node()
        node.other = node  # garbage made while the service runs is still collected
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
    assert gc.get_freeze_count() == 0  # stopped: this process collects what the service left
    assert gc.get_threshold() == thresholds  # ...as often as it did before
