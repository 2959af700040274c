"""Box-level installer commands: status, outbox, provision, install-service.

Each returns an exit code and prints a table (or ``--json``). Errors are one
line that says what to do.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from ruamel.yaml import YAML

from edge.config.site import PROVISIONED, load_site
from floodgate.errors import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3


def fail(message: str, code: int = EXIT_FAIL) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def done(as_json: bool, text: str, **data: object) -> int:
    """The one line a command ends with, or its JSON."""
    print(json.dumps({"ok": True, **data}, ensure_ascii=False) if as_json else text)
    return EXIT_OK


def say(as_json: bool, text: str) -> None:
    """Progress for people: on stderr when stdout carries JSON."""
    print(text, file=sys.stderr if as_json else sys.stdout)


# ------------------------------------------------------------------ status


def status(config: Path, port: int | None, as_json: bool, profile_dirs: Sequence[Path] = ()) -> int:
    if port is None:
        site = load_site(config, profile_dirs, check_files=False)
        port = site.config.status_port
        if not port:
            return fail(f"{config} has no status_port; set one (e.g. 8765) and restart the agent", EXIT_USAGE)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            data = json.loads(r.read())
    except (urllib.error.URLError, OSError) as exc:
        return fail(f"no agent answers on 127.0.0.1:{port} ({exc}); is 'floodgate edge run' running?")
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return EXIT_OK
    up = data.get("uplink", {})
    ob = data.get("outbox", {})
    rss = data["rss_bytes"] / 2**20
    print(f"node {data['node']}  boot {data['boot']}  up {data['uptime_s']:.0f} s  RSS {rss:.1f} MiB")
    link = "connected" if up.get("connected") else "NOT connected"
    print(f"broker  {link} ({up.get('connects', 0)} connects)")
    depth, size, dropped = ob.get("depth", 0), ob.get("bytes", 0), ob.get("dropped_total", 0)
    print(f"outbox  {depth} messages, {size} bytes, {dropped} dropped")
    rows = [("device", "state", "requests", "timeouts", "errors", "failing")]
    for dev, c in sorted(data.get("devices", {}).items()):
        state = c["state"]
        if c.get("fault"):  # a sensor that answers can still be faulted (no echo, out of range, …)
            state = f"faulted: {c['fault']}" + ("" if state == "ok" else f" ({state})")
        rows.append(
            (
                dev,
                state,
                str(c["requests"]),
                str(c["timeouts"]),
                str(c["errors"]),
                str(c["consecutive_failures"]),
            )
        )
    print_table(rows)
    for rid, r in sorted(data.get("responses", {}).items()):
        print(f"response {rid}: level {r['level']}, board “{r['sign']}”, gate {r['gate']}", end="")
        if "gate_closes_at" in r:  # the policy will close it once the board has warned long enough
            at = r["gate_closes_at"]
            left = None if at is None else max(0, math.ceil((at - data.get("now_ms", at)) / 1000))
            print(" (closes once the board warns)" if left is None else f" (closes in {left} s)", end="")
        print(f", override {r['override']}")
    a = data.get("last_alert")
    if a:
        print(f"last alert: {a['dev']} {a['kind']} {a['prev']} → {a['level']} at {a['ts']}")
    return EXIT_OK


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


# ------------------------------------------------------------------ outbox


def outbox(
    config: Path, action: str, out: Path | None, yes: bool, as_json: bool, profile_dirs: Sequence[Path] = ()
) -> int:
    site = load_site(config, profile_dirs, check_files=False)
    path = site.resolve(site.config.outbox.path)
    if not path.exists():
        return fail(f"no outbox at {path} yet (the agent creates it on its first run)")
    db = sqlite3.connect(path, timeout=10)
    try:
        if action == "purge":
            if not yes:
                return fail(
                    "purge deletes every message kept (unsent, or awaiting the collector's confirmation);"
                    " run again with --yes if you mean it",
                    EXIT_USAGE,
                )
            n = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            db.execute("DELETE FROM outbox")
            db.commit()
            print(json.dumps({"purged": n}) if as_json else f"purged {n} messages from {path}")
            return EXIT_OK
        # Sent and awaiting the collector's confirmation (an outbox from before has no such column).
        columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        awaiting = "awaiting" if "awaiting" in columns else "0"
        rows = db.execute(
            f"SELECT id, priority, kind, topic, size, created_ms, payload, {awaiting}"  # noqa: S608
            " FROM outbox ORDER BY priority, id"
        ).fetchall()
    finally:
        db.close()
    if action == "export":
        target = out or Path("outbox-export.jsonl")
        with target.open("w") as f:
            for r in rows:
                f.write(
                    json.dumps(
                        {
                            "id": r[0],
                            "priority": r[1],
                            "kind": r[2],
                            "topic": r[3],
                            "awaiting_confirmation": bool(r[7]),
                            "payload": json.loads(r[6]),
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        print(
            json.dumps({"exported": len(rows), "file": str(target)})
            if as_json
            else f"exported {len(rows)} messages to {target}"
        )
        return EXIT_OK
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        by_kind.setdefault(r[2], []).append(r[4])
    summary = {k: {"messages": len(v), "bytes": sum(v)} for k, v in sorted(by_kind.items())}
    sent = sum(1 for r in rows if r[7])
    if as_json:
        doc = {"path": str(path), "depth": len(rows) - sent, "awaiting_confirmation": sent, "kinds": summary}
        print(json.dumps(doc))
        return EXIT_OK
    print(
        f"{path}: {len(rows) - sent} unsent messages, {sent} sent and awaiting the collector's confirmation"
    )
    table = [("kind", "messages", "bytes")] + [
        (k, str(v["messages"]), str(v["bytes"])) for k, v in summary.items()
    ]
    print_table(table)
    if rows:
        print(f"oldest: {rows[0][2]} created at {min(r[5] for r in rows)}")
    return EXIT_OK


# --------------------------------------------------------------- provision


def write_config(
    config: Path,
    yaml: YAML,
    data: object,
    what: str,
    profile_dirs: Sequence[Path] = (),
    before: Callable[[], None] | None = None,
    will_write: Collection[Path] = (),
    check_files: bool = True,
) -> bool:
    """Replace a site config with ``data`` only if the result validates; else say why, keep the old.

    ``before`` runs between the check and the replacement (``provision`` writes
    its secrets there: only once everything is known to be valid).
    """
    tmp = config.with_suffix(config.suffix + ".new")
    with tmp.open("w") as f:
        yaml.dump(data, f)
    try:
        load_site(tmp, profile_dirs, check_files=check_files, will_write=will_write)
    except ConfigError as exc:
        tmp.unlink()
        print(f"the {what} config would not be valid; nothing written:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return False
    if before is not None:
        before()
    tmp.replace(config)
    return True


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all; a file it replaces keeps its owner (the service user's secrets)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.chmod(mode)
    if path.exists():
        st = path.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    tmp.replace(path)


def provision(
    config: Path,
    *,
    node: str | None,
    broker: str | None,
    username: str | None,
    password: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    command_key: str | None,
    profile_dirs: Sequence[Path] = (),
) -> int:
    """Write identity, broker and secrets into the site config; secrets go to 0600 files beside it.

    Everything is checked first (the inputs, then the resulting config with
    the files it will name); a refused run writes nothing.
    """
    refused = [f"{src} does not exist" for src in (ca, cert, key) if src is not None and not src.is_file()]
    if command_key is not None and len(command_key) < 16:
        refused.append("the command key must be at least 16 characters (the office's node key, in hex)")
    if password is not None and not password:
        refused.append("the broker password is empty")
    if refused:
        for r in refused:
            print(f"error: {r}", file=sys.stderr)
        print("nothing written", file=sys.stderr)
        return EXIT_FAIL
    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(config.read_text())
    secrets = config.parent / "secrets"
    writes: list[tuple[Path, bytes, int]] = []
    if node:
        data["node"] = node
    b = data.setdefault("broker", {})
    if broker:
        b["url"] = broker
        b.pop("urls", None)  # the broker named here replaces a list
    if username:
        b["username"] = username
    if password is not None:
        writes.append(
            (config.parent / PROVISIONED["broker", "password_file"], password.encode() + b"\n", 0o600)
        )
        b.pop("password", None)
        b["password_file"] = PROVISIONED["broker", "password_file"]
    for name, src, mode in [("ca_file", ca, 0o644), ("cert_file", cert, 0o644), ("key_file", key, 0o600)]:
        if src is not None:
            writes.append((secrets / src.name, src.read_bytes(), mode))
            b.setdefault("tls", {})[name] = f"secrets/{src.name}"
    if command_key is not None:
        writes.append((config.parent / PROVISIONED["command_key_file",], command_key.encode() + b"\n", 0o600))
        data.pop("command_key", None)
        data["command_key_file"] = PROVISIONED["command_key_file",]

    def write_secrets() -> None:
        for path, content, mode in writes:
            write_file(path, content, mode)

    targets = {path.absolute() for path, _, _ in writes}
    if not write_config(config, yaml, data, "provisioned", profile_dirs, write_secrets, targets):
        return EXIT_CONFIG
    print(f"provisioned {config} (secrets in {secrets}, mode 0600)")
    return EXIT_OK


# --------------------------------------------------------- install-service


def install_service(
    config: Path, dest: Path, user: str | None, as_json: bool, profile_dirs: Sequence[Path] = ()
) -> int:
    """Write the agent's systemd unit; with ``user``, give that user its secrets first."""
    from edge.commission.service import User, check_user, hand_over, unit_text  # noqa: PLC0415

    site = load_site(config, profile_dirs)
    name = f"floodgate-edge-{site.config.node}.service"
    if user:
        who = User.named(user)
        if who is None:
            return fail(
                f"no user {user!r}; create it first, e.g. "
                f"useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {user}",
                EXIT_USAGE,
            )
        problems = check_user(site, who)
        if problems:
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            return fail(f"the service could not start as {user}; nothing changed, no unit written")
        try:
            hand_over(site, who)
        except PermissionError as exc:
            return fail(f"no permission to give {user} its secrets ({exc}); run with sudo")
    text = unit_text(site, user, profile_dirs)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)
    except PermissionError:
        return fail(f"no permission to write {dest / name}; run with sudo, or pass --dest DIR")
    if as_json:
        print(json.dumps({"unit": str(dest / name)}))
    else:
        print(f"wrote {dest / name}\nenable it with:")
        print(f"  sudo systemctl daemon-reload && sudo systemctl enable --now {name}")
    return EXIT_OK
