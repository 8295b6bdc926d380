"""The blocking facades mirror the async ones: same public methods, same parameters."""

from __future__ import annotations

import inspect

import pytest

from statek_bus.client.blocking import BlockingJobs, BlockingStates, BlockingTaskState
from statek_bus.client.jobs import AsyncJobs
from statek_bus.client.states import AsyncStates, TaskState


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in vars(cls).items()
        if not name.startswith("_") and callable(fn)
    }


@pytest.mark.parametrize(
    ("blocking", "aio"),
    [(BlockingJobs, AsyncJobs), (BlockingStates, AsyncStates), (BlockingTaskState, TaskState)],
)
def test_blocking_facade_has_every_async_method_with_the_same_parameters(blocking: type, aio: type) -> None:
    want = {n: list(s.parameters.values()) for n, s in _public(aio).items()}
    have = {n: list(s.parameters.values()) for n, s in _public(blocking).items()}
    assert sorted(have) == sorted(want)
    for name, params in want.items():
        assert [(p.name, p.kind, p.default) for p in have[name]] == [
            (p.name, p.kind, p.default) for p in params
        ], name
