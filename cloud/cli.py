"""``floodgate cloud``: the collector. Exit codes: 0 ok, 1 failure, 2 usage, 3 invalid config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

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
    args = p.parse_args(argv)
    from cloud import collector  # noqa: PLC0415

    try:
        if args.cmd == "migrate":
            version = asyncio.run(collector.migrate(args.config))
            print(f"database schema at version {version}")
            return 0
        return collector.run_collector(args.config, args.log_level, args.log_format)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 3
