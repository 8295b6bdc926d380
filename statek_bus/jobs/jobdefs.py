"""Job definitions: a job's own options, checked at submit and stored once per distinct content.

STATEK builds a ``JobDef`` per distinct (agent, warmup, post-processors, provider config, extra
resources...) and reuses a matching one. Here a job's options (:class:`JobOptions`: ``warmup_code``,
``post_processing``, ``provider_config``, ``extra_resources``) are a :class:`JobDef` stored in the
KV bucket ``statek_jobdefs`` under the sha-256 of its canonical JSON (``kv.create``: the first
writer stores it, every later job with the same options finds it there), and the job record names
that key (``JobRecord.jobdef``). A definition is immutable, so an executor reads it once and keeps
it. A job without options has no definition.

Every option arrives over the wire from a client, so it is untrusted input: :func:`check_options`
bounds and parses each (a 400 naming the field, nothing written), and ``warmup_code`` runs as
model code does, in the sandbox, never as the agent's trusted warmup: a ``#STATEK: hidden`` line
(which would make a block trusted) is refused.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import re

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from statek_bus.mesh.availability import unavailable_as_503
from statek_bus.wire.errors import BadRequestError, NotFoundError
from statek_bus.wire.limits import MAX_OPTION_TEXT, MAX_WARMUP_CODE
from statek_bus.wire.messages import decode
from statek_bus.wire.options import JobDef, JobOptions
from statek_bus.wire.provider_config import check_provider_config
from statek_bus.wire.subjects import JOBDEFS_BUCKET

__all__ = ["JobDefStore", "check_options", "jobdef_key"]

_HIDDEN = re.compile(r"^\s*#\s*STATEK\s*:\s*hidden\b", re.MULTILINE | re.IGNORECASE)
_RESOURCE_GROUP = r"\(\s*[LMHlmh]+\s*:\s*[\w.-]+(?:\s*,\s*[\w.-]+)*\s*\)"
_RESOURCES = re.compile(rf"^\s*{_RESOURCE_GROUP}(?:\s*,\s*{_RESOURCE_GROUP})*\s*$")
_encoder = msgspec.json.Encoder(order="sorted")
_AT = "$.options"
_MAX_CACHED = 4096
"""Definitions an instance keeps in memory (they never change; past this the cache starts again)."""


def _text(value: str | None, field: str, limit: int) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise BadRequestError(
            f"{field} is {len(value)} characters, over the {limit}-character limit", field=field
        )
    return value if value.strip() else None


def _check_warmup(code: str) -> None:
    field = f"{_AT}.warmup_code"
    if _HIDDEN.search(code):
        raise BadRequestError(
            "a job's warmup_code runs as untrusted code: it cannot mark a block '#STATEK: hidden'",
            field=field,
        )
    try:
        ast.parse(code)
    except SyntaxError as exc:
        raise BadRequestError(
            f"warmup_code is not valid Python (line {exc.lineno}): {exc.msg}", field=field
        ) from None


def _check_post_processing(spec: str) -> None:
    field = f"{_AT}.post_processing"
    try:
        node = ast.parse(f"[{spec}]", mode="eval").body
    except SyntaxError:
        raise BadRequestError(
            f"post_processing {spec!r}: expected Name(key=literal, ...), ... as in POST_PROCESSORS",
            field=field,
        ) from None
    assert isinstance(node, ast.List)
    for item in node.elts:
        call = item if isinstance(item, ast.Call) else None
        name = call.func if call is not None else item
        if not isinstance(name, ast.Name) or (
            call is not None and (call.args or any(k.arg is None for k in call.keywords))
        ):
            raise BadRequestError(
                f"post_processing {spec!r}: each entry is Name or Name(key=literal, ...), keyword arguments only",
                field=field,
            )
        for kw in call.keywords if call is not None else []:
            try:
                ast.literal_eval(kw.value)
            except ValueError:
                raise BadRequestError(
                    f"post_processing {spec!r}: argument {kw.arg!r} is not a literal", field=field
                ) from None


def check_options(options: JobOptions | None) -> JobOptions | None:
    """A request's ``options``, checked (``None`` when it sets none).

    Raises:
        BadRequestError: an option too long, code that does not parse (or claims to be hidden), a
            post-processor list or extra-resources text of the wrong syntax, or a malformed provider
            config; ``field`` names it (``$.options.warmup_code``...).
    """
    if options is None:
        return None
    warmup = _text(options.warmup_code, f"{_AT}.warmup_code", MAX_WARMUP_CODE)
    post = _text(options.post_processing, f"{_AT}.post_processing", MAX_OPTION_TEXT)
    extra = _text(options.extra_resources, f"{_AT}.extra_resources", MAX_OPTION_TEXT)
    if warmup is not None:
        _check_warmup(warmup)
    if post is not None:
        _check_post_processing(post)
    if extra is not None and not _RESOURCES.match(extra):
        raise BadRequestError(
            f"extra_resources {extra!r}: expected (LABELS:role,...),... e.g. (LM:assistant,researcher),(H:helpdesk)",
            field=f"{_AT}.extra_resources",
        )
    config = None
    if options.provider_config is not None:
        config = check_provider_config(options.provider_config, f"{_AT}.provider_config") or None
    if warmup is None and post is None and extra is None and config is None:
        return None
    return JobOptions(warmup_code=warmup, post_processing=post, provider_config=config, extra_resources=extra)


def jobdef_key(definition: JobDef) -> str:
    """The key of ``definition``: the sha-256 of its canonical (sorted-key) JSON."""
    return hashlib.sha256(_encoder.encode(definition)).hexdigest()


class JobDefStore:
    """The ``statek_jobdefs`` bucket: :meth:`put` once per content, :meth:`get` (cached: immutable).

    Args:
        js: JetStream; the (provisioned) bucket is bound on first use.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None
        self._cache: dict[str, JobDef] = {}

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(JOBDEFS_BUCKET)
        return self._kv

    async def put(self, definition: JobDef) -> str:
        """Store ``definition`` unless a job already did; returns its key."""
        key = jobdef_key(definition)
        if key in self._cache:
            return key
        # an earlier job with the same options stored it already: the content is the key
        with unavailable_as_503("storing a job definition"), contextlib.suppress(KeyWrongLastSequenceError):
            await (await self._bucket()).create(key, _encoder.encode(definition))
        self._keep(key, definition)
        return key

    async def get(self, key: str) -> JobDef:
        """The definition stored under ``key``; ``NotFoundError`` if there is none."""
        found = self._cache.get(key)
        if found is not None:
            return found
        with unavailable_as_503("reading a job definition"):
            try:
                entry = await (await self._bucket()).get(key)
            except KeyNotFoundError:
                raise NotFoundError(f"job definition {key!r} not found") from None
        found = decode(entry.value or b"", JobDef)
        self._keep(key, found)
        return found

    def _keep(self, key: str, definition: JobDef) -> None:
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = definition
