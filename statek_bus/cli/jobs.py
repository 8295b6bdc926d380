"""``statek-bus submit`` and ``statek-bus jobs {get,list,watch,cancel,send,history,agents}``.

``submit`` prints the job as JSON on stdout. With ``--wait`` it first prints the job id and then
every status change on stderr, as they happen, so an interrupted wait never loses the id; the
exit code says how the job ended (:mod:`statek_bus.cli.output`). Reads print text, or JSON with
``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from statek_bus.cli import run_async
from statek_bus.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    UsageError,
    explain,
    job_exit_code,
    print_json,
    progress,
    table,
)
from statek_bus.client.core import AsyncStatekClient
from statek_bus.jobs.repair import repair_all
from statek_bus.jobs.store import JobStore
from statek_bus.mesh.settings import Settings
from statek_bus.wire.messages import Job, JobEvent, JobHistory, JobStatus

__all__ = ["format_event", "parse_assignments", "register"]

_VALUE_HELP = (
    'NAME=VALUE, repeatable. VALUE is JSON when it starts like JSON ([ { " a digit or -) and must '
    "then parse, else nothing is sent; true/false/null are JSON too; any other word is a string"
)


def register(sub: Any) -> None:
    """Add ``submit`` and ``jobs ...`` to the ``statek-bus`` parser."""
    p = sub.add_parser("submit", help="submit a job to an agent")
    p.add_argument("agent", help="the agent role")
    p.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE", help=f"a shared variable: {_VALUE_HELP}"
    )
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help=f"a job parameter: {_VALUE_HELP}"
    )
    p.add_argument("--locale", default=None, help="LANG-COUNTRY, e.g. EN-US")
    p.add_argument("--job-id", default=None, help="idempotency key (the same id twice returns the first job)")
    p.add_argument("--parent-id", default=None, help="the parent job")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job is DONE (id and status changes on stderr), then print it; "
        "exit 0 only if it ended without an error",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds --wait waits (default: forever)")
    _common(p, _submit)

    jobs = sub.add_parser("jobs", help="query, watch, cancel and message jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    p = jsub.add_parser("get", help="one job")
    p.add_argument("job_id")
    _common(p, _get, reads=True)
    p = jsub.add_parser("list", help="jobs, oldest first")
    p.add_argument("--agent", default=None)
    p.add_argument(
        "--status", default=None, type=str.upper, choices=[s.value for s in JobStatus], help="any case"
    )
    p.add_argument("--parent-id", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--page", type=int, default=None, help="page number, from 1")
    _common(p, _list, reads=True)
    p = jsub.add_parser("watch", help="show a job's events live until it is DONE (exit code: how it ended)")
    p.add_argument("job_id")
    p.add_argument("--new", action="store_true", help="only new events (default: replay the job's log first)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to watch (default: until DONE)")
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
    p = jsub.add_parser("history", help="a job's chat log and console")
    p.add_argument("job_id")
    _common(p, _history, reads=True)
    p = jsub.add_parser("agents", help="the agents executors registered, and whether a live one serves each")
    _common(p, _agents, reads=True)
    p = jsub.add_parser(
        "repair",
        help="re-enqueue every runnable job that has no work message (after a lost or purged work "
        "stream); idempotent, safe while the mesh runs",
    )
    p.add_argument("--limit", type=int, default=None, help="most job records to read in this run")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between batches (keeps the load low)")
    _common(p, _repair, reads=True)


Action = Callable[[AsyncStatekClient, argparse.Namespace], Awaitable[int | None]]


def _common(p: argparse.ArgumentParser, action: Action, *, reads: bool = False) -> None:
    p.add_argument("--nats-url", default=None, help="default: NATS_URL")
    if reads:
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=lambda args: _run(args, action))


def _run(args: argparse.Namespace, action: Action) -> int:
    settings = Settings.from_env(**({"nats_url": args.nats_url} if args.nats_url else {}))

    async def go() -> int:
        async with AsyncStatekClient(settings=settings) as client:
            return (await action(client, args)) or EXIT_OK

    code: int = run_async(go())
    return code


async def _print(result: Awaitable[Any]) -> int:
    print_json(await result)
    return EXIT_OK


def parse_assignments(items: list[str], option: str) -> dict[str, Any]:
    """``NAME=VALUE`` pairs: JSON where the value starts like JSON (and must parse), else a string.

    Raises:
        UsageError: a pair without ``=``, or a JSON-looking value that does not parse (named).
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{option} expects NAME=VALUE, got {item!r}")
        stripped = value.strip()
        looks_json = bool(stripped) and (stripped[0] in '[{"-' or stripped[0].isdigit())
        try:
            out[name] = json.loads(value)
        except ValueError as exc:
            if looks_json:
                raise UsageError(
                    f"{option} {name}: {value!r} starts like JSON but is not valid JSON ({exc}); "
                    f"nothing was submitted (quote a string as JSON: {name}='\"...\"')"
                ) from None
            out[name] = value
    return out


