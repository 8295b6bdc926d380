"""``statek-bus queues {push,pending,pop}``: agents' event queues from a shell.

``push`` queues one event (a JSON argument) for an agent and prints the event id and the id of the
job it creates; the same ``--id`` twice creates one job. ``pending`` says whether events wait (exit
status 0 when some do, 1 otherwise); ``pop`` takes events off without creating jobs and prints one
JSON object per line. ``nats pub statek.agents.events.<agent> '<json>' -H Nats-Msg-Id:<id>`` queues
an event too.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from statek_bus.cli import run_with_client
from statek_bus.wire.errors import BadRequestError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``queues`` and its subcommands to the ``statek-bus`` parser."""
    p = sub.add_parser("queues", help="agents' event queues: each event pushed creates one job")
    p.add_argument("--nats-url", default=None, help="default: NATS_URL")
    cmds = p.add_subparsers(dest="queues_command", required=True, metavar="ACTION")

    c = cmds.add_parser("push", help="queue an event for an agent (prints the event and job ids)")
    c.add_argument("agent")
    c.add_argument("event", help="the event as JSON")
    c.add_argument("--id", default=None, help="event id (Nats-Msg-Id): the same id twice makes one job")
    c.set_defaults(func=_push)

    c = cmds.add_parser("pending", help="whether events wait for an agent (exit status 0: yes, 1: no)")
    c.add_argument("agent")
    c.set_defaults(func=_pending)

    c = cmds.add_parser("pop", help="take events off an agent's queue without creating jobs")
    c.add_argument("agent")
    c.add_argument("--count", type=int, default=1)
    c.set_defaults(func=_pop)


def _run(args: argparse.Namespace, call: Any) -> int:
    return run_with_client(args.nats_url, lambda client: call(client.queues))


def _push(args: argparse.Namespace) -> int:
    try:
        event = json.loads(args.event)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"the event is not valid JSON: {exc}", field="$.event") from None

    async def call(queues: Any) -> int:
        event_id = await queues.push(args.agent, event, args.id)
        print(json.dumps({"event_id": event_id, "job_id": queues.job_id(args.agent, event_id)}))
        return 0

    return _run(args, call)


def _pending(args: argparse.Namespace) -> int:
    async def call(queues: Any) -> int:
        waiting = bool(await queues.has_events(args.agent))
        print("events waiting" if waiting else "no events")
        return 0 if waiting else 1

    return _run(args, call)


def _pop(args: argparse.Namespace) -> int:
    async def call(queues: Any) -> int:
        for event in await queues.pop(args.agent, args.count):
            print(json.dumps(msgspec.to_builtins(event), ensure_ascii=False))
        return 0

    return _run(args, call)
