"""Test helpers: a private mosquitto, a NATS cluster, an MQTT recorder, waiting on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from floodgate.demo import free_port


async def wait_until(
    cond: Callable[[], object], timeout: float = 10.0, what: str = "condition", every: float = 0.02
) -> Any:
    """Poll ``cond`` (sync or async) every ``every`` s until truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout_s: float, what: str) -> None:
    """Fixture start-up (outside any event loop): until ``port`` accepts, or ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start on port {port}") from None
            time.sleep(0.02)  # noqa: TID251 - polling another process's port


class Mosquitto:
    """A mosquitto of our own on a free port; can be stopped and started again on the same port."""

    def __init__(self, workdir: Path, persistence: bool = False, listener: list[str] | None = None) -> None:
        """``listener`` replaces ``allow_anonymous true`` with options of its own (TLS, auth)."""
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        # Started as root, mosquitto drops to the 'mosquitto' user, which cannot read
        # pytest's private temporary folders (keys, password file, persistence).
        lines = ["user root"] if os.geteuid() == 0 else []
        # A collector's persistent session must not lose a backlog while it restarts.
        lines += ["max_queued_messages 0"]
        # The collector acknowledges a batch after its commit: a window of 20 (the
        # default) would cap its batches at 20 messages. 2000: the four batches
        # of 500 a PostgreSQL collector has unacknowledged (three committing, one next).
        lines += ["max_inflight_messages 2000"]
        lines += [f"listener {self.port} 127.0.0.1", *(listener or ["allow_anonymous true"])]
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.proc, self.port, 10, "mosquitto")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """``kill -9`` by its PID: no goodbye, no save of its sessions."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@dataclass
class Received:
    topic: str
    kind: str
    payload: dict[str, Any]
    raw: bytes
    connection: int = 0  # which of the recorder's connections it came on


@dataclass
class Recorder:
    """Subscribes to ``floodgate/v1/#`` and keeps every message; reconnects after broker restarts."""

    port: int
    node: str = "+"
    client_id: str = "recorder"
    persistent: bool = False
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None
    connections: int = 0
    messages: list[Received] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self.client_id,
                    clean_session=not self.persistent,
                    username=self.username,
                    password=self.password,
                    tls_context=self.tls_context,
                ) as c:
                    self.connections += 1
                    await c.subscribe(f"floodgate/v1/{self.node}/#", qos=1)
                    self.connected.set()
                    async for m in c.messages:
                        raw = m.payload if isinstance(m.payload, bytes) else b""
                        topic = str(m.topic)
                        try:
                            payload = json.loads(raw)
                        except ValueError:
                            payload = {}
                        kind = topic.rsplit("/", 1)[-1]
                        self.messages.append(Received(topic, kind, payload, raw, self.connections))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def of(self, kind: str) -> list[Received]:
        return [m for m in self.messages if m.kind == kind]

    def alerts(self) -> list[dict[str, Any]]:
        return [m.payload["alert"] for m in self.of("alert")]

    def events(self, etype: str | None = None) -> list[dict[str, Any]]:
        evs = [m.payload["event"] for m in self.of("event")]
        return [e for e in evs if etype is None or e["type"] == etype]

    async def wait_for(
        self, pred: Callable[[Received], bool], timeout: float = 10.0, what: str = "message"
    ) -> Received:
        found: list[Received] = []

        def check() -> bool:
            found[:] = [m for m in self.messages if pred(m)]
            return bool(found)

        await wait_until(check, timeout, what)
        return found[0]


