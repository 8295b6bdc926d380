"""Settings from the environment, and the id escaping that makes key layouts injection-proof."""

from __future__ import annotations

import pytest

from statek_bus.mesh.settings import Settings, SettingsError
from statek_bus.wire.subjects import job_events_subject, job_key, token, untoken


def test_settings_read_typed_values_from_environment() -> None:
    s = Settings.from_env(
        {
            "NATS_URL": "nats://h:1",
            "STATEK_MAX_CONCURRENCY": "7",
            "STATEK_RESTRICTED_MODE": "false",
            "STATEK_STEP_TIMEOUT": "2.5",
        }
    )
    assert (s.nats_url, s.max_concurrency, s.restricted_mode, s.step_timeout) == ("nats://h:1", 7, False, 2.5)
    assert Settings.from_env({}).nats_url == "nats://127.0.0.1:4222"


def test_malformed_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="STATEK_MAX_CONCURRENCY='lots' is not a valid int"):
        Settings.from_env({"STATEK_MAX_CONCURRENCY": "lots"})


IDS = ["user@example.com/ticket 42", "zażółć", "a.b", "a*", ">", "a b", "", "=", "=3D", "x.>", "job-1_A"]


@pytest.mark.parametrize("value", IDS)
def test_token_is_one_safe_token_and_reversible(value: str) -> None:
    t = token(value)
    assert t and all(c.isalnum() or c in "_-=" for c in t) and t.isascii()
    assert untoken(t) == value


def test_token_is_injective() -> None:
    assert len({token(v) for v in IDS}) == len(IDS)


def test_keys_and_subjects_use_tokens() -> None:
    assert job_key("a.b") == "job.a=2Eb"
    assert job_events_subject("x y") == "statek.events.jobs.x=20y"
