"""Environments for processes started by tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["without_litellm"]

ROOT = Path(__file__).resolve().parent.parent.parent
_SHADOW: list[Path] = []  # one directory per test process


def without_litellm(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) as after ``pip install .`` without the ``[litellm]`` extra.

    ``import litellm`` fails there as it does when the package is absent, so a provider serves only
    the scripted model and never spends seconds of CPU importing litellm: what the README's first
    command installs, and all the CLI tests need.
    """
    if not _SHADOW:
        shadow = Path(tempfile.mkdtemp(prefix="statek-no-litellm-"))
        (shadow / "litellm").mkdir()
        (shadow / "litellm" / "__init__.py").write_text(
            "raise ModuleNotFoundError(\"No module named 'litellm'\", name='litellm')\n"
        )
        _SHADOW.append(shadow)
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_SHADOW[0]), str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env
