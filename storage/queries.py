"""Hand-written SQL for the send path, where the ORM's per-query cost showed in profiles.

Each function issues one statement whatever the batch size (`append_events` on SQLite:
one per step inside its write transaction). Both dialects: `?` placeholders for SQLite,
`$n` for PostgreSQL (asyncpg).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

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


async def append_events(
    conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]], now: datetime
) -> AppendResult:
    """Give each row the next seq of its conversation, insert it and move `last_seq`.

    `rows` are in the order their seqs must follow within each conversation; their
    `seq` is ignored. Returns the seq given to each row's id; a row whose conversation
    no longer exists is left out. Call it on the pool, not inside a transaction: on
    PostgreSQL it is one statement, its own transaction, so the conversation rows are
    locked only while it runs and commits (a lock held across round trips becomes a
    convoy once several nodes write the same conversations).
    """
    if not rows:
        return AppendResult({}, 0)
    if conn.capabilities.dialect == "postgres":
        return AppendResult(await _append_postgres(conn, rows, now), 1)
    return AppendResult(await _append_sqlite(conn, rows, now), 3)


@dataclass(frozen=True)
class AppendResult:
    seqs: dict[str, int]  # event id -> seq
    locked_round_trips: int  # statements sent while holding the conversation locks


# The columns every appended row provides; seq and created_at come from the statement.
_APPEND_TEXT = ("id", "conversation_id", "kind", "sender_id", "sender_name", "sender_kind",
                "body", "client_id", "target_id")

# One statement: lock the touched conversations in id order (no deadlocks between
# writers), move each last_seq by its number of new events, and insert the events
# numbered from the old last_seq. Inputs are arrays, so the text (and asyncpg's
# prepared statement) is the same whatever the batch size. FOR NO KEY UPDATE, the
# lock an UPDATE takes anyway, leaves foreign-key checks (participants, receipts)
# unblocked.
_APPEND_POSTGRES = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"${i + 1}::text[]" for i in range(len(_APPEND_TEXT)))},
                         $10::text[], $11::text[])
        WITH ORDINALITY AS i({", ".join(_APPEND_TEXT)}, attachments, recalled, ord)
),
counts AS (
    SELECT conversation_id, count(*) AS n FROM input GROUP BY conversation_id
),
locked AS (
    SELECT id FROM conversations WHERE id = ANY($12::text[]) ORDER BY id FOR NO KEY UPDATE
),
moved AS (
    UPDATE conversations AS c SET last_seq = c.last_seq + counts.n, updated_at = $13
    FROM counts JOIN locked ON locked.id = counts.conversation_id
    WHERE c.id = counts.conversation_id
    RETURNING c.id, c.last_seq - counts.n AS base
)
INSERT INTO events ({", ".join(EVENT_COLUMNS)})
SELECT i.id, i.conversation_id,
       moved.base + row_number() OVER (PARTITION BY i.conversation_id ORDER BY i.ord),
       i.kind, i.sender_id, i.sender_name, i.sender_kind, i.body, i.attachments::jsonb,
       i.client_id, i.target_id, i.recalled::boolean, $13
FROM input AS i JOIN moved ON moved.id = i.conversation_id
RETURNING id, seq
"""


async def _append_postgres(
    conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]], now: datetime
) -> dict[str, int]:
    values: list[Any] = [[row[c] for row in rows] for c in _APPEND_TEXT]
    values.append([json.dumps(row["attachments"]) for row in rows])
    # As text: a boolean[] parameter costs asyncpg a type introspection (~10 ms) on
    # every new connection; text[] is built in.
    values.append(["t" if row["recalled"] else "f" for row in rows])
    values.append(sorted({row["conversation_id"] for row in rows}))
    values.append(now)
    stored = await conn.execute_query_dict(_APPEND_POSTGRES, values)
    return {row["id"]: row["seq"] for row in stored}


async def _append_sqlite(
    conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]], now: datetime
) -> dict[str, int]:
    """SQLite has one writer per database: its write transaction is the lock, taken by
    the UPDATE and held for the INSERT and the commit, all on this process's connection."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["conversation_id"]] = counts.get(row["conversation_id"], 0) + 1
    async with in_transaction(conn.connection_name) as tx:
        sql = Sql(tx)
        cases = " ".join(f"WHEN {sql.param(cid)} THEN {sql.param(n)}" for cid, n in counts.items())
        moment = sql.param(sql.moment(now))
        moved = await sql.rows(
            f"UPDATE conversations SET last_seq = last_seq + CASE id {cases} END,"
            f" updated_at = {moment} WHERE id IN ({sql.params(counts)}) RETURNING id, last_seq"
        )
        next_seq = {r["id"]: r["last_seq"] - counts[r["id"]] for r in moved}
        stored = []
        seqs: dict[str, int] = {}
        for row in rows:
            if row["conversation_id"] in next_seq:
                next_seq[row["conversation_id"]] += 1
                seqs[row["id"]] = next_seq[row["conversation_id"]]
                stored.append({**row, "seq": seqs[row["id"]], "created_at": now})
        await insert_events(tx, stored)
    return seqs
