"""``statek-bus states {create,get,update,list,delete,history,watch}``: the States API from a shell.

Objects are JSON arguments, given as the last argument or with ``--state`` (``'{"step": 1}'``,
``@file.json``, or ``-`` for stdin). Writes print the state as JSON; reads (``get``, ``list``,
``history``) print text, or JSON with ``--json``; ``watch`` prints one JSON change per line, so the
output pipes into ``jq``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import msgspec

from statek_bus.cli import run_with_client
from statek_bus.cli.output import UsageError, table
from statek_bus.wire.errors import BadRequestError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``states`` and its subcommands to the ``statek-bus`` parser."""
    p = sub.add_parser("states", help="the States API: one JSON object per (task, agent)")
    p.add_argument("--nats-url", default=None, help="default: NATS_URL")
    cmds = p.add_subparsers(dest="states_command", required=True, metavar="ACTION")

    c = cmds.add_parser("create", help="create the state of a (task, agent) pair")
    _pair(c, required=True)
    _state_arg(c)
    c.add_argument("--ttl", type=int, default=None, help="delete it after this many seconds")
    c.add_argument("--get-or-create", action="store_true", help="return the existing state instead of 409")
    c.set_defaults(func=_create)

    c = cmds.add_parser("get", help="a state by id, or by --task-id and --agent-id")
    c.add_argument("state_id", nargs="?", default=None)
    _pair(c, required=False)
    _json(c)
    c.set_defaults(func=_get)

    c = cmds.add_parser("update", help="replace a state's object")
    c.add_argument("state_id")
    _state_arg(c)
    c.add_argument("--expected-revision", type=int, default=None, help="compare-and-set (409 if stale)")
    c.set_defaults(func=_update)

    c = cmds.add_parser("list", help="one page of states, oldest first")
    _pair(c, required=False)
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--page", type=int, default=None, help="page number, from 1")
    _json(c)
    c.set_defaults(func=_list)

    c = cmds.add_parser("delete", help="delete a state (prints it as it was)")
    c.add_argument("state_id")
    c.set_defaults(func=_delete)

    c = cmds.add_parser("history", help="kept revisions, newest first")
    c.add_argument("state_id")
    c.add_argument("--limit", type=int, default=None)
    _json(c)
    c.set_defaults(func=_history)

    c = cmds.add_parser("watch", help="print changes as they happen, one JSON line each (Ctrl-C stops)")
    _pair(c, required=False)
    c.add_argument("--state-id", default=None)
    c.add_argument("--since-revision", type=int, default=None, help="replay kept changes after it first")
    c.set_defaults(func=_watch)


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", nargs="?", default=None, help="the JSON object, @file or - (stdin)")
    p.add_argument("--state", dest="state_option", default=None, help="the same, as an option")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _state_value(args: argparse.Namespace) -> Any:
    if (args.state is None) == (args.state_option is None):
        raise UsageError("give the state once: as the last argument ('{\"count\": 0}') or with --state")
    return _object(args.state if args.state is not None else args.state_option)


def _pair(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--task-id", required=required, default=None)
    p.add_argument("--agent-id", required=required, default=None)


def _object(arg: str) -> Any:
    """Parse a JSON argument (``@path`` reads a file, ``-`` reads stdin)."""
    if arg == "-":
        text = sys.stdin.read()
    elif arg.startswith("@"):
        with open(arg[1:], encoding="utf-8") as f:
            text = f.read()
    else:
        text = arg
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"--state is not valid JSON: {exc}", field="$.state") from None


def _print(value: Any) -> None:
    print(json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False))


def _show(state: Any) -> None:
    for name in ("id", "task_id", "agent_id", "revision", "created_at", "updated_at"):
        value = getattr(state, name, None)
        if value is not None:
            print(
                f"{name:<11}{value:%Y-%m-%d %H:%M:%S}" if hasattr(value, "strftime") else f"{name:<11}{value}"
            )
    print(f"{'state':<11}{json.dumps(msgspec.to_builtins(state.state), ensure_ascii=False)}")


def _rows(states: Any) -> None:
    table(
        ["ID", "TASK", "AGENT", "REV", "UPDATED", "STATE"],
        [
            (
                s.id,
                s.task_id,
                s.agent_id,
                s.revision,
                f"{s.updated_at:%Y-%m-%d %H:%M:%S}",
                json.dumps(msgspec.to_builtins(s.state), ensure_ascii=False),
            )
            for s in states
        ],
    )


def _run(args: argparse.Namespace, call: Any) -> int:
    return run_with_client(args.nats_url, lambda client: call(client.states))


def _create(args: argparse.Namespace) -> int:
    state = _state_value(args)

    async def call(states: Any) -> int:
        if args.get_or_create:
            _print(await states.get_or_create(args.task_id, args.agent_id, state))
        else:
            _print(await states.create(args.task_id, args.agent_id, state, ttl_seconds=args.ttl))
        return 0

    return _run(args, call)


def _get(args: argparse.Namespace) -> int:
    async def call(states: Any) -> int:
        found = await states.retrieve(args.state_id, task_id=args.task_id, agent_id=args.agent_id)
        if args.json or found is None:
            _print(found)
        else:
            _show(found)
        return 0 if found is not None else 1

    return _run(args, call)


def _update(args: argparse.Namespace) -> int:
    state = _state_value(args)

    async def call(states: Any) -> int:
        _print(await states.update(args.state_id, state, expected_revision=args.expected_revision))
        return 0

    return _run(args, call)


def _list(args: argparse.Namespace) -> int:
    async def call(states: Any) -> int:
        page = await states.list(args.task_id, args.agent_id, limit=args.limit, page_number=args.page)
        if args.json:
            _print(page.data)
        else:
            _rows(page.data)
        return 0

    return _run(args, call)


def _delete(args: argparse.Namespace) -> int:
    async def call(states: Any) -> int:
        _print(await states.delete(args.state_id))
        return 0

    return _run(args, call)


def _history(args: argparse.Namespace) -> int:
    async def call(states: Any) -> int:
        kept = await states.history(args.state_id, limit=args.limit)
        if args.json:
            _print(kept)
        else:
            _rows(kept)
        return 0

    return _run(args, call)


def _watch(args: argparse.Namespace) -> int:
    async def call(states: Any) -> int:
        watch = states.watch(args.task_id, args.agent_id, args.state_id, since_revision=args.since_revision)
        async with watch:
            async for change in watch:
                print(json.dumps(msgspec.to_builtins(change), ensure_ascii=False), flush=True)
        return 0

    return _run(args, call)
