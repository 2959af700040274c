"""``floodgate edge``: run and commission the edge agent.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from floodgate.errors import ConfigError

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="floodgate edge", description="Run and commission a site's edge agent.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")
    run = sub.add_parser("run", help="run the agent for a site config")
    run.add_argument("--config", "-c", type=Path, required=True, help="site config (YAML)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    chk = sub.add_parser("check-config", help="validate a site config; errors name file, line and key")
    chk.add_argument("config", type=Path)
    chk.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "check-config":
            return _check(args.config, args.json)
        if args.cmd == "run":
            from edge.agent import run_agent  # noqa: PLC0415 - load the agent only to run it

            return run_agent(args.config, args.log_level, args.log_format)
    except ConfigError as exc:
        print(
            f"invalid config ({len(exc.issues)} problem{'s' if len(exc.issues) > 1 else ''}):",
            file=sys.stderr,
        )
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_USAGE


def _check(path: Path, as_json: bool) -> int:
    from edge.config.site import load_site  # noqa: PLC0415

    try:
        site = load_site(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "issues": [vars(i) for i in exc.issues]}, ensure_ascii=False))
            return EXIT_CONFIG
        raise
    c = site.config
    if as_json:
        print(json.dumps({"ok": True, "node": c.node, "devices": len(c.devices), "hash": site.config_hash}))
    else:
        print(
            f"{path}: ok — node {c.node}, {len(c.buses)} buses, {len(c.devices)} devices, "
            f"{len(c.responses)} responses (config hash {site.config_hash})"
        )
    return EXIT_OK
