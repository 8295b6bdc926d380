"""Property-based requests to every endpoint of the real service processes, generated from schemas/.

Each endpoint is found through ``$SRV.INFO`` (its ``request`` metadata names the schema), so a new
endpoint is fuzzed without touching this file. Bodies start from the endpoint's JSON Schema and
are then, often, made wrong: a field of the wrong type, a missing or unknown field, a string far
over its ``maxLength``, nesting far too deep, a body that is not an object or not JSON. For every
request: no 5xx and no timeout; every error is a JSON body with its code (a 400 names the field as
a JSON path); a 4xx wrote nothing (the jobs, states and work stream sequences are unchanged); and
the same instance still answers ``$SRV.PING``. The example count is bounded to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js import JetStreamContext

from statek_bus.mesh.connection import connect
from statek_bus.mesh.discovery import info
from statek_bus.mesh.settings import Settings
from statek_bus.wire.limits import MAX_ERROR_MESSAGE, MAX_ERROR_TEXT, MAX_JSON_DEPTH
from statek_bus.wire.subjects import (
    AGENTS_BUCKET,
    ERROR_CODE_HEADER,
    JOBS_BUCKET,
    SERVICE_EXECUTOR,
    SERVICE_PROVIDER,
    SERVICE_STATE,
    SERVICE_SUBMISSION,
    STATES_BUCKET,
    WORK_STREAM,
)
from tests.support.processes import Mesh, service_processes

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = int(os.environ.get("STATEK_FUZZ_EXAMPLES", "12"))
"""Requests per endpoint (x 20 endpoints). The suite keeps it small; for a deeper run,
``STATEK_FUZZ_EXAMPLES=200 STATEK_FUZZ_SEED=random pytest tests/services/test_fuzz.py``."""
DERANDOMIZE = os.environ.get("STATEK_FUZZ_SEED", "fixed") != "random"
"""The suite replays the same examples every run; ``STATEK_FUZZ_SEED=random`` explores."""
_STREAMS = (f"KV_{JOBS_BUCKET}", f"KV_{STATES_BUCKET}", WORK_STREAM)
_AGENT = "fuzz_agent"  # registered, served by no executor: a valid submit creates a job that stays READY

# --- strategies from a JSON Schema ------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)


_DEEP = "__deep__"  # placeholder for nesting spliced into the encoded text (json.dumps would recurse)


def _deep(depth: int) -> str:
    return "".join("[" if i % 2 else '{"k":' for i in range(depth)) + "0" + "".join(
        "]" if i % 2 else "}" for i in reversed(range(depth))
    )


def _strings(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    cap = node.get("maxLength", 40)
    normal = st.text(max_size=min(cap, 24)) | st.sampled_from(
        ["", " ", _AGENT, "t_basic", "EN-US", "scripted/x"]
    )
    wrong = st.sampled_from(["." * (cap + 1), "中" * (cap + 1), "x" * 5000, "\r\n", "a\x00b"])
    return st.one_of(normal, normal, wrong)


def from_schema(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that mostly fit ``node``."""
    if "$ref" in node:
        return st.deferred(lambda: from_schema(defs[node["$ref"].rsplit("/", 1)[1]], defs))
    if "anyOf" in node:
        return st.one_of([from_schema(n, defs) for n in node["anyOf"]])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "string":
        return _strings(node)
    if kind == "integer":
        return st.integers(
            min_value=node.get("minimum", -(2**64)), max_value=node.get("maximum", 2**64)
        ) | st.sampled_from([0, 1, -1, 10**6])
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(node.get("items", {}), defs), max_size=3)
    if kind == "object" and "properties" in node:
        return _objects(node, defs)
    if kind == "object":
        return st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["event", "x", "$t"]), json_values, max_size=3
        )
    return json_values


