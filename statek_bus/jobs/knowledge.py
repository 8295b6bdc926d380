"""The ``statek_knowledge`` bucket: one published version of prompt files, warmups, examples and documents.

Layout (names in :mod:`statek_bus.wire.subjects`):

- ``file.<sha256>``: one file's bytes, content-addressed, so equal files are stored once and a
  version's files can be written before anyone can see the version;
- ``manifest``: the :class:`~statek_bus.wire.knowledge.KnowledgeManifest` naming every file of the
  version; written last, with a compare-and-set, so a reader sees either the old version or the
  new one whole, never a mix;
- ``served.<instance>``: which version each executor has swapped in (or why it refused one).

A publication names the kinds it replaces (``prompts``, ``warmups``, ``examples``,
``documents``); the other kinds of the current version are kept. The files a version drops stay
one more generation (``retired``: an executor still reading the previous version finds them) and
are deleted by the publication after. Two publishers racing retry their compare-and-set; a file
retired two generations back and re-added by one while the other deletes it is the one case a
version can miss a file, and executors then keep serving the version they have.

The bytes here are raw: what they mean is :mod:`statek_bus.authoring.knowledge`'s business (this
room sits below it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from statek_bus.jobs.store import utcnow
from statek_bus.wire.errors import BadRequestError, PayloadTooLargeError
from statek_bus.wire.knowledge import KnowledgeFile, KnowledgeKind, KnowledgeManifest, KnowledgeServed
from statek_bus.wire.limits import MAX_KNOWLEDGE_BYTES, MAX_KNOWLEDGE_FILE_BYTES, MAX_KNOWLEDGE_FILES
from statek_bus.wire.messages import decode, encode
from statek_bus.wire.subjects import (
    KNOWLEDGE_BUCKET,
    KNOWLEDGE_MANIFEST_KEY,
    KNOWLEDGE_SERVED_KEYS,
    knowledge_file_key,
    knowledge_served_key,
)

__all__ = ["KINDS", "KnowledgeStore", "RawFile", "read_directory", "version_of"]

KINDS: tuple[KnowledgeKind, ...] = get_args(KnowledgeKind)
"""Every kind, in manifest order."""
_FETCH_BATCH = 64
"""Files read (or written) at once when a version is read (or published)."""
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "prompts": (".md",),
    "warmups": (".py",),
    "examples": (".md",),
    "documents": (".txt", ".md"),
}


@dataclass(frozen=True)
class RawFile:
    """One file to publish, or one file of a version read back."""

    kind: KnowledgeKind
    """Its kind."""
    path: str
    """Its ``/``-separated path inside the kind's directory."""
    data: bytes
    """Its bytes."""

    @property
    def sha256(self) -> str:
        """SHA-256 of the bytes (hex)."""
        return hashlib.sha256(self.data).hexdigest()


def _too_large(what: str, size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{what} is {size} bytes, over the {limit}-byte limit", details={"limit": limit}
    )


def read_directory(kind: KnowledgeKind, root: str | Path) -> list[RawFile]:
    """The files of ``kind`` under ``root``: ``prompts/<role>.md`` and ``warmups/<role>.py`` at the top,
    ``examples/<role>/**/*.md`` and ``documents/**/*.{txt,md}`` at any depth.

    Raises:
        BadRequestError: ``root`` is not a directory.
        PayloadTooLargeError: a file over :data:`MAX_KNOWLEDGE_FILE_BYTES` (named), or too many files.
    """
    base = Path(root)
    if not base.is_dir():
        raise BadRequestError(
            f"{kind} directory {str(base)!r} does not exist or is not a directory", field=kind
        )
    suffixes = _SUFFIXES[kind]
    flat = kind in ("prompts", "warmups")
    found = sorted(p for p in (base.glob("*") if flat else base.rglob("*")) if p.suffix in suffixes)
    if kind == "examples":
        found = [p for p in found if len(p.relative_to(base).parts) >= 2]  # <role>/.../<name>.md
    out: list[RawFile] = []
    for p in found:
        if not p.is_file():
            continue
        rel = p.relative_to(base).as_posix()
        size = p.stat().st_size
        if size > MAX_KNOWLEDGE_FILE_BYTES:
            raise _too_large(f"{kind}/{rel}", size, MAX_KNOWLEDGE_FILE_BYTES)
        out.append(RawFile(kind, rel, p.read_bytes()))
        if len(out) > MAX_KNOWLEDGE_FILES:
            raise PayloadTooLargeError(
                f"{kind} directory {str(base)!r} holds over {MAX_KNOWLEDGE_FILES} files"
            )
    return out


