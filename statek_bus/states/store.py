"""The States API storage: task/agent-scoped JSON objects in the ``statek_states`` KV bucket.

Key layout (every user id goes through :func:`~statek_bus.wire.subjects.token`, so no id can reach
another pair's keys, and no key segment ever holds ``.``, ``*`` or ``>``)::

    state.<token(task)>.<token(agent)>   the primary record (StateRecord JSON); its KV revision is
                                         State.revision, and ``kv.create`` on it makes the pair unique
    id.<state_id>                        StateRef: state id -> pair (immutable; written before commit)
    task.<token(task)>.<state_id>        StateRef: index of a task's states
    agent.<token(agent)>.<state_id>      StateRef: index of an agent's states

State ids are UUIDv7 carrying ``created_at`` to the microsecond (RFC 9562 §6.2 method 3), so
sorting ids sorts by ``(created_at, id)``: a page is cut from the index keys alone and only the
page's records are read. A filtered list reads ``task.<t>.*`` (or ``agent.<a>.*``) with one
multi-last direct get, falling back to paged batch direct gets of the matching subjects above the
server's multi-last cap: its cost follows the task's states, never the bucket's. Every read is a
direct get (``history`` too): no request creates a consumer.

Crash safety: ``create`` writes the id pointer and both index entries first, then commits with a
compare-and-set on the primary key. A crash before the commit leaves only index entries whose
primary does not name their id; readers ignore them, and ``list`` deletes those older than
:data:`ORPHAN_GRACE`. Nothing holds the pair until the commit, so no crash leaves a pair stuck; a
crash after it loses nothing. ``delete`` is a compare-and-set rollup marker on the primary (which
drops its history and carries the final State for watchers) that expires after
:data:`DELETE_MARKER_TTL`, leaving nothing of the state; then it removes the index entries.

Every JetStream call goes through :func:`~statek_bus.mesh.availability.retry_transient`. Reads are safe
to retry. Writes are too: each is a compare-and-set (a retried write whose first attempt had landed
fails its CAS, and the caller's loop re-reads and recognises its own record: the lost-ack
recognition in ``create``, ``update`` and ``delete``) or idempotent (index puts of immutable refs,
purges by subject).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from statek_bus.mesh.availability import retry_transient
from statek_bus.mesh.direct import TooManyResults, connection, direct_get
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
)
from statek_bus.wire.messages import State, StateChange, StateRecord, StateRef
from statek_bus.wire.subjects import KV_OPERATION_HEADER, STATES_BUCKET, WRONG_LAST_SEQUENCE, token

__all__ = [
    "DELETE_MARKER_TTL",
    "MAX_ID_TOKEN",
    "ORPHAN_GRACE",
    "STREAM",
    "StateStore",
    "change_from_msg",
    "new_state_id",
    "pair_key",
    "to_state",
    "watch_subject",
]

STREAM = f"KV_{STATES_BUCKET}"
"""The stream behind the bucket."""
_PRE = f"$KV.{STATES_BUCKET}."
MAX_ID_TOKEN = 1024
"""Longest escaped ``task_id``/``agent_id`` (keys must fit a NATS protocol line)."""
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
"""Longest ``ttl_seconds`` accepted."""
ORPHAN_GRACE = 60.0
"""Seconds after which an index entry whose primary does not name it is garbage (a crashed create)."""
DELETE_MARKER_TTL = 60
"""Seconds a deletion marker (carrying the deleted State for watchers) stays in the stream.

