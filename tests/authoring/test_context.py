"""STATEK's context helpers in a test scope (``statek_context``), without an executor."""

from __future__ import annotations

import pytest

from statek_bus import (
    find_locals,
    get_current_agent,
    get_current_agent_name,
    get_current_job,
    perm_ctx_get,
    perm_ctx_set,
    perm_ctx_set_unique,
    statek_context,
    statek_ctx_get,
    statek_ctx_set,
)
from statek_bus.authoring.agents import Agent
from statek_bus.authoring.tools import JobContext
from statek_bus.wire.limits import MAX_PERM_CONTEXT_BYTES


def test_outside_a_step_the_helpers_refuse_and_defaults_apply() -> None:
    with pytest.raises(RuntimeError):
        get_current_job()
    with pytest.raises(RuntimeError):
        statek_ctx_get("job")
    assert statek_ctx_get("job", None) is None
    with pytest.raises(TypeError):
        statek_ctx_get()
    with pytest.raises(RuntimeError):
        perm_ctx_set(a=1)


def test_statek_context_binds_a_job_and_an_agent() -> None:
    agent = Agent("helper", "prompt")
    with statek_context("job-7", agent) as ctx:
        assert get_current_job() is ctx and ctx.job_id == "job-7"
        assert get_current_agent() is agent and get_current_agent_name() == "helper"
        assert statek_ctx_get("job") is ctx
        statek_ctx_set(trace="abc")
        assert statek_ctx_get("trace") == "abc"
        with pytest.raises(KeyError):
            statek_ctx_get("nothing")
        with pytest.raises(ValueError, match="job"):
            statek_ctx_set(job=None)
    with pytest.raises(RuntimeError):
        get_current_job()


def test_the_persistent_context_is_data_with_unique_names_and_a_bound() -> None:
    with statek_context() as ctx:
        assert perm_ctx_set_unique("last_example_id", 3) == "last_example_id"
        assert perm_ctx_set_unique("last_example_id", 4) == "last_example_id_1"
        assert (perm_ctx_get("last_example_id"), perm_ctx_get("last_example_id_1")) == (3, 4)
        assert perm_ctx_get("missing", "dflt") == "dflt"
        with pytest.raises(KeyError):
            perm_ctx_get("missing")
        with pytest.raises(TypeError, match="perm_ctx"):
            perm_ctx_set(fn=lambda: 1)
        with pytest.raises(ValueError, match="limit"):
            perm_ctx_set(big="x" * MAX_PERM_CONTEXT_BYTES)
        assert ctx.extras["perm"] == {"last_example_id": 3, "last_example_id_1": 4}


def test_find_locals_searches_the_workspace_and_the_persistent_context() -> None:
    job = JobContext(job_id="j", agent="a", params={}, namespace={"n": 1, "s": "x", "_hidden": 2})
    with statek_context(job):
        perm_ctx_set(k=5)
        assert find_locals(int) == {"n": 1, "k": 5}
        assert find_locals(int, ext_scan=False) == {"n": 1}
        assert find_locals(var_name="s") == {"s": "x"}
        assert find_locals(str, var_name="n") == {}
