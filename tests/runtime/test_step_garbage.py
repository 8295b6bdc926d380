"""A step that runs in the executor's own process (a data-tier step, a trusted warmup block)
leaves nothing for Python's cyclic garbage collector: its namespace, builtins, clock and session
are freed by reference counting as soon as its snapshot is taken. Each such step used to leave a
few hundred objects in reference cycles, and the collector's passes over them were a sixth of the
executor's CPU under load."""

from __future__ import annotations

import gc
import types
from typing import Any

import pytest

from statek_bus.authoring.futures import REGISTRY, StepRuntime
from statek_bus.authoring.tools import SYSTEM_TOOLS, JobContext
from statek_bus.runtime.coderunner import ExecRequest, ExecResult, ExecUnit, SandboxSession, execute
from statek_bus.sandbox.restricted import MODEL_MODULE, SandboxPolicy

_CODE = """
import json
def double(x):
    return 2 * x
total = 0
for i in range(5):
    total += double(i)
squares = [i * i for i in range(4)]
print(json.dumps({"total": total}))
"""


def _step(code: str, ws: Any = None, *, restricted: bool = True) -> ExecResult:
    env = StepRuntime("job1", None, None, None)
    ctx = JobContext(job_id="job1", agent="a", params={"n": 2}, namespace={}, extras={"env": env})
    policy = SandboxPolicy() if restricted else SandboxPolicy(restricted=False)
    session = SandboxSession(
        policy=policy,
        trusted_policy=policy,
        tools={t.name: t for t in SYSTEM_TOOLS},
        job=ctx,
        workspace=ws,
        shared_vars={"n": 2},
        registry=REGISTRY,
    )
    return execute(
        ExecRequest(session=session, units=[ExecUnit(kind="code", code=code, site="0.0")], deadline_seconds=5)
    )


def _ours(objects: list[Any]) -> list[str]:
    """The step's objects among ``objects``: instances of our types, functions of ours or of the
    step's code (the standard library's recursive helpers, such as ``ast.dump``'s, leave their own)."""
    names = []
    for o in objects:
        kind = type(o)
        if kind.__module__.startswith("statek_bus"):
            names.append(f"{kind.__module__}.{kind.__qualname__}")
        elif isinstance(o, types.FunctionType) and str(o.__module__).startswith(("statek_bus", MODEL_MODULE)):
            names.append(f"function {o.__module__}.{o.__qualname__}")
    return names


@pytest.mark.parametrize("restricted", [True, False], ids=["model code", "trusted warmup"])
def test_a_step_run_in_process_leaves_no_cycles_behind(restricted: bool) -> None:
    gc.collect()
    gc.disable()  # the cyclic collector must not free the step's cycles before the count below
    try:
        left = _two_steps(restricted)
    finally:
        gc.enable()
    assert left == []


def _two_steps(restricted: bool) -> list[str]:
    """Run a step and a step that restores its workspace; what of theirs only the collector frees."""
    first = _step(_CODE, restricted=restricted)
    assert [line for u in first.units for line in u.console] == ['{"total": 20}']
    second = _step("print(total, double(n), squares)", first.workspace, restricted=restricted)
    assert [line for u in second.units for line in u.console] == ["20 4 [0,1,4,9]"]
    del first, second
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    left = _ours(gc.garbage)
    gc.garbage.clear()
    return left
