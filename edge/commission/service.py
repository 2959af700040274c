"""The agent as a systemd service: the unit file, and the files its user must (and only it may) read.

``install-service --user U`` gives U its secrets (owner U, mode 0600, in a
folder only U's group may enter), checks U can read the config and the other
files it names and write the outbox's folder, and writes a unit that runs as
U with the outbox under ``StateDirectory=`` (when it lives in
``/var/lib/…``) and is hardened for ``systemd-analyze security``: no
capabilities, a read-only system, no other devices than the site's serial
ports, a system-call filter.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.config.site import LoadedSite, RtuBus, named_files

STATE_ROOT = Path("/var/lib")
HOMES = (Path("/home"), Path("/root"), Path("/run/user"))


def quote(word: str) -> str:
    """One word of a unit's command line: ``%`` and ``$`` escaped, quoted if it has blanks or quotes."""
    w = word.replace("%", "%%").replace("$", "$$")
    if not w or any(c in w for c in " \t\n\"'\\;"):
        w = '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return w


def escape(path: Path) -> str:
    """A path as the whole value of a setting (``WorkingDirectory=``): only ``%`` is special there."""
    return str(path).replace("%", "%%")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def named(cls, name: str) -> User | None:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return None
        groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {pw.pw_gid}
        return cls(name, pw.pw_uid, pw.pw_gid, frozenset(groups))

    def may(self, path: Path, bits: int) -> bool:
        """Whether this user may do ``bits`` (a mode's owner bits: 4 read, 2 write, 1 enter) on ``path``."""
        if self.uid == 0:
            return True
        st = path.stat()
        if st.st_uid == self.uid:
            shift = 6
        elif st.st_gid in self.groups:
            shift = 3
        else:
            shift = 0
        return (st.st_mode >> shift) & bits == bits

    def reaches(self, path: Path) -> bool:
        """Whether this user may enter every folder down to ``path``."""
        return all(self.may(d, 1) for d in reversed(path.absolute().parents))

    def can_read(self, path: Path) -> bool:
        return self.reaches(path) and self.may(path, 4)

    def can_write_in(self, folder: Path) -> bool:
        return self.reaches(folder) and self.may(folder, 2 | 1)


def command_line(site: LoadedSite, profile_dirs: Sequence[Path]) -> list[str]:
    extra = [a for d in profile_dirs for a in ("--profiles", str(d.absolute()))]
    run = ["edge", "run", "--config", str(site.path), "--log-format", "json"]
    return [sys.executable, "-m", "floodgate.cli", *run, *extra]


def outbox_folder(site: LoadedSite) -> Path:
    return site.resolve(site.config.outbox.path).absolute().parent


def state_directory(folder: Path) -> str | None:
    """The ``StateDirectory=`` that makes ``folder``, when it is under /var/lib."""
    if folder.is_relative_to(STATE_ROOT) and folder != STATE_ROOT:
        return str(folder.relative_to(STATE_ROOT))
    return None


def unit_text(site: LoadedSite, user: str | None, profile_dirs: Sequence[Path]) -> str:
    """The unit file for this site's agent."""
    cfg = site.config
    outbox = outbox_folder(site)
    state = state_directory(outbox)
    ports = sorted({b.port for b in cfg.buses if isinstance(b, RtuBus)})
    words = command_line(site, profile_dirs)
    package = Path(__file__).resolve().parents[2]
    used = (site.path, Path(sys.executable), package, outbox)
    at_home = any(p.is_relative_to(h) for p in used for h in HOMES)
    lines = [
        "[Unit]",
        f"Description=Floodgate edge agent for {cfg.node}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(quote(w) for w in words),
        f"WorkingDirectory={escape(site.path.parent)}",
        "Restart=always",
        "RestartSec=5",
    ]
    if user:
        lines.append(f"User={user}")
        if ports:
            lines.append("SupplementaryGroups=dialout")
    if state:
        lines += [f"StateDirectory={state}", "StateDirectoryMode=0700"]
    else:
        lines.append(f"ReadWritePaths={quote(str(outbox))}")
    lines += [
        "UMask=0077",
        "# Hardening: the agent needs the network, its serial ports, config and outbox; nothing else.",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        f"ProtectHome={'read-only' if at_home else 'yes'}",
        "PrivateTmp=yes",
    ]
    if ports:
        lines += ["DevicePolicy=closed", *(f"DeviceAllow={escape(Path(p))} rw" for p in ports)]
    else:
        lines += ["PrivateDevices=yes"]
    lines += [
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RemoveIPC=yes",
        "PrivateMounts=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _secret_folder(site: LoadedSite, path: Path) -> Path | None:
    """The folder of a secret that ``install-service`` closes to others (not the config's own)."""
    return path.parent if path.parent != site.path.parent else None


def check_user(site: LoadedSite, user: User) -> list[str]:
    """What would stop ``user`` running this site's agent once it has its secrets; changes nothing."""
    problems: list[str] = []
    cfg = site.config
    for _, name, secret in named_files(cfg):
        path = site.resolve(name).absolute()
        folder = _secret_folder(site, path)
        reachable = user.reaches(folder) if secret and folder else user.reaches(path)
        if not reachable or (not secret and not user.may(path, 4)):
            problems.append(f"{user.name} cannot read {path}: let it (chmod/chown), or move the file")
    if not user.can_read(site.path):
        problems.append(f"{user.name} cannot read {site.path}: chmod o+r it and its folders")
    inline = [k for k, v in (("command_key", cfg.command_key), ("broker.password", cfg.broker.password)) if v]
    if inline and site.path.stat().st_mode & 0o004:
        problems.append(
            f"{site.path} holds {' and '.join(inline)} and everyone may read it: move them into "
            "files with 'floodgate edge provision' (or chmod o-r the config)"
        )
    outbox = outbox_folder(site)
    if state_directory(outbox) is None and not (outbox.is_dir() and user.can_write_in(outbox)):
        problems.append(
            f"{user.name} cannot write the outbox's folder {outbox}: put the outbox under "
            f"/var/lib/floodgate/ (the unit makes it) or create {outbox} owned by {user.name}"
        )
    return problems


def hand_over(site: LoadedSite, user: User) -> None:
    """Give ``user`` its secrets: each owner ``user``, mode 0600; their folder root:group, mode 0750."""
    for _, name, secret in named_files(site.config):
        if not secret:
            continue
        path = site.resolve(name).absolute()
        folder = _secret_folder(site, path)
        if folder is not None:
            os.chown(folder, 0, user.gid)
            folder.chmod(0o750)
        os.chown(path, user.uid, user.gid)
        path.chmod(0o600)
