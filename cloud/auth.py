"""Users, roles and API tokens; passwords and token secrets stored as argon2 hashes.

Roles and what they may do:

- ``viewer``: read everything.
- ``operator``: also send commands to sites and comment on tickets.
- ``dispatcher``: also open, dispatch, verify, evaluate, reopen and merge tickets.
- ``unit``: a member of a responsible unit: accept, reject and report on
  tickets dispatched to their unit, and comment.
- ``admin``: everything, including users and tokens.

A token is ``fgt_<id>_<secret>``; the id finds the row, the secret is checked
against its argon2 hash (off the event loop), and a verified token is cached
briefly so a busy dashboard does not pay argon2 on every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update

from cloud.store import Store, api_tokens, users
from floodgate.clock import Clock
from floodgate.errors import RequestError

Role = Literal["viewer", "operator", "dispatcher", "unit", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
CACHE_S = 60.0


class AuthError(RequestError):
    """A login or token that cannot be accepted; ``code`` is unauthorized, invalid or conflict."""


@dataclass(frozen=True)
class Principal:
    username: str
    role: str
    unit: str | None = None

    @property
    def actor(self) -> str:
        """How the timeline and the audit log name this person."""
        if self.role == "unit" and self.unit:
            return f"unit:{self.unit}:{self.username}"
        return f"user:{self.username}"


class Auth:
    def __init__(self, store: Store, clock: Clock, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def _hash(self, secret: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, secret)

    async def _verify(self, hashed: str, secret: str) -> bool:
        try:
            return await asyncio.to_thread(self.hasher.verify, hashed, secret)
        except (VerificationError, InvalidHashError):
            return False

    async def add_user(
        self,
        username: str,
        role: str,
        password: str | None = None,
        unit: str | None = None,
        display_name: str | None = None,
    ) -> Principal:
        if role not in ROLES:
            raise AuthError("invalid", f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if role == "unit" and not unit:
            raise AuthError("invalid", "a unit member needs the unit")
        if password is not None and len(password) < 10:
            raise AuthError("invalid", "a password needs at least 10 characters")
        row = {
            "username": username,
            "display_name": display_name,
            "password_hash": await self._hash(password) if password else None,
            "role": role,
            "unit": unit,
            "disabled": False,
            "created_ms": self.clock.now_ms(),
        }
        async with self.store.engine.begin() as conn:
            exists = (
                await conn.execute(select(users.c.username).where(users.c.username == username))
            ).first()
            if exists:
                raise AuthError("conflict", f"user {username!r} exists")
            await conn.execute(users.insert().values(**row))
        return Principal(username, role, unit)

    async def exists(self, username: str) -> bool:
        async with self.store.read() as conn:
            return (
                await conn.execute(select(users.c.username).where(users.c.username == username))
            ).first() is not None

    async def disable(self, username: str) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(update(users).where(users.c.username == username).values(disabled=True))
        self._cache.clear()

    async def login(self, username: str, password: str) -> Principal:
        async with self.store.read() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        if row is None or row["disabled"] or not row["password_hash"]:
            await self._hash(password)  # the same cost whether or not the user exists
            raise AuthError("unauthorized", "wrong user name or password")
        if not await self._verify(row["password_hash"], password):
            raise AuthError("unauthorized", "wrong user name or password")
        return Principal(row["username"], row["role"], row["unit"])

    async def issue_token(self, username: str, label: str | None = None, ttl_s: float | None = None) -> str:
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(24)
        now = self.clock.now_ms()
        async with self.store.engine.begin() as conn:
            await conn.execute(
                api_tokens.insert().values(
                    id=token_id,
                    username=username,
                    secret_hash=await self._hash(secret),
                    label=label,
                    created_ms=now,
                    expires_ms=now + int(ttl_s * 1000) if ttl_s else None,
                    revoked=False,
                )
            )
        return f"fgt_{token_id}_{secret}"

    async def revoke(self, token_id: str) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(revoked=True))
        self._cache.clear()

    async def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token, or AuthError('unauthorized')."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "fgt" or not parts[1] or not parts[2]:
            raise AuthError("unauthorized", "not a Floodgate token")
        async with self.store.read() as conn:
            row = (
                (
                    await conn.execute(
                        select(api_tokens, users.c.role, users.c.unit, users.c.disabled)
                        .join(users, users.c.username == api_tokens.c.username)
                        .where(api_tokens.c.id == parts[1])
                    )
                )
                .mappings()
                .first()
            )
        if row is None or row["revoked"] or row["disabled"]:
            raise AuthError("unauthorized", "unknown or revoked token")
        if row["expires_ms"] is not None and row["expires_ms"] < self.clock.now_ms():
            raise AuthError("unauthorized", "the token has expired")
        if not await self._verify(row["secret_hash"], parts[2]):
            raise AuthError("unauthorized", "unknown or revoked token")
        who = Principal(row["username"], row["role"], row["unit"])
        self._cache[digest] = (time.monotonic() + CACHE_S, who)
        return who
