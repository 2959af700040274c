"""Users, API tokens, failed logins (the throttle every collector shares) and the audit of writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update

from cloud.db.schema import api_tokens, audit, login_failures, users
from cloud.db.store import Row, Store


async def add_user(store: Store, row: dict[str, Any]) -> bool:
    """A new user (a ``users`` row); False, and nothing stored, if the name is taken."""
    async with store.begin() as conn:
        taken = (
            await conn.execute(select(users.c.username).where(users.c.username == row["username"]))
        ).first()
        if taken:
            return False
        await conn.execute(users.insert().values(**row))
    return True


async def user_exists(store: Store, username: str) -> bool:
    async with store.read() as conn:
        return (
            await conn.execute(select(users.c.username).where(users.c.username == username))
        ).first() is not None


async def disable_user(store: Store, username: str) -> None:
    async with store.begin() as conn:
        await conn.execute(update(users).where(users.c.username == username).values(disabled=True))


async def user(store: Store, username: str) -> Row | None:
    async with store.read() as conn:
        return (await conn.execute(select(users).where(users.c.username == username))).mappings().first()


async def add_token(store: Store, row: dict[str, Any]) -> None:
    """A new token (an ``api_tokens`` row)."""
    async with store.begin() as conn:
        await conn.execute(api_tokens.insert().values(**row))


async def revoke_token(store: Store, token_id: str) -> None:
    async with store.begin() as conn:
        await conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(revoked=True))


async def token_with_user(store: Store, token_id: str) -> Row | None:
    """Token ``token_id``'s row with its user's ``role``, ``unit`` and ``disabled``."""
    async with store.read() as conn:
        return (
            (
                await conn.execute(
                    select(api_tokens, users.c.role, users.c.unit, users.c.disabled)
                    .join(users, users.c.username == api_tokens.c.username)
                    .where(api_tokens.c.id == token_id)
                )
            )
            .mappings()
            .first()
        )


async def audited(store: Store, ts: int, actor: str, method: str, path: str, status: int) -> None:
    """A write to the API, who made it and how it was answered."""
    async with store.begin() as conn:
        await conn.execute(audit.insert().values(ts=ts, actor=actor, method=method, path=path, status=status))


async def login_failures_of(store: Store, keys: list[str]) -> dict[str, tuple[int, int]]:
    """key -> (failures in a row, last failure ms), for the keys that have failed."""
    q = select(login_failures).where(login_failures.c.key.in_(keys))
    async with store.read() as conn:
        return {r.key: (r.failures, r.last_ms) for r in (await conn.execute(q)).all()}


async def login_attempt(
    store: Store,
    keys: list[str],
    now: int,
    forget_before: int,
    wait_ms: Callable[[dict[str, tuple[int, int]]], int],
) -> int:
    """Let a login attempt go ahead, or not, in one transaction that serialises attempts on the
    same keys across every collector on the database (PostgreSQL: their rows locked in key order;
    SQLite: one writer at a time).

    ``wait_ms`` gets key -> (failures in a row, last failure ms) and says how long the attempt must
    still wait. If 0, each key counts the attempt as a failure now (``login_succeeded`` clears them
    when the password is right), so a burst of attempts in parallel is throttled like one after
    the other; otherwise nothing changes and the wait is returned. Keys quiet since before
    ``forget_before`` are forgotten."""
    async with store.begin() as conn:
        for key in sorted(keys):  # one order for every collector: no deadlock between two
            await conn.execute(
                store.insert(login_failures)
                .values(key=key, failures=0, last_ms=now)
                .on_conflict_do_nothing(index_elements=["key"])
            )
        q = select(login_failures).where(login_failures.c.key.in_(keys)).order_by(login_failures.c.key)
        if store.dialect == "postgresql":
            q = q.with_for_update()
        seen = {r.key: (r.failures, r.last_ms) for r in (await conn.execute(q)).all()}
        wait = wait_ms(seen)
        if wait:
            return wait
        await conn.execute(
            update(login_failures)
            .where(login_failures.c.key.in_(keys))
            .values(failures=login_failures.c.failures + 1, last_ms=now)
        )
        await conn.execute(delete(login_failures).where(login_failures.c.last_ms < forget_before))
        return 0


async def login_succeeded(store: Store, keys: list[str]) -> None:
    """A success clears these keys."""
    if keys:
        async with store.begin() as conn:
            await conn.execute(delete(login_failures).where(login_failures.c.key.in_(keys)))
