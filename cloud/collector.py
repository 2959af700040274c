"""The collector: broker -> ingest -> store. Run until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from cloud.config import CloudConfig, load_cloud_config
from cloud.consumer import Consumer
from cloud.ingest import Ingestor
from cloud.store import Store
from floodgate.broker import BrokerSettings

log = logging.getLogger("floodgate.cloud")


class Collector:
    def __init__(self, config: CloudConfig, broker: BrokerSettings) -> None:
        self.config = config
        self.store = Store(config.database)
        self.ingestor = Ingestor(self.store)
        self.consumer = Consumer(
            broker,
            self.ingestor,
            client_id=config.client_id,
            shared_group=config.shared_group,
            batch_max=config.batch_max,
        )
        self.ready = asyncio.Event()

    async def run(self) -> None:
        try:
            version = await self.store.migrate()
            log.info("database ready", extra={"dialect": self.store.dialect, "schema": version})
            self.ready.set()
            await self.consumer.run()
        finally:
            await self.store.close()


def run_collector(path: Path, log_level: str = "info", log_format: str = "text") -> int:
    from floodgate import logs  # noqa: PLC0415

    logs.setup(log_level, log_format)
    config, broker = load_cloud_config(path)

    async def main() -> None:
        task = asyncio.create_task(Collector(config, broker).run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


async def migrate(path: Path) -> int:
    config, _ = load_cloud_config(path)
    store = Store(config.database)
    try:
        return await store.migrate()
    finally:
        await store.close()
