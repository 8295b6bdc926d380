"""The bench tables' one header style for ratio columns, and the check that finds a table without one."""

from __future__ import annotations

import pytest

from bench.common import CHEAPER, FASTER, RATIO_HEADER, SLOWER, print_table, ratio, table_problems


def test_a_ratio_header_names_its_floor_and_its_direction() -> None:
    assert ratio("raw kv.put") == "x raw kv.put (higher = faster)"
    assert ratio("STATEK p50", SLOWER) == "x STATEK p50 (lower = faster)"
    assert ratio("idle executor RSS", CHEAPER) == "x idle executor RSS (lower = cheaper)"
    assert ratio("floor", FASTER) == ratio("floor")


@pytest.mark.parametrize(
    "header",
    [
        "ratio",
        "vs_raw",
        "ratio to floor",
        "x small version",
        "x ideal (1.00 = ideal)",
        "x in-process (higher = slower)",
    ],
)
def test_the_headers_the_tables_had_are_not_ratio_headers(header: str) -> None:
    assert not RATIO_HEADER.match(header)
    with pytest.raises(ValueError):
        ratio(header.removeprefix("x "), header)


def test_a_table_without_a_ratio_column_is_named_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    bare = [{"operation": "kv.put", "ops/s": 100.0}]
    assert table_problems(bare)
    assert not table_problems([{**bare[0], ratio("raw kv.put"): 0.5}])
    print_table("bare", bare)
    out, err = capsys.readouterr()
    assert "| operation | ops/s |" in out
    assert "table 'bare': no ratio column" in err and "no ratio column" not in out
