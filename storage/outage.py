"""Telling "the database is down" apart from "this query is wrong"."""

from __future__ import annotations

import asyncio

from tortoise.exceptions import DBConnectionError, OperationalError, TransactionManagementError

try:  # asyncpg is present with PostgreSQL only
    import asyncpg

    _PG_OUTAGES: tuple[type[BaseException], ...] = (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.ConnectionDoesNotExistError,
    )
except ImportError:  # pragma: no cover
    _PG_OUTAGES = ()

_OUTAGE_WORDS = (
    "connection",
    "closed",
    "refused",
    "terminat",
    "shutdown",
    "database is locked",
    "timeout",
    "timed out",
)


def is_outage(exc: BaseException) -> bool:
    """True when `exc` means the database could not be reached or went away."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (DBConnectionError, OSError, asyncio.TimeoutError, *_PG_OUTAGES)):
            return True
        if isinstance(current, OperationalError | TransactionManagementError):
            text = str(current).lower()
            if any(word in text for word in _OUTAGE_WORDS):
                return True
        current = current.__cause__ or current.__context__
    return False
