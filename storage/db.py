"""Database configuration, start-up, shutdown and migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tortoise import Tortoise
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


def _normalise_url(url: str) -> str:
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


async def ping(database_url: str) -> None:
    """Raise if the database cannot answer a trivial query."""
    await connections.get(connection_label(database_url)).execute_query("SELECT 1")
