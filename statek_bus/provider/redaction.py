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

import msgspec

__all__ = ["REDACTED_LOGGERS", "RedactingFilter", "Redactor", "install_log_redaction", "secret_env_names"]

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_SK = re.compile(r"\bsk-[A-Za-z0-9_-]{6,}")
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would redact ordinary words
# What any match of _BEARER or _SK leaves in the JSON of a value holding it (their characters are
# never escaped in JSON): a JSON text without it holds neither, in any of its strings.
_LOOSE = re.compile(r"(?i:bearer|basic)|sk-[A-Za-z0-9_-]{6}")
_json = msgspec.json.Encoder()

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

    What it finds is kept until the environment changes: each call compares the environment with
    the copy it last read (``os.environ``'s own dict, at C speed; a mapping that is no dict is
    read again each time), so a key set or changed later is redacted from the next call on.

    Args:
        environ: where secrets live (default ``os.environ``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        # (the environment as last read, its secrets, their JSON-escaped forms): replaced as one,
        # since log records are redacted in other threads too (litellm's)
        self._state: tuple[dict[Any, Any] | None, list[tuple[str, str]], tuple[str, ...]] = (None, [], ())

    def _current(self) -> tuple[dict[Any, Any] | None, list[tuple[str, str]], tuple[str, ...]]:
        env = os.environ if self._environ is None else self._environ
        data = getattr(env, "_data", env)  # os.environ keeps its items in the dict ``_data``
        state = self._state
        if isinstance(data, dict):
            if data == state[0]:
                return state
            seen: dict[Any, Any] | None = dict(data)
        else:
            seen = None
        found = [
            (value, name)
            for name in secret_env_names(env)
            if len(value := env.get(name, "")) >= _MIN_SECRET_LEN
        ]
        found.sort(key=lambda pair: -len(pair[0]))  # longest first: a key containing another
        state = self._state = (seen, found, tuple(_escaped(value) for value, _ in found))
        return state

    def _secrets(self) -> list[tuple[str, str]]:
        return self._current()[1]

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by ``[redacted NAME]``."""
        return self._redact(text, self._secrets())

    @staticmethod
    def _redact(text: str, secrets: list[tuple[str, str]]) -> str:
        for value, name in secrets:
            if value in text:
                text = text.replace(value, f"[redacted {name}]")
        if _LOOSE.search(text) is None:
            return text
        text = _BEARER.sub(lambda m: f"{m.group(1)} [redacted]", text)
        return _SK.sub("sk-[redacted]", text)

    def tree(self, value: Any) -> Any:
        """``value`` (JSON-like: dicts, lists, strings...) with every string, keys too, redacted."""
        return self._tree(value, self._secrets())

    def _tree(self, value: Any, secrets: list[tuple[str, str]]) -> Any:
        if isinstance(value, str):
            return self._redact(value, secrets)
        if isinstance(value, list):
            return [self._tree(v, secrets) for v in value]
        if isinstance(value, dict):
            return {
                self._redact(k, secrets) if isinstance(k, str) else k: self._tree(v, secrets)
                for k, v in value.items()
            }
        return value

    def may_hold_secret(self, encoded: bytes) -> bool:
        """Whether some string in the JSON text ``encoded`` may hold a secret (``False``: none does).

        A string holding a secret holds its JSON-escaped form in ``encoded``, and a ``Bearer``
        token or an ``sk-`` key their unescaped characters, so one pass over the text answers
        for every string of the value: redacting a value whose JSON passes changes nothing.
        """
        needles = self._current()[2]
        text = encoded.decode("utf-8", "replace")
        return any(needle in text for needle in needles) or _LOOSE.search(text) is not None


def _escaped(value: str) -> str:
    """``value`` as it stands inside a JSON string ("": every text may hold it)."""
    try:
        return _json.encode(value).decode()[1:-1]
    except (msgspec.EncodeError, UnicodeError):  # a lone surrogate (os.environ's surrogateescape)
        return ""


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
