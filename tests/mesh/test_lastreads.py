"""The newest message on many subjects, read together (``statek_bus.mesh.lastreads``), against a
real server: each read gets what a read of its own would, fresh, in fewer requests, in pieces when
the messages are large, and a failed batch fails its readers instead of leaving them waiting."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from statek_bus.jobs.inbox import JobInbox
from statek_bus.mesh.direct import last_message
from statek_bus.mesh.lastreads import LastReads
from statek_bus.mesh.provision import provision
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import ServiceUnavailableError
from statek_bus.wire.subjects import INBOX_STREAM, inbox_subject

pytestmark = pytest.mark.asyncio


async def _stream(nc: Client, uid: str) -> str:
    name = f"last_{uid}"
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"l.{uid}.>"], allow_direct=True))
    return name


async def _requests(nc: Client, subject: str) -> list[int]:
    """A list that counts the requests sent to ``subject`` from now on (the server hands every
    subscriber on a subject a copy, JetStream's own API included)."""
    seen: list[int] = []

    async def count(msg: Msg) -> None:
        seen.append(1)

    await nc.subscribe(subject, cb=count)
    await nc.flush()
    return seen


async def test_reads_asked_together_get_their_own_answers_in_fewer_requests(
    nc: Client, uid: str, settings: Settings
) -> None:
    stream = await _stream(nc, uid)
    js = nc.jetstream()
    for s in range(30):  # subjects 30..59 hold nothing
        for i in range(s % 3 + 1):
            await js.publish(f"l.{uid}.{s}", f"{s}:{i}".encode())
    reads = LastReads(nc, stream, timeout=10)
    async with await nats.connect(settings.nats_url) as spy:
        sent = await _requests(spy, f"$JS.API.DIRECT.GET.{stream}")
        subjects = [f"l.{uid}.{s}" for s in range(60)] * 2  # each asked twice at once
        got = await asyncio.gather(*(reads.last(s) for s in subjects))
        await spy.flush()
        alone = [await last_message(nc, stream, s, leader=False, timeout=10) for s in subjects]
        assert [(m.seq, m.data) if m else None for m in got] == [
            (m.seq, m.data) if m else None for m in alone
        ]
        assert got[0] is not None and got[0].data == b"0:0" and got[59] is None
        assert len(sent) == 1  # 120 reads, 60 subjects: one multi_last


async def test_a_read_sees_every_write_acknowledged_before_it_was_asked(nc: Client, uid: str) -> None:
    stream = await _stream(nc, uid)
    js = nc.jetstream()
    reads = LastReads(nc, stream, timeout=10)
    for i in range(20):
        ack = await js.publish(f"l.{uid}.a", str(i).encode())
        stored = await reads.last(f"l.{uid}.a")
        assert stored is not None and (stored.seq, stored.data) == (ack.seq, str(i).encode())


async def test_large_messages_come_in_pieces_and_every_read_is_answered(
    nc: Client, uid: str, settings: Settings
) -> None:
    stream = await _stream(nc, uid)
    js = nc.jetstream()
    big = nc.max_payload // 3  # about three fit one batch's max_bytes
    for s in range(8):
        await js.publish(f"l.{uid}.{s}", bytes([65 + s]) * big)
    reads = LastReads(nc, stream, timeout=10)
    async with await nats.connect(settings.nats_url) as spy:
        sent = await _requests(spy, f"$JS.API.DIRECT.GET.{stream}")
        got = await asyncio.gather(*(reads.last(f"l.{uid}.{s}") for s in range(10)))
        await spy.flush()
    assert [m.data[:1] * len(m.data) if m else None for m in got] == [
        bytes([65 + s]) * big for s in range(8)
    ] + [
        None,
        None,
    ]
    assert 2 <= len(sent) <= 8  # in pieces, each of at most max_payload bytes


async def test_a_failed_batch_fails_each_of_its_readers(nc: Client, uid: str) -> None:
    reads = LastReads(nc, f"no_such_stream_{uid}", timeout=5)
    results = await asyncio.gather(*(reads.last(f"l.{uid}.{s}") for s in range(5)), return_exceptions=True)
    assert all(isinstance(r, ServiceUnavailableError | nats.errors.NoRespondersError) for r in results), (
        results
    )


async def test_a_reader_that_gives_up_leaves_the_others_answered(nc: Client, uid: str) -> None:
    stream = await _stream(nc, uid)
    await nc.jetstream().publish(f"l.{uid}.x", b"x")
    reads = LastReads(nc, stream, timeout=10)
    quitter = asyncio.ensure_future(reads.last(f"l.{uid}.x"))
    stayer = asyncio.ensure_future(reads.last(f"l.{uid}.x"))
    await asyncio.sleep(0)
    quitter.cancel()
    stored = await stayer
    assert stored is not None and stored.data == b"x" and quitter.cancelled()


async def test_the_inbox_checks_of_many_jobs_share_requests(nc: Client, uid: str, settings: Settings) -> None:
    """The executor checks every job's inbox up to three times a step; with one replica those
    checks of concurrent steps go out together (before, one request each)."""
    js = nc.jetstream()
    await provision(js, settings)
    inbox = JobInbox(nc, js, settings)
    jobs = [f"{uid}-{k}" for k in range(40)]
    acks = [await js.publish(inbox_subject(j), b"{}") for j in jobs[:10]]
    async with await nats.connect(settings.nats_url) as spy:
        sent = await _requests(spy, f"$JS.API.DIRECT.GET.{INBOX_STREAM}.>")
        sent_batched = await _requests(spy, f"$JS.API.DIRECT.GET.{INBOX_STREAM}")
        seqs = await asyncio.gather(*(inbox.last_seq(j) for j in jobs))
        await spy.flush()
    assert seqs == [a.seq for a in acks] + [0] * 30
    assert len(sent) + len(sent_batched) == 1
