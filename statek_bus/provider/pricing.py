"""Model prices: a CSV price table (STATEK's model-info format) that overrides litellm's price map.

``llm_price_table`` names a CSV file, or a directory whose ``*.csv`` and ``*.txt`` files are all
read (as STATEK's ``init_model_pricing`` does). Columns, by header, case-insensitive::

    PROVIDER,MODEL,MODEL_FAMILY,INPUT_PRICE_PER_M,INPUT_PRICE_PER_CACHED_M,OUTPUT_PRICE_PER_M
    openai,gpt-4o-mini,,0.15,0.075,0.60
    openrouter,gpt-5-mini,openai,0.25,0.025,2.00
    scripted,demo,,1.0,,2.0

Prices are USD per million tokens. ``MODEL_FAMILY`` and ``INPUT_PRICE_PER_CACHED_M`` may be empty
(cached input then costs the input price). A row with a bad value is skipped with a warning naming
its file and line; a missing file or a missing required column stops the service at start.

A litellm model string ``provider/family.../model`` matches the row (provider, family, model),
then the row (provider, "", family/model); ``scripted/<name>`` matches provider ``scripted``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelPrice", "PriceTable", "PriceTableError", "split_model"]

log = logging.getLogger(__name__)

_REQUIRED = ("PROVIDER", "MODEL", "INPUT_PRICE_PER_M", "OUTPUT_PRICE_PER_M")
_OPTIONAL = ("MODEL_FAMILY", "INPUT_PRICE_PER_CACHED_M")


class PriceTableError(ValueError):
    """The price table cannot be read (missing file, no header, a required column absent)."""


@dataclass(frozen=True)
class ModelPrice:
    """Prices of one model, USD per million tokens."""

    input_per_m: float
    """Non-cached input tokens."""
    output_per_m: float
    """Output tokens."""
    cached_input_per_m: float | None = None
    """Cached input tokens (``None``: the input price)."""

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """Cost of one call; ``input_tokens`` includes ``cached_tokens``."""
        cached = min(max(0, cached_tokens), max(0, input_tokens))
        cached_price = self.input_per_m if self.cached_input_per_m is None else self.cached_input_per_m
        return (
            (input_tokens - cached) * self.input_per_m
            + cached * cached_price
            + output_tokens * self.output_per_m
        ) / 1e6


def split_model(model: str) -> tuple[str, str, str]:
    """``provider/family.../model`` → (PROVIDER, FAMILY, MODEL), upper-cased; parts may be empty."""
    parts = model.strip().split("/")
    if len(parts) == 1:
        return "", "", parts[0].upper()
    if len(parts) == 2:
        return parts[0].upper(), "", parts[1].upper()
    return parts[0].upper(), "/".join(parts[1:-1]).upper(), parts[-1].upper()


class PriceTable:
    """Prices by (PROVIDER, FAMILY, MODEL)."""

    def __init__(self, prices: dict[tuple[str, str, str], ModelPrice] | None = None) -> None:
        self._prices = dict(prices or {})

    def __len__(self) -> int:
        return len(self._prices)

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        """Read a CSV file, or every ``*.csv``/``*.txt`` in a directory; ``""`` gives an empty table.

        Raises:
            PriceTableError: the path does not exist, or a file lacks a required column.
        """
        if not str(path):
            return cls()
        root = Path(path)
        if root.is_dir():
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".csv", ".txt") and p.is_file())
        elif root.is_file():
            files = [root]
        else:
            raise PriceTableError(f"price table {str(path)!r} does not exist (STATEK_LLM_PRICE_TABLE)")
        prices: dict[tuple[str, str, str], ModelPrice] = {}
        for file in files:
            prices.update(_parse(file.name, file.read_text(encoding="utf-8-sig")))
        log.info("price table: %d model prices from %d file(s) under %s", len(prices), len(files), path)
        return cls(prices)

    @classmethod
    def parse(cls, text: str, *, name: str = "<prices>") -> PriceTable:
        """A table from CSV text (``name`` labels warnings)."""
        return cls(_parse(name, text))

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model`` (a litellm model string or ``scripted/<name>``), if listed."""
        provider, family, name = split_model(model)
        found = self._prices.get((provider, family, name))
        if found is None and family:
            found = self._prices.get((provider, "", f"{family}/{name}"))
        return found

    def models(self) -> list[str]:
        """Every listed model, as ``provider/[family/]model`` in lower case."""
        return sorted("/".join(p for p in key if p).lower() for key in self._prices)


def _parse(name: str, text: str) -> dict[tuple[str, str, str], ModelPrice]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise PriceTableError(f"price table {name} is empty; expected a header row")
    columns = {h.strip().upper(): i for i, h in enumerate(header)}
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise PriceTableError(
            f"price table {name} lacks column(s) {', '.join(missing)}; expected "
            f"{', '.join(_REQUIRED[:2] + _OPTIONAL[:1] + _REQUIRED[2:3] + _OPTIONAL[1:] + _REQUIRED[3:])}"
        )
    out: dict[tuple[str, str, str], ModelPrice] = {}
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue

        def cell(col: str, row: list[str] = row) -> str:
            i = columns.get(col)
            return row[i].strip() if i is not None and i < len(row) else ""

        try:
            provider, model = cell("PROVIDER").upper(), cell("MODEL").upper()
            if not model:
                raise ValueError("MODEL is empty")
            cached_raw = cell("INPUT_PRICE_PER_CACHED_M")
            price = ModelPrice(
                input_per_m=_price(cell("INPUT_PRICE_PER_M"), "INPUT_PRICE_PER_M"),
                output_per_m=_price(cell("OUTPUT_PRICE_PER_M"), "OUTPUT_PRICE_PER_M"),
                cached_input_per_m=_price(cached_raw, "INPUT_PRICE_PER_CACHED_M") if cached_raw else None,
            )
        except ValueError as exc:
            log.warning("price table %s line %d skipped: %s", name, line, exc)
            continue
        out[(provider, cell("MODEL_FAMILY").upper(), model)] = price
    return out


def _price(raw: str, column: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{column} {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{column} {raw!r} must be a finite number >= 0")
    return value
