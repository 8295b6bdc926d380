"""The scripted model: deterministic replies for the demo, tests and benchmarks, with no network.

A request whose model is ``scripted/<anything>`` is answered from a script: metadata ``SCRIPT``
(a list) or ``SCRIPT_FILE`` (a ``.json`` file holding the same list, in the provider's script
directory :data:`SCRIPT_DIR_ENV`; unset, ``SCRIPT_FILE`` is refused). Each reply
is a string, or ``{"text": ..., "tool_calls": [{"name": ..., "arguments": {...}}], "reasoning":
...}``. Call ``n`` gets reply ``n`` (from 0): ``n`` is the request's ``call_index`` (the
executor passes the job's LLM-call count) or, without one, the number of assistant messages in
``messages``, so a shell user replaying a conversation walks the script.

Past the end of the script the answer is a 400 :class:`~statek_bus.wire.errors.BadRequestError` on
the script's field: the request asks for a reply its own script does not hold, which no retry can
change (a 409 in this project means a state conflict that re-reading resolves, and 503 would make
the executor wait for nothing). Usage is approximate (UTF-8 bytes / 4, as STATEK counts) so that
harness token limits behave as with a real model; cost comes from the price table, if it has a
``SCRIPTED`` row, else 0.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import msgspec

from statek_bus.wire.errors import BadRequestError, PayloadTooLargeError
from statek_bus.wire.messages import ChatMessage, CompleteReply, CompleteRequest, LLMUsage, ToolCall

__all__ = [
    "MAX_SCRIPT_FILE_BYTES",
    "SCRIPT_DIR_ENV",
    "ScriptReply",
    "ScriptStore",
    "ScriptToolCall",
    "parse_script",
    "reply_index",
    "scripted_reply",
]

MAX_SCRIPT_FILE_BYTES = 4 * 1024 * 1024
"""Largest ``SCRIPT_FILE`` the provider reads (413 above)."""
SCRIPT_DIR_ENV = "STATEK_SCRIPT_DIR"
"""Environment variable naming the only directory ``SCRIPT_FILE`` may read from (unset: disabled)."""
_FIELD = "$.metadata.SCRIPT_FILE"
_OS_REASONS = {
    errno.ENOENT: "no such script",
    errno.ENOTDIR: "no such script",
    errno.ELOOP: "a symbolic link",
    errno.EACCES: "not readable by the provider",
    errno.EPERM: "not readable by the provider",
    errno.EISDIR: "a directory",
}


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

    The provider holds the LLM keys, so it reads no file a request names unless an operator put it
    in the script directory: ``SCRIPT_FILE`` is a path relative to ``root`` (or an absolute path
    inside it) whose real path (symbolic links resolved) must stay inside ``root``, name a regular
    ``.json`` file, and hold at most :data:`MAX_SCRIPT_FILE_BYTES`. Errors name only the requested
    path, never the directory, the resolved path or the OS error text, and a path outside the
    directory is refused before anything looks at it (no "does it exist" oracle).

    Args:
        root: the script directory (the ``script_dir`` setting, env :data:`SCRIPT_DIR_ENV`);
            ``None`` reads the environment; empty: ``SCRIPT_FILE`` is refused with a 400 saying
            how to enable it.
    """

    def __init__(self, root: str | None = None) -> None:
        root = root if root is not None else os.environ.get(SCRIPT_DIR_ENV, "")
        self.root = os.path.realpath(root) if root else None
        self._cache: dict[str, _Cached] = {}

    async def load(self, path: str) -> tuple[ScriptReply, ...]:
        """The script in ``path`` (relative to the script directory)."""
        full = self._resolve(path)
        try:
            st = os.stat(full)
        except OSError as exc:
            raise _unreadable(path, exc) from None
        if not stat.S_ISREG(st.st_mode):
            raise _irregular(path)
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(full)
        if cached is not None and cached.stamp == stamp:
            return cached.script
        if st.st_size > MAX_SCRIPT_FILE_BYTES:
            raise _too_large(path, st.st_size)
        try:
            data = await asyncio.to_thread(_read, full)
        except OSError as exc:
            raise _unreadable(path, exc) from None
        if data is None:
            raise _irregular(path)
        if len(data) > MAX_SCRIPT_FILE_BYTES:
            raise _too_large(path, len(data))
        try:
            raw = _json.decode(data)
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"SCRIPT_FILE {path!r} is not valid JSON: {exc}", field=_FIELD) from None
        script = parse_script(raw, _FIELD)
        self._cache[full] = _Cached(stamp, script)
        return script

    def _resolve(self, path: str) -> str:
        """The real path of ``path`` inside the script directory, or a 400."""
        if self.root is None:
            raise BadRequestError(
                "SCRIPT_FILE is disabled on this provider: set the environment variable "
                f"{SCRIPT_DIR_ENV} of the provider service to a directory of .json scripts to enable "
                "it, or pass the replies inline as metadata SCRIPT",
                field=_FIELD,
            )
        if not path.lower().endswith(".json") or "\x00" in path:
            raise BadRequestError(f"SCRIPT_FILE must name a .json file, not {path!r}", field=_FIELD)
        full = os.path.realpath(os.path.join(self.root, path))
        if os.path.commonpath([self.root, full]) != self.root or not full.lower().endswith(".json"):
            raise BadRequestError(
                f"SCRIPT_FILE {path!r} is outside the provider's script directory ({SCRIPT_DIR_ENV}); "
                "give a path relative to it",
                field=_FIELD,
            )
        return full