Live watchers see it at once; a watch replaying ``since_revision`` later than this, and the lost-ack
recognition of a retried delete, need it to still be there. After it, nothing of the state is left.
"""
_BATCH = 1000
"""Messages asked for per batch direct get."""
_CAS_ATTEMPTS = 64
_MARKER = "Nats-Marker-Reason"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


_States = list[State]
_Msgs = list[Msg]
_enc = msgspec.json.Encoder()
_rec_dec = msgspec.json.Decoder(StateRecord)
_ref_dec = msgspec.json.Decoder(StateRef)
_state_dec = msgspec.json.Decoder(State)


def pair_key(task_id: str, agent_id: str) -> str:
    """KV key of the primary record of ``(task_id, agent_id)``."""
    return f"state.{token(task_id)}.{token(agent_id)}"


def _micros(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def new_state_id(now: datetime) -> str:
    """A UUIDv7 whose sort order is ``now`` to the microsecond, then random bits."""
    ms, us = divmod(_micros(now), 1000)
    n = (ms << 80) | (0x7 << 76) | ((us * 4096 // 1000) << 64) | (0b10 << 62) | secrets.randbits(62)
    return str(uuid.UUID(int=n))


def _id_age(state_id: str) -> float:
    return time.time() - int(state_id[:8] + state_id[9:13], 16) / 1000


def _now() -> datetime:
    return _EPOCH + timedelta(microseconds=time.time_ns() // 1000)


def to_state(rec: StateRecord, revision: int) -> State:
    """The wire view of a stored record at ``revision``."""
    return State(
        id=rec.id,
        task_id=rec.task_id,
        agent_id=rec.agent_id,
        state=rec.state,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        revision=revision,
    )


@dataclass(frozen=True)
class _Entry:
    """The latest message on a primary key."""

    seq: int
    """Its stream sequence (the expected last sequence of the next write)."""
    record: StateRecord | None
    """Its record (for a deletion marker: the final record, when the marker carries one)."""
    live: bool
    """A current value: not deleted, purged or expired."""


class _Stale(Exception):
    """A compare-and-set lost: the key moved past the expected sequence."""


class StateStore:
    """The States API over the ``statek_states`` bucket; every method validates, then writes.

    Args:
        js: JetStream of the caller's connection (the bucket must exist: see :mod:`provision`).
        settings: limits (``state_max_bytes``, list page sizes).
    """

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self.js = js
        self.nc = connection(js)
        self.settings = settings
        self._refs: OrderedDict[str, StateRef] = OrderedDict()  # immutable id -> pair, an LRU

    # ---------------------------------------------------------------------------------- public API

    async def create(
        self, task_id: str, agent_id: str, state: Any, *, ttl_seconds: int | None = None
    ) -> State:
        """Create the state of ``(task_id, agent_id)``; 409 naming the existing id if there is one."""
        _check_ids(task_id, agent_id)
        body = self._check_state(state, "$.state")
        if ttl_seconds is not None and not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise BadRequestError(
                f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}", field="$.ttl_seconds"
            )
        return await self._create(task_id, agent_id, body, ttl_seconds, existing_ok=False)

    async def get_or_create(self, task_id: str, agent_id: str, default: Any) -> State:
        """The pair's state, or a new one holding ``default``; concurrent callers get the same id."""
        _check_ids(task_id, agent_id)
        body = self._check_state(default, "$.default")
        return await self._create(task_id, agent_id, body, None, existing_ok=True)

    async def retrieve(self, state_id: str) -> State:
        """The state with id ``state_id`` (404 if there is none)."""
        ref = await self._ref(state_id)
        found = await self._resolve(ref) if ref else None
        if found is None:
            raise NotFoundError(f"no state with id {state_id!r}")
        return found

    async def find(self, task_id: str, agent_id: str) -> State | None:
        """The state of ``(task_id, agent_id)``, or ``None``."""
        _check_ids(task_id, agent_id)
        e = await self._read(pair_key(task_id, agent_id))
        return to_state(e.record, e.seq) if e and e.live and e.record else None

    async def update(self, state_id: str, state: Any, expected_revision: int | None = None) -> State:
        """Replace the object; with ``expected_revision``, only if it is still current (else 409)."""
        body = self._check_state(state, "$.state")
        if expected_revision is not None and expected_revision < 1:
            raise BadRequestError("expected_revision must be ≥ 1", field="$.expected_revision")
        ref = await self._ref(state_id)
        key = pair_key(ref.task_id, ref.agent_id) if ref else ""
        wrote: bytes | None = None
        for _ in range(_CAS_ATTEMPTS):
            e = await self._read(key) if ref else None
            if e is None or not e.live or e.record is None or e.record.id != state_id:
                raise NotFoundError(f"no state with id {state_id!r}")
            old = e.record
            if wrote is not None and _enc.encode(old) == wrote:
                return to_state(old, e.seq)  # our earlier attempt landed before its ack was lost
            if expected_revision is not None and e.seq != expected_revision:
                raise ConflictError(
                    f"state {state_id} is at revision {e.seq}, not {expected_revision}",
                    details={"current_revision": e.seq, "expected_revision": expected_revision},
                )
            now = max(_now(), old.updated_at + timedelta(microseconds=1))
            new = StateRecord(
                id=old.id,
                task_id=old.task_id,
                agent_id=old.agent_id,
                state=body,
                created_at=old.created_at,
                updated_at=now,
                expires_at=old.expires_at,
            )
            wrote = _enc.encode(new)
            try:
                seq = await self._cas(key, wrote, e.seq, ttl=_remaining(old.expires_at))
            except _Stale:
                continue  # re-read: a stale expected_revision becomes a 409 above
            return to_state(new, seq)
        raise ConflictError(f"state {state_id} is changing too fast; retry", details={"state_id": state_id})

    async def delete(self, state_id: str) -> State:
        """Delete the state; returns it as it was. Frees the pair."""
        ref = await self._ref(state_id)
        key = pair_key(ref.task_id, ref.agent_id) if ref else ""
        tried: State | None = None
        for _ in range(_CAS_ATTEMPTS):
            e = await self._read(key) if ref else None
            if tried and e and not e.live and e.record and e.record.id == state_id:
                break  # our marker landed before its ack was lost
            if e is None or not e.live or e.record is None or e.record.id != state_id:
                raise NotFoundError(f"no state with id {state_id!r}")
            tried = to_state(e.record, e.seq)
            headers = {KV_OPERATION_HEADER: "PURGE", "Nats-Rollup": "sub"}
            try:
                await self._cas(key, _enc.encode(tried), e.seq, ttl=DELETE_MARKER_TTL, headers=headers)
            except _Stale:
                continue
            break
        else:
            raise ConflictError(f"state {state_id} is changing too fast; retry")
        assert ref is not None and tried is not None
        await self._drop_refs(ref)
        return tried

    async def list(
        self,
        task_id: str | None = None,
        agent_id: str | None = None,
        limit: int | None = None,
        page_number: int | None = None,
    ) -> _States:
        """One page of states, ordered by ``created_at`` then ``id``; filters are exact."""
        size = self.settings.list_default_limit if limit is None else limit
        if not 1 <= size <= self.settings.list_max_limit:
            raise BadRequestError(
                f"limit must be between 1 and {self.settings.list_max_limit}", field="$.limit"
            )
        page = 1 if page_number is None else page_number
        if page < 1:
            raise BadRequestError("page_number must be ≥ 1", field="$.page_number")
        if task_id is not None and agent_id is not None:
            one = await self.find(task_id, agent_id)
            return [one] if one and page == 1 else []
        if task_id is not None:
            _check_ids(task_id, None)
            prefix = f"task.{token(task_id)}"
        elif agent_id is not None:
            _check_ids(None, agent_id)
            prefix = f"agent.{token(agent_id)}"
        else:
            prefix = "id"
        refs = await self._scan(f"{prefix}.*")
        ids = sorted(refs)
        start = (page - 1) * size
        while True:
            window = ids[start : start + size]
            found = await asyncio.gather(*(self._resolve(refs[i]) for i in window))
            garbage = [
                i for i, st in zip(window, found, strict=True) if st is None and _id_age(i) > ORPHAN_GRACE
            ]
            if not garbage:
                return [st for st in found if st is not None]
            # Leftovers of a crashed create or delete: drop them, then cut the page again.
            await asyncio.gather(*(self._drop_refs(refs[i]) for i in garbage))
            ids = [i for i in ids if i not in set(garbage)]

    async def history(self, state_id: str, limit: int | None = None) -> _States:
        """Kept revisions of the state, newest first (the first is the current one)."""
        if limit is not None and limit < 1:
            raise BadRequestError("limit must be ≥ 1", field="$.limit")
        current = await self.retrieve(state_id)
        msgs = await self._subject_msgs(_PRE + pair_key(current.task_id, current.agent_id))
        out = [current]
        for msg in reversed(msgs):
            hdrs, seq = msg.headers or {}, _seq(msg)
            if (
                msg.data
                and KV_OPERATION_HEADER not in hdrs
                and _MARKER not in hdrs
                and seq < current.revision
            ):
                rec = _rec_dec.decode(msg.data)
                if rec.id == state_id:
                    out.append(to_state(rec, seq))
        return out[:limit] if limit else out

    # ---------------------------------------------------------------------------------- internals

    def _check_state(self, state: Any, field: str) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise BadRequestError(f"{field[2:]} must be a JSON object, not {_json_kind(state)}", field=field)
        size = len(_enc.encode(state))
        cap = self.settings.state_max_bytes
        if size > cap:
            raise PayloadTooLargeError(
                f"{field[2:]} is {size} bytes encoded, over the {cap}-byte limit",
                details={"size": size, "limit": cap},
            )
        return state

    async def _create(
        self, task_id: str, agent_id: str, body: dict[str, Any], ttl: int | None, *, existing_ok: bool
    ) -> State:
        key = pair_key(task_id, agent_id)
        e = await self._read(key)
        if e and e.live and e.record:
            return self._existing(e, existing_ok)
        now = _now()
        ref = StateRef(id=new_state_id(now), task_id=task_id, agent_id=agent_id)
        rec = StateRecord(
            id=ref.id,
            task_id=task_id,
            agent_id=agent_id,
            state=body,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=ttl) if ttl else None,
        )
        value = _enc.encode(rec)
        started = time.monotonic()
        await self._put_refs(ref, ttl)
        try:
            for _ in range(_CAS_ATTEMPTS):
                if e and e.live and e.record:
                    if e.record.id == ref.id:  # our earlier attempt landed before its ack was lost
                        return to_state(rec, e.seq)
                    raise _Lost(e)
                try:
                    seq = await self._cas(key, value, e.seq if e else 0, ttl=ttl)
                except _Stale:
                    e = await self._read(key)
                    continue
                break
            else:
                raise ConflictError(f"the state of this pair is changing too fast; retry ({key})")
        except _Lost as lost:
            await self._drop_refs(ref)
            return self._existing(lost.entry, existing_ok)
        # On any other failure the commit's outcome is unknown: the index entries stay, and
        # ``list`` collects them after ORPHAN_GRACE if the primary never named this id.
        self._remember(ref)
        if time.monotonic() - started > ORPHAN_GRACE / 2:  # a lister may have collected our index
            await self._put_refs(ref, ttl)
        return to_state(rec, seq)

    @staticmethod
    def _existing(e: _Entry, existing_ok: bool) -> State:
        assert e.record is not None
        if existing_ok:
            return to_state(e.record, e.seq)
        raise ConflictError(
            f"task {e.record.task_id!r} and agent {e.record.agent_id!r} already have state {e.record.id}",
            details={"state_id": e.record.id, "current_revision": e.seq},
        )

    def _remember(self, ref: StateRef) -> None:
        self._refs[ref.id] = ref
        if len(self._refs) > 100_000:
            self._refs.popitem(last=False)

    async def _ref(self, state_id: str) -> StateRef | None:
        if not state_id:
            raise BadRequestError("state_id must not be empty", field="$.state_id")
        if not _ID_RE.match(state_id):
            return None
        cached = self._refs.get(state_id)
        if cached:
            return cached
        try:
            msg = await retry_transient(
                lambda: self.js.get_msg(STREAM, subject=f"{_PRE}id.{state_id}", direct=True)
            )
        except nats.js.errors.NotFoundError:
            return None
        if not msg.data or (msg.headers and KV_OPERATION_HEADER in msg.headers):
            return None
        ref = _ref_dec.decode(msg.data)
        self._remember(ref)
        return ref

    async def _resolve(self, ref: StateRef) -> State | None:
        e = await self._read(pair_key(ref.task_id, ref.agent_id))
        if e and e.live and e.record and e.record.id == ref.id:
            return to_state(e.record, e.seq)
        return None

    async def _put_refs(self, ref: StateRef, ttl: int | None) -> None:
        value = _enc.encode(ref)
        puts = [partial(self.js.publish, _PRE + k, value, msg_ttl=ttl) for k in _ref_keys(ref)]
        await asyncio.gather(*(retry_transient(p) for p in puts))

    async def _drop_refs(self, ref: StateRef) -> None:
        # A stream purge by subject leaves no tombstone: index scans never see deleted states.
        purges = [partial(self.js.purge_stream, STREAM, subject=_PRE + k) for k in _ref_keys(ref)]
        await asyncio.gather(*(retry_transient(p) for p in purges))

    async def _read(self, key: str) -> _Entry | None:
        try:
            msg = await retry_transient(lambda: self.js.get_msg(STREAM, subject=_PRE + key, direct=True))
        except nats.js.errors.NotFoundError:
            return None
        assert msg.seq is not None
        hdrs = msg.headers or {}
        record = _rec_dec.decode(msg.data) if msg.data else None
        live = record is not None and KV_OPERATION_HEADER not in hdrs and _MARKER not in hdrs
        if live and record and record.expires_at and record.expires_at <= _now():
            live = False  # the server removes expired messages lazily; the record says when
        return _Entry(seq=msg.seq, record=record, live=live)

    async def _cas(
        self,
        key: str,
        value: bytes,
        last: int,
        *,
        ttl: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        hdrs = {**(headers or {}), "Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await retry_transient(
                lambda: self.js.publish(_PRE + key, value, headers=dict(hdrs), msg_ttl=ttl)
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise _Stale from None
            raise
        return int(ack.seq)

    async def _scan(self, filter_key: str) -> dict[str, StateRef]:
        """Latest value of every key matching ``filter_key``: one multi-last get, else paged gets."""
        try:
            msgs, _ = await retry_transient(lambda: self._direct({"multi_last": [_PRE + filter_key]}))
        except TooManyResults:
            msgs = await self._subject_msgs(_PRE + filter_key)
        latest: dict[str, bytes | None] = {}  # by subject; a later message replaces an earlier one
        for msg in msgs:
            hdrs = msg.headers or {}
            live = msg.data and KV_OPERATION_HEADER not in hdrs and _MARKER not in hdrs
            latest[hdrs.get("Nats-Subject", msg.subject)] = msg.data if live else None
        refs = (_ref_dec.decode(data) for data in latest.values() if data)
        return {r.id: r for r in refs}

    async def _subject_msgs(self, subject: str) -> _Msgs:
        """Every kept message on ``subject`` (wildcards allowed), oldest first: batch direct gets."""
        out: _Msgs = []
        seq = 1
        while True:
            request = {"seq": seq, "next_by_subj": subject, "batch": _BATCH}
            page, pending = await retry_transient(partial(self._direct, request))
            out.extend(page)
            if not page or not pending:
                return out
            seq = _seq(page[-1]) + 1

    async def _direct(self, request: dict[str, Any]) -> tuple[_Msgs, int]:
        """One batched direct get: its messages, and how many more match (``Nats-Num-Pending``)."""
        got = await direct_get(self.nc, STREAM, request, timeout=self.settings.request_timeout)
        return got.messages, got.pending


class _Lost(Exception):
    """Another create committed the pair first."""

    def __init__(self, entry: _Entry) -> None:
        super().__init__("lost")
        self.entry = entry


def _seq(msg: Msg) -> int:
    """Stream sequence of a direct-get reply."""
    return int((msg.headers or {})["Nats-Sequence"])


def _ref_keys(ref: StateRef) -> list[str]:
    return [f"id.{ref.id}", f"task.{token(ref.task_id)}.{ref.id}", f"agent.{token(ref.agent_id)}.{ref.id}"]


def _remaining(expires_at: datetime | None) -> int | None:
    if expires_at is None:
        return None
    left = (expires_at - _now()).total_seconds()
    return max(1, int(left) + (left % 1 > 0))


def _check_ids(task_id: str | None, agent_id: str | None) -> None:
    for name, value in (("task_id", task_id), ("agent_id", agent_id)):
        if value is not None and not value.strip():
            raise BadRequestError(f"{name} must be a non-blank string", field=f"$.{name}")
        if value is not None and len(token(value)) > MAX_ID_TOKEN:
            raise BadRequestError(
                f"{name} is too long ({len(value.encode())} bytes; escaped it must fit {MAX_ID_TOKEN})",
                field=f"$.{name}",
            )


def _json_kind(value: Any) -> str:
    kinds = ((bool, "a boolean"), (int | float, "a number"), (str, "a string"), (list, "an array"))
    return (
        "null" if value is None else next((k for t, k in kinds if isinstance(value, t)), type(value).__name__)
    )


def watch_subject(task_id: str | None, agent_id: str | None) -> str:
    """Subject filter of primary records: one pair, a task's, an agent's (``None``: any)."""
    _check_ids(task_id, agent_id)
    t = "*" if task_id is None else token(task_id)
    a = "*" if agent_id is None else token(agent_id)
    return f"{_PRE}state.{t}.{a}"


def change_from_msg(msg: Msg, seq: int | None = None) -> StateChange | None:
    """The change a primary-record message carries (``None``: a server expiry marker).

    ``seq``: its stream sequence, for a message read by a direct get (which has no JetStream metadata).
    """
    hdrs = msg.headers or {}
    if not msg.data or _MARKER in hdrs:
        return None
    if seq is None:
        seq = msg.metadata.sequence.stream
    if KV_OPERATION_HEADER in hdrs:  # our deletion marker carries the State as it was, revision included
        return StateChange(op="delete", state=_state_dec.decode(msg.data), revision=seq)
    rec = _rec_dec.decode(msg.data)
    op: Literal["create", "update"] = "create" if rec.created_at == rec.updated_at else "update"
    return StateChange(op=op, state=to_state(rec, seq), revision=seq)
