"""``floodgate cloud``: the collector. Exit codes: 0 ok, 1 failure, 2 usage, 3 invalid config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cloud.auth import ROLES, AuthError
from floodgate.errors import ConfigError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="floodgate cloud", description="The cloud collector.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")
    run = sub.add_parser("run", help="run the collector")
    run.add_argument("--config", "-c", type=Path, required=True)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    mig = sub.add_parser("migrate", help="create or upgrade the database schema")
    mig.add_argument("--config", "-c", type=Path, required=True)
    user = sub.add_parser("user-add", help="add a user; the password is read from stdin")
    user.add_argument("--config", "-c", type=Path, required=True)
    user.add_argument("username")
    user.add_argument("--role", required=True, choices=ROLES)
    user.add_argument("--unit", help="the unit of a unit member")
    user.add_argument("--no-password", action="store_true", help="token access only")
    tok = sub.add_parser("token", help="issue an API token for a user and print it")
    tok.add_argument("--config", "-c", type=Path, required=True)
    tok.add_argument("username")
    tok.add_argument("--label")
    tok.add_argument("--ttl-days", type=float, help="how long it lives (366 days, the most)")
    args = p.parse_args(argv)
    from cloud import collector  # noqa: PLC0415

    try:
        if args.cmd == "migrate":
            version = asyncio.run(collector.migrate(args.config))
            print(f"database schema at version {version}")
            return 0
        if args.cmd == "user-add":
            password = None if args.no_password else sys.stdin.readline().rstrip("\n")
            asyncio.run(collector.add_user(args.config, args.username, args.role, password, args.unit))
            print(f"user {args.username} added as {args.role}")
            return 0
        if args.cmd == "token":
            ttl = args.ttl_days * 86400 if args.ttl_days else None
            print(asyncio.run(collector.issue_token(args.config, args.username, args.label, ttl)))
            return 0
        return collector.run_collector(args.config, args.log_level, args.log_format)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 3
    except AuthError as exc:
        print(f"cannot: {exc.message}", file=sys.stderr)
        return 1
