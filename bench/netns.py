"""A network namespace for one agent, to cut it off from every broker and let it back.

The namespace gets one end of a veth pair, the machine the other, each an address on a
private /30 (10.213.N.0/30); nothing is routed further, so the traffic stays inside this
machine. The brokers listen on 127.0.0.1, which the namespace cannot reach: ``forward()``
opens a TCP forwarder on the host end's address for each broker port, in this process.
``cut()`` takes the host end's link down (packets dropped, no reset: a cable pulled),
``heal()`` brings it up. ``close()`` deletes the namespace (and with it the pair), and
is safe to call after a failure half-way through the set-up.

Needs root (``ip netns``); ``available()`` says why not when it cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

from floodgate.demo import free_port


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when a namespace can be made here, else why not."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    name = f"fgprobe{os.getpid()}"
    try:
        r = _ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return "no 'ip' command (iproute2)"
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


class Netns:
    """One namespace with a veth pair to the machine; ``index`` picks the /30 (0..63)."""

    def __init__(self, index: int) -> None:
        tag = f"{os.getpid() % 100000}x{index}"
        self.name = f"fgchaos{tag}"
        self.host_if = f"fgh{tag}"[:15]
        self.ns_if = f"fgn{tag}"[:15]
        octet = (os.getpid() % 60) * 4 + index % 4
        self.host_ip = f"10.213.{octet}.1"
        self.ns_ip = f"10.213.{octet}.2"
        self._servers: list[asyncio.Server] = []
        self._pipes: set[asyncio.Task[None]] = set()

    def open(self) -> Netns:
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, ns=self.name)
            _ip("link", "set", self.ns_if, "up", ns=self.name)
            _ip("link", "set", "lo", "up", ns=self.name)
        except subprocess.CalledProcessError as e:
            self.close_links()
            raise RuntimeError(f"setting up namespace {self.name}: {e.cmd}: {e.stderr.strip()}") from e
        return self

    def prefix(self) -> list[str]:
        """Put in front of a command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    async def forward(self, port: int) -> str:
        """An MQTT URL the namespace reaches, forwarded to 127.0.0.1:``port``."""

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                cw.close()
                return
            for t in (asyncio.create_task(pipe(cr, uw)), asyncio.create_task(pipe(ur, cw))):
                self._pipes.add(t)
                t.add_done_callback(self._pipes.discard)

        listen = free_port()
        self._servers.append(await asyncio.start_server(handle, self.host_ip, listen))
        return f"mqtt://{self.host_ip}:{listen}"

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def close_links(self) -> None:
        _ip("netns", "del", self.name, check=False)  # takes its end of the pair, and so both
        _ip("link", "del", self.host_if, check=False)

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self._pipes):
            t.cancel()
        for t in list(self._pipes):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.close_links()
