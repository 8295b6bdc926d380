"""Keeping provider keys out of everything the provider says: replies, errors and log lines.

Keys live only in the provider's environment, under litellm's names (``OPENAI_API_KEY``...). Our
own messages name variables, never values; as a second line of defence every message built from a
provider's error, and every record of the loggers the provider's stack writes to, passes through
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

__all__ = ["REDACTED_LOGGERS", "RedactingFilter", "Redactor", "install_log_redaction", "secret_env_names"]

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_SK = re.compile(r"\bsk-[A-Za-z0-9_-]{6,}")
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would redact ordinary words

REDACTED_LOGGERS = (
    "statek_bus.provider",
    "statek_bus.provider.engine",
    "statek_bus.provider.llm",
    "statek_bus.provider.pricing",
    "statek_bus.provider.retry",
    "statek_bus.errors",
    "statek_bus.service",
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "litellm",
    "openai",
    "openai._base_client",
    "httpx",
    "httpcore",
    "aiohttp",
)
"""Loggers whose records are redacted (a filter applies only to records created on its logger)."""


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
    """Attach a :class:`RedactingFilter` to each logger in ``names`` and to the root's handlers.

    Idempotent. Root handlers see every propagated record, whatever logger created it; the
    per-logger filters cover records that do not propagate (litellm's own stream handlers).
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter(redactor))
        for handler in logger.handlers:  # litellm attaches its own handlers
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter(redactor))
