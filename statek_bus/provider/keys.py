"""Provider keys from files: a mounted Secret (one file per variable) becomes the provider's environment.

litellm reads keys from environment variables (``OPENAI_API_KEY``...). In Kubernetes they are
mounted as files instead (setting ``STATEK_LLM_KEYS_DIR``), so they never sit in a pod spec, a
ConfigMap or the environment of any other process; only the provider process copies them into its
own environment, at start, before the redactor learns which values to hide.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["load_key_files"]

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def load_key_files(directory: str, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Copy every ``NAME`` file of ``directory`` into ``environ`` (default ``os.environ``).

    Only names that are environment variable names count; a Secret volume's ``..data`` links and
    dot files are skipped. Trailing newlines are stripped. Returns the names loaded.

    Raises:
        FileNotFoundError: ``directory`` does not exist (a missing mount is a deployment error).
    """
    env = os.environ if environ is None else environ
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"STATEK_LLM_KEYS_DIR={directory!r} is not a directory")
    loaded = []
    for path in sorted(root.iterdir()):
        if _NAME.fullmatch(path.name) and path.is_file():
            env[path.name] = path.read_text().rstrip("\r\n")
            loaded.append(path.name)
    return loaded
