"""Passwords (argon2), secret tokens stored hashed, and the failed-login limiter."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from storage.models import LoginFailure

_hasher = PasswordHasher()
# Verifying against this when the account does not exist keeps the timing the same.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


async def hash_password(password: str) -> str:
    # argon2 takes tens of milliseconds of CPU: keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def new_secret(prefix: str) -> str:
    """A bearer secret: 256 random bits. Only its hash is ever stored."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str, key: str) -> str:
    """Keyed SHA-256 of a secret: a leaked table of hashes opens no session."""
    return hmac.new(key.encode(), secret.encode(), hashlib.sha256).hexdigest()


class LoginLimiter:
    """Counts failed logins per account and per client address in a sliding window,
    in the database, so that every node sees the same counts: with N nodes an attacker
    gets no more tries than with one. Keys are stored as keyed hashes.

    An account is limited after `max_failures`; an address after `max_per_address`,
    higher, because a clinic's whole staff often shares one public address.
    """

    def __init__(
        self, max_failures: int, window_seconds: float, *, max_per_address: int | None = None,
        secret_key: str = "",
    ) -> None:
        self.max_failures = max_failures
        self.max_per_address = max_per_address or max_failures * 10
        self.window = window_seconds
        self._secret = secret_key

    def _hash(self, key: str) -> str:
        return hash_secret(key, self._secret + ":login")

    def _limit(self, key: str) -> int:
        return self.max_per_address if key.startswith("addr:") else self.max_failures

    async def retry_after(self, keys: list[str]) -> int:
        """Seconds until a login may be tried again for any of `keys`; 0 if allowed now."""
        now = datetime.now(UTC)
        since = now - timedelta(seconds=self.window)
        by_hash = {self._hash(k): k for k in keys}
        rows = await LoginFailure.filter(key_hash__in=list(by_hash), at__gt=since).values(
            "key_hash", "at"
        )
        times: dict[str, list[datetime]] = {}
        for row in rows:
            times.setdefault(row["key_hash"], []).append(row["at"])
        wait = 0.0
        for key_hash, ats in times.items():
            limit = self._limit(by_hash[key_hash])
            if len(ats) >= limit:
                ats.sort()
                # Allowed again when the oldest failure that keeps it at the limit ages out.
                oldest = ats[len(ats) - limit]
                wait = max(wait, (oldest - since).total_seconds())
        return int(wait) + 1 if wait > 0 else 0

    async def failed(self, keys: list[str]) -> None:
        now = datetime.now(UTC)
        await LoginFailure.bulk_create(
            [LoginFailure(key_hash=self._hash(k), at=now) for k in keys]
        )
        # Old failures no longer count: forget them (a few rows at a time, in passing).
        await LoginFailure.filter(at__lt=now - timedelta(seconds=self.window)).delete()

    async def succeeded(self, account_key: str) -> None:
        await LoginFailure.filter(key_hash=self._hash(account_key)).delete()
