"""Messages an agent sends to its user: checking ``send_message``, calling it, splitting media.

Used by every agent with a ``send_message`` (:class:`~statek_bus.authoring.agents.Agent`) and by
the dialog agents of :mod:`statek_bus.authoring.dialog`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

__all__ = ["check_send_message", "deliver_message", "split_media"]

_MEDIA_EXT = r"(?:png|jpe?g|gif|webp|svg|bmp|mp4|mov|webm|mkv|mp3|wav|ogg|m4a|pdf)"
_IMAGE = re.compile(r"!\[[^\]\n]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_LINK = re.compile(r"(?<!!)\[[^\]\n]+\]\([^)\s]+\)")
_MEDIA_PATH = re.compile(
    rf"(?<![\w/.:-])((?:https?://[^\s)]+|/[\w.\-/]+|[\w.\-]+(?:/[\w.\-]+)+)\.{_MEDIA_EXT})(?![\w/-])",
    re.IGNORECASE,
)
_WS = re.compile(r"\s+")


def split_media(text: str) -> tuple[str, str | None]:
    """``(body, media)`` of a dialog text: the first markdown image or media path taken out.

    A text with a markdown link (``[label](url)``) is sent whole, links included: the user reads
    it as one message. Whitespace is collapsed, as the model's line breaks are layout.

    Args:
        text: the prose of one reply.
    """
    flat = _WS.sub(" ", text).strip()
    if _LINK.search(flat):
        return flat, None
    for pattern in (_IMAGE, _MEDIA_PATH):
        m = pattern.search(flat)
        if m is not None:
            body = _WS.sub(" ", flat[: m.start()] + flat[m.end() :]).strip()
            return body, m.group(1)
    return flat, None


def check_send_message(fn: Any) -> Callable[..., Any]:
    """``fn`` if it can be an agent's ``send_message``.

    Raises:
        TypeError: it is not callable.
        ValueError: it is ``@temporal`` (it would return a future, not send), or takes no ``body``.
    """
    if not callable(fn):
        raise TypeError(f"send_message must be callable, not {type(fn).__name__}")
    if getattr(fn, "__statek_temporal__", None) is not None:
        raise ValueError("send_message must not be @temporal: it sends a message, it does not wait")
    if not _accepts(fn, "body"):
        raise ValueError("send_message must accept a 'body' argument: send_message(body, media=None)")
    return fn  # type: ignore[no-any-return]


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # a builtin without a signature: let the call decide
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params
    )


def deliver_message(send_message: Callable[..., Any], body: str, media: str | None = None) -> Any:
    """Call ``send_message(body=..., media=...)`` (``media`` left out when it takes none and there is
    none); a coroutine it returns is awaited on the job's loop (from a tool) or returned (elsewhere)."""
    if media is not None or _accepts(send_message, "media"):
        return send_message(body=body, media=media)
    return send_message(body=body)
