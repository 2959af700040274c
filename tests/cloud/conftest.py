"""Databases for collector tests: SQLite in a temp folder and a real PostgreSQL.

PostgreSQL: ``FLOODGATE_TEST_PG_URL`` or the local server on 127.0.0.1:5432
(database ``test``). Each test gets a database of its own, dropped after. With
``CI=true`` a missing server fails the run instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cloud.db.store import Store

PG_URL = os.environ.get("FLOODGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_admin() -> asyncpg.Connection:
    return await asyncpg.connect(PG_URL.replace("postgresql://", "postgres://", 1), timeout=5)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'collector.db'}"
        return
    try:
        admin = await _pg_admin()
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests must run in CI, but {PG_URL} does not answer: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc}")
    async with pg_database(admin, "fg_test") as url:
        yield url


@contextlib.asynccontextmanager
async def pg_database(admin: asyncpg.Connection, prefix: str) -> AsyncIterator[str]:
    """A PostgreSQL database of its own (``prefix`` and a random name), dropped after; closes ``admin``."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = Store(db_url)
    await s.migrate()
    yield s
    await s.close()
