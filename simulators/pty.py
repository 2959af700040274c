"""Pseudo-terminal pairs from socat: a virtual RS-485 line on one machine."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path


class PtyPair:
    """``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B``: A for the slave, B for the master."""

    def __init__(self, directory: Path | None = None, name: str = "bus") -> None:
        self._own_dir = directory is None  # a folder made here is removed again by stop()
        self._dir = directory or Path(tempfile.mkdtemp(prefix="floodgate-sim-"))
        self.slave_path = str(self._dir / f"{name}-sim")
        self.master_path = str(self._dir / f"{name}")
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 5.0) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is not installed: run './dev setup' or 'apt-get install socat'")
        self._proc = await asyncio.create_subprocess_exec(
            socat,
            f"pty,raw,echo=0,link={self.slave_path}",
            f"pty,raw,echo=0,link={self.master_path}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not (await asyncio.to_thread(self._exist)):
            if self._proc.returncode is not None:
                raise RuntimeError(f"socat exited with {self._proc.returncode}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("socat did not create the pty pair in time")
            await asyncio.sleep(0.01)
        return self

    def _exist(self) -> bool:
        return os.path.exists(self.slave_path) and os.path.exists(self.master_path)

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
