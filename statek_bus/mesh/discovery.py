"""Finding running service instances with ``$SRV.PING/INFO/STATS`` (ADR-32 scatter-gather).

``$SRV`` subjects have no queue group, so one request reaches every instance; replies are
collected on an inbox for a fixed window (or, for readiness probes, until a quiet period passes).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["gather", "info", "ping", "stats", "status_report"]


async def gather(
    nc: Client, subject: str, *, wait: float = 0.3, quiet: float | None = None
) -> list[dict[str, Any]]:
    """Publish to ``subject`` and collect every JSON reply for up to ``wait`` seconds.

    With ``quiet``, collection ends early once ``quiet`` seconds pass without a reply after the
    first one (a loaded instance may answer later than its peers, so listings use the full window).
    """
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        try:
            replies.append(json.loads(msg.data))
        except ValueError:
            return
        got.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            got.clear()
            left = deadline - loop.time()
            budget = left if not replies or quiet is None else min(quiet, left)
            try:
                await asyncio.wait_for(got.wait(), timeout=max(0.0, budget))
            except TimeoutError:
                if replies:
                    break
    finally:
        await sub.unsubscribe()
    return replies


def _subject(verb: str, name: str | None) -> str:
    return f"$SRV.{verb}" + (f".{name}" if name else "")


async def ping(nc: Client, name: str | None = None, *, wait: float = 0.3) -> list[dict[str, Any]]:
    """``$SRV.PING`` replies of every instance (of ``name``, when given); readiness probes loop on
    it, so it returns shortly after the replies stop coming."""
    return await gather(nc, _subject("PING", name), wait=wait, quiet=0.05)


async def info(nc: Client, name: str | None = None, *, wait: float = 0.3) -> list[dict[str, Any]]:
    """``$SRV.INFO`` replies."""
    return await gather(nc, _subject("INFO", name), wait=wait)


async def stats(nc: Client, name: str | None = None, *, wait: float = 0.3) -> list[dict[str, Any]]:
    """``$SRV.STATS`` replies."""
    return await gather(nc, _subject("STATS", name), wait=wait)


async def status_report(nc: Client, *, wait: float = 1.0) -> list[dict[str, Any]]:
    """One entry per running instance: name, version, id, and each endpoint's subject and counts."""
    infos, all_stats = await asyncio.gather(info(nc, wait=wait), stats(nc, wait=wait))
    # an instance whose INFO arrived but whose STATS did not (or vice versa) is still listed
    by_id = {s.get("id"): s for s in all_stats}
    out = []
    for i in sorted(infos, key=lambda x: (x.get("name", ""), x.get("id", ""))):
        counts = {e.get("name"): e for e in (by_id.get(i.get("id")) or {}).get("endpoints") or []}
        out.append(
            {
                "name": i.get("name"),
                "version": i.get("version"),
                "id": i.get("id"),
                "description": i.get("description"),
                "endpoints": [
                    {
                        "name": e.get("name"),
                        "subject": e.get("subject"),
                        "requests": counts.get(e.get("name"), {}).get("num_requests", 0),
                        "errors": counts.get(e.get("name"), {}).get("num_errors", 0),
                    }
                    for e in i.get("endpoints") or []
                ],
            }
        )
    return out
