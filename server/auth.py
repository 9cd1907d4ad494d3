"""Passwords (argon2), secret tokens stored hashed, and the failed-login limiter."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

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
    """Counts failed logins per account and per client address in a sliding window.

    Per node, in memory: with several nodes an attacker gets at most `max_failures`
    tries per node per window, which still bounds guessing; a shared limiter can
    replace this class without touching its callers.
    """

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, keys: list[str]) -> int:
        """Seconds until a login may be tried again for any of `keys`; 0 if allowed now."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        for key in keys:
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)
        if len(self._failures) > 100_000:  # bound memory under a spray of addresses
            for key in list(self._failures)[:50_000]:
                del self._failures[key]

    def succeeded(self, account_key: str) -> None:
        self._failures.pop(account_key, None)
