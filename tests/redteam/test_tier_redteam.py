"""Red-team proofs of concept against the data tier (each fails on the code as of 7aeff36).

Hostile, plain-data model code that the tier accepts and runs in the executor process: int keys
whose hashes collide (quadratic set/dict building in one C call, the GIL held), a list of ranges
over big ints whose repr the guard prices at 80 characters each, and a lone surrogate that the
worker process cannot send back but the tier passes up to the executor."""

from __future__ import annotations

import resource
from typing import Any

from tests.runtime.test_data_tier import _observed, _request

COLLIDING = "M = 2**61 - 1\ns = set(range(0, 8000 * M, M))\nprint(len(s))"
"""8,000 ints that all hash to 0: ~32 million int comparisons (33,000 of them: 11 s of CPU)."""


async def test_keys_whose_hashes_collide_are_not_hashed_in_the_executor(runners: tuple[Any, Any]) -> None:
    process, tier = runners
    expected = await process.run(_request(COLLIDING))
    got = await tier.run(_request(COLLIDING))
    assert _observed(got) == _observed(expected)
    assert tier.counts["tier"] == 0, tier.counts  # the tier must give it up before building the set


RANGE_REPR = "B = 2**4000\nR = range(B, B + 1, B)\nL = [R] * 9000\ns = f'{L}{L}{L}{L}'"
"""Each range weighs 1 and is priced at 80 characters of text; its repr is ~3,600 (three 4,000-bit
ints): the f-string builds ~130 million characters before the guard measures it."""


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_the_text_of_a_range_over_big_ints_is_priced_before_it_is_built(
    runners: tuple[Any, Any],
) -> None:
    process, tier = runners
    peak = _peak_rss_mib()
    got = await tier.run(_request(RANGE_REPR))
    grew = _peak_rss_mib() - peak
    expected = await process.run(_request(RANGE_REPR))
    assert _observed(got) == _observed(expected)
    assert grew < 100, f"the executor grew by {grew:.0f} MiB"


SURROGATES = {
    "in the workspace": "s = chr(55296)",
    "printed": "print(chr(55296))",
    "echoed": "chr(55296)",
    "the exit value": "exit(chr(55296))",
}


async def test_a_lone_surrogate_gets_the_workers_outcome(runners: tuple[Any, Any]) -> None:
    process, tier = runners
    for name, code in SURROGATES.items():
        expected = await process.run(_request(code))
        got = await tier.run(_request(code))  # must not raise (the executor fails the job after 3 tries)
        assert _observed(got) == _observed(expected), name


KEY_ERROR = "B = 2**4000\nR = range(B, B + 1, B)\nk = (R,) * 4500\nv = {}[k]"
"""A KeyError's line is the key's repr, built by ``error_line`` outside the guard: with 45,000
ranges (weight 90,001) that is 163 million characters, 9.6 s of CPU and 311 MiB in the executor,
and the step still counts as a tier step."""


async def test_a_key_errors_line_is_not_built_in_the_executor_when_it_is_huge(
    runners: tuple[Any, Any],
) -> None:
    process, tier = runners
    expected = await process.run(_request(KEY_ERROR))
    got = await tier.run(_request(KEY_ERROR))
    assert _observed(got) == _observed(expected)
    assert tier.counts["tier"] == 0, tier.counts


CONVERSIONS = "s = chr(917505) * 90000\nt = f'{s!r}'"
"""``!r``/``!a`` of a str are priced at ``len(s)`` (90,000 here); the repr is 900,002 characters,
over :data:`~statek_bus.sandbox.datatier.MAX_TEXT`, and is built before the guard sees it."""


def test_an_f_strings_conversion_is_priced_before_it_is_built() -> None:
    from statek_bus.runtime.coderunner import ExecRequest, execute
    from statek_bus.runtime.tierrunner import TierSession

    request = _request(CONVERSIONS)
    session = TierSession(request.session, request.units)
    execute(ExecRequest(session=session, units=request.units, deadline_seconds=10.0))
    assert session.aborted == "text", session.aborted  # refused before formatting, as str([s]) is


STARRED_NON_ITERABLES = ["x = len(*5)", "x = range(*5)", "print(*5)", "exit(*5)", "x = zip(*None)"]
"""The tier's callables are closures: CPython names the function in this TypeError
(``statek_bus.sandbox.tierguard._call.<locals>.call() argument after * must be an iterable``)."""


async def test_a_starred_non_iterable_gets_the_workers_error_line(runners: tuple[Any, Any]) -> None:
    process, tier = runners
    for code in STARRED_NON_ITERABLES:
        expected = await process.run(_request(code))
        got = await tier.run(_request(code))
        assert _observed(got) == _observed(expected), code