def _unreadable(path: str, exc: OSError) -> BadRequestError:
    reason = _OS_REASONS.get(exc.errno or 0, "unreadable")
    return BadRequestError(
        f"SCRIPT_FILE {path!r} cannot be read from the provider's script directory: {reason}",
        field=_FIELD,
    )


def _irregular(path: str) -> BadRequestError:
    return BadRequestError(f"SCRIPT_FILE {path!r} is not a regular file", field=_FIELD)


def _too_large(path: str, size: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"SCRIPT_FILE {path!r} is {size} bytes, over the {MAX_SCRIPT_FILE_BYTES}-byte limit",
        details={"size": size, "limit": MAX_SCRIPT_FILE_BYTES},
    )


def _read(path: str) -> bytes | None:
    """The file's bytes (one past the cap at most); ``None`` if what was opened is not a file."""
    # O_NOFOLLOW: a symbolic link swapped in after the real-path check is refused (ELOOP);
    # O_NONBLOCK: a FIFO swapped in cannot hang the open; fstat checks what was opened.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fh.read(MAX_SCRIPT_FILE_BYTES + 1)


def reply_index(req: CompleteRequest) -> int:
    """Which reply answers ``req``: ``call_index``, else the count of assistant messages."""
    if req.call_index is not None:
        if req.call_index < 0:
            raise BadRequestError("call_index must be >= 0", field="$.call_index")
        return req.call_index
    return sum(1 for m in req.messages if m.role == "assistant")


def _messages_size(messages: list[ChatMessage]) -> int:
    return len(_encoder.encode(messages))


def scripted_reply(
    req: CompleteRequest,
    model: str,
    script: tuple[ScriptReply, ...],
    *,
    field: str,
    params: dict[str, Any] | None = None,
) -> CompleteReply:
    """The reply of the scripted ``model`` to ``req`` (usage without cost).

    A reply's text may show what the model received: ``{{params}}`` becomes the JSON of the call's
    extra arguments (``params``: model-string parameters, reasoning payloads, response format) and
    ``{{reasoning}}`` the JSON list of the reasoning replayed to it in ``req``'s history.

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
    text = item.text
    if "{{params}}" in text:
        text = text.replace("{{params}}", json.dumps(params or {}, sort_keys=True))
    if "{{reasoning}}" in text:
        replayed = [m.reasoning for m in req.messages if m.role == "assistant" and m.reasoning is not None]
        text = text.replace("{{reasoning}}", json.dumps(replayed))
    calls = [
        ToolCall(name=c.name, arguments=dict(c.arguments), id=c.id or f"call_{index}_{n}")
        for n, c in enumerate(item.tool_calls)
    ]
    out_size = len(text.encode("utf-8")) + (len(_encoder.encode(item.tool_calls)) if calls else 0)
    usage = LLMUsage(
        input_tokens=(_messages_size(req.messages) + 3) // 4,
        output_tokens=(out_size + 3) // 4,
    )
    return CompleteReply(text=text, tool_calls=calls, reasoning=item.reasoning, usage=usage, model=model)
