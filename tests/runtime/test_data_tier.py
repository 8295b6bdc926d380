"""The data tier through real runners and a real executor: plain-data model code runs in the executor
with the worker process's very outcome (console, errors, exit value, workspace); hostile code makes
the tier give up and the worker's outcome is the job's, while the executor stays responsive and
small; the bench's own code is seen to run in the tier (the executor's status and metric)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import resource
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client

from statek_bus.mesh.service import running_service
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import SERVICE_KINDS
from tests.agents_fixture import console, submit, wait_done
from tests.sandbox_agents import add
from tests.tier_agents import AGENTS_SPEC, HOSTILE


def _request(code: str, *, shared: dict[str, Any] | None = None, workspace: Any = None, units: int = 1) -> Any:
    from statek_bus.authoring.futures import REGISTRY, StepRuntime
    from statek_bus.authoring.tools import SYSTEM_TOOLS, JobContext
    from statek_bus.runtime.coderunner import ExecRequest, ExecUnit, SandboxSession
    from statek_bus.sandbox.restricted import SandboxPolicy

    env = StepRuntime("job1", None, None, None)
    ctx = JobContext(job_id="job1", agent="a", params={}, namespace={}, extras={"env": env})
    session = SandboxSession(
        policy=SandboxPolicy(),
        trusted_policy=SandboxPolicy(),
        tools={t.name: t for t in (*SYSTEM_TOOLS, add)},
        job=ctx,
        workspace=workspace,
        shared_vars=dict(shared or {}),
        registry=REGISTRY,
    )
    blocks = code.split("\n---\n")
    assert len(blocks) == units
    run = [ExecUnit(kind="code", code=c, site=f"0.{i}") for i, c in enumerate(blocks)]
    return ExecRequest(session=session, units=run, deadline_seconds=10.0)


def _observed(result: Any) -> Any:
    from statek_bus.runtime.workspace import decode_workspace, encode_workspace

    units = [(u.console, u.error, u.sandbox, u.timeout, u.suspended) for u in result.units]
    stored = None if result.workspace is None else decode_workspace(encode_workspace(result.workspace))
    return units, result.exited, result.exit_value, stored, result.dropped, result.notes


@pytest.fixture
async def runners() -> AsyncIterator[tuple[Any, Any]]:
    """A process runner, and a data tier in front of the same process runner."""
    from statek_bus.runtime.coderunner import ThreadCodeRunner
    from statek_bus.runtime.procrunner import ProcessCodeRunner
    from statek_bus.runtime.tierrunner import DataTier

    process = ProcessCodeRunner(workers=2)
    threads = ThreadCodeRunner(threads=2)
    try:
        yield process, DataTier(process, threads)
    finally:
        await threads.aclose()
        await process.aclose()


PARITY = {
    "bench": ("result = n * 2\nexit(str(result))", {"n": 21}),
    "echo and print": ("x = [1, 2.5, None, 'a']\nx\nprint(x, len(x), sep=' | ', end='!')\n(1,)\n{'k': (1, 2)}", {}),
    "model error": ("a = 1\nprint('before')\nb = a / 0\nprint('never')", {}),
    "type error": ("x = 'a' + 1", {}),
    "key error": ("d = {'a': 1}\nd['b']", {}),
    "index error": ("x = [1][5]", {}),
    "value error": ("x = int('nope')", {}),
    "exit with data": ("exit({'total': sum([1, 2, 3]), 'pair': (1, 2), 7: [True]})", {}),
    "bare exit": ("exit()\nprint('still here')", {}),
    "identity with None": ("x = None\ny = [1]\nprint(x is None, y is not None, x is not False)", {}),
    "exit too big": ("exit('x' * 70000)", {}),
    "f-strings": ("v = 3.14159\ns = f'{v:.2f}|{v!r}|{42:>6}|{255:x}|{1234567:,}'\nprint(s)", {}),
    "tuple targets": ("a, b = divmod(17, 5)\n[c, d] = [b, a]\nif c > d:\n    w = 'c'\nelse:\n    w = 'd'\nw", {}),
    "augmented": ("t = 1\nt += 2\nt **= 3\ns = 'ab'\ns *= 2\nu = (1,)\nu += (2,)\nprint(t, s, u)", {}),
    "iterators": ("e = list(enumerate('ab', 1))\nz = list(zip('ab', range(2)))\nprint(e, z, sorted(z, reverse=True))", {}),
    "shared vars": ("total = sum(items) + bonus\nlabel = name + '!'\nprint(total, label)", {"items": [1, 2, 3], "bonus": 4, "name": "x"}),
    "non-str keys": ("d = {1: 'a', (2, 3): 'b'}\nprint(d)", {}),
    "two units": ("a = 1\nprint(a)\n---\nb = a + 1\nexit(str(b))", {}),
    "huge float": ("x = 1e308 * 10\ny = -x\nprint(x, y, x - x)", {}),
}


@pytest.mark.parametrize("name", list(PARITY))
async def test_a_tier_step_gives_exactly_what_the_worker_process_gives(name: str, runners: tuple[Any, Any]) -> None:
    process, tier = runners
    code, shared = PARITY[name]
    units = code.count("\n---\n") + 1
    expected = await process.run(_request(code, shared=shared, units=units))
    got = await tier.run(_request(code, shared=shared, units=units))
    assert tier.counts["tier"] == 1, tier.counts  # it ran in the tier, not in a worker
    assert _observed(got) == _observed(expected)


async def test_the_next_step_restores_a_tier_steps_workspace_as_a_worker_would(runners: tuple[Any, Any]) -> None:
    process, tier = runners
    first = await tier.run(_request("a = [1, (2, 3)]\nb = {'k': [4]}\nc = 'text'", shared={"n": 1}))
    code = "print(a, b, c, n)\nd = a + [n]"
    expected = await process.run(_request(code, workspace=first.workspace))
    got = await tier.run(_request(code, workspace=first.workspace))
    assert tier.counts["tier"] == 2, tier.counts
    assert _observed(got) == _observed(expected)
    assert got.units[0].console == ["[1,(2,3)] {\"k\":[4]} text 1"], got.units


async def test_imports_and_values_that_are_not_data_stay_as_stored_when_the_step_never_names_them(
    runners: tuple[Any, Any],
) -> None:
    # a warmup that imports modules and keeps a date leaves a workspace the tier cannot hold whole;
    # a step that uses only the plain variables still runs in the tier, the rest kept as stored
    process, tier = runners
    first = await process.run(
        _request("import time\nimport datetime\nstamp = datetime.date(2026, 12, 2)\nn = 4")
    )
    assert first.workspace.definitions and "stamp" in first.workspace.values
    code = "m = n * 2\nexit(str(m))"
    expected = await process.run(_request(code, workspace=first.workspace))
    got = await tier.run(_request(code, workspace=first.workspace))
    assert tier.counts["tier"] == 1, tier.counts
    assert _observed(got) == _observed(expected)
    then = "print(stamp, time.time() > 0)"  # the next step in a worker sees all of it again
    assert (await process.run(_request(then, workspace=got.workspace))).units[0].console == ['date("2026-12-02") True']


@pytest.mark.parametrize("code", ["print(stamp)", "stamp = 1\nexit(str(n))", "time = n"])
async def test_a_step_naming_what_the_tier_cannot_hold_runs_in_a_worker(code: str, runners: tuple[Any, Any]) -> None:
    process, tier = runners
    first = await process.run(_request("import time\nimport datetime\nstamp = datetime.date(2026, 12, 2)\nn = 4"))
    expected = await process.run(_request(code, workspace=first.workspace))
    got = await tier.run(_request(code, workspace=first.workspace))
    assert tier.counts["tier"] == 0, tier.counts
    assert _observed(got) == _observed(expected)


async def test_a_variable_the_step_never_names_is_stored_again_as_it_was(runners: tuple[Any, Any]) -> None:
    """Never decoded: a set, a dict with other keys, a date stay in their stored form, in their place."""
    process, tier = runners
    first = await process.run(
        _request("import datetime\na = 1\nkeys = {3, 1, 2}\nodd = {(1, 2): 'x'}\nday = datetime.date(2026, 12, 3)\nn = 4")
    )
    code = "n = n + 1\nm = a * 2\nprint(m)"
    expected = await process.run(_request(code, workspace=first.workspace))
    got = await tier.run(_request(code, workspace=first.workspace))
    assert tier.counts["tier"] == 1, tier.counts
    assert _observed(got) == _observed(expected)
    assert list(got.workspace.values) == list(expected.workspace.values)  # the worker's order of names


# stored values a worker step made, each far over what the tier decodes and stores again cheaply
LARGE = {
    "numbers": "big = [0] * 2_000_000",
    "a set": "big = set(range(300_000))",
    # 99,000 lists once stored (one list 99,000 times in the worker): ~3.5 us each for the tier to
    # decode, check, measure and store again, which took 2.3 s a step when priced as one element each
    "many small lists": "big = [[]] * 99_000",
    "many small dicts": "big = [{}] * 99_000",
}


@pytest.mark.parametrize("name", list(LARGE))
@pytest.mark.parametrize("code", ["n = n + 1", "print(len(big))", "n = 1 if big else 0"])
async def test_a_large_stored_workspace_is_the_workers_to_restore(
    name: str, code: str, runners: tuple[Any, Any]
) -> None:
    """Weighed in its stored form by a walk that stops at the tier's limits, named or not."""
    process, tier = runners
    first = await process.run(_request(f"a = 1\n{LARGE[name]}\nn = 4"))
    assert "big" in first.workspace.values, first.units
    expected = await process.run(_request(code, workspace=first.workspace))
    got = await tier.run(_request(code, workspace=first.workspace))
    assert tier.counts["aborted"] == 1, tier.counts
    assert _observed(got) == _observed(expected)


