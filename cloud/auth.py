"""Users, roles and API tokens; passwords stored as argon2 hashes, token secrets as SHA-256.

Roles and what they may do:

- ``viewer``: read everything.
- ``operator``: also send commands to sites and comment on tickets.
- ``dispatcher``: also open, dispatch, verify, evaluate, reopen and merge tickets.
- ``unit``: a member of a responsible unit: accept, reject and report on
  tickets dispatched to their unit, and comment.
- ``forecaster``: the weather service: read everything, and send rainfall forecasts
  (``POST /api/v1/rainfall-forecasts``).
- ``admin``: everything, including users and tokens.

A token is ``fgt_<id>_<secret>``; the id finds the row, the secret (192
random bits, so a fast hash is enough) is checked against its SHA-256 on
every request: an expired or revoked token, or a disabled user's, is refused
at once, and a live stream opened with it ends (``Auth.held``). Tokens issued
before that change carry an argon2 hash and still work.

Every token expires: at most ``TOKEN_MAX_S`` after it is made (a token
stored without an expiry counts from its creation). Passwords are hashed
with argon2id (19 MiB, 2 passes), at most
``HASHES_AT_ONCE`` at a time, so a flood of logins costs bounded memory;
``LoginThrottle`` refuses a user name or client address after repeated
failures before any hashing. The failures are counted in the database, so
collectors sharing one throttle together.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cloud.db import auth as db_auth
from cloud.db.store import Row, Store
from floodgate.clock import Clock, sleep_until_or
from floodgate.errors import RequestError

log = logging.getLogger("floodgate.cloud.auth")
Role = Literal["viewer", "operator", "dispatcher", "unit", "forecaster", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
DAY_S = 86400
TOKEN_MAX_S = 366 * DAY_S  # no token lives longer, an admin's service token included
USER_TOKEN_MAX_S = 7 * DAY_S  # the longest a non-admin may make for themselves
# argon2id at OWASP's minimum (19 MiB, 2 passes): with HASHES_AT_ONCE, logins cost at most ~40 MiB.
PASSWORD_TIME_COST, PASSWORD_MEMORY_KIB = 2, 19 * 1024
HASHES_AT_ONCE = 2
SHA = "sha256:"
TOKEN_ID = re.compile(r"[0-9a-f]{1,32}")
RECHECK_S = 5.0  # how often an open stream looks whether its token still holds


class AuthError(RequestError):
    """A login or token that cannot be accepted; ``code`` is unauthorized, invalid or conflict."""


class Throttled(AuthError):
    """Too many failed logins: ``retry_after_s`` until the next attempt is looked at."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__("too_many", message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Principal:
    username: str
    role: str
    unit: str | None = None
    # The token the caller came with, and when it expires (None for a login checked by password).
    token_id: str | None = field(default=None, compare=False, repr=False)
    expires_ms: int | None = field(default=None, compare=False, repr=False)

    @property
    def actor(self) -> str:
        """How the timeline and the audit log name this person."""
        if self.role == "unit" and self.unit:
            return f"unit:{self.unit}:{self.username}"
        return f"user:{self.username}"


class LoginThrottle:
    """The delay after failed logins for one kind of key (a user name, a client address).

    After ``free`` failures in a row, each further attempt must wait
    ``base_s * 2**(failures - free)`` (capped at ``max_s``) after the last
    failure. The failures themselves are kept in the database
    (``cloud.db.auth``), so collectors sharing it throttle together.
    """

    def __init__(self, *, free: int, base_s: float = 1.0, max_s: float = 900.0) -> None:
        self.free = free
        self.base_ms = base_s * 1000
        self.max_ms = max_s * 1000

    def wait_ms(self, failed: tuple[int, int] | None, now: int) -> int:
        """How long a key with ``failed`` = (failures, last ms) must still wait; 0 when it may try."""
        if failed is None or failed[0] < self.free:
            return 0
        failures, last = failed
        delay = min(self.max_ms, self.base_ms * 2 ** min(failures - self.free, 64))
        return max(0, int(last + delay - now))


