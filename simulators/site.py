"""Simulate every device of a site config at once.

RTU buses get a socat pty pair each; TCP buses a listener on 127.0.0.1. The
site's config is then written again (comments kept) with the ports the agent
should open, so the real agent runs unchanged against the simulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from edge.config.site import LoadedSite, RtuBus
from simulators.devices import DepthSource, SimDevice, World, make_sim
from simulators.pty import PtyPair
from simulators.scenarios import Scenario
from simulators.slave import SimBus, serve_rtu_fd, serve_tcp


class SimSite:
    """All simulated devices of one site, sharing one water depth."""

    def __init__(
        self,
        site: LoadedSite,
        scenario: Scenario | None = None,
        speed: float = 1.0,
        wire_timing: bool = True,
        gate_travel_s: float = 3.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.site = site
        self.source = DepthSource(scenario or Scenario.named("dry"), speed=speed, clock=clock)
        self.wire_timing = wire_timing
        self.devices: dict[str, SimDevice] = {}
        self.buses: dict[str, SimBus] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self._ptys: list[PtyPair] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        cfg = site.config
        for bus in cfg.buses:
            char = bus.char_time_s() if isinstance(bus, RtuBus) and wire_timing else 0.0
            self.buses[bus.id] = SimBus(char_time_s=char)
        world = World(self.source, clock=clock, gate_travel_s=gate_travel_s)
        for d in cfg.devices:
            prof = site.profiles[d.profile]
            dev = make_sim(prof, d.unit, replace(world, mount_height_mm=d.mount_height_mm))
            self.devices[d.id] = dev
            self.buses[d.bus].add(dev.slave)

    def __getitem__(self, dev_id: str) -> SimDevice:
        return self.devices[dev_id]

    async def start(self, workdir: Path | None = None) -> SimSite:
        for bus in self.site.config.buses:
            sim_bus = self.buses[bus.id]
            if isinstance(bus, RtuBus):
                pair = await PtyPair(workdir, name=bus.id).start()
                self._ptys.append(pair)
                self._tasks.append(asyncio.create_task(serve_rtu_fd(sim_bus, pair.slave_path)))
                self.endpoints[bus.id] = {"port": pair.master_path}
            else:
                server = await serve_tcp(sim_bus, "127.0.0.1", 0)
                self._servers.append(server)
                port = server.sockets[0].getsockname()[1]
                self.endpoints[bus.id] = {"host": "127.0.0.1", "port": port}
        self.source.restart()
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for pair in self._ptys:
            await pair.stop()
        self._tasks.clear()

    def write_config(self, out: Path, overrides: Mapping[str, Any] | None = None) -> Path:
        """The site's config with bus endpoints pointing here, marked ``site.exercise: true`` (what a
        simulator raises is not real: the CAP feed says Exercise), plus ``overrides`` (dotted keys)."""
        yaml = YAML(typ="rt")
        data = yaml.load(self.site.path.read_text(encoding="utf-8"))
        for bus in data["buses"]:
            bus.update(self.endpoints[bus["id"]])
        profiles_dir = data.get("profiles_dir")
        if profiles_dir and not Path(profiles_dir).is_absolute():
            data["profiles_dir"] = str((self.site.path.parent / profiles_dir).resolve())
        data["site"]["exercise"] = True
        for dotted, value in (overrides or {}).items():
            node = data
            *parents, last = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            if value is None:
                node.pop(last, None)
            else:
                node[last] = value
        with out.open("w", encoding="utf-8") as f:
            yaml.dump(data, f)
        return out

    def status(self) -> dict[str, Any]:
        return {
            "depth_mm": round(self.source.depth_mm(), 1),
            "devices": {k: d.status() for k, d in self.devices.items()},
        }