async def test_a_stored_value_the_worker_cannot_restore_is_the_workers_to_report(
    runners: tuple[Any, Any],
) -> None:
    """Its class gone from the agent (a new release): the worker drops it with a warning."""
    from statek_bus.runtime.workspace import WorkspaceData

    process, tier = runners
    for gone in ({"$t": "obj", "cls": "nope:Gone", "v": {}}, {"$t": "enum", "cls": "nope:Gone", "v": 1}):
        stored = WorkspaceData(values={"x": [gone], "n": 1})
        expected = await process.run(_request("n = n + 1", workspace=stored))
        got = await tier.run(_request("n = n + 1", workspace=stored))
        assert "x" not in expected.workspace.values and expected.notes, expected.notes
        assert _observed(got) == _observed(expected)
    assert tier.counts["tier"] == 0, tier.counts


async def test_a_dict_subclass_cannot_forge_what_the_next_step_decodes(runners: tuple[Any, Any]) -> None:
    """Its own ``items()`` said it was a tuple of 790,000 characters (stored as one string, so the
    tier's walk weighed it as a text): a dict's stored form is its real entries."""
    process, tier = runners
    forge = "class D(dict):\n    def items(self):\n        return [('$t', 'tuple'), ('v', 'ab')]\nt = D(k=1)\ndel D"
    first = await process.run(_request(forge))
    from statek_bus.runtime.workspace import stored_value

    assert stored_value(first.workspace.values["t"]) == {"k": 1}, first.workspace.values
    expected = await process.run(_request("print(t)", workspace=first.workspace))
    got = await tier.run(_request("print(t)", workspace=first.workspace))
    assert tier.counts["tier"] == 1, tier.counts
    assert _observed(got) == _observed(expected)
    assert got.units[0].console == ['{"k":1}'], got.units

