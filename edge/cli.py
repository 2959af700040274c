"""``floodgate edge``: run and commission the edge agent.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
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
    chk.add_argument("--explain", action="store_true", help="say what the site will do at each level")
    chk.add_argument(
        "--skip-files",
        action="store_true",
        help="do not check the files it names (secrets): e.g. in the office, before the box is provisioned",
    )
    st = sub.add_parser("status", help="the running agent's state, from its local status endpoint")
    st.add_argument("--config", "-c", type=Path, help="site config (for its status_port)")
    st.add_argument("--port", type=int, help="the status port, instead of --config")
    st.add_argument("--json", action="store_true")
    ob = sub.add_parser("outbox", help="inspect, export or purge the store-and-forward outbox")
    ob.add_argument("action", choices=["inspect", "export", "purge"], nargs="?", default="inspect")
    ob.add_argument("--config", "-c", type=Path, required=True)
    ob.add_argument("--out", type=Path, help="export: the JSON-lines file to write")
    ob.add_argument("--yes", action="store_true", help="purge: really delete every message kept")
    ob.add_argument("--json", action="store_true")
    pv = sub.add_parser("provision", help="write identity, broker, TLS and keys into a site config")
    pv.add_argument("config", type=Path)
    pv.add_argument("--node")
    pv.add_argument("--broker", help="mqtt://host:1883 or mqtts://host:8883")
    pv.add_argument("--username")
    pv.add_argument("--password-stdin", action="store_true", help="read the broker password from stdin")
    pv.add_argument("--ca", type=Path)
    pv.add_argument("--cert", type=Path)
    pv.add_argument("--key", type=Path)
    pv.add_argument("--command-key-stdin", action="store_true", help="read the node's command key from stdin")
    sc = sub.add_parser("scan", help="find the devices on a bus and the profiles that fit them")
    sc.add_argument("--port", required=True, help="/dev/ttyUSB0, or tcp://host:502")
    sc.add_argument("--baud", default="9600", help="auto, or a list such as 9600,19200")
    sc.add_argument("--parity", default="N", help="auto, or a list such as N,E")
    sc.add_argument("--ids", default="1-247", help="unit ids, e.g. 1-10,20")
    sc.add_argument("--timeout", type=float, default=0.15, help="seconds to wait for each id")
    sc.add_argument("--json", action="store_true")
    for name, what in [
        ("read", "read a device's points in engineering units (or raw registers) once"),
        ("watch", "a live table of a device's points"),
    ]:
        rd = sub.add_parser(name, help=what)
        rd.add_argument("--port", help="/dev/ttyUSB0 or tcp://host:502 (default: the device's bus)")
        rd.add_argument("--unit", type=int, help="(default: the device's unit)")
        rd.add_argument(
            "--profile", help="read the profile's points in their units: a model, or a file's path"
        )
        rd.add_argument("--config", type=Path, help="site config: with --device, its profile and depth")
        rd.add_argument("--device", help="a device of --config")
        rd.add_argument("--raw", action="store_true", help="show the registers read for each point too")
        rd.add_argument("--table", default="holding", choices=["holding", "input"])
        rd.add_argument("--address", type=int, help="raw: first register (protocol address, from 0)")
        rd.add_argument("--count", type=int, default=1)
        rd.add_argument("--baud", type=int, help="(default: the bus's, else 9600)")
        rd.add_argument("--parity", choices=["N", "E", "O"], help="(default: the bus's, else N)")
        rd.add_argument("--interval", type=float, default=1.0, help="watch: seconds between reads")
        rd.add_argument("--json", action="store_true")
    wr = sub.add_parser("write", help="write one holding register, after confirmation")
    wr.add_argument("--port", required=True)
    wr.add_argument("--unit", type=int, required=True)
    wr.add_argument("--address", type=int, required=True)
    wr.add_argument("--value", type=int, required=True)
    wr.add_argument("--baud", type=int, default=9600)
    wr.add_argument("--parity", default="N", choices=["N", "E", "O"])
    wr.add_argument("--yes", action="store_true", help="do not ask")
    wr.add_argument("--json", action="store_true")
    for name, what in [
        ("set-id", "change a device's Modbus address"),
        ("set-baud", "change a device's baud"),
    ]:
        st2 = sub.add_parser(name, help=what + " through its profile, then check it answers")
        st2.add_argument("--port", required=True)
        st2.add_argument("--unit", type=int, required=True, help="its address now")
        st2.add_argument("--profile", required=True, help="a model, or a profile file's path")
        if name == "set-id":
            st2.add_argument("--new-id", type=int, required=True)
        else:
            st2.add_argument("--new-baud", type=int, required=True)
        st2.add_argument("--baud", type=int, default=9600, help="its baud now")
        st2.add_argument("--parity", default="N", choices=["N", "E", "O"])
        st2.add_argument("--yes", action="store_true", help="do not ask")
        st2.add_argument("--json", action="store_true")
    cal = sub.add_parser("calibrate", help="set a level sensor's zero (empty road) into the site config")
    cal.add_argument("config", type=Path)
    cal.add_argument("--device", required=True)
    cal.add_argument("--samples", type=int, default=10)
    cal.add_argument("--interval", type=float, default=0.5, help="seconds between readings")
    cal.add_argument("--max-spread", type=float, default=20.0, help="mm; more means the road is not still")
    cal.add_argument("--yes", action="store_true")
    cal.add_argument("--json", action="store_true")
    ts = sub.add_parser("test-sign", help="show a message on a board and read it back")
    ts.add_argument("config", type=Path)
    ts.add_argument("--device", required=True)
    ts.add_argument("--message", required=True)
    ts.add_argument("--json", action="store_true")
    tg = sub.add_parser("test-gate", help="close or open a gate with the agent's safety rules")
    tg.add_argument("config", type=Path)
    tg.add_argument("action", choices=["close", "open"])
    tg.add_argument("--device", required=True)
    tg.add_argument(
        "--force", action="store_true", help="open against the gate policy (asks first; needs --reason)"
    )
    tg.add_argument("--reason", help="why a forced open is safe; recorded as an event for the office")
    tg.add_argument("--yes", action="store_true", help="answer yes to the question --force asks")
    tg.add_argument("--json", action="store_true")
    sv = sub.add_parser("install-service", help="write a systemd unit for the agent")
    sv.add_argument("config", type=Path)
    sv.add_argument("--dest", type=Path, default=Path("/etc/systemd/system"))
    sv.add_argument("--user", help="run as this user (added to the dialout group for serial ports)")
    sv.add_argument("--json", action="store_true")
    for name, cmd in sub.choices.items():
        if name != "write":
            cmd.add_argument(
                "--profiles",
                type=Path,
                action="append",
                default=[],
                metavar="DIR",
                help="also look for profiles here (overrides by model name; may repeat)",
            )
    return p


def _profile_dirs(args: argparse.Namespace) -> list[Path] | None:
    """FLOODGATE_PROFILES then --profiles, as absolute folders; None (after saying why) if one is missing."""
    from edge.config.search import ENV, env_dirs  # noqa: PLC0415

    given = [d.absolute() for d in getattr(args, "profiles", [])]
    dirs = [d.absolute() for d in env_dirs(os.environ)] + given
    for d in dirs:
        if not d.is_dir():
            where = "--profiles" if d in given else ENV
            print(f"error: {where} names {d}, which is not a folder", file=sys.stderr)
            return None
    return dirs


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    dirs = _profile_dirs(args)
    if dirs is None:
        return EXIT_USAGE
    args.profile_dirs = dirs
    try:
        if args.cmd == "check-config":
            return _check(args.config, args.json, args.explain, dirs, not args.skip_files)
        if args.cmd in ("status", "outbox", "provision", "install-service"):
            return _ops(args)
        if args.cmd in ("calibrate", "test-sign", "test-gate"):
            from edge.commission import site_tools  # noqa: PLC0415

            if args.cmd == "calibrate":
                return site_tools.calibrate(
                    args.config,
                    args.device,
                    args.samples,
                    args.interval,
                    args.max_spread,
                    args.yes,
                    args.json,
                    dirs,
                )
            if args.cmd == "test-sign":
                return site_tools.try_sign(args.config, args.device, args.message, args.json, dirs)
            return site_tools.try_gate(
                args.config, args.device, args.action, args.force, args.yes, args.json, dirs, args.reason
            )
        if args.cmd in ("scan", "read", "watch", "write", "set-id", "set-baud"):
            from edge.commission import modbus  # noqa: PLC0415

            if args.cmd == "scan":
                return modbus.run_scan(
                    args.port, args.baud, args.parity, args.ids, args.timeout, args.json, dirs
                )
            if args.cmd == "write":
                return modbus.run_write(args)
            if args.cmd in ("set-id", "set-baud"):
                return modbus.run_set(args)
            return modbus.run_read(args, watch=args.cmd == "watch")
        if args.cmd == "run":
            from edge.agent import run_agent  # noqa: PLC0415 - load the agent only to run it

            return run_agent(args.config, args.log_level, args.log_format, dirs)
    except ConfigError as exc:
        print(
            f"invalid config ({len(exc.issues)} problem{'s' if len(exc.issues) > 1 else ''}):",
            file=sys.stderr,
        )
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_USAGE


def _ops(args: argparse.Namespace) -> int:
    from edge.commission import ops  # noqa: PLC0415

    if args.cmd == "status":
        if args.config is None and args.port is None:
            return ops.fail("give --config site.yaml or --port N", EXIT_USAGE)
        return ops.status(args.config, args.port, args.json, args.profile_dirs)
    if args.cmd == "outbox":
        return ops.outbox(args.config, args.action, args.out, args.yes, args.json, args.profile_dirs)
    if args.cmd == "install-service":
        return ops.install_service(args.config, args.dest, args.user, args.json, args.profile_dirs)
    lines = sys.stdin.read().splitlines() if (args.password_stdin or args.command_key_stdin) else []
    password = lines.pop(0).strip() if args.password_stdin and lines else None
    command_key = lines.pop(0).strip() if args.command_key_stdin and lines else None
    return ops.provision(
        args.config,
        node=args.node,
        broker=args.broker,
        username=args.username,
        password=password,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        command_key=command_key,
        profile_dirs=args.profile_dirs,
    )


def _check(
    path: Path,
    as_json: bool,
    explain: bool = False,
    profile_dirs: Sequence[Path] = (),
    check_files: bool = True,
) -> int:
    from edge.config.site import load_site  # noqa: PLC0415

    try:
        site = load_site(path, profile_dirs, check_files=check_files)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "issues": [vars(i) for i in exc.issues]}, ensure_ascii=False))
            return EXIT_CONFIG
        raise
    c = site.config
    if explain:
        from edge.commission.explain import as_text, explain as explain_site  # noqa: PLC0415, I001

        e = explain_site(site)
        print(json.dumps(e, ensure_ascii=False, indent=2) if as_json else as_text(e))
        return EXIT_OK
    if as_json:
        print(json.dumps({"ok": True, "node": c.node, "devices": len(c.devices), "hash": site.config_hash}))
    else:
        print(
            f"{path}: ok — node {c.node}, {len(c.buses)} buses, {len(c.devices)} devices, "
            f"{len(c.responses)} responses (config hash {site.config_hash})"
        )
    return EXIT_OK
