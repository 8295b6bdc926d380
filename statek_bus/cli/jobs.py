"""``statek-bus submit`` and ``statek-bus jobs {get,list,watch,cancel,send,history,agents}``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from statek_bus.cli import run_async
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.messages import JobEvent, JobStatus

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``submit`` and ``jobs ...`` to the ``statek-bus`` parser."""
    p = sub.add_parser("submit", help="submit a job to an agent")
    p.add_argument("agent", help="the agent role")
    p.add_argument("--var", action="append", default=[], metavar="NAME=JSON", help="a shared variable")
    p.add_argument("--param", action="append", default=[], metavar="NAME=JSON", help="a job parameter")
    p.add_argument("--locale", default=None, help="LANG-COUNTRY, e.g. EN-US")
    p.add_argument("--job-id", default=None, help="idempotency key (the same id twice returns the first job)")
    p.add_argument("--parent-id", default=None, help="the parent job")
    p.add_argument("--wait", action="store_true", help="wait until the job is DONE and print it")
    p.add_argument("--timeout", type=float, default=None, help="seconds --wait waits (default: forever)")
    _common(p, _submit)

    jobs = sub.add_parser("jobs", help="query, watch, cancel and message jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    p = jsub.add_parser("get", help="one job as JSON")
    p.add_argument("job_id")
    _common(p, lambda c, a: _print(c.jobs.get(a.job_id)))
    p = jsub.add_parser("list", help="jobs, oldest first")
    p.add_argument("--agent", default=None)
    p.add_argument("--status", default=None, choices=[s.value for s in JobStatus])
    p.add_argument("--parent-id", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--page", type=int, default=None, help="page number, from 1")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p, _list)
    p = jsub.add_parser("watch", help="show a job's events live until it is DONE")
    p.add_argument("job_id")
    p.add_argument("--new", action="store_true", help="only new events (default: replay the job's log first)")
    _common(p, _watch)
    p = jsub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.add_argument("--reason", default=None)
    _common(p, lambda c, a: _print(c.jobs.cancel(a.job_id, a.reason)))
    p = jsub.add_parser("send", help="send a message (or --notification) to a job; a DONE job restarts")
    p.add_argument("job_id")
    p.add_argument("text")
    p.add_argument("--notification", action="store_true", help="send a notification instead of a message")
    _common(p, _send)
    p = jsub.add_parser("history", help="a job's chat log and console as JSON")
    p.add_argument("job_id")
    _common(p, lambda c, a: _print(c.jobs.history(a.job_id)))
    p = jsub.add_parser("agents", help="the agents executors registered")
    _common(p, lambda c, a: _print(c.jobs.agents()))


Action = Callable[[AsyncStatekClient, argparse.Namespace], Awaitable[int | None]]


def _common(p: argparse.ArgumentParser, action: Action) -> None:
    p.add_argument("--nats-url", default=None, help="default: NATS_URL")
    p.set_defaults(func=lambda args: _run(args, action))


def _run(args: argparse.Namespace, action: Action) -> int:
    settings = Settings.from_env(**({"nats_url": args.nats_url} if args.nats_url else {}))

    async def go() -> int:
        async with AsyncStatekClient(settings=settings) as client:
            return (await action(client, args)) or 0

    code: int = run_async(go())
    return code


async def _print(result: Awaitable[Any]) -> int:
    print(msgspec.json.format(msgspec.json.encode(await result), indent=2).decode())
    return 0


def _assignments(items: list[str], option: str) -> dict[str, Any]:
    """``name=JSON`` pairs; a value that is not JSON is taken as a string."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BadRequestError(f"{option} expects NAME=JSON, got {item!r}", field=option)
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


async def _submit(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    job = await client.jobs.submit(
        args.agent,
        _assignments(args.var, "--var") or None,
        args.locale,
        params=_assignments(args.param, "--param"),
        job_id=args.job_id,
        parent_id=args.parent_id,
    )
    if args.wait:
        job = await client.jobs.wait(job.id, args.timeout)
    print(msgspec.json.format(msgspec.json.encode(job), indent=2).decode())
    return 0


async def _list(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    jobs = await client.jobs.list(args.agent, args.status, args.parent_id, args.limit, args.page)
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(jobs), indent=2).decode())
        return 0
    for j in jobs:
        exit_status = "" if j.exit_status is None else f"  {j.exit_status}"
        print(f"{j.id}  {j.agent}  {j.status.value:<10} {j.created_at:%Y-%m-%d %H:%M:%S}{exit_status}")
    return 0


async def _send(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    if args.notification:
        return await _print(client.jobs.send_notification(args.job_id, args.text))
    return await _print(client.jobs.send_message(args.job_id, args.text))


async def _watch(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    async for event in client.jobs.watch(args.job_id, replay=not args.new):
        print(format_event(event), flush=True)
    return 0


def format_event(e: JobEvent) -> str:
    """One line for a job event, as ``jobs watch`` prints it."""
    at = f"{e.at:%H:%M:%S}"
    if e.kind == "status":
        tail = "" if e.exit_status is None else f"  exit_status={json.dumps(e.exit_status, default=str)}"
        return f"{at} [status] {e.status.value if e.status else '?'}{tail}"
    if e.kind == "chat":
        return f"{at} [{e.role or 'chat'}] {e.text or ''}"
    if e.kind == "console":
        return f"{at} > {e.text or ''}"
    return f"{at} [{e.kind}] {e.text or ''}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: statek-bus submit | statek-bus jobs ...")
