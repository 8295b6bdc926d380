"""Batched direct gets (ADR-31) against a real server: answers, statuses, and one reply
subscription per connection however many gets it sends."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from statek_bus.mesh.direct import direct_get
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.errors import ServiceUnavailableError

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
