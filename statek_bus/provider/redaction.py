"""Keeping provider keys out of everything the provider says: replies, errors and log lines.

Keys live only in the provider's environment, under litellm's names (``OPENAI_API_KEY``...). Our
own messages name variables, never values; as a second line of defence every message built from a
provider's error, every reply the provider sends (an upstream may echo a key in completion content
or tool-call arguments, which would then reach job histories and exit statuses), and every record
of the loggers the provider's stack writes to, passes through
:class:`Redactor`, which replaces the value of every secret-looking environment variable (name
containing KEY, TOKEN, SECRET, PASSWORD or CREDENTIAL), ``Bearer`` tokens and ``sk-...`` keys.
:func:`secret_env_names` also tells a launcher which variables to withhold from other services.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED_LOGGERS", "RedactingFilter", "Redactor", "install_log_redaction", "secret_env_names"]

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_SK = re.compile(r"\bsk-[A-Za-z0-9_-]{6,}")
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would redact ordinary words

REDACTED_LOGGERS = (
    "statek_bus",
    "LiteLLM",
    "litellm",
    "openai",
    "httpx",
    "httpcore",
    "aiohttp",
)
"""Logger name prefixes whose records are redacted: a name matches its prefix and every child of it.

Prefixes rather than a list of modules, so a module that moves or a logger a library adds later
stays covered (every statek_bus module logs to ``logging.getLogger(__name__)``).
"""


def _covered(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or name.startswith(p + " ") for p in prefixes)


def secret_env_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of the variables in ``environ`` (default ``os.environ``) that look like secrets."""
    env = os.environ if environ is None else environ
    return sorted(name for name in env if _SECRET_NAME.search(name))


class Redactor:
    """Replaces secrets in text; reads the environment at each call, so new keys are covered.

    Args:
        environ: where secrets live (default ``os.environ``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def _secrets(self) -> list[tuple[str, str]]:
        env = os.environ if self._environ is None else self._environ
        found = [
            (value, name)
            for name in secret_env_names(env)
            if len(value := env.get(name, "")) >= _MIN_SECRET_LEN
        ]
        found.sort(key=lambda pair: -len(pair[0]))  # longest first: a key containing another
        return found

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by ``[redacted NAME]``."""
        for value, name in self._secrets():
            if value in text:
                text = text.replace(value, f"[redacted {name}]")
        text = _BEARER.sub(lambda m: f"{m.group(1)} [redacted]", text)
        return _SK.sub("sk-[redacted]", text)

    def tree(self, value: Any) -> Any:
        """``value`` (JSON-like: dicts, lists, strings...) with every string, keys too, redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, dict):
            return {self.tree(k): self.tree(v) for k, v in value.items()}
        return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the message, its arguments and any traceback of a record."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its template only
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text, record.exc_info = self.redact(text.rstrip("\n")), None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install_log_redaction(names: Iterable[str] = REDACTED_LOGGERS, redactor: Redactor | None = None) -> None:
    """Redact every record of a logger under one of the prefixes ``names``, and the root's handlers.

    Idempotent. Records are redacted where they are created (a log-record factory), so loggers
    created after this call are covered too; root handlers see every propagated record; and the
    handlers libraries attach to their own non-propagating loggers (litellm's) get the filter.
    """
    prefixes = tuple(names)
    redacting = RedactingFilter(redactor)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    previous = logging.getLogRecordFactory()
    if not getattr(previous, "statek_redacting", False):

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _covered(record.name, prefixes):
                redacting.filter(record)
            return record

        factory.statek_redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and _covered(name, prefixes):
            for handler in logger.handlers:  # litellm attaches its own handlers
                if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                    handler.addFilter(redacting)
