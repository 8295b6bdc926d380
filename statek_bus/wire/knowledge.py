"""What the ``statek_knowledge`` bucket stores: the published knowledge version and who serves it.

Stored records, JSON like every other (``nats kv get statek_knowledge manifest``), with schemas
generated beside :mod:`statek_bus.wire.messages`' (:mod:`statek_bus.wire.schemas`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

__all__ = ["KnowledgeFile", "KnowledgeKind", "KnowledgeManifest", "KnowledgeServed"]


KnowledgeKind = Literal["prompts", "warmups", "examples", "documents"]
"""What a knowledge file is: a prompt file, a warmup def, an example or a document."""


class KnowledgeFile(msgspec.Struct, kw_only=True):
    """One file of a published knowledge version."""

    kind: KnowledgeKind
    """Its kind (the directory it was published from)."""
    path: str
    """Its path inside that directory, ``/``-separated (``triage.md``, ``triage/refunds/one.md``)."""
    sha256: str
    """SHA-256 of its bytes (hex); the content is the key ``file.<sha256>`` of ``statek_knowledge``."""
    size: int
    """Its size in bytes."""


class KnowledgeManifest(msgspec.Struct, kw_only=True):
    """Key ``manifest`` of ``statek_knowledge``: the version every executor serves."""

    version: str
    """Content hash of the whole version (the first 16 hex digits of a SHA-256 over its files)."""
    files: list[KnowledgeFile] = []
    """Its files, sorted by kind and path."""
    published_at: datetime | None = None
    """When it was published (UTC)."""
    source: str = ""
    """Who published it (``statek-bus knowledge publish``, or an executor from its STATEK_*_DIR settings)."""
    retired: list[str] = []
    """SHA-256s of the files the previous version had and this one dropped: still stored, so an
    executor reading the previous version finds them; the next publication deletes them."""


class KnowledgeServed(msgspec.Struct, kw_only=True):
    """Key ``served.<instance>`` of ``statek_knowledge``: the version one executor has swapped in."""

    instance: str
    """The executor's id."""
    version: str
    """The knowledge version it serves from its next step on."""
    at: datetime
    """When it swapped it in (UTC)."""
    error: str = ""
    """Why it refused the newest published version (it keeps serving ``version``); ``""``: none."""
