"""JetStream reads against a real server: batched direct gets (ADR-31), a subject's last message
(direct and from the leader), their statuses, and one reply subscription per connection however
many reads it sends."""

from __future__ import annotations

import asyncio
import gc
import json
import urllib.request
import weakref

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StreamConfig

from statek_bus.mesh.direct import direct_get, header_bytes, last_message, publish_acked, request_one
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.errors import PayloadTooLargeError, ServiceUnavailableError
from statek_bus.wire.subjects import WRONG_LAST_SEQUENCE

pytestmark = pytest.mark.asyncio


def _subscriptions_made(server: NatsServer) -> int:
    """How many subscriptions the server has registered since it started (``/subsz``)."""
    with urllib.request.urlopen(f"{server.monitor_url}/subsz", timeout=5) as r:
        return int(json.load(r)["num_inserts"])


async def _stream(nc: Client, uid: str, subjects: int, per_subject: int) -> str:
    js = nc.jetstream()
    name = f"direct_{uid}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"d.{uid}.>"], allow_direct=True))
    for s in range(subjects):
        for i in range(per_subject):
            await js.publish(f"d.{uid}.{s}", f"{s}:{i}".encode())
    return name


async def test_batches_come_back_whole_and_separate_while_many_run_at_once(
    nc: Client, uid: str, nats_server: NatsServer
) -> None:
    stream = await _stream(nc, uid, subjects=20, per_subject=5)
    await direct_get(nc, stream, {"seq": 1, "next_by_subj": f"d.{uid}.0", "batch": 1}, timeout=5)
    before = _subscriptions_made(nats_server)
    got = await asyncio.gather(
        *(
            direct_get(nc, stream, {"seq": 1, "next_by_subj": f"d.{uid}.{s}", "batch": 3}, timeout=5)
            for s in range(20)
            for _ in range(5)
        )
    )
    for k, batch in enumerate(got):
        s = k // 5
        assert [m.data for m in batch.messages] == [f"{s}:{i}".encode() for i in range(3)]
        assert batch.pending == 2
    lasts = await asyncio.gather(
        *(
            last_message(nc, stream, f"d.{uid}.{s}", leader=leader, timeout=5)
            for s in range(20)
            for leader in (False, True)
        )
    )
    assert [m.data for m in lasts if m is not None] == [f"{k // 2}:4".encode() for k in range(40)]
    assert _subscriptions_made(nats_server) == before  # no subscription per get


async def test_statuses_nothing_matched_last_of_each_and_no_stream(nc: Client, uid: str) -> None:
    stream = await _stream(nc, uid, subjects=3, per_subject=1)
    empty = await direct_get(nc, stream, {"seq": 1, "next_by_subj": f"d.{uid}.none", "batch": 5}, timeout=5)
    assert empty.messages == [] and empty.pending == 0
    last = await direct_get(nc, stream, {"multi_last": [f"d.{uid}.>"]}, timeout=5)
    assert sorted(m.data for m in last.messages) == [b"0:0", b"1:0", b"2:0"]
    with pytest.raises(ServiceUnavailableError):  # no such stream: the server says no responders
        await direct_get(nc, f"missing_{uid}", {"seq": 1, "next_by_subj": "x", "batch": 1}, timeout=5)


async def test_no_answer_is_a_timeout_and_the_next_get_still_works(nc: Client, uid: str) -> None:
    stream = await _stream(nc, uid, subjects=1, per_subject=1)
    silent = await nc.subscribe(f"$JS.API.DIRECT.GET.silent_{uid}")  # a responder that never answers
    with pytest.raises(nats.errors.TimeoutError):
        await direct_get(nc, f"silent_{uid}", {"seq": 1, "next_by_subj": "x", "batch": 1}, timeout=0.3)
    await silent.unsubscribe()
    ok = await direct_get(nc, stream, {"seq": 1, "next_by_subj": f"d.{uid}.0", "batch": 1}, timeout=5)
    assert [m.data for m in ok.messages] == [b"0:0"]


async def test_last_message_reads_alike_through_a_direct_get_and_the_leader(nc: Client, uid: str) -> None:
    js = nc.jetstream()
    stream = await _stream(nc, uid, subjects=2, per_subject=3)
    await js.publish(f"d.{uid}.1", b"with headers", headers={"X-Kind": "note", "Nats-Msg-Id": f"{uid}-h"})
    for leader in (False, True):
        last = await last_message(nc, stream, f"d.{uid}.1", leader=leader, timeout=5)
        assert last is not None
        assert (last.seq, last.data, last.headers.get("X-Kind")) == (7, b"with headers", "note")
        first = await last_message(nc, stream, f"d.{uid}.0", leader=leader, timeout=5)
        assert first is not None and (first.seq, first.data) == (3, b"0:2")
        assert await last_message(nc, stream, f"d.{uid}.none", leader=leader, timeout=5) is None