def _objects(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props = node["properties"]
    required = set(node.get("required", []))
    return st.fixed_dictionaries(
        {k: from_schema(v, defs) for k, v in props.items() if k in required},
        optional={k: from_schema(v, defs) for k, v in props.items() if k not in required},
    )


@st.composite
def bodies(draw: st.DrawFn, schema: dict[str, Any]) -> bytes:
    """A request body: the schema's shape, then (often) one thing made wrong."""
    defs = schema["$defs"]
    root = defs[schema["$ref"].rsplit("/", 1)[1]]
    value: dict[str, Any] = draw(_objects(root, defs))
    how = draw(st.sampled_from(["valid", "valid", "type", "drop", "unknown", "deep", "long", "raw"]))
    names = sorted(root["properties"])
    if how == "type" and names:
        value[draw(st.sampled_from(names))] = draw(json_values)
    elif how == "drop" and value:
        value.pop(draw(st.sampled_from(sorted(value))))
    elif how == "unknown":
        value[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in root["properties"]))] = 1
    elif how == "deep" and names:
        value[draw(st.sampled_from(names))] = _DEEP
        depth = draw(st.sampled_from([MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 200, 999]))
        return json.dumps(value).replace(f'"{_DEEP}"', _deep(depth)).encode()
    elif how == "long" and names:
        value[draw(st.sampled_from(names))] = "z" * draw(st.sampled_from([300, 5000, 200_000, 600_000]))
    elif how == "raw":
        return draw(
            st.sampled_from([b"", b"[]", b"null", b"{", b'"x"', b"\xff\xfe", b"[" * 5000, b"{}" * 3])
            | st.binary(max_size=40)
        )
    return json.dumps(value).encode()


# --- the run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    kinds = ["submission", "state", "provider", "executor"]
    with service_processes(tmp_path_factory.mktemp("nats"), kinds) as m:
        yield m


class _Bus:
    """One connection on a private event loop, driven from the (synchronous) hypothesis test."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc: Client = self.run(connect(Settings.from_env({}, nats_url=url), name="statek-fuzz"))
        self.js: JetStreamContext = self.nc.jetstream()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.close()


@pytest.fixture(scope="module")
def bus(mesh: Mesh) -> Iterator[_Bus]:
    b = _Bus(mesh.url)
    b.run(_register_agent(b.js))
    yield b
    b.close()


async def _register_agent(js: JetStreamContext) -> None:
    kv = await js.key_value(AGENTS_BUCKET)
    await kv.put(_AGENT, json.dumps({"role": _AGENT, "description": "fuzzed, never run"}).encode())


async def _sequences(js: JetStreamContext) -> dict[str, int]:
    return {s: (await js.stream_info(s)).state.last_seq for s in _STREAMS}


async def _settled(js: JetStreamContext) -> dict[str, int]:
    """Sequences once background writes of an accepted request (marker purges) are done."""
    last = await _sequences(js)
    for _ in range(100):
        await asyncio.sleep(0.05)
        now = await _sequences(js)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the streams never settled: {last}")


async def _one(
    bus: _Bus, mesh: Mesh, service: str, subject: str, body: bytes, before: dict[str, int]
) -> bool:
    """Send one request and check every property; returns whether it was accepted (2xx)."""
    msg = await bus.nc.request(subject, body, timeout=15)  # a timeout fails the example
    headers = msg.headers or {}
    accepted = ERROR_CODE_HEADER not in headers
    if not accepted:
        code = int(headers[ERROR_CODE_HEADER])
        err = json.loads(msg.data)["error"]
        assert err["code"] == code and isinstance(err["message"], str), err
        assert code < 500, f"{subject} {body[:200]!r} -> {err}"
        assert len(err["message"]) <= MAX_ERROR_MESSAGE
        assert sum(len(k) + len(v) for k, v in headers.items()) < 2 * MAX_ERROR_TEXT
        if code == 400:
            assert isinstance(err.get("field"), str) and err["field"].startswith("$"), err
        assert await _sequences(bus.js) == before, f"{subject} {body[:200]!r} -> {code} but wrote"
    pong = await bus.nc.request(f"$SRV.PING.{service}.{mesh.ids[service]}", b"", timeout=5)
    assert json.loads(pong.data)["id"] == mesh.ids[service]
    return accepted


def _fuzz_endpoint(bus: _Bus, mesh: Mesh, service: str, ep: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / f"{ep['metadata']['request']}.json").read_text())
    baseline = [bus.run(_settled(bus.js))]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies(schema))
    def fuzz(body: bytes) -> None:
        if bus.run(_one(bus, mesh, service, ep["subject"], body, baseline[0])):
            # accepted: it may write (and purge a marker in the background), so a new baseline
            baseline[0] = bus.run(_settled(bus.js))

    fuzz()


@pytest.mark.parametrize("service", [SERVICE_SUBMISSION, SERVICE_STATE, SERVICE_PROVIDER, SERVICE_EXECUTOR])
def test_every_endpoint_survives_generated_bad_input(mesh: Mesh, bus: _Bus, service: str) -> None:
    (described,) = bus.run(info(bus.nc, service, wait=1.0))
    assert described["endpoints"]
    for ep in described["endpoints"]:
        _fuzz_endpoint(bus, mesh, service, ep)