OUTSIDE = {
    "a tool": "print(add(1, 2))",
    "an import": "import math\nprint(math.pi)",
    "a loop": "t = 0\nfor i in range(3):\n    t += i\nprint(t)",
    "a definition": "def f(x):\n    return x\nprint(f(2))",
    "a refused name": "print(eval('1'))",
}


@pytest.mark.parametrize("name", list(OUTSIDE))
async def test_code_outside_the_subset_runs_in_a_worker_as_before(name: str, runners: tuple[Any, Any]) -> None:
    process, tier = runners
    expected = await process.run(_request(OUTSIDE[name]))
    got = await tier.run(_request(OUTSIDE[name]))
    assert tier.counts == {"tier": 0, "aborted": 0, "process": 1}, tier.counts
    assert _observed(got) == _observed(expected)


GIVE_UP = {
    "a missing name": ("print(undefined_name)", {}),
    "a variable named like a tool": ("print(add)", {"add": 3}),
    "a variable named like a dunder": ("print(len('ab'))", {"__builtins__": {"len": 1}}),
    "in-place on a list": ("a = [1]\nb = a\na += [2]\nprint(a, b)", {}),
    "large variables in scope": ("print(len(v0) + len(v5))", {f"v{i}": list(range(190_000)) for i in range(6)}),
    "a large value": ("s = 'x' * 100000\nt = [s] * 1000\nprint(len(t))", {}),
    # each name is stored in full: 12 names of one 99,100-weight list are over MAX_SCOPE_WEIGHT
    "many names of one large value": (
        "u = [0] * 1000\nt = [u] * 99\n" + "".join(f"a{i} = t\n" for i in range(12)),
        {},
    ),
}


@pytest.mark.parametrize("name", list(GIVE_UP))
async def test_what_the_tier_cannot_prove_it_gives_to_the_worker_from_the_start(
    name: str, runners: tuple[Any, Any]
) -> None:
    process, tier = runners
    code, shared = GIVE_UP[name]
    expected = await process.run(_request(code, shared=shared))
    got = await tier.run(_request(code, shared=shared))
    assert tier.counts["tier"] == 0, tier.counts
    assert _observed(got) == _observed(expected)
    assert "HOST CODE RAN" not in str(got.units)