async def test_a_deleted_key_reads_as_missing_and_nobody_serving_is_transient(nc: Client, uid: str) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=f"direct_{uid}", direct=True))  # as provisioned
    await kv.put("k", b"v")
    await kv.delete("k")
    for leader in (False, True):
        marker = await last_message(nc, f"KV_direct_{uid}", f"$KV.direct_{uid}.k", leader=leader, timeout=5)
        assert marker is not None and marker.data == b"" and marker.headers.get("KV-Operation") == "DEL"
    with pytest.raises(nats.errors.NoRespondersError):
        await last_message(nc, f"absent_{uid}", "x", leader=False, timeout=5)
    with pytest.raises(nats.errors.NoRespondersError):
        await request_one(nc, f"nobody.{uid}", b"", timeout=5)


async def test_a_batch_that_keeps_arriving_waits_on_and_a_silent_request_times_out(
    nc: Client, uid: str
) -> None:
    async def slow(msg: Msg) -> None:  # four messages 0.2 s apart, then the end of the batch
        for i in range(4):
            await asyncio.sleep(0.2)
            await nc.publish(msg.reply, f"m{i}".encode())
        await nc.publish(msg.reply, b"", headers={"Status": "204", "Nats-Num-Pending": "0"})

    responder = await nc.subscribe(f"$JS.API.DIRECT.GET.slow_{uid}", cb=slow)
    batch = await direct_get(nc, f"slow_{uid}", {"seq": 1, "next_by_subj": "x", "batch": 4}, timeout=0.35)
    assert [m.data for m in batch.messages] == [b"m0", b"m1", b"m2", b"m3"]
    await responder.unsubscribe()
    silent = await nc.subscribe(f"silent.{uid}")
    with pytest.raises(nats.errors.TimeoutError):
        await request_one(nc, f"silent.{uid}", b"", timeout=0.3)
    await silent.unsubscribe()


async def test_an_acknowledged_publish_reports_its_sequence_duplicates_and_refusals(
    nc: Client, uid: str
) -> None:
    stream = await _stream(nc, uid, subjects=1, per_subject=2)
    ack = await publish_acked(nc, f"d.{uid}.0", b"third", headers={"Nats-Msg-Id": f"{uid}-3"}, timeout=5)
    assert (ack.stream, ack.seq, ack.duplicate) == (stream, 3, False)
    again = await publish_acked(nc, f"d.{uid}.0", b"third", headers={"Nats-Msg-Id": f"{uid}-3"}, timeout=5)
    assert (again.seq, again.duplicate) == (3, True)
    with pytest.raises(nats.js.errors.BadRequestError) as refused:  # what nats-py raises for it
        await publish_acked(
            nc, f"d.{uid}.0", b"x", headers={"Nats-Expected-Last-Subject-Sequence": "1"}, timeout=5
        )
    assert refused.value.err_code in WRONG_LAST_SEQUENCE
    last = await last_message(nc, stream, f"d.{uid}.0", leader=True, timeout=5)
    assert last is not None and (last.seq, last.data) == (3, b"third")  # the refused one stored nothing
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await publish_acked(nc, f"nostream.{uid}", b"x", timeout=5)


async def test_a_closed_connection_is_not_kept_alive_by_its_reply_subscription(
    settings: Settings, uid: str
) -> None:
    conn = await nats.connect(settings.nats_url)
    stream = await _stream(conn, uid, subjects=1, per_subject=1)
    assert await last_message(conn, stream, f"d.{uid}.0", leader=False, timeout=5) is not None
    await conn.close()
    gone = weakref.ref(conn)
    del conn
    gc.collect()
    assert gone() is None  # a process that opens and closes connections does not keep them all


async def test_a_busy_stream_is_a_transient_error(nc: Client, uid: str) -> None:
    async def busy(msg: Msg) -> None:  # a 503 status that is not "no responders": it has a body
        await nc.publish(msg.reply, b"busy", headers={"Status": "503", "Description": "busy"})

    sub = await nc.subscribe(f"$JS.API.DIRECT.GET.sick_{uid}.x", cb=busy)
    try:
        with pytest.raises(
            nats.js.errors.ServiceUnavailableError
        ):  # nats-py's 503: retry_transient retries it
            await last_message(nc, f"sick_{uid}", "x", leader=False, timeout=5)
    finally:
        await sub.unsubscribe()


async def test_a_request_over_max_payload_is_a_413_and_sends_nothing(nc: Client, uid: str) -> None:
    """Headers count: a payload that fits with headers that do not made the server close the
    connection (nats-py checks the payload alone)."""
    seen: list[Msg] = []

    async def note(msg: Msg) -> None:
        seen.append(msg)

    sub = await nc.subscribe(f"big.{uid}", cb=note)
    await nc.flush()
    headers = {"Nats-Expected-Last-Subject-Sequence": "12345"}
    fits = nc.max_payload - header_bytes(headers)
    for size, hdrs in ((nc.max_payload + 1, None), (fits + 1, headers)):
        with pytest.raises(PayloadTooLargeError) as caught:
            await request_one(nc, f"big.{uid}", b"x" * size, timeout=1.0, headers=hdrs)
        total = size + header_bytes(hdrs)
        assert caught.value.details == {"size": total, "limit": nc.max_payload}
        assert f"{total:,} bytes" in str(caught.value)
    with pytest.raises(nats.errors.TimeoutError):  # one that fits exactly is sent (nobody answers it)
        await request_one(nc, f"big.{uid}", b"x" * fits, timeout=1.0, headers=headers)
    await sub.unsubscribe()
    assert nc.is_connected and [len(m.data) for m in seen] == [fits]
