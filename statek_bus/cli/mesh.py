"""``statek-bus up | provision | serve | status | schemas export``: running and inspecting the mesh."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from statek_bus.cli import run_async
from statek_bus.cli.output import EXIT_INTERRUPTED, EXIT_OK, print_json
from statek_bus.mesh.auth import redact_url
from statek_bus.mesh.connection import connect
from statek_bus.mesh.discovery import status_report
from statek_bus.mesh.provision import provision
from statek_bus.mesh.service import EXIT_CONNECTION_LOST
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import SERVICE_KINDS, check_agents, serve, up

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the mesh commands to the ``statek-bus`` parser."""
    p = sub.add_parser("up", help="embedded nats-server + all four services, until Ctrl-C")
    p.add_argument("--agents", default=None, help="module:attr of the agents the executor serves")
    p.add_argument("--data-dir", default=None, help="JetStream storage (default ./.statek)")
    p.add_argument("--port", type=int, default=None, help="client port (default 4222; 0 picks a free one)")
    p.add_argument("--nats-url", default=None, help="join this server instead of starting one")
    p.add_argument(
        "--auth",
        action="store_true",
        help="authenticate every connection: a user per service and a client user (docs/permissions.md); "
        "prints NATS_CREDS=<client credentials> after NATS_URL",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser(
        "provision", help="create or migrate every bucket and stream (administrator credentials), then exit"
    )
    p.add_argument("--nats-url", default=None, help="default: NATS_URL")
    p.set_defaults(func=_provision)

    p = sub.add_parser(
        "credentials",
        help="write an nkey seed per role (mode 0600), the NATS server config and users.env (public keys)",
    )
    p.add_argument("directory", help="where to write them (kept: existing seeds are reused)")
    p.set_defaults(func=_credentials)

    p = sub.add_parser("serve", help="run one service against NATS_URL (what a Kubernetes Deployment runs)")
    p.add_argument("kind", choices=list(SERVICE_KINDS))
    p.add_argument("--nats-url", default=None, help="default: NATS_URL")
    p.add_argument("--agents", default=None, help="executor: module:attr of the agents to serve")
    p.add_argument(
        "--burst",
        action="store_true",
        default=None,
        help="executor: exit once the work queue is idle and nothing runs (for batches and cron jobs)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("status", help="list running service instances ($SRV.PING/INFO/STATS)")
    p.add_argument("--nats-url", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser("schemas", help="JSON Schema of every wire message")
    ssub = p.add_subparsers(dest="schemas_command", required=True)
    e = ssub.add_parser("export", help="write schemas/*.json")
    e.add_argument("--out", default="schemas", help="directory (default: schemas)")
    e.set_defaults(func=_schemas_export)


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    changes = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "nats_url", None):
        changes["nats_url"] = args.nats_url
    return Settings.from_env(**changes)


def _up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    served = run_async(
        up(
            settings,
            embedded=not args.nats_url,
            data_dir=args.data_dir or settings.data_dir,
            port=settings.port if args.port is None else args.port,
            agents=args.agents or settings.agents or None,
            auth=args.auth,
        )
    )
    return EXIT_OK if served else EXIT_INTERRUPTED


def _credentials(args: argparse.Namespace) -> int:
    from statek_bus.ops.credentials import identities

    ids = identities(args.directory, directory=args.directory)
    print(f"wrote the seeds, {ids.server_config.name} and users.env to {ids.directory}/")
    return EXIT_OK


def _provision(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run() -> None:
        nc = await connect(settings, name="statek-provision")
        try:
            await provision(nc.jetstream(timeout=max(5.0, settings.request_timeout)), settings)
        finally:
            await nc.close()

    run_async(run())
    print(f"storage provisioned at {redact_url(settings.nats_url)}")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args, agents=args.agents, burst=args.burst)
    logging.getLogger().setLevel(settings.log_level.upper())
    if args.kind == "executor":
        check_agents(settings.agents)  # one line naming the import error; cwd first, as `up` does
    ended = run_async(serve(args.kind, settings))
    return {"served": EXIT_OK, "interrupted": EXIT_INTERRUPTED, "connection_lost": EXIT_CONNECTION_LOST}[
        ended
    ]


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def report() -> list[dict[str, Any]]:
        nc = await connect(settings, name="statek-status")
        try:
            return await status_report(nc)
        finally:
            await nc.close()

    rows = run_async(report())
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no statek-bus services found at {redact_url(settings.nats_url)}")
        return 1
    for r in rows:
        print(f"{r['name']} {r['version']}  id={r['id']}  {r['description']}")
        for e in r["endpoints"]:
            print(f"    {e['name']:<22} {e['subject']:<34} requests={e['requests']} errors={e['errors']}")
    return 0


def _schemas_export(args: argparse.Namespace) -> int:
    from statek_bus.wire.schemas import export

    written = export(Path(args.out))
    print(f"wrote {len(written)} schemas to {args.out}/")
    return 0