async def test_an_iterator_given_as_the_exit_value_is_the_workers_to_format(runners: tuple[Any, Any]) -> None:
    """Its text holds a heap address: the tier's would be the executor's."""
    _, tier = runners
    got = await tier.run(_request("exit(zip('ab', 'cd'))"))
    assert tier.counts == {"tier": 0, "aborted": 1, "process": 0}, tier.counts
    assert got.exited and re.fullmatch(r"<zip object at 0x[0-9a-f]+>", got.exit_value), got.exit_value


@contextlib.asynccontextmanager
async def _mesh(settings: Settings, **overrides: Any) -> AsyncIterator[Settings]:
    s = settings.replace(agents=AGENTS_SPEC, step_timeout=3.0, max_token_usage=1_000_000, **overrides)
    async with contextlib.AsyncExitStack() as stack:
        for kind in ("provider", "executor"):
            factory = importlib.import_module(f"statek_bus.services.{kind}").build
            await stack.enter_async_context(running_service(factory, s, name=SERVICE_KINDS[kind]))
        yield s


async def _tier_status(nc: Client) -> str:
    from statek_bus.wire.messages import ExecutorStatus, decode
    from statek_bus.wire.subjects import EXECUTOR_STATUS

    for _ in range(200):  # the sandbox is reported once the fork server is up
        reply = decode((await nc.request(EXECUTOR_STATUS, b"{}", timeout=5)).data, ExecutorStatus)
        if "data_tier" in reply.sandbox:
            return reply.sandbox["data_tier"]
        await asyncio.sleep(0.05)
    raise AssertionError("the executor never reported its sandbox")


def _tier_steps(route: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("statek_data_tier_steps_total", {"route": route}) or 0.0


async def test_the_benchs_code_runs_in_the_tier(settings: Settings, nc: Client) -> None:
    async with _mesh(settings):
        js = nc.jetstream()
        before = _tier_steps("tier")
        records = [await wait_done(js, await submit(js, "tier_bench", {"n": i})) for i in range(3)]
        two = await wait_done(js, await submit(js, "tier_two_steps", {"n": 4}))
        status = await _tier_status(nc)
    assert [r.exit_status for r in records] == ["0", "2", "4"]
    assert two.exit_status == "10" and console(two) == ["5"]  # the first step's workspace, restored
    assert status.startswith("on: ") and "5 steps" in status, status  # three bench steps, two of the other
    assert _tier_steps("tier") - before == 5


async def test_with_the_tier_off_every_step_forks_a_worker(settings: Settings, nc: Client) -> None:
    async with _mesh(settings, data_tier=False):
        js = nc.jetstream()
        before = _tier_steps("tier")
        record = await wait_done(js, await submit(js, "tier_bench", {"n": 5}))
        status = await _tier_status(nc)
    assert record.exit_status == "10"
    assert status == "off" and _tier_steps("tier") == before


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_hostile_data_code_gets_the_workers_outcome_and_the_executor_stays_responsive(
    settings: Settings, nc: Client
) -> None:
    peak = _peak_rss_mib()
    async with _mesh(settings):
        js = nc.jetstream()
        aborted = _tier_steps("aborted")
        hostile = {k: await submit(js, f"tier_{k}") for k in HOSTILE}
        quick = await wait_done(js, await submit(js, "tier_quick"))
        assert quick.exit_status == "quick"
        records = {k: await wait_done(js, j) for k, j in hostile.items()}
    for kind, record in records.items():
        assert record.exit_status == "after", (kind, console(record))  # the error, if any, was the job's
    for kind in ("str_bomb", "percent_bomb"):
        assert console(records[kind]) == ["MemoryError: your code used more than 512 MiB"], console(records[kind])
    for kind in ("pow_bomb", "round_bomb", "dag"):  # the dag: a worker snapshots 999**3 elements
        assert console(records[kind])[0].startswith(("StepTimeout", "MemoryError", "ResourceError")), kind
    a = [[0] * 500] * 500
    assert console(records["nested"]) == [f"{len(str([a, a]))} True 500"]
    assert console(records["budget"]) == ["True"]
    assert _tier_steps("aborted") - aborted >= len(HOSTILE)  # the tier gave each up; a worker ran it
    assert _peak_rss_mib() - peak < 256  # nothing of those values was ever built in the executor
