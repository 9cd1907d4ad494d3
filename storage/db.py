"""Database configuration, start-up, shutdown and migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.connection import connections

MODELS_MODULE = "storage.models"
MIGRATIONS_MODULE = "storage.migrations"


def connection_label(database_url: str) -> str:
    """One label per dialect: tortoise caches query executors by label, so a process
    that used SQLite and then PostgreSQL under one label sent `?` placeholders to
    PostgreSQL."""
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The tortoise config for `database_url` (sqlite://PATH or postgres://...)."""
    label = connection_label(database_url)
    return {
        "connections": {label: _normalise_url(database_url)},
        "apps": {
            "models": {
                "models": [MODELS_MODULE],
                "default_connection": label,
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


# Connections per node when DATABASE_URL does not say (`?minsize=N&maxsize=N`): the
# send lanes (2 by default) each use one at a time, and HTTP requests and the hubs' gap
# reads need some beside them. Opened at start, so that the first burst of sends does
# not wait for new connections (tortoise's defaults are 1 and 5).
DEFAULT_POOL = {"minsize": 5, "maxsize": 10}


def _normalise_url(url: str) -> str:
    if url.startswith(("postgres://", "asyncpg://", "psycopg://")):
        for name, size in DEFAULT_POOL.items():
            if f"{name}=" not in url:
                url = f"{url}{'&' if '?' in url else '?'}{name}={size}"
        return url
    if url.startswith("sqlite://") and url != "sqlite://:memory:":
        path = url[len("sqlite://") :]
        Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        if "journal_mode" not in path:
            # WAL lets readers go on while the single writer commits; synchronous=FULL
            # syncs every commit, so an acknowledged message survives a power cut.
            sep = "&" if "?" in path else "?"
            url = f"{url}{sep}journal_mode=WAL&synchronous=FULL&journal_size_limit=67108864"
    return url


async def init_db(database_url: str) -> None:
    # The server's requests run in tasks that do not inherit the lifespan's context:
    # one process serves one database, so its context is the global one.
    await Tortoise.init(config=tortoise_config(database_url), _enable_global_fallback=True)


async def close_db() -> None:
    await Tortoise.close_connections()


async def migrate(database_url: str) -> None:
    """Apply every migration under storage/migrations that is not applied yet."""
    from tortoise.migrations.api import migrate as run_migrations

    await run_migrations(config=tortoise_config(database_url))
    await Tortoise.close_connections()


def connection() -> BaseDBAsyncClient:
    """The connection (a pool on PostgreSQL) of the one database this process serves."""
    (label,) = connections.db_config
    return connections.get(label)


async def ping(database_url: str) -> None:
    """Raise if the database cannot answer a trivial query."""
    await connections.get(connection_label(database_url)).execute_query("SELECT 1")
