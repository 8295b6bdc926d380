"""The ``statek_knowledge`` bucket on a server of the test's own: versions, kinds kept, files kept a
generation after a version drops them."""

from __future__ import annotations

import pytest

from statek_bus.jobs.knowledge import KnowledgeStore, RawFile
from statek_bus.mesh.connection import connect
from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.subjects import knowledge_file_key


async def test_versions_keep_other_kinds_and_dropped_files_for_one_generation(
    fresh_server: NatsServer,
) -> None:
    s = Settings.from_env({}, nats_url=fresh_server.url)
    nc = await connect(s, name="statek-test")
    try:
        await provision(nc.jetstream(), s)
        store = await KnowledgeStore.open(nc.jetstream())
        prompt = RawFile("prompts", "a.md", b"# System Prompt\nA")
        doc1, doc2, doc3 = (
            RawFile("documents", "d.md", f"# ord_no: 1\n# topic: t\n# title: v{i}\n".encode())
            for i in (1, 2, 3)
        )
        first = await store.publish([prompt, doc1], ["prompts", "documents"], source="test")
        assert (
            await store.publish([prompt, doc1], ["prompts", "documents"], source="again") == first
        )  # no change
        second = await store.publish([doc2], ["documents"], source="test")
        assert [(f.kind, f.path) for f in second.files] == [("prompts", "a.md"), ("documents", "d.md")]
        assert second.version != first.version and second.retired == [doc1.sha256]
        assert (await store.kv.get(knowledge_file_key(doc1.sha256))).value == doc1.data  # still readable
        assert [f.data for f in await store.files(first)] == [prompt.data, doc1.data]
        third = await store.publish([doc3], ["documents"], source="test")
        assert third.retired == [doc2.sha256]
        cache: dict[str, bytes] = {}
        assert [f.data for f in await store.files(third, cache)] == [prompt.data, doc3.data]
        assert set(cache) == {prompt.sha256, doc3.sha256}
        with pytest.raises(KeyError, match=r"documents/d\.md"):  # two generations back: collected
            await store.files(first)
    finally:
        await nc.close()
