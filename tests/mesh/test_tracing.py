"""Traces: a job submitted with a W3C ``traceparent`` is one trace, from the submit through every
step to the provider's ``statek.llm.complete``; with or without OpenTelemetry installed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import ServiceProcess
from statek_bus.wire.messages import Job, decode
from statek_bus.wire.subjects import JOBS_SUBMIT, TRACEPARENT_HEADER
from tests.agents_fixture import AGENTS_SPEC, services, wait_done

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans (an SDK tracer provider with an in-memory exporter, set once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def _submit_traced(nc: Client, body: dict[str, object]) -> str:
    """Submit as any NATS client would (``nats req -H traceparent:...``), the job's id."""
    reply = await nc.request(
        JOBS_SUBMIT, json.dumps(body).encode(), timeout=10, headers={TRACEPARENT_HEADER: TRACEPARENT}
    )
    return decode(reply.data, Job).id


async def test_one_trace_runs_from_the_submit_through_each_step_to_the_provider(
    settings: Settings, nc: Client, spans: InMemorySpanExporter
) -> None:
    js = nc.jetstream()
    async with services(settings, "provider", "submission", "executor"):
        job_id = await _submit_traced(nc, {"agent": "t_basic", "shared_vars": {"event": "e"}})
        assert (await wait_done(js, job_id)).exit_status == "ok"
    ours = [
        s
        for s in spans.get_finished_spans()
        if s.context is not None and f"{s.context.trace_id:032x}" == TRACE_ID
    ]
    kinds = {(s.name, s.kind.name) for s in ours}
    assert ("statek.jobs.submit", "SERVER") in kinds  # the caller's traceparent was honoured
    steps = [
        s for s in ours if s.name == "statek.step" and (s.attributes or {}).get("statek.job_id") == job_id
    ]
    assert sorted(int((s.attributes or {})["statek.step"]) for s in steps) == [0, 1]  # type: ignore[arg-type]
    provider_side = [s for s in ours if (s.name, s.kind.name) == ("statek.llm.complete", "SERVER")]
    assert len(provider_side) == 2  # both LLM calls of the job reached the provider in its trace
    step_ids = {s.context.span_id for s in steps if s.context is not None}
    calls = [s for s in ours if (s.name, s.kind.name) == ("statek.llm.complete", "CLIENT")]
    assert len(calls) == 2 and all(c.parent is not None and c.parent.span_id in step_ids for c in calls)


@pytest.mark.parametrize("otel", [True, False], ids=["otel", "without-otel"])
async def test_every_log_line_of_a_traced_job_names_the_callers_trace(
    settings: Settings, nc: Client, tmp_path: Path, otel: bool
) -> None:
    env = {"STATEK_LOG_FORMAT": "json"}
    if not otel:  # as if the [otel] extra were not installed: importing opentelemetry fails
        blocked = tmp_path / "no-otel" / "opentelemetry"
        blocked.mkdir(parents=True)
        (blocked / "__init__.py").write_text('raise ImportError("the [otel] extra is not installed")\n')
        env["PYTHONPATH"] = str(blocked.parent)
    log_path = tmp_path / "executor.log"
    proc = ServiceProcess(
        "executor", settings.nats_url, args=["--agents", AGENTS_SPEC], env=env, log_path=log_path
    )
    js = nc.jetstream()
    async with services(settings, "provider", "submission"):
        await proc.start()
        try:
            job_id = await _submit_traced(nc, {"agent": "t_basic"})  # no `event`: its warmup fails
            record = await wait_done(js, job_id)
        finally:
            await proc.stop()
    assert record.error is not None
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    about_job = [x for x in lines if x.get("job_id") == job_id]
    assert about_job and all(x.get("trace_id") == TRACE_ID for x in about_job), about_job
    assert any(x["level"] == "WARNING" and "ended with an error" in x["message"] for x in about_job)
