"""The scripted model: deterministic replies for the demo, tests and benchmarks, with no network.

A request whose model is ``scripted/<anything>`` is answered from a script: metadata ``SCRIPT``
(a list) or ``SCRIPT_FILE`` (a JSON file on the provider host holding the same list). Each reply
is a string, or ``{"text": ..., "tool_calls": [{"name": ..., "arguments": {...}}], "reasoning":
...}``. Call ``n`` gets reply ``n`` (from 0): ``n`` is the request's ``call_index`` (the
executor passes the job's LLM-call count) or, without one, the number of assistant messages in
``messages``, so a shell user replaying a conversation walks the script.

Past the end of the script the answer is a 400 :class:`~statek_bus.errors.BadRequestError` on
the script's field: the request asks for a reply its own script does not hold, which no retry can
change (a 409 in this project means a state conflict that re-reading resolves, and 503 would make
the executor wait for nothing). Usage is approximate (UTF-8 bytes / 4, as STATEK counts) so that
harness token limits behave as with a real model; cost comes from the price table, if it has a
``SCRIPTED`` row, else 0.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from statek_bus.errors import BadRequestError, PayloadTooLargeError
from statek_bus.messages import ChatMessage, CompleteReply, CompleteRequest, LLMUsage, ToolCall

__all__ = [
    "MAX_SCRIPT_FILE_BYTES",
    "ScriptReply",
    "ScriptStore",
    "ScriptToolCall",
    "approx_tokens",
    "parse_script",
    "reply_index",
    "scripted_reply",
]

MAX_SCRIPT_FILE_BYTES = 4 * 1024 * 1024
"""Largest ``SCRIPT_FILE`` the provider reads (413 above)."""


class ScriptToolCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A tool call in a scripted reply."""

    name: str
    """Tool name."""
    arguments: dict[str, Any] = {}
    """Arguments by name."""
    id: str | None = None
    """Call id; ``call_<reply>_<n>`` when omitted."""


class ScriptReply(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One scripted reply (a bare string in the script means ``{"text": string}``)."""

    text: str = ""
    """Reply text."""
    tool_calls: list[ScriptToolCall] = []
    """Formal tool calls."""
    reasoning: str | None = None
    """Reasoning text, as a reasoning model would return it."""


_Script = list[str | ScriptReply]
_PATH = re.compile(r"`\$([^`]*)`")
_json = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def parse_script(raw: Any, field: str) -> tuple[ScriptReply, ...]:
    """Validate a script (already decoded JSON); errors are 400s naming the path under ``field``."""
    try:
        items = msgspec.convert(raw, _Script)
    except msgspec.ValidationError as exc:
        message = _PATH.sub(lambda m: f"`{field}{m.group(1)}`", str(exc))
        path = _PATH.search(str(exc))
        raise BadRequestError(
            f"invalid script: {message}; a reply is a string or "
            '{"text": ..., "tool_calls": [{"name": ..., "arguments": {...}}]}',
            field=f"{field}{path.group(1)}" if path else field,
        ) from None
    return tuple(ScriptReply(text=item) if isinstance(item, str) else item for item in items)


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int]
    script: tuple[ScriptReply, ...]


class ScriptStore:
    """Parsed ``SCRIPT_FILE`` scripts, re-read only when a file's mtime or size changes.

    Relative paths resolve against the provider's working directory. Only ``.json`` files of at
    most :data:`MAX_SCRIPT_FILE_BYTES` are read: the provider never serves arbitrary host files.
    """

    def __init__(self) -> None:
        self._cache: dict[str, _Cached] = {}

    async def load(self, path: str) -> tuple[ScriptReply, ...]:
        """The script in ``path``."""
        field = "$.metadata.SCRIPT_FILE"
        if not path.lower().endswith(".json"):
            raise BadRequestError(f"SCRIPT_FILE must name a .json file, not {path!r}", field=field)
        full = os.path.abspath(path)
        try:
            st = os.stat(full)
        except OSError as exc:
            raise BadRequestError(
                f"SCRIPT_FILE {path!r} cannot be read on the provider host: {exc.strerror}", field=field
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(full)
        if cached is not None and cached.stamp == stamp:
            return cached.script
        if st.st_size > MAX_SCRIPT_FILE_BYTES:
            raise PayloadTooLargeError(
                f"SCRIPT_FILE {path!r} is {st.st_size} bytes, over the {MAX_SCRIPT_FILE_BYTES}-byte limit",
                details={"size": st.st_size, "limit": MAX_SCRIPT_FILE_BYTES},
            )
        data = await asyncio.to_thread(_read, full)
        try:
            raw = _json.decode(data)
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"SCRIPT_FILE {path!r} is not valid JSON: {exc}", field=field) from None
        script = parse_script(raw, field)
        self._cache[full] = _Cached(stamp, script)
        return script


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(MAX_SCRIPT_FILE_BYTES + 1)


def reply_index(req: CompleteRequest) -> int:
    """Which reply answers ``req``: ``call_index``, else the count of assistant messages."""
    if req.call_index is not None:
        if req.call_index < 0:
            raise BadRequestError("call_index must be >= 0", field="$.call_index")
        return req.call_index
    return sum(1 for m in req.messages if m.role == "assistant")


def approx_tokens(data: bytes | str) -> int:
    """STATEK's approximation: UTF-8 bytes / 4 (at least 1 for non-empty input)."""
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    return (size + 3) // 4


def _messages_size(messages: list[ChatMessage]) -> int:
    return len(_encoder.encode(messages))


def scripted_reply(
    req: CompleteRequest, model: str, script: tuple[ScriptReply, ...], *, field: str
) -> CompleteReply:
    """The reply of the scripted ``model`` to ``req`` (usage without cost).

    Raises:
        BadRequestError: the script has no reply for this call (``details``: ``index``, ``length``).
    """
    index = reply_index(req)
    if index >= len(script):
        raise BadRequestError(
            f"the scripted model {model!r} has no reply for LLM call {index + 1}: its script "
            f"({field.rsplit('.', 1)[-1]}) holds {len(script)} "
            f"{'reply' if len(script) == 1 else 'replies'}",
            field=field,
            details={"index": index, "length": len(script)},
        )
    item = script[index]
    calls = [
        ToolCall(name=c.name, arguments=dict(c.arguments), id=c.id or f"call_{index}_{n}")
        for n, c in enumerate(item.tool_calls)
    ]
    out_size = len(item.text.encode("utf-8")) + (len(_encoder.encode(item.tool_calls)) if calls else 0)
    usage = LLMUsage(
        input_tokens=(_messages_size(req.messages) + 3) // 4,
        output_tokens=(out_size + 3) // 4,
    )
    return CompleteReply(text=item.text, tool_calls=calls, reasoning=item.reasoning, usage=usage, model=model)