class Influxd:
    """Debian's influxd (1.x) on free ports with a data directory of its own."""

    def __init__(self, workdir: Path, auth: bool = False) -> None:
        self.port = free_port()
        self.rpc_port = free_port()
        self.workdir = workdir
        self.conf = workdir / "influxdb.conf"
        self.conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{workdir}/meta"\n'
            f'[data]\n  dir = "{workdir}/data"\n  wal-dir = "{workdir}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            f"  auth-enabled = {'true' if auth else 'false'}\n"
            "[monitor]\n  store-enabled = false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("influxd") or "/usr/bin/influxd"
        self.proc = subprocess.Popen(
            [exe, "-config", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.proc, self.port, 20, "influxd")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@contextlib.asynccontextmanager
async def modbus_tcp(*slaves: Any) -> AsyncIterator[Any]:
    """A real Modbus TCP link to simulated slaves on a free local port (server and link closed after)."""
    from edge.bus.link import PymodbusLink
    from edge.commission.modbus import bus_for
    from simulators.slave import SimBus, serve_tcp

    server = await serve_tcp(SimBus(list(slaves)))
    link = PymodbusLink(bus_for(f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"))
    try:
        await link.connect()
        yield link
    finally:
        await link.close()
        server.close()
        await server.wait_closed()


def _value(v: str | int | bool) -> str:
    """A nats-server config value: true/false, a number, or a string as it is (durations: "30s")."""
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _conf(settings: dict[str, str | int | bool], sep: str) -> str:
    return "".join(f"{sep}{k}: {_value(v)}" for k, v in settings.items())


class LinkCut:
    """A TCP forwarder to ``127.0.0.1:port`` whose link can be cut like a pulled cable.

    ``cut()``: nothing passes either way and nothing is closed (no reset, no FIN), so each
    side notices only by its own timeouts (MQTT keepalive); a connection opened meanwhile
    is accepted and waits. ``heal()``: traffic passes again. Needs no root, unlike
    ``bench/netns.py``.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.listen = free_port()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.listen}"

    async def start(self) -> LinkCut:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen)
        return self

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._open.wait()
                data = await r.read(65536)
                if not data:
                    break
                await self._open.wait()  # read while cut: held, as a dead link would
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        await self._open.wait()
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            cw.close()
            return
        for t in (asyncio.create_task(self._pipe(cr, uw)), asyncio.create_task(self._pipe(ur, cw))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class NatsCluster:
    """Debian's nats-server (2.9) as a JetStream cluster of ``size`` nodes on free ports.

    Each node has its own config file, JetStream store, cluster route, MQTT
    listener and HTTP monitor. ``kill(i)`` is ``kill -9``; ``restart(i)`` starts
    node ``i`` again on the same ports and store. ``size=1`` is a single node
    (no cluster block). Nodes are numbered from 0. ``mqtt`` adds settings to each
    node's ``mqtt`` block (e.g. ``{"consumer_replicas": 1}``), ``limits`` top-level
    ones (e.g. ``{"max_connections": 20000}``), as nats-server's config spells them.
    ``env``: added to each node's environment (e.g. ``{"GOMAXPROCS": "1"}``).
    """

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        name: str = "fg",
        mqtt: dict[str, str | int | bool] | None = None,
        limits: dict[str, str | int | bool] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = {**os.environ, **env} if env else None
        workdir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.name = name
        self.mqtt = dict(mqtt or {})
        self.limits = dict(limits or {})
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.confs: list[Path] = []
        self._configure()

    def _configure(self) -> None:
        """Free ports for every node, and each node's config file."""
        size, workdir = self.size, self.workdir
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.mqtt_ports = [free_port() for _ in range(size)]
        self.http_ports = [free_port() for _ in range(size)]
        self.confs = []
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        for i in range(size):
            lines = [
                f"server_name: n{i}",
                f"listen: 127.0.0.1:{self.client_ports[i]}",
                f"http: 127.0.0.1:{self.http_ports[i]}",
                f'jetstream {{ store_dir: "{workdir}/store{i}" }}',
                f"mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[i]}{_conf(self.mqtt, ', ')} }}",
                *(f"{k}: {_value(v)}" for k, v in self.limits.items()),
            ]
            if size > 1:
                lines.append(
                    f"cluster {{ name: {self.name}, listen: 127.0.0.1:{self.route_ports[i]},"
                    f" routes: [{routes}] }}"
                )
            conf = workdir / f"nats-n{i}.conf"
            conf.write_text("\n".join(lines) + "\n")
            self.confs.append(conf)

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    @property
    def mqtt_urls(self) -> list[str]:
        return [f"mqtt://127.0.0.1:{p}" for p in self.mqtt_ports]

    def _spawn(self, i: int) -> None:
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        log = self.workdir / f"nats-n{i}.log"
        self.procs[i] = subprocess.Popen(
            [exe, "-c", str(self.confs[i]), "-l", str(log)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> None:
        """Every node started, then until the cluster has formed and JetStream has a meta leader.

        A port found free can be taken by another process before the node binds it (other
        test runs on the machine): then the whole cluster is tried again on new ports.
        """
        for attempt in range(attempts):
            for i in range(self.size):
                self._spawn(i)
            try:
                for i in range(self.size):
                    self._ready(i, timeout_s)
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                for i in range(self.size):  # a fresh start: no half-made cluster state
                    shutil.rmtree(self.workdir / f"store{i}", ignore_errors=True)
                self._configure()

    def _ready(self, i: int, timeout_s: float) -> None:
        """Node ``i`` listens on its ports, sees every other running node and JetStream has a meta leader."""
        proc = self.procs[i]
        assert proc is not None
        for port in (self.client_ports[i], self.mqtt_ports[i], self.http_ports[i]):
            wait_listening(proc, port, timeout_s, f"nats-server n{i}")
        deadline = time.monotonic() + timeout_s
        while True:
            routes = self.monitor(i, "routez").get("num_routes", 0)
            jsz = self.monitor(i, "jsz")
            meta = jsz.get("meta_cluster") or {}
            # Routes to every node running (a restart while another node is down sees fewer).
            formed = routes >= len(self.alive()) - 1 and (self.size == 1 or bool(meta.get("leader")))
            if formed and jsz.get("config") is not None:
                return
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"nats-server n{i} did not join the cluster (routes {routes}, jsz {jsz})")
            time.sleep(0.05)  # noqa: TID251 - polling another process's monitor

    def monitor(self, i: int, path: str) -> dict[str, Any]:
        """One of node ``i``'s monitoring endpoints (``jsz``, ``routez``, ``jsz?streams=true``…), or {}."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/{path}", timeout=2) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except (OSError, ValueError):
            return {}

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def leader_of(self, stream: str) -> int | None:
        """The node that leads ``stream`` (as a live node reports it), or None while there is none."""
        names = {f"n{i}": i for i in range(self.size)}
        for i in self.alive():
            jsz = self.monitor(i, "jsz?accounts=true&streams=true")
            for account in jsz.get("account_details") or []:
                for s in account.get("stream_detail") or []:
                    if s.get("name") != stream:
                        continue
                    leader = (s.get("cluster") or {}).get("leader")
                    if self.size == 1:
                        return i
                    if leader in names and names[leader] in self.alive():
                        return names[leader]
        return None

    def kill(self, i: int) -> None:
        """``kill -9`` node ``i`` by its PID."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def restart(self, i: int, timeout_s: float = 30.0) -> None:
        """Node ``i`` again, same ports and store; returns once it has rejoined."""
        self.kill(i)
        self._spawn(i)
        self._ready(i, timeout_s)

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            self.procs[i] = None