class Auth:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        hasher: PasswordHasher | None = None,
        *,
        login_free_failures: int = 5,
        login_max_delay_s: float = 900.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.hasher = hasher or PasswordHasher(
            time_cost=PASSWORD_TIME_COST, memory_cost=PASSWORD_MEMORY_KIB, parallelism=1
        )
        self._hashing = asyncio.Semaphore(HASHES_AT_ONCE)
        # An address may fail for several people (an office behind one NAT) before it waits.
        self.by_user = LoginThrottle(free=login_free_failures, max_s=login_max_delay_s)
        self.by_address = LoginThrottle(free=4 * login_free_failures, max_s=login_max_delay_s)
        # A key quiet this long is forgotten: the table stays small whatever names are tried.
        self.forget_ms = int(max(DAY_S, 2 * login_max_delay_s) * 1000)
        self.recheck_s = RECHECK_S
        self._watching: dict[asyncio.Event, Principal] = {}  # open streams' tokens

    async def _hash(self, secret: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, secret)

    async def _verify(self, hashed: str, secret: str) -> bool:
        try:
            async with self._hashing:
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
        if not await db_auth.add_user(self.store, row):
            raise AuthError("conflict", f"user {username!r} exists")
        return Principal(username, role, unit)

    async def exists(self, username: str) -> bool:
        return await db_auth.user_exists(self.store, username)

    async def disable(self, username: str) -> None:
        """Disable a user: their tokens are refused at once, their open streams end."""
        await db_auth.disable_user(self.store, username)
        self._wake(lambda p: p.username == username)

    async def login(self, username: str, password: str, client: str | None = None) -> Principal:
        """The user behind a name and password; Throttled (before any hashing) after repeated failures
        for this name or from this client address, counted across every collector on the database."""
        keys = {"user " + username: self.by_user}
        if client:
            keys["address " + client] = self.by_address
        now = self.clock.now_ms()

        def wait_ms(failed: dict[str, tuple[int, int]]) -> int:
            return max(throttle.wait_ms(failed.get(key), now) for key, throttle in keys.items())

        wait = await db_auth.login_attempt(self.store, list(keys), now, now - self.forget_ms, wait_ms)
        if wait:
            s = math.ceil(wait / 1000)
            raise Throttled(f"too many failed logins; try again in {s} s", s)
        # From here the attempt counts as a failure until the password proves right.
        row = await db_auth.user(self.store, username)
        if row is None or row["disabled"] or not row["password_hash"]:
            await self._hash(password)  # the same cost whether or not the user exists
            ok = False
        else:
            ok = await self._verify(row["password_hash"], password)
        if not ok or row is None:
            raise AuthError("unauthorized", "wrong user name or password")
        await db_auth.login_succeeded(self.store, list(keys))
        return Principal(row["username"], row["role"], row["unit"])

    async def issue_token(self, username: str, label: str | None = None, ttl_s: float | None = None) -> str:
        """A new token for ``username`` that expires after ``ttl_s`` (at most, and by default,
        TOKEN_MAX_S)."""
        return (await self.issue(username, label, ttl_s))[0]

    async def issue(self, username: str, label: str | None, ttl_s: float | None) -> tuple[str, int]:
        """A new token and when it expires (ms)."""
        if ttl_s is not None and not 0 < ttl_s <= TOKEN_MAX_S:
            raise AuthError("invalid", f"a token lives between 1 s and {TOKEN_MAX_S // DAY_S} days")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(24)
        now = self.clock.now_ms()
        expires = now + int((ttl_s or TOKEN_MAX_S) * 1000)
        await db_auth.add_token(
            self.store,
            {
                "id": token_id,
                "username": username,
                "secret_hash": SHA + hashlib.sha256(secret.encode()).hexdigest(),
                "label": label,
                "created_ms": now,
                "expires_ms": expires,
                "revoked": False,
            },
        )
        return f"fgt_{token_id}_{secret}", expires

    async def token_owner(self, token_id: str) -> str | None:
        """Whose token ``token_id`` is (None if there is no such token)."""
        row = await db_auth.token_with_user(self.store, token_id)
        return None if row is None else str(row["username"])

    async def revoke(self, token_id: str) -> None:
        """Revoke a token: refused from the next request on, and streams opened with it end now."""
        await db_auth.revoke_token(self.store, token_id)
        self._wake(lambda p: p.token_id == token_id)

    def _wake(self, which: Callable[[Principal], bool]) -> None:
        for wake, who in self._watching.items():
            if which(who):
                wake.set()

    async def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token (with its id and expiry), or AuthError('unauthorized')."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "fgt" or not TOKEN_ID.fullmatch(parts[1]) or not parts[2]:
            raise AuthError("unauthorized", "not a Floodgate token")
        row = await db_auth.token_with_user(self.store, parts[1])
        expires = self._refusal(row)
        assert row is not None  # _refusal raised otherwise
        stored: str = row["secret_hash"]
        if stored.startswith(SHA):
            given = hashlib.sha256(parts[2].encode()).hexdigest()
            ok = hmac.compare_digest(stored.removeprefix(SHA), given)
        else:
            ok = await self._verify(stored, parts[2])
        if not ok:
            raise AuthError("unauthorized", "unknown or revoked token")
        return Principal(row["username"], row["role"], row["unit"], token_id=parts[1], expires_ms=expires)

    def _refusal(self, row: Row | None) -> int:
        """The token's expiry (ms), or AuthError if it is unknown, revoked, its user's disabled or
        it has expired."""
        if row is None or row["revoked"] or row["disabled"]:
            raise AuthError("unauthorized", "unknown or revoked token")
        expires: int | None = row["expires_ms"]
        if expires is None:  # made before every token had an expiry
            expires = int(row["created_ms"]) + TOKEN_MAX_S * 1000
        if expires <= self.clock.now_ms():
            raise AuthError("unauthorized", "the token has expired")
        return expires

    async def held(self, who: Principal) -> str:
        """Wait while ``who``'s token stays good; return why it stopped: ``expired`` at its expiry
        (on the clock), ``revoked`` at once when it is revoked or its user disabled through this
        collector, or at the next look at the database (every ``recheck_s``) when another did it."""
        if who.token_id is None or who.expires_ms is None:
            raise ValueError("only a principal from a token is held")
        wake = asyncio.Event()
        self._watching[wake] = who
        try:
            while True:
                now = self.clock.now_ms()
                if now >= who.expires_ms:
                    return "expired"
                until = min(who.expires_ms, now + int(self.recheck_s * 1000))
                await sleep_until_or(self.clock, until, wake)
                wake.clear()
                try:
                    self._refusal(await db_auth.token_with_user(self.store, who.token_id))
                except AuthError as exc:
                    return "expired" if "expired" in exc.message else "revoked"
                except Exception as exc:  # the database away for a moment: the stream stays, look again
                    log.warning("could not look at token %s: %s", who.token_id, exc)
        finally:
            del self._watching[wake]
