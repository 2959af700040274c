"""The collector: broker -> ingest -> store. Run until cancelled."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cloud.config import CloudConfig, load_cloud_config
from cloud.consumer import Consumer
from cloud.ingest import Ingestor
from cloud.store import Store
from floodgate.broker import BrokerSettings
from floodgate.runner import run_until_signal

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

    run_until_signal(lambda: Collector(config, broker).run())
    return 0


async def migrate(path: Path) -> int:
    config, _ = load_cloud_config(path)
    store = Store(config.database)
    try:
        return await store.migrate()
    finally:
        await store.close()