def version_of(files: Iterable[KnowledgeFile]) -> str:
    """The content hash of a version: equal files give equal versions, on every machine."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: (f.kind, f.path)):
        h.update(f"{f.kind}\0{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()[:16]


class KnowledgeStore:
    """The ``statek_knowledge`` bucket (see the module docstring)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> KnowledgeStore:
        """The store over the provisioned bucket."""
        return cls(await js.key_value(KNOWLEDGE_BUCKET))

    async def manifest(self) -> tuple[KnowledgeManifest | None, int]:
        """The published manifest and its revision (``None, 0``: nothing published yet)."""
        try:
            entry = await self.kv.get(KNOWLEDGE_MANIFEST_KEY)
        except (KeyNotFoundError, NotFoundError):
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        return decode(entry.value, KnowledgeManifest), entry.revision or 0

    async def files(
        self, manifest: KnowledgeManifest, cache: dict[str, bytes] | None = None
    ) -> list[RawFile]:
        """The bytes of every file of ``manifest``; ``KeyError`` if one is gone (a newer version replaced it).

        Args:
            manifest: the version to read.
            cache: bytes already read, by SHA-256; only the others are fetched (in parallel), and
                the cache is left holding exactly this version's files.
        """
        known = cache if cache is not None else {}
        missing = sorted({f.sha256 for f in manifest.files} - known.keys())

        async def fetch(sha: str) -> tuple[str, bytes]:
            try:
                entry = await self.kv.get(knowledge_file_key(sha))
            except (KeyNotFoundError, NotFoundError):
                where = next(f"{f.kind}/{f.path}" for f in manifest.files if f.sha256 == sha)
                raise KeyError(where) from None
            return sha, entry.value or b""

        for start in range(0, len(missing), _FETCH_BATCH):
            known.update(await asyncio.gather(*(fetch(sha) for sha in missing[start : start + _FETCH_BATCH])))
        out = [RawFile(f.kind, f.path, known[f.sha256]) for f in manifest.files]
        if cache is not None:
            for sha in set(cache) - {f.sha256 for f in manifest.files}:
                del cache[sha]
        return out

    async def publish(
        self, files: Iterable[RawFile], kinds: Iterable[KnowledgeKind], *, source: str, attempts: int = 10
    ) -> KnowledgeManifest:
        """Make ``files`` the published files of ``kinds`` (other kinds are kept); returns the new manifest.

        Publishing what is already published changes nothing (same version, no write).

        Raises:
            PayloadTooLargeError: a file, the file count or the total size over its limit.
        """
        new = list(files)
        replaced = set(kinds) | {f.kind for f in new}
        for f in new:
            if len(f.data) > MAX_KNOWLEDGE_FILE_BYTES:
                raise _too_large(f"{f.kind}/{f.path}", len(f.data), MAX_KNOWLEDGE_FILE_BYTES)
        for _ in range(attempts):
            current, revision = await self.manifest()
            kept = [f for f in (current.files if current else []) if f.kind not in replaced]
            entries = kept + [
                KnowledgeFile(kind=f.kind, path=f.path, sha256=f.sha256, size=len(f.data)) for f in new
            ]
            entries.sort(key=lambda f: (KINDS.index(f.kind), f.path))
            if len(entries) > MAX_KNOWLEDGE_FILES:
                raise PayloadTooLargeError(f"a knowledge version holds at most {MAX_KNOWLEDGE_FILES} files")
            total = sum(f.size for f in entries)
            if total > MAX_KNOWLEDGE_BYTES:
                raise _too_large("the knowledge version", total, MAX_KNOWLEDGE_BYTES)
            version = version_of(entries)
            if current is not None and current.version == version:
                return current
            shas = {f.sha256 for f in entries}
            missing = [
                f for f in {f.sha256: f for f in new}.values() if f.sha256 not in self._stored(current)
            ]
            await self._put_files(missing)
            old = {f.sha256 for f in current.files} if current is not None else set()
            manifest = KnowledgeManifest(
                version=version,
                files=entries,
                published_at=utcnow(),
                source=source,
                retired=sorted(old - shas),
            )
            try:
                await self.kv.update(KNOWLEDGE_MANIFEST_KEY, encode(manifest), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another publisher got there first: merge onto its version
            if current is not None:  # the generation before: nobody reads it any more
                for sha in set(current.retired) - shas:
                    with contextlib.suppress(KeyNotFoundError, NotFoundError):
                        await self.kv.delete(knowledge_file_key(sha))
            return manifest
        raise RuntimeError("the knowledge manifest kept changing while publishing; try again")

    @staticmethod
    def _stored(manifest: KnowledgeManifest | None) -> set[str]:
        """The files the bucket holds for ``manifest``: its own and the ones it retired."""
        return {f.sha256 for f in manifest.files} | set(manifest.retired) if manifest is not None else set()

    async def _put_files(self, files: list[RawFile]) -> None:
        for start in range(0, len(files), _FETCH_BATCH):
            batch = files[start : start + _FETCH_BATCH]
            await asyncio.gather(*(self.kv.put(knowledge_file_key(f.sha256), f.data) for f in batch))

    async def watch_manifest(self) -> AsyncIterator[tuple[KnowledgeManifest | None, int]]:
        """Each published manifest, from the current one on, as it is written."""
        watcher = await self.kv.watch(KNOWLEDGE_MANIFEST_KEY)
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the initial value
                if entry.value:
                    yield decode(entry.value, KnowledgeManifest), entry.revision or 0
        finally:  # on a closed connection stop() raises: never in place of the error in flight
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def mark_served(self, served: KnowledgeServed) -> None:
        """Record which version an executor serves."""
        await self.kv.put(knowledge_served_key(served.instance), encode(served))

    async def unmark_served(self, instance: str) -> None:
        """An executor stopped: it serves nothing any more."""
        with contextlib.suppress(KeyNotFoundError, NotFoundError):
            await self.kv.delete(knowledge_served_key(instance))

    async def served(self) -> Mapping[str, KnowledgeServed]:
        """What each running executor serves, by instance."""
        out: dict[str, KnowledgeServed] = {}
        watcher = await self.kv.watch(KNOWLEDGE_SERVED_KEYS)
        try:
            async for entry in watcher:  # the current values, then None
                if entry is None:
                    break
                if entry.value:
                    s = decode(entry.value, KnowledgeServed)
                    out[s.instance] = s
        finally:  # on a closed connection stop() raises: never in place of the error in flight
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return out