async def _submit(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    shared_vars = parse_assignments(args.var, "--var") or None
    params = parse_assignments(args.param, "--param")
    job = await client.jobs.submit(
        args.agent, shared_vars, args.locale, params=params, job_id=args.job_id, parent_id=args.parent_id
    )
    if not args.wait:
        _note_unserved(job)
        print_json(job)
        return EXIT_OK
    progress(f"submitted job {job.id} (agent {job.agent}, status {job.status.value})")
    _note_unserved(job)
    return await _follow(client, job.id, args.timeout, events=False)


def _note_unserved(job: Job) -> None:
    if job.agent_served is False:
        progress(
            f"note: no live executor serves agent {job.agent!r} now (it is only remembered from an "
            f"earlier registration): the job is queued and runs once an executor serves it; "
            f"an executor serving other agents may still end it with an error, as work is not "
            f"routed by agent yet (see statek-bus jobs agents)"
        )


async def _follow(
    client: AsyncStatekClient, job_id: str, timeout: float | None, *, events: bool, replay: bool = True
) -> int:
    """Show the job until DONE (every event on stdout, or status changes on stderr); its exit code."""
    try:
        try:
            async with asyncio.timeout(timeout):
                # the job's log from its start: a job that finished before the watch opened is
                # seen at once, not after the grace period a watch gives a lost DONE event
                async for event in client.jobs.watch(job_id, replay=replay):
                    if events:
                        print(format_event(event), flush=True)
                    elif event.kind == "status" and event.status not in (None, JobStatus.READY):
                        progress(f"job {job_id}: {event.status.value}")
        except TimeoutError:
            current = await client.jobs.get(job_id)
            progress(
                f"statek-bus: job {job_id} is not DONE after {timeout:g}s "
                f"(status {current.status.value}); it keeps running"
            )
            return EXIT_TIMEOUT
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task; the id is what the user needs, not a traceback
        progress(f"statek-bus: interrupted; job {job_id} keeps running (statek-bus jobs watch {job_id})")
        return EXIT_INTERRUPTED
    job = await client.jobs.get(job_id)
    if events:
        if job.error:
            progress(f"error: {explain(job.error)}")
    else:
        print_json(job)
        if job.error:
            progress(f"job {job_id} ended with an error: {explain(job.error)}")
    return job_exit_code(job)


async def _get(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    job = await client.jobs.get(args.job_id)
    if args.json:
        print_json(job)
        return EXIT_OK
    u = job.usage
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("agent", job.agent),
        ("status", job.status.value),
        ("exit_status", json.dumps(job.exit_status, default=str) if job.exit_status is not None else ""),
        ("error", explain(job.error) if job.error else ""),
        ("locale", job.locale or ""),
        ("parent_id", job.parent_id or ""),
        ("params", json.dumps(job.params, default=str) if job.params else ""),
        ("created_at", f"{job.created_at:%Y-%m-%d %H:%M:%S}"),
        ("updated_at", f"{job.updated_at:%Y-%m-%d %H:%M:%S}"),
        (
            "usage",
            f"{u.llm_calls} LLM calls, tokens in/out {u.input_tokens}/{u.output_tokens}, cost {u.cost:g}",
        ),
    ]
    for name, value in rows:
        if value != "":
            print(f"{name:<12}{value}")
    return EXIT_OK


async def _list(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    jobs = await client.jobs.list(args.agent, args.status, args.parent_id, args.limit, args.page)
    if args.json:
        print_json(jobs)
        return EXIT_OK
    table(
        ["ID", "AGENT", "STATUS", "CREATED", "EXIT STATUS"],
        [
            (
                j.id,
                j.agent,
                j.status.value,
                f"{j.created_at:%Y-%m-%d %H:%M:%S}",
                ("error: " + j.error) if j.error else ("" if j.exit_status is None else j.exit_status),
            )
            for j in jobs
        ],
    )
    return EXIT_OK


async def _repair(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    store = await JobStore.open(await client.jetstream())
    report = await repair_all(await client.connection(), store, limit=args.limit, pause=args.pause)
    if args.json:
        print_json(report)
    else:
        print(f"read {report.examined} jobs, {report.runnable} runnable, re-enqueued {report.enqueued}")
    return EXIT_OK


async def _history(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    history: JobHistory = await client.jobs.history(args.job_id)
    if args.json:
        print_json(history)
        return EXIT_OK
    for entry in history.chat:
        text = entry.content.strip().replace("\n", "\n    ")
        print(f"[step {entry.step}] {entry.role}: {text}")
    if history.console:
        print("console:")
        for line in history.console:
            print(f"  > {line}")
    return EXIT_OK


async def _agents(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    agents = await client.jobs.agents()
    if args.json:
        print_json(agents)
        return EXIT_OK
    served = {True: "yes", False: "no (remembered)", None: "?"}
    table(
        ["AGENT", "KIND", "MODEL", "SERVED", "TOOLS", "DESCRIPTION"],
        [
            (
                a.role,
                a.kind,
                a.model or "",
                served[a.served],
                len(a.tools),
                a.description.splitlines()[0] if a.description else "",
            )
            for a in agents
        ],
    )
    return EXIT_OK


async def _send(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    if args.notification:
        return await _print(client.jobs.send_notification(args.job_id, args.text))
    return await _print(client.jobs.send_message(args.job_id, args.text))


async def _watch(client: AsyncStatekClient, args: argparse.Namespace) -> int:
    return await _follow(client, args.job_id, args.timeout, events=True, replay=not args.new)


def format_event(e: JobEvent) -> str:
    """One line for a job event, as ``jobs watch`` prints it."""
    at = f"{e.at:%H:%M:%S}"
    if e.kind == "status":
        tail = "" if e.exit_status is None else f"  exit_status={json.dumps(e.exit_status, default=str)}"
        return f"{at} [status] {e.status.value if e.status else '?'}{tail}"
    if e.kind == "chat":  # a code block's later lines are indented under its first
        return f"{at} [{e.role or 'chat'}] {(e.text or '').rstrip()}".replace("\n", "\n" + " " * 9)
    if e.kind == "console":
        return f"{at} > {e.text or ''}"
    if e.kind == "trace":  # FULL_AGENT_TRACE: the entry's name, then its fields (cut to one screen line)
        return f"{at} [trace] {e.name} {json.dumps(e.data, default=str)[:_TRACE_WIDTH]}"
    return f"{at} [{e.kind}] {e.text or ''}"


_TRACE_WIDTH = 200
"""Characters of a trace entry's fields ``jobs watch`` shows (the job-log stream keeps them whole)."""
