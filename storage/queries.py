"""Hand-written SQL for the send path, where the ORM's per-query cost showed in profiles.

Each function runs on the connection of the caller's transaction and issues one
statement, whatever the batch size. Both dialects: `?` placeholders for SQLite,
`$n` for PostgreSQL (asyncpg).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

EVENT_COLUMNS = (
    "id", "conversation_id", "seq", "kind", "sender_id", "sender_name", "sender_kind",
    "body", "attachments", "client_id", "target_id", "recalled", "created_at",
)


class Sql:
    """Placeholders and value conversion for one connection's dialect."""

    def __init__(self, conn: BaseDBAsyncClient) -> None:
        self.conn = conn
        self.postgres = conn.capabilities.dialect == "postgres"
        self._values: list[Any] = []

    def param(self, value: Any) -> str:
        self._values.append(value)
        return f"${len(self._values)}" if self.postgres else "?"

    def params(self, values: Iterable[Any]) -> str:
        return ", ".join(self.param(v) for v in values)

    def moment(self, value: datetime) -> Any:
        # tortoise stores SQLite datetimes as text in this exact form; asyncpg takes objects.
        return value if self.postgres else value.isoformat(sep=" ")

    async def rows(self, query: str) -> list[dict[str, Any]]:
        values, self._values = self._values, []
        return await self.conn.execute_query_dict(query, values)

    async def run(self, query: str) -> None:
        values, self._values = self._values, []
        await self.conn.execute_query(query, values)


async def lock_conversations(
    conn: BaseDBAsyncClient, ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Conversation rows by id, locked until commit (PostgreSQL) in id order (no deadlocks).

    SQLite has a single writer per database, so its write transaction is the lock.
    """
    sql = Sql(conn)
    lock = " FOR UPDATE" if sql.postgres else ""
    rows = await sql.rows(
        f"SELECT id, org_id, last_seq FROM conversations WHERE id IN ({sql.params(ids)})"
        f" ORDER BY id{lock}"
    )
    return {row["id"]: row for row in rows}


async def participant_kinds(
    conn: BaseDBAsyncClient, conversation_ids: Sequence[str], user_ids: Sequence[str]
) -> dict[tuple[str, str], str]:
    sql = Sql(conn)
    rows = await sql.rows(
        "SELECT conversation_id, user_id, kind FROM participants"
        f" WHERE conversation_id IN ({sql.params(conversation_ids)})"
        f" AND user_id IN ({sql.params(user_ids)})"
    )
    return {(row["conversation_id"], row["user_id"]): row["kind"] for row in rows}


async def events_by_client_id(
    conn: BaseDBAsyncClient, sender_ids: Sequence[str], client_ids: Sequence[str]
) -> list[dict[str, Any]]:
    sql = Sql(conn)
    rows = await sql.rows(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
        f" WHERE sender_id IN ({sql.params(sender_ids)})"
        f" AND client_id IN ({sql.params(client_ids)})"
    )
    return [normalise_event_row(row) for row in rows]


def normalise_event_row(row: dict[str, Any]) -> dict[str, Any]:
    """Rows read raw carry JSON and booleans as stored; give them Python types."""
    row = dict(row)
    if isinstance(row["attachments"], str):
        row["attachments"] = json.loads(row["attachments"])
    row["recalled"] = bool(row["recalled"])
    if isinstance(row["created_at"], str):
        row["created_at"] = datetime.fromisoformat(row["created_at"])
    return row


async def insert_events(conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row INSERT for the whole batch."""
    if not rows:
        return
    sql = Sql(conn)
    groups = []
    for row in rows:
        values = [row[c] for c in EVENT_COLUMNS]
        values[EVENT_COLUMNS.index("attachments")] = json.dumps(row["attachments"])
        values[EVENT_COLUMNS.index("created_at")] = sql.moment(row["created_at"])
        groups.append(f"({sql.params(values)})")
    await sql.run(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join(groups)}")


async def set_last_seqs(conn: BaseDBAsyncClient, last_seqs: dict[str, int], now: datetime) -> None:
    """One UPDATE for every conversation the batch touched."""
    if not last_seqs:
        return
    sql = Sql(conn)
    cast = "::bigint" if sql.postgres else ""  # asyncpg would guess text for a CASE result
    cases = " ".join(
        f"WHEN {sql.param(cid)} THEN {sql.param(seq)}{cast}" for cid, seq in last_seqs.items()
    )
    moment = sql.param(sql.moment(now))
    await sql.run(
        f"UPDATE conversations SET last_seq = CASE id {cases} END, updated_at = {moment}"
        f" WHERE id IN ({sql.params(last_seqs)})"
    )
