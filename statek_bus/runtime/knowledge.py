"""The executor's knowledge: the published version it serves, swapped in whole between steps.

:class:`KnowledgeWatcher` (an async context manager the executor enters) does three things:

1. at start, publishes the directories the STATEK settings name (``STATEK_PROMPT_FILES_DIR``,
   ``STATEK_WARMUP_DEFS_DIR``, ``STATEK_EXAMPLES_DIR``, ``STATEK_DOCUMENTS_DIR``), after checking
   that they parse and apply to the served agents: a bad file stops the executor at start with an
   error naming the file and line, as STATEK does. Replicas mounting the same files publish the
   same content hash, so they agree on the version without coordinating;
2. loads the published version and applies it to the served agents (a
   :class:`~statek_bus.authoring.knowledge.KnowledgeView`);
3. watches the ``manifest`` key: a new version is read, parsed and applied off to the side, then
   replaces :attr:`KnowledgeWatcher.view` in one assignment. A step reads the attribute once, so it
   runs with one version from start to end (recorded in its engine state and its LLM requests'
   ``KNOWLEDGE`` metadata); the next step sees the new one. A version that does not parse or does
   not apply is refused: the executor keeps the one it has and says why in ``served.<instance>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from nats.js import JetStreamContext

from statek_bus.authoring.agents import AnyAgent
from statek_bus.authoring.knowledge import Knowledge, KnowledgeView, build_knowledge
from statek_bus.authoring.library import serve_library
from statek_bus.jobs.knowledge import KnowledgeStore, RawFile, read_directory, version_of
from statek_bus.jobs.store import utcnow
from statek_bus.mesh.connection import pause_before_retry, stop_tasks
from statek_bus.mesh.settings import Settings, SettingsError
from statek_bus.wire.knowledge import KnowledgeFile, KnowledgeKind, KnowledgeManifest, KnowledgeServed

__all__ = ["KnowledgeWatcher", "setting_dirs"]

log = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 5
"""Reads of the newest version when publishers keep replacing it while it is read."""
_UNMARK_WITHIN = 2.0
"""Seconds a stopping executor waits to take back its mark (a request takes milliseconds; with
the server gone it would wait the full request timeout, 10 s, for nothing)."""


_SETTING_NAMES: dict[KnowledgeKind, str] = {
    "prompts": "STATEK_PROMPT_FILES_DIR",
    "warmups": "STATEK_WARMUP_DEFS_DIR",
    "examples": "STATEK_EXAMPLES_DIR",
    "documents": "STATEK_DOCUMENTS_DIR",
}


def setting_dirs(settings: Settings) -> dict[KnowledgeKind, str]:
    """The knowledge directories the settings name, by kind."""
    dirs: dict[KnowledgeKind, str] = {
        "prompts": settings.prompt_files_dir,
        "warmups": settings.warmup_defs_dir,
        "examples": settings.examples_dir,
        "documents": settings.documents_dir,
    }
    return {k: v for k, v in dirs.items() if v}


def _entries(files: list[RawFile]) -> list[KnowledgeFile]:
    return [KnowledgeFile(kind=f.kind, path=f.path, sha256=f.sha256, size=len(f.data)) for f in files]


class KnowledgeWatcher:
    """The knowledge version an executor serves (see the module docstring).

    Args:
        js: JetStream of the executor's connection.
        settings: the STATEK directories to publish at start.
        agents: the served agents as their module defines them.
        instance: this executor's id in ``served.<instance>``.
        on_change: called with each new view once it is swapped in (e.g. to re-register agents).
    """

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        agents: Mapping[str, AnyAgent],
        instance: str,
        on_change: Callable[[KnowledgeView], object] | None = None,
    ) -> None:
        self.js = js
        self.settings = settings
        self.base = dict(agents)
        self.instance = instance
        self.on_change = on_change
        self.view = KnowledgeView(Knowledge(version=""), self.base)
        """The version steps run with; replaced whole, never changed in place."""
        self.store: KnowledgeStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._cache: dict[str, bytes] = {}  # the served version's files, by SHA-256

    async def __aenter__(self) -> KnowledgeWatcher:
        self.store = await KnowledgeStore.open(self.js)
        dirs = setting_dirs(self.settings)
        if dirs:
            await self._publish_dirs(dirs)
        manifest, _ = await self.store.manifest()
        if manifest is not None:
            view = await self._load(manifest)
            if isinstance(view, str):
                raise SettingsError(
                    f"the published knowledge version {manifest.version} cannot be served by this "
                    f"executor: {view} (publish a fixed version with `statek-bus knowledge publish`)"
                )
            self.view = view
        serve_library(self.view)
        await self._mark(self.view.version)
        self._task = asyncio.create_task(self._watch(), name="statek-knowledge-watch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await stop_tasks(self._task)
        if self.store is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_UNMARK_WITHIN):
                    await self.store.unmark_served(self.instance)

    async def _publish_dirs(self, dirs: Mapping[KnowledgeKind, str]) -> None:
        """Check the mounted directories against the served agents, then publish them."""
        assert self.store is not None
        files = [f for kind, path in dirs.items() for f in read_directory(kind, path)]
        current, _ = await self.store.manifest()
        kept: list[RawFile] = []
        if current is not None:  # the kinds no setting names stay as published
            others = KnowledgeManifest(version="", files=[f for f in current.files if f.kind not in dirs])
            kept = await self.store.files(others)
        merged = kept + files
        try:
            KnowledgeView(build_knowledge(version_of(_entries(merged)), merged), self.base)
        except ValueError as exc:  # one line naming the setting, the file and the line
            names = ", ".join(_SETTING_NAMES[k] for k in dirs)
            raise SettingsError(f"{names}: {exc}") from None
        published = await self.store.publish(
            files, list(dirs), source=f"executor {self.instance} (STATEK_*_DIR)"
        )
        log.info("published knowledge version %s from %s", published.version, ", ".join(dirs.values()))

    async def _load(self, manifest: KnowledgeManifest) -> KnowledgeView | str:
        """The view of ``manifest`` (or of a newer one, when a publisher replaced it while it was
        read), or why it cannot be served."""
        assert self.store is not None
        for _ in range(_LOAD_ATTEMPTS):
            try:
                files = await self.store.files(manifest, self._cache)
            except KeyError as exc:  # replaced meanwhile: its files are being collected
                latest, _ = await self.store.manifest()
                if latest is None or latest.version == manifest.version:
                    return f"file {exc.args[0]} of version {manifest.version} is missing from the bucket"
                manifest = latest
                continue
            try:
                return KnowledgeView(build_knowledge(manifest.version, files), self.base)
            except ValueError as exc:
                return str(exc)
        return f"the published version kept changing while it was read ({_LOAD_ATTEMPTS} attempts)"

    async def _watch(self) -> None:
        assert self.store is not None
        while True:
            try:
                async for manifest, _ in self.store.watch_manifest():
                    if manifest is None or manifest.version == self.view.version:
                        continue
                    view = await self._load(manifest)
                    if isinstance(view, str):
                        log.error("refusing knowledge version %s: %s", manifest.version, view)
                        await self._mark(self.view.version, f"version {manifest.version} refused: {view}")
                        continue
                    self.view = view  # one assignment: a running step keeps the view it read
                    serve_library(view)
                    log.info("serving knowledge version %s", view.version)
                    if self.on_change is not None:
                        result = self.on_change(view)
                        if asyncio.iscoroutine(result):
                            await result
                    await self._mark(view.version)
            except asyncio.CancelledError:
                raise
            except Exception:  # a lost watch (server restart): watch again
                log.warning("knowledge watch failed; watching again", exc_info=True)
                await pause_before_retry(1.0)

    async def _mark(self, version: str, error: str = "") -> None:
        assert self.store is not None
        served = KnowledgeServed(instance=self.instance, version=version, at=utcnow(), error=error)
        await self.store.mark_served(served)
