"""``floodgate demo``: a simulated tunnel in a storm, the real edge agent, and what it says.

Starts a private MQTT broker (mosquitto on a free port) unless ``--broker`` is
given, simulates every device of the example site with a storm scenario, runs
the edge agent against them, and prints what arrives on the broker: alerts,
board messages, gate movements. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[1] / "firmware-config" / "sites" / "example-kexiang-tunnel.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def mosquitto(workdir: Path) -> AsyncIterator[str]:
    """A private mosquitto on a free loopback port; yields its URL."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = await asyncio.create_subprocess_exec(
        exe, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_port("127.0.0.1", port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def describe(kind: str, p: dict[str, Any]) -> str | None:
    """One human line for a message on the broker, or None for the noisy ones."""
    if kind == "alert":
        a = p["alert"]
        has_value = a.get("value") is not None and a["kind"] == "flood"
        value = f" {a['value']:.0f} {a.get('unit') or ''}".rstrip() if has_value else ""
        extra = f" ({a['reason']})" if a.get("reason") else ""
        return f"ALERT  {a['dev']:<7} {a['kind']:<12} {a['prev']} -> {a['level']}{value}{extra}"
    if kind == "event":
        e = p["event"]
        d = e.get("detail", {})
        if e["type"] == "actuator.state":
            if "text" in d:
                return f"BOARD  {e['dev']:<7} shows \u201c{d['text']}\u201d  [{d.get('cause', '')}]"
            if "do" in d:
                relay = "confirmed" if d.get("confirmed") else "NOT confirmed"
                return f"GATE   {e['dev']:<7} {d['do']} (relay {relay})"
            return f"GATE   {e['dev']:<7} is {d.get('state')}"
        if e["type"] == "heartbeat":
            return None
        return f"EVENT  {e.get('dev') or '':<7} {e['type']} {json.dumps(d, ensure_ascii=False)}"
    if kind == "birth":
        return f"BIRTH  {p['site']['name']} with {len(p['devices'])} devices"
    if kind == "cmd-result":
        return f"CMD    {p['cmd_id']} {p['status']} {p.get('reason', '')}"
    return None


async def _demo(args: argparse.Namespace) -> int:
    import aiomqtt  # noqa: PLC0415 - the demo pulls in the edge stack only when run

    from edge.agent import Agent  # noqa: PLC0415
    from edge.config.site import load_site  # noqa: PLC0415
    from simulators.scenarios import Scenario  # noqa: PLC0415
    from simulators.site import SimSite  # noqa: PLC0415

    workdir = Path(tempfile.mkdtemp(prefix="floodgate-demo-"))
    stack = contextlib.AsyncExitStack()
    async with stack:
        url = args.broker or await stack.enter_async_context(mosquitto(workdir))
        site = load_site(args.config)
        sim = await SimSite(site, Scenario.named(args.scenario), speed=args.speed).start(workdir)
        stack.push_async_callback(sim.stop)
        key = workdir / "command-key"
        key.write_text("demo-" + "k" * 27)
        cfg = sim.write_config(
            workdir / "site.yaml",
            {
                "broker.url": url,
                "broker.username": None,
                "broker.password_file": None,
                "command_key_file": str(key),
                "outbox.path": str(workdir / "outbox.db"),
            },
        )
        text = cfg.read_text(encoding="utf-8").replace("gate_min_warning_s: 30", "gate_min_warning_s: 10")
        cfg.write_text(text, encoding="utf-8")
        agent = Agent(load_site(cfg))
        agent_task = asyncio.create_task(agent.run())
        print(f"Floodgate demo: site {site.config.site.name}, scenario {args.scenario} x{args.speed:g}")
        print(f"broker {url}; work files in {workdir}; Ctrl-C to stop\n", flush=True)
        t0 = time.monotonic()
        host, port = url.removeprefix("mqtt://").split(":")
        try:
            async with aiomqtt.Client(host, int(port)) as client:
                await client.subscribe("floodgate/v1/#", qos=1)

                async def show() -> None:
                    async for m in client.messages:
                        kind = str(m.topic).rsplit("/", 1)[-1]
                        payload = m.payload if isinstance(m.payload, bytes) else b"{}"
                        line = describe(kind, json.loads(payload))
                        if line:
                            elapsed = time.monotonic() - t0
                            print(
                                f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {line}",
                                flush=True,
                            )

                shower = asyncio.create_task(show())
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.duration)
                shower.cancel()
        finally:
            agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent_task
        print(
            f"\nstopped; simulated depth {sim.source.depth_mm():.0f} mm; "
            f"gate {sim.devices['gate-1'].status().get('gate')}",
            flush=True,
        )
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="floodgate demo", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--broker", help="use this broker (mqtt://host:port) instead of a private one")
    p.add_argument("--config", type=Path, default=EXAMPLE, help="site config to simulate")
    p.add_argument("--scenario", default="storm")
    p.add_argument("--speed", type=float, default=6.0, help="scenario seconds per real second")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = p.parse_args(argv)
    from floodgate import logs  # noqa: PLC0415

    logs.setup("warning")
    try:
        return asyncio.run(_demo(args))
    except KeyboardInterrupt:
        return 0
    except FileNotFoundError as exc:
        print(f"floodgate demo: {exc}; run './dev demo' to install what it needs", file=sys.stderr)
        return 1
