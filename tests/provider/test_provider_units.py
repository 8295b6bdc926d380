"""Provider building blocks without a server: routing, scripts, retry policy, limits, prices, redaction."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

import statek_bus.provider as provider_pkg
from statek_bus.provider import (
    Difficulty,
    ModelLimiter,
    PriceTable,
    RateLimiter,
    Redactor,
    RetriesExhausted,
    RetryPolicy,
    Transient,
    parse_retry_after,
    parse_script,
    retry_call,
    route,
    secret_env_names,
)
from statek_bus.provider.redaction import RedactingFilter, install_log_redaction
from statek_bus.provider.scripted import scripted_reply
from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.messages import ChatMessage, CompleteRequest


def req(model: str = "openai/gpt-4o-mini", **kw: Any) -> CompleteRequest:
    kw.setdefault("messages", [ChatMessage(role="user", content="hi")])
    return CompleteRequest(model=model, **kw)


def test_public_names_are_exported() -> None:
    import pkgutil

    public = {n for n in dir(provider_pkg) if not n.startswith("_")}
    # submodules appear as attributes once anything imports them: they are not exported names
    modules = {m.name for m in pkgutil.iter_modules(provider_pkg.__path__)} | {"annotations"}
    assert set(provider_pkg.__all__) == public - modules


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("difficulty", "expected"),
    [
        (None, "fake-mid"),
        ("L", "fake-low"),
        ("medium", "fake-mid"),
        ("h", "fake-high"),
        ("HIGH", "fake-high"),
    ],
)
def test_difficulty_mapping_picks_the_model(difficulty: str | None, expected: str) -> None:
    meta = {"DIFFICULTY": difficulty} if difficulty else {}
    r = route(req("L:openai/fake-low,M:openai/fake-mid,H:openai/fake-high", metadata=meta))
    assert r.model == f"openai/{expected}"


def test_grouped_labels_and_default_difficulty() -> None:
    r = route(req("LM:a/x, H:a/y", metadata={"DEFAULT_DIFFICULTY": "low"}))
    assert (r.model, r.difficulty) == ("a/x", Difficulty.LOW)
    assert route(req("LM:a/x,H:a/y", metadata={"DIFFICULTY": "H", "DEFAULT_DIFFICULTY": "L"})).model == "a/y"


@pytest.mark.parametrize(
    ("model", "fragment"),
    [("L:a,M:b", "missing H"), ("L:a,LM:b,H:c", "twice"), ("L:a,M:,H:c", "without a model"), ("  ", "empty")],
)
def test_bad_model_mappings_are_400_on_model(model: str, fragment: str) -> None:
    with pytest.raises(BadRequestError) as err:
        route(req(model))
    assert err.value.field == "$.model"
    assert fragment in err.value.message


def test_model_strings_with_colons_are_not_mappings() -> None:
    assert route(req("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0")).model.endswith("v1:0")
    assert route(req("ollama/llama3:8b")).model == "ollama/llama3:8b"


def test_metadata_model_and_provider() -> None:
    assert route(req("", metadata={"MODEL": "openai/gpt-4o-mini"})).model == "openai/gpt-4o-mini"
    assert (
        route(req("openai/gpt-5-mini", metadata={"provider": "OpenRouter"})).model
        == "openrouter/openai/gpt-5-mini"
    )
    assert route(req("openrouter/x/y", metadata={"PROVIDER": "openrouter"})).model == "openrouter/x/y"


@pytest.mark.parametrize("value", [-0.1, 1.5, "hot", True, float("nan")])
def test_temperature_outside_0_1_is_refused(value: Any) -> None:
    with pytest.raises(BadRequestError) as err:
        route(req(metadata={"TEMPERATURE": value}))
    assert err.value.field == "$.metadata.TEMPERATURE"


def test_temperature_from_request_or_metadata() -> None:
    assert route(req(metadata={"TEMPERATURE": "0.3"})).temperature == 0.3
    assert route(req(temperature=0.0, metadata={"TEMPERATURE": 1})).temperature == 0.0
    with pytest.raises(BadRequestError) as err:
        route(req(temperature=2.0))
    assert err.value.field == "$.temperature"


def test_unknown_metadata_key_is_named_with_a_hint() -> None:
    with pytest.raises(BadRequestError) as err:
        route(req(metadata={"TEMPRATURE": 0.5}))
    assert err.value.field == "$.metadata.TEMPRATURE"
    assert "did you mean TEMPERATURE" in err.value.message


def test_agent_keys_are_accepted_and_keys_are_case_insensitive() -> None:
    r = route(req(metadata={"chat_style": "MD_DIALOG", "EXTRA_RESOURCES": "(H:x)", "Temperature": 0.2}))
    assert r.temperature == 0.2
    with pytest.raises(BadRequestError, match="given twice"):
        route(req(metadata={"MODEL": "a/b", "model": "a/c"}))


def test_script_metadata_needs_a_scripted_model_and_vice_versa() -> None:
    with pytest.raises(BadRequestError) as err:
        route(req("openai/gpt-4o-mini", metadata={"SCRIPT": ["x"]}))
    assert err.value.field == "$.metadata.SCRIPT"
    with pytest.raises(BadRequestError, match="needs metadata SCRIPT"):
        route(req("scripted/x"))
    with pytest.raises(BadRequestError, match="not both"):
        route(req("scripted/x", metadata={"SCRIPT": [], "SCRIPT_FILE": "a.json"}))


def test_script_latency_is_seconds_for_the_scripted_model_only() -> None:
    assert (
        route(req("scripted/x", metadata={"SCRIPT": ["x"], "SCRIPT_LATENCY": "0.25"})).script_latency == 0.25
    )
    for bad in (-1, "soon", True, 601):
        with pytest.raises(BadRequestError) as err:
            route(req("scripted/x", metadata={"SCRIPT": ["x"], "SCRIPT_LATENCY": bad}))
        assert err.value.field == "$.metadata.SCRIPT_LATENCY"
    with pytest.raises(BadRequestError, match="needs a scripted/<name> model"):
        route(req("openai/gpt-4o-mini", metadata={"SCRIPT_LATENCY": 0.5}))


# --- scripted model ------------------------------------------------------------------------------


def test_script_validation_names_the_path() -> None:
    with pytest.raises(BadRequestError) as err:
        parse_script(["ok", {"text": "t", "tool_calls": [{"arguments": {}}]}], "$.metadata.SCRIPT")
    assert err.value.field is not None and err.value.field.startswith("$.metadata.SCRIPT[1].tool_calls[0]")
    with pytest.raises(BadRequestError) as err:
        parse_script([{"txt": "typo"}], "$.metadata.SCRIPT")
    assert "txt" in err.value.message


def test_scripted_reply_by_call_index_or_assistant_count() -> None:
    script = parse_script(["a", {"text": "b", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]}], "$.S")
    history = [ChatMessage(role="user", content="u"), ChatMessage(role="assistant", content="a")]
    reply = scripted_reply(req("scripted/t", messages=history), "scripted/t", script, field="$.S")
    assert (reply.text, reply.tool_calls[0].name, reply.tool_calls[0].arguments) == ("b", "f", {"x": 1})
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert (
        scripted_reply(
            req("scripted/t", messages=history, call_index=0), "scripted/t", script, field="$.S"
        ).text
        == "a"
    )
    with pytest.raises(BadRequestError) as err:
        scripted_reply(req("scripted/t", call_index=2), "scripted/t", script, field="$.S")
    assert err.value.details == {"index": 2, "length": 2}


# --- retry ---------------------------------------------------------------------------------------


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def _classify(exc: BaseException) -> Transient | None:
    if isinstance(exc, TimeoutError):
        return Transient("timeout")
    if isinstance(exc, LookupError):
        return Transient("429", retry_after=float(str(exc)))
    return None


async def test_retry_honours_retry_after_and_backs_off_with_jitter() -> None:
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    call = Flaky([LookupError("7"), TimeoutError(), TimeoutError()])
    policy = RetryPolicy(attempts=5, base=1.0, cap=3.0)
    assert await retry_call(call, policy, _classify, sleep=sleep, rand=lambda: 1.0) == "ok"
    assert call.calls == 4
    assert slept == [7.0, 2.0, 3.0]  # Retry-After as given; then min(cap, base * 2**n) at full jitter


async def test_retry_stops_on_permanent_errors_and_when_exhausted() -> None:
    async def sleep(d: float) -> None:
        pass

    call = Flaky([ValueError("bad")])
    with pytest.raises(ValueError):
        await retry_call(call, RetryPolicy(attempts=5), _classify, sleep=sleep)
    assert call.calls == 1
    call = Flaky([TimeoutError()] * 9)
    with pytest.raises(RetriesExhausted) as err:
        await retry_call(call, RetryPolicy(attempts=3), _classify, sleep=sleep)
    assert (call.calls, err.value.attempts) == (3, 3)
    call = Flaky([LookupError("3600")])
    with pytest.raises(RetriesExhausted, match="3600"):
        await retry_call(call, RetryPolicy(attempts=3), _classify, sleep=sleep)
    assert call.calls == 1


def test_backoff_is_bounded_and_parse_retry_after() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0)
    assert all(0 <= policy.backoff(n) <= 4.0 for n in range(100))
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after(None) is None


# --- limits --------------------------------------------------------------------------------------


def test_rate_limiter_spaces_starts_after_a_burst() -> None:
    now = [100.0]
    rl = RateLimiter(2.0, burst=2, clock=lambda: now[0])
    assert [rl.reserve() for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    now[0] += 10.0
    assert rl.reserve() == 0.0


async def test_model_limiter_never_exceeds_its_slots() -> None:
    limiter = ModelLimiter("m", 3, 0.0)
    seen: list[int] = []

    async def work() -> None:
        async with limiter.slot():
            seen.append(limiter.in_flight)
            await asyncio.sleep(0)

    await asyncio.gather(*(work() for _ in range(50)))
    assert max(seen) == 3 and limiter.peak_in_flight == 3
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


# --- pricing -------------------------------------------------------------------------------------

CSV = """PROVIDER,MODEL,MODEL_FAMILY,INPUT_PRICE_PER_M,INPUT_PRICE_PER_CACHED_M,OUTPUT_PRICE_PER_M
openai,gpt-4o-mini,,1.0,0.5,2.0
openrouter,gpt-5-mini,openai,2,,4
scripted,demo,,10,,20
broken,x,,cheap,,1
"""


def test_price_table_matches_litellm_model_strings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        table = PriceTable.parse(CSV, name="prices.csv")
    assert "prices.csv line 5 skipped" in caplog.text
    assert len(table) == 3
    p = table.lookup("openai/gpt-4o-mini")
    assert p is not None and p.cost(1_000_000, 1_000_000, cached_tokens=400_000) == pytest.approx(
        0.6 + 0.2 + 2.0
    )
    q = table.lookup("OpenRouter/openai/GPT-5-mini")
    assert q is not None and q.cost(1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(2.0)
    assert table.lookup("scripted/demo") is not None and table.lookup("openai/gpt-4o") is None


def test_price_table_from_a_directory_and_errors(tmp_path: Any) -> None:
    (tmp_path / "a.csv").write_text(CSV.splitlines()[0] + "\nopenai,gpt-4o,,1,,1\n")
    (tmp_path / "b.txt").write_text(CSV.splitlines()[0] + "\nanthropic,claude,,1,,1\n")
    assert PriceTable.load(tmp_path).models() == ["anthropic/claude", "openai/gpt-4o"]
    with pytest.raises(ValueError, match="does not exist"):
        PriceTable.load(tmp_path / "missing.csv")
    (tmp_path / "c.csv").write_text("PROVIDER,MODEL\nx,y\n")
    with pytest.raises(ValueError, match="INPUT_PRICE_PER_M"):
        PriceTable.load(tmp_path / "c.csv")


# --- redaction -----------------------------------------------------------------------------------


def test_redactor_replaces_env_secrets_bearer_tokens_and_sk_keys() -> None:
    env = {"OPENAI_API_KEY": "sk-test-SECRET123", "HOME": "/root", "HF_TOKEN": "hf_abcdefgh"}
    redact = Redactor(env)
    text = redact("key sk-test-SECRET123, hf_abcdefgh, Authorization: Bearer abc.def-123456, sk-other-999999")
    assert (
        "SECRET123" not in text
        and "hf_abcdefgh" not in text
        and "abc.def" not in text
        and "999999" not in text
    )
    assert "[redacted OPENAI_API_KEY]" in text
    assert secret_env_names(env) == ["HF_TOKEN", "OPENAI_API_KEY"]


def test_redacting_filter_cleans_messages_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "got %s", ("sk-test-SECRET123",), None)
    try:
        raise RuntimeError("boom sk-test-SECRET123")
    except RuntimeError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    RedactingFilter(Redactor({"OPENAI_API_KEY": "sk-test-SECRET123"})).filter(record)
    assert "SECRET123" not in record.getMessage() and "SECRET123" not in (record.exc_text or "")
    assert "boom" in (record.exc_text or "")


def test_log_redaction_covers_loggers_by_package_prefix_even_ones_created_later() -> None:
    # A module that moves, or one added later, logs under `statek_bus.` and is still redacted.
    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    saved = logging.getLogRecordFactory()
    try:
        install_log_redaction(redactor=Redactor({"OPENAI_API_KEY": "sk-test-SECRET123"}))
        late = logging.getLogger("statek_bus.some_room.module_added_later")
        late.propagate = False
        late.addHandler(Capture())
        late.error("calling with %s", "sk-test-SECRET123")
        unrelated = logging.getLogger("someone_else")
        unrelated.propagate = False
        unrelated.addHandler(Capture())
        unrelated.error("plain sk-test-SECRET123")
    finally:
        logging.setLogRecordFactory(saved)
    assert "SECRET123" not in seen[0].getMessage() and "[redacted" in seen[0].getMessage()
    assert "SECRET123" in seen[1].getMessage()  # only the covered prefixes are rewritten


def test_provider_keys_load_from_a_mounted_secret_directory(tmp_path: Path) -> None:
    from statek_bus.provider.keys import load_key_files

    (tmp_path / "OPENAI_API_KEY").write_text("sk-test-FROMFILE123\n")
    (tmp_path / "..data").mkdir()  # what a Kubernetes Secret volume also holds
    (tmp_path / ".hidden").write_text("x")
    env: dict[str, str] = {}
    assert load_key_files(str(tmp_path), env) == ["OPENAI_API_KEY"]
    assert env == {"OPENAI_API_KEY": "sk-test-FROMFILE123"}
    with pytest.raises(FileNotFoundError, match="STATEK_LLM_KEYS_DIR"):
        load_key_files(str(tmp_path / "absent"), env)
