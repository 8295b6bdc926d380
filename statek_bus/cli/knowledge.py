"""``statek-bus knowledge {publish,show}``: the prompt files, warmups, examples and documents executors serve.

``publish DIR`` reads ``DIR/prompts/<role>.md``, ``DIR/warmups/<role>.py``,
``DIR/examples/<role>/**/*.md`` and ``DIR/documents/**/*.{txt,md}`` (or the directories given
with ``--prompts``/``--warmups``/``--examples``/``--documents``), checks that every file parses
(an error names the file and line, and nothing is published), and publishes them as one version
to ``statek_knowledge``: each kind found replaces that kind, the others stay. Running executors
swap the new version in between steps, without a restart; ``--wait`` returns once every running
executor serves it (or says why one refused it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from statek_bus.authoring.knowledge import build_knowledge
from statek_bus.cli import run_async
from statek_bus.cli.output import EXIT_ERROR, EXIT_OK, UsageError, print_json, table
from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.knowledge import KINDS, KnowledgeStore, read_directory, version_of
from statek_bus.mesh.discovery import ping
from statek_bus.mesh.settings import Settings
from statek_bus.wire.knowledge import KnowledgeFile, KnowledgeKind, KnowledgeManifest, KnowledgeServed
from statek_bus.wire.messages import decode
from statek_bus.wire.subjects import KNOWLEDGE_SERVED_KEYS, SERVICE_EXECUTOR, knowledge_served_key

__all__ = ["live_executors", "register", "wait_served"]


def register(sub: Any) -> None:
    """Add ``knowledge`` and its subcommands to the ``statek-bus`` parser."""
    p = sub.add_parser(
        "knowledge", help="prompt files, warmups, examples and documents every executor serves"
    )
    p.add_argument("--nats-url", default=None, help="default: NATS_URL")
    cmds = p.add_subparsers(dest="knowledge_command", required=True, metavar="ACTION")

    c = cmds.add_parser("publish", help="publish a directory as the version every executor serves")
    c.add_argument("dir", nargs="?", default=None, help="holding prompts/, warmups/, examples/, documents/")
    for kind in KINDS:
        c.add_argument(
            f"--{kind}", default=None, metavar="DIR", help=f"the {kind} directory (instead of DIR/{kind})"
        )
    c.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="wait until every executor serves it"
    )
    c.set_defaults(func=_publish)

    c = cmds.add_parser("show", help="the published version and what each executor serves")
    c.add_argument("--json", action="store_true", help="print JSON instead of text")
    c.set_defaults(func=_show)


def _dirs(args: argparse.Namespace) -> dict[KnowledgeKind, Path]:
    dirs: dict[KnowledgeKind, Path] = {}
    for kind in KINDS:
        given = getattr(args, kind)
        if given:
            dirs[kind] = Path(given)
        elif args.dir and (Path(args.dir) / kind).is_dir():
            dirs[kind] = Path(args.dir) / kind
    if not dirs:
        where = (
            f"{args.dir!r} has no prompts/, warmups/, examples/ or documents/"
            if args.dir
            else "no directory given"
        )
        raise UsageError(f"knowledge publish: {where}")
    return dirs


def _publish(args: argparse.Namespace) -> int:
    dirs = _dirs(args)
    files = [f for kind, path in dirs.items() for f in read_directory(kind, path)]
    try:
        entries = [KnowledgeFile(kind=f.kind, path=f.path, sha256=f.sha256, size=len(f.data)) for f in files]
        build_knowledge(version_of(entries), files)
    except ValueError as exc:
        print(f"statek-bus: nothing published: {exc}", file=sys.stderr)
        return EXIT_ERROR

    async def go(client: AsyncStatekClient) -> int:
        store = await KnowledgeStore.open(await client.jetstream())
        manifest = await store.publish(files, list(dirs), source="statek-bus knowledge publish")
        print(f"published knowledge version {manifest.version} ({len(manifest.files)} files)")
        if args.wait > 0:
            live = await live_executors(await client.connection())
            served = await wait_served(store, manifest.version, args.wait, live)
            for s in served.values():
                print(f"executor {s.instance}: {s.version}" + (f" ({s.error})" if s.error else ""))
            behind = len(live) - sum(s.version == manifest.version for s in served.values())
            if behind:
                print(f"statek-bus: {behind} of {len(live)} executors do not serve it", file=sys.stderr)
            return EXIT_ERROR if behind else EXIT_OK
        return EXIT_OK

    return _run(args, go)


async def live_executors(nc: Client) -> set[str]:
    """The ``served.<instance>`` ids of the executors answering ``$SRV.PING`` now."""
    replies = await ping(nc, SERVICE_EXECUTOR, wait=0.5)
    return {str((r.get("metadata") or {}).get("knowledge_id")) for r in replies} - {"", "None"}


async def wait_served(
    store: KnowledgeStore, version: str, timeout: float, live: set[str]
) -> dict[str, KnowledgeServed]:
    """What each live executor serves, once all serve ``version`` or refused it (or at ``timeout``).

    Args:
        store: the knowledge bucket.
        version: the version published.
        timeout: seconds to wait at most.
        live: the executors to wait for (:func:`live_executors`); a killed one left its entry behind.
    """
    keys = {knowledge_served_key(i) for i in live}
    served: dict[str, KnowledgeServed] = {}
    watcher = await store.kv.watch(KNOWLEDGE_SERVED_KEYS)

    def settled() -> bool:
        return len(served) == len(keys) and all(s.version == version or s.error for s in served.values())

    try:
        async with asyncio.timeout(timeout):
            async for entry in watcher:
                if entry is not None and entry.key in keys and entry.value:
                    served[entry.key] = decode(entry.value, KnowledgeServed)
                if settled():
                    break
    except TimeoutError:
        pass
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return {s.instance: s for s in served.values()}


def _show(args: argparse.Namespace) -> int:
    async def go(client: AsyncStatekClient) -> int:
        store = await KnowledgeStore.open(await client.jetstream())
        manifest, _ = await store.manifest()
        served = await store.served()
        live = await live_executors(await client.connection())
        if args.json:
            print_json({"manifest": manifest, "served": list(served.values()), "running": sorted(live)})
            return EXIT_OK
        _show_manifest(manifest)
        if served:
            table(
                ["EXECUTOR", "SERVES", "SINCE", "ERROR"],
                [
                    (
                        s.instance + ("" if s.instance in live else " (not running)"),
                        s.version,
                        f"{s.at:%Y-%m-%d %H:%M:%S}",
                        s.error,
                    )
                    for s in served.values()
                ],
            )
        return EXIT_OK

    return _run(args, go)


def _show_manifest(manifest: KnowledgeManifest | None) -> None:
    if manifest is None:
        print("nothing published")
        return
    print(
        f"version {manifest.version}, published {manifest.published_at:%Y-%m-%d %H:%M:%S} by {manifest.source}"
    )
    table(["KIND", "PATH", "BYTES"], [(f.kind, f.path, str(f.size)) for f in manifest.files])


def _run(args: argparse.Namespace, action: Any) -> int:
    settings = Settings.from_env(**({"nats_url": args.nats_url} if args.nats_url else {}))

    async def go() -> int:
        async with AsyncStatekClient(settings=settings) as client:
            code: int = await action(client)
            return code

    code: int = run_async(go())
    return code
