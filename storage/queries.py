"""Hand-written SQL for the send path, where the ORM's per-query cost showed in profiles.

Each function issues one statement whatever the batch size (`append_messages` on
SQLite: one per step inside its write transaction). Both dialects: `?` placeholders for SQLite,
`$n` for PostgreSQL (asyncpg).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from storage import db

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
) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """(conversation, user) -> participant kind for these users; and conversation ->
    its patient, for those that have one (patient conversations), in the same read."""
    sql = Sql(conn)
    rows = await sql.rows(
        "SELECT conversation_id, user_id, kind FROM participants"
        f" WHERE conversation_id IN ({sql.params(conversation_ids)})"
        f" AND (user_id IN ({sql.params(user_ids)}) OR kind = 'patient')"
    )
    patients = {row["conversation_id"]: row["user_id"] for row in rows
                if row["kind"] == "patient"}
    return {(row["conversation_id"], row["user_id"]): row["kind"] for row in rows}, patients


PATIENT_MESSAGE = "patient_message"  # the outbox purpose of a message to notify a patient of


def outbox_id_for(event_id: str) -> str:
    """The outbox row that notifies the patient of a message: one per event, by its id."""
    return f"ob_{event_id}"


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


async def append_messages(
    conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]], now: datetime
) -> AppendResult:
    """Store the rows whose sender takes part in their conversation and whose
    (sender, client_id) is new: give each the next seq of its conversation, insert it and
    move `last_seq`. Rows are in the order their seqs must follow within a conversation;
    their `seq` and `sender_kind` are ignored (the kind is the sender's participant kind).

    Returns (seq, sender_kind) for each stored row's id; a row left out was a retry, from
    a non-participant, or for a conversation that does not exist: the caller looks up
    which. Call it on the pool, outside any transaction. On PostgreSQL it is one statement
    and its own transaction: the checks come first, then it locks the conversation rows,
    writes and commits, so the rows are locked for part of one statement and the commit,
    never across round trips or event-loop turns (which become a convoy once several
    nodes write the same conversations).
    """
    if not rows:
        return AppendResult({}, 0)
    if conn.capabilities.dialect == "postgres":
        stored = await _append_postgres(conn, rows, now)
        return AppendResult(stored, 1 if stored else 0)  # nothing stored: nothing locked
    stored = await _append_sqlite(conn, rows, now)
    return AppendResult(stored, 3 if stored else 0)  # UPDATE, INSERT, COMMIT


@dataclass(frozen=True)
class AppendResult:
    stored: dict[str, tuple[int, str]]  # event id -> (seq, sender_kind)
    locked_round_trips: int  # statements sent while holding the conversation locks


# The text columns every appended row provides; seq and created_at come from the write.
_APPEND_TEXT = ("id", "conversation_id", "kind", "sender_id", "sender_name", "body",
                "client_id", "target_id", "attachments", "recalled")

# One statement, in this order:
# - `accepted`: the checks, before any lock: the sender is a participant (which gives the
#   event its sender_kind) and its client_id is new. `counts` needs all of it, and the
#   locks need `counts`, so PostgreSQL has evaluated the checks before it locks anything.
# - `locked`: the touched conversations in id order (no deadlocks between writers), FOR
#   NO KEY UPDATE, the lock an UPDATE takes anyway, which leaves foreign-key checks
#   (participants, receipts) unblocked.
# - `moved`: each last_seq moves by its number of new events; the events are numbered
#   from the old value in input order.
# - `notified`: a staff message in a patient conversation (the only kind with a patient
#   participant) queues its notification in the outbox, in this same statement: a crash
#   after the commit loses no notification, and nothing is added while the locks are held.
# - `withdrawn`: a `recall` event marks its target message recalled in the same statement,
#   so the content is never served once the recall has a seq (and the other way round).
# Inputs are arrays (text: a boolean[] costs asyncpg a type introspection on every new
# connection), so the text, and asyncpg's prepared statement, is the same for any batch.
_APPEND_POSTGRES = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"${i + 1}::text[]" for i in range(len(_APPEND_TEXT)))})
        WITH ORDINALITY AS i({", ".join(_APPEND_TEXT)}, ord)
),
accepted AS (
    SELECT input.*, p.kind AS sender_kind
    FROM input CROSS JOIN LATERAL (
        SELECT kind FROM participants
        WHERE conversation_id = input.conversation_id AND user_id = input.sender_id
        LIMIT 1  -- keeps it a lookup by index per row, never a scan of participants
    ) AS p
    WHERE input.client_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM events AS e
        WHERE e.sender_id = input.sender_id AND e.client_id = input.client_id)
),
counts AS (
    SELECT conversation_id, count(*) AS n FROM accepted GROUP BY conversation_id
),
locked AS (
    SELECT c.id FROM conversations AS c JOIN counts ON counts.conversation_id = c.id
    ORDER BY c.id FOR NO KEY UPDATE OF c
),
moved AS (
    UPDATE conversations AS c SET last_seq = c.last_seq + counts.n, updated_at = $11
    FROM counts JOIN locked ON locked.id = counts.conversation_id
    WHERE c.id = counts.conversation_id
    RETURNING c.id, c.last_seq - counts.n AS base
),
notified AS (
    INSERT INTO outbox (id, channel, purpose, recipient, payload, status, attempts,
                        next_attempt_at, created_at)
    SELECT 'ob_' || a.id, 'patient', '{PATIENT_MESSAGE}', p.user_id,
           jsonb_build_object('event_id', a.id), 'pending', 0, $11, $11
    FROM accepted AS a JOIN moved ON moved.id = a.conversation_id
    JOIN participants AS p ON p.conversation_id = a.conversation_id AND p.kind = 'patient'
    WHERE a.kind = 'message' AND a.sender_kind <> 'patient'
),
withdrawn AS (
    UPDATE events AS e SET recalled = true
    FROM accepted AS a JOIN moved ON moved.id = a.conversation_id
    WHERE a.kind = 'recall' AND e.id = a.target_id AND e.conversation_id = a.conversation_id
)
INSERT INTO events ({", ".join(EVENT_COLUMNS)})
SELECT a.id, a.conversation_id,
       moved.base + row_number() OVER (PARTITION BY a.conversation_id ORDER BY a.ord),
       a.kind, a.sender_id, a.sender_name, a.sender_kind, a.body, a.attachments::jsonb,
       a.client_id, a.target_id, a.recalled::boolean, $11
FROM accepted AS a JOIN moved ON moved.id = a.conversation_id
RETURNING id, seq, sender_kind
"""


async def _append_postgres(
    conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]], now: datetime
) -> dict[str, tuple[int, str]]:
    columns: dict[str, list[Any]] = {c: [row[c] for row in rows] for c in _APPEND_TEXT}
    columns["attachments"] = [json.dumps(row["attachments"]) for row in rows]
    columns["recalled"] = ["t" if row["recalled"] else "f" for row in rows]
    stored = await conn.execute_query_dict(_APPEND_POSTGRES, [*columns.values(), now])
    return {row["id"]: (row["seq"], row["sender_kind"]) for row in stored}


async def _append_sqlite(
    conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]], now: datetime
) -> dict[str, tuple[int, str]]:
    """SQLite has one writer per database: the checks read first, then the UPDATE takes
    the write lock, held for the INSERT and the commit, on this process's connection."""
    async with in_transaction(conn.connection_name) as tx:
        kinds, patients = await participant_kinds(
            tx, list({r["conversation_id"] for r in rows}), list({r["sender_id"] for r in rows})
        )
        used = {
            (e["sender_id"], e["client_id"])
            for e in await events_by_client_id(
                tx, list({r["sender_id"] for r in rows}), list({r["client_id"] for r in rows})
            )
        }
        accepted = [
            r for r in rows
            if (r["conversation_id"], r["sender_id"]) in kinds
            and (r["client_id"] is None or (r["sender_id"], r["client_id"]) not in used)
        ]
        if not accepted:
            return {}
        counts: dict[str, int] = {}
        for row in accepted:
            counts[row["conversation_id"]] = counts.get(row["conversation_id"], 0) + 1
        sql = Sql(tx)
        cases = " ".join(f"WHEN {sql.param(cid)} THEN {sql.param(n)}" for cid, n in counts.items())
        moment = sql.param(sql.moment(now))
        moved = await sql.rows(
            f"UPDATE conversations SET last_seq = last_seq + CASE id {cases} END,"
            f" updated_at = {moment} WHERE id IN ({sql.params(counts)}) RETURNING id, last_seq"
        )
        next_seq = {r["id"]: r["last_seq"] - counts[r["id"]] for r in moved}
        stored: dict[str, tuple[int, str]] = {}
        inserts = []
        for row in accepted:
            cid = row["conversation_id"]
            if cid in next_seq:
                next_seq[cid] += 1
                kind = kinds[(cid, row["sender_id"])]
                stored[row["id"]] = (next_seq[cid], kind)
                inserts.append({**row, "seq": next_seq[cid], "sender_kind": kind,
                                "created_at": now})
        await insert_events(tx, inserts)
        # As `withdrawn` on PostgreSQL; one more statement, only for a batch with a recall.
        recalls = [(row["target_id"], row["conversation_id"]) for row in inserts
                   if row["kind"] == "recall"]
        for target, cid in recalls:
            await sql.run(f"UPDATE events SET recalled = 1 WHERE id = {sql.param(target)}"
                          f" AND conversation_id = {sql.param(cid)}")
        # As `notified` on PostgreSQL; one more statement, only for patient conversations.
        await _queue_patient_messages(tx, [
            (row["id"], patients[row["conversation_id"]]) for row in inserts
            if row["conversation_id"] in patients and row["kind"] == "message"
            and row["sender_kind"] != "patient"], now)
    return stored


async def _queue_patient_messages(
    conn: BaseDBAsyncClient, pairs: Sequence[tuple[str, str]], now: datetime
) -> None:
    if not pairs:
        return
    sql = Sql(conn)
    moment = sql.moment(now)
    groups = []
    for event_id, patient_id in pairs:
        values = [outbox_id_for(event_id), "patient", PATIENT_MESSAGE, patient_id,
                  json.dumps({"event_id": event_id}), "pending", 0, moment, moment]
        groups.append(f"({sql.params(values)})")
    await sql.run("INSERT INTO outbox (id, channel, purpose, recipient, payload, status,"
                  f" attempts, next_attempt_at, created_at) VALUES {', '.join(groups)}")


async def claim_outbox(
    conn: BaseDBAsyncClient, now: datetime, lease_until: datetime, limit: int
) -> list[str]:
    """Claim up to `limit` due outbox rows for one worker until `lease_until`; their ids.

    PostgreSQL: `FOR UPDATE SKIP LOCKED`, so two workers on two nodes never claim the same
    row; a row whose worker died is claimed again once its lease has passed. SQLite has
    one writer, so the UPDATE alone is enough.
    """
    sql = Sql(conn)
    skip = " FOR UPDATE SKIP LOCKED" if sql.postgres else ""
    lease, moment = sql.param(sql.moment(lease_until)), sql.param(sql.moment(now))
    again = sql.param(sql.moment(now))
    rows = await sql.rows(
        f"UPDATE outbox SET claimed_until = {lease}, attempts = attempts + 1"
        " WHERE id IN (SELECT id FROM outbox WHERE status = 'pending'"
        f" AND next_attempt_at <= {moment}"
        f" AND (claimed_until IS NULL OR claimed_until < {again})"
        f" ORDER BY next_attempt_at LIMIT {sql.param(limit)}{skip}) RETURNING id"
    )
    return [row["id"] for row in rows]


async def held_invitations_due(conn: BaseDBAsyncClient, limit: int = 100) -> list[dict[str, Any]]:
    """External invitations still held (not mailed, not used) whose address is pending
    in a conversation of the inviting organisation that has an event: {id, outbox_id}."""
    sql = Sql(conn)
    return await sql.rows(
        "SELECT DISTINCT i.id, i.outbox_id FROM invitations AS i"
        " JOIN pending_participants AS p ON p.email = i.email"
        " JOIN conversations AS c ON c.id = p.conversation_id AND c.org_id = i.org_id"
        " WHERE i.mailed_at IS NULL AND i.kind = 'external' AND i.accepted_at IS NULL"
        f" AND i.revoked_at IS NULL AND c.last_seq > 0 LIMIT {sql.param(limit)}"
    )


async def users_known_to_org(conn: BaseDBAsyncClient, org_id: str, user_ids: list[str]) -> set[str]:
    """Those of `user_ids` who share a conversation with a user of `org_id`."""
    if not user_ids:
        return set()
    sql = Sql(conn)
    rows = await sql.rows(
        "SELECT DISTINCT p.user_id FROM participants AS p"
        " JOIN participants AS q ON q.conversation_id = p.conversation_id"
        " JOIN users AS u ON u.id = q.user_id"
        f" WHERE p.user_id IN ({sql.params(user_ids)}) AND u.org_id = {sql.param(org_id)}"
    )
    return {row["user_id"] for row in rows}


async def refresh_statistics(conn: BaseDBAsyncClient, tables: Sequence[str]) -> None:
    """After a bulk load: PostgreSQL plans by table statistics, and until autovacuum gets
    to a freshly filled table it believes the table is tiny, so it scans by organisation
    instead of using the trigram or unique indexes (a 100,000-patient directory search
    went from 75 ms to 4 ms). SQLite needs nothing here."""
    if conn.capabilities.dialect != "postgres":
        return
    names = ", ".join(f'"{t}"' for t in tables if t.isidentifier())
    if names:
        await conn.execute_script(f"ANALYZE {names}")


@asynccontextmanager
async def substring_search(trigrams_usable: bool) -> AsyncIterator[BaseDBAsyncClient]:
    """A transaction for a `LIKE '%word%' ... ORDER BY id LIMIT n` over the directory.

    PostgreSQL misjudges how many rows such a pattern matches (a DOB like `1995-10`: it
    guesses 1,000 of 100,000, there are 90), and then prefers walking the primary key in
    order, filtering as it goes, expecting to stop early: 60-100 ms when the matches are
    rare. The trigram index finds them in 2-15 ms whatever their number, so while every
    word has the three characters a trigram needs, ordered index walks are turned off for
    this transaction only (bitmap scans of the trigram index stay). Statements are also
    planned with their actual values: asyncpg prepares every statement, and a generic
    plan cannot see the pattern at all. SQLite: no transaction, the connection itself."""
    conn = db.connection()
    if conn.capabilities.dialect != "postgres":
        yield conn
        return
    async with in_transaction() as conn:
        await conn.execute_script(
            "SET LOCAL plan_cache_mode = force_custom_plan"
            + ("; SET LOCAL enable_indexscan = off" if trigrams_usable else ""))
        yield conn


async def patient_contact(conn: BaseDBAsyncClient, conversation_id: str) -> dict[str, Any] | None:
    """A patient conversation's channel and its patient's phone and email, in one read."""
    sql = Sql(conn)
    rows = await sql.rows(
        "SELECT c.channel, pt.phone, pt.email FROM conversations AS c"
        " JOIN participants AS p ON p.conversation_id = c.id AND p.kind = 'patient'"
        " JOIN patients AS pt ON pt.id = p.user_id"
        f" WHERE c.id = {sql.param(conversation_id)} LIMIT 1"
    )
    return rows[0] if rows else None


async def latest_patient_conversation(
    conn: BaseDBAsyncClient, phone_number_id: str, patient_ids: Sequence[str]
) -> tuple[str, str] | None:
    """(conversation id, patient id) of the most recent patient conversation on this
    number whose patient is one of `patient_ids`: that patient's "open conversation"."""
    if not patient_ids:
        return None
    sql = Sql(conn)
    rows = await sql.rows(
        "SELECT c.id, p.user_id FROM conversations AS c"
        " JOIN participants AS p ON p.conversation_id = c.id AND p.kind = 'patient'"
        f" WHERE c.kind = 'patient' AND c.phone_number_id = {sql.param(phone_number_id)}"
        f" AND p.user_id IN ({sql.params(patient_ids)})"
        " ORDER BY c.created_at DESC, c.id DESC LIMIT 1"
    )
    return (rows[0]["id"], rows[0]["user_id"]) if rows else None


async def unread_notices_due(
    conn: BaseDBAsyncClient, cutoff: datetime, max_reminders: int, limit: int = 100
) -> list[dict[str, Any]]:
    """Secure notices (sent or delivered) whose patient has not viewed the message since
    `cutoff` (the notice, or its last reminder, is older), with reminders left, the
    message not recalled, and no newer notice in the conversation: {id, reminders}."""
    sql = Sql(conn)
    left = sql.param(max_reminders)  # `?` on SQLite: parameters in the order of the text
    moment = sql.param(sql.moment(cutoff))
    return await sql.rows(
        "SELECT d.id, d.reminders FROM deliveries AS d"
        " JOIN events AS e ON e.id = d.event_id"
        " JOIN participants AS p ON p.conversation_id = d.conversation_id"
        " AND p.user_id = d.patient_id"
        " WHERE d.kind = 'message' AND d.mode IN ('secure_sms', 'secure_email')"
        " AND d.status IN ('sent', 'delivered')"
        f" AND d.reminders < {left}"
        f" AND COALESCE(d.reminded_at, d.created_at) <= {moment}"
        " AND NOT e.recalled AND p.read_seq < e.seq"
        " AND NOT EXISTS (SELECT 1 FROM deliveries AS newer"
        " WHERE newer.conversation_id = d.conversation_id AND newer.kind = 'message'"
        " AND newer.created_at > d.created_at)"
        f" ORDER BY d.created_at LIMIT {sql.param(limit)}"
    )


async def notice_contexts(
    conn: BaseDBAsyncClient, wanted: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """What patients' notifications need, in one read for a batch of (event id, patient
    id): each event (and whether it carries files), its conversation's channel and
    number, the organisation's name, the patient's phone and email, and whether that
    phone opted out of that number. Keyed by the pair; a pair whose event is gone is
    missing."""
    if not wanted:
        return {}
    sql = Sql(conn)
    pairs = ", ".join(f"({sql.param(event)}, {sql.param(patient)})" for event, patient in wanted)
    rows = await sql.rows(
        f"WITH wanted(event_id, patient_id) AS (VALUES {pairs})"
        " SELECT e.id AS event_id, e.seq, e.body, e.recalled,"
        " CAST(e.attachments AS TEXT) NOT IN ('[]', '') AS has_files, c.id AS conversation_id,"
        " c.org_id, c.channel, c.phone_number_id, o.name AS org_name,"
        " w.patient_id AS wanted_patient, pt.id AS patient_id,"
        " pt.phone, pt.email, n.number,"
        " EXISTS (SELECT 1 FROM opt_outs AS oo WHERE oo.phone_number_id = c.phone_number_id"
        " AND oo.phone = pt.phone) AS opted_out"
        " FROM wanted AS w JOIN events AS e ON e.id = w.event_id"
        " JOIN conversations AS c ON c.id = e.conversation_id"
        " JOIN orgs AS o ON o.id = c.org_id"
        " LEFT JOIN patients AS pt ON pt.id = w.patient_id"
        " LEFT JOIN phone_numbers AS n ON n.id = c.phone_number_id"
    )
    found = {}
    for row in rows:
        ctx = dict(row)
        for flag in ("recalled", "opted_out", "has_files"):
            ctx[flag] = bool(ctx[flag])
        found[(ctx["event_id"], ctx.pop("wanted_patient"))] = ctx
    return found


async def settle_sent(
    conn: BaseDBAsyncClient, sent: Sequence[tuple[str, str | None]], now: datetime
) -> dict[str, str]:
    """Record a batch of accepted sends, (delivery id, provider SID), in one statement:
    the SID (unless a status callback brought it first), no longer sending, and status
    `sent` where it was still `queued` (a callback may have moved it further: kept).
    Delivery id -> its status now."""
    if not sent:
        return {}
    sql = Sql(conn)
    pairs = ", ".join(f"({sql.param(d)}, {sql.param(sid)})" for d, sid in sent)
    moment = sql.param(sql.moment(now))
    rows = await sql.rows(
        f"WITH done(id, sid) AS (VALUES {pairs})"
        " UPDATE deliveries SET provider_sid = COALESCE(deliveries.provider_sid, done.sid),"
        " sending_since = NULL,"
        f" updated_at = CASE WHEN deliveries.status = 'queued' THEN {moment}"
        " ELSE deliveries.updated_at END,"
        " status = CASE WHEN deliveries.status = 'queued' THEN 'sent'"
        " ELSE deliveries.status END"
        " FROM done WHERE deliveries.id = done.id RETURNING deliveries.id, deliveries.status"
    )
    return {row["id"]: row["status"] for row in rows}


async def settle_outbox(
    conn: BaseDBAsyncClient,
    done: Sequence[tuple[str, datetime | None, str, str | None, str | None]],
    now: datetime,
) -> None:
    """Acknowledge a batch of outbox rows for good, (id, the claim it was sent under,
    status, provider id, error), in one round trip: the payload (it may hold a link with
    a secret) is dropped. A row whose claim passed to another worker is left alone."""
    if not done:
        return
    postgres = conn.capabilities.dialect == "postgres"
    slot = [f"${n}" if postgres else "?" for n in range(1, 7)]
    moment = now if postgres else now.isoformat(sep=" ")
    await conn.execute_many(
        f"UPDATE outbox SET status = {slot[0]}, provider_id = {slot[1]},"
        f" last_error = {slot[2]}, sent_at = {slot[3]}, payload = NULL, claimed_until = NULL"
        f" WHERE id = {slot[4]} AND claimed_until = {slot[5]}",
        [[status, provider, error, moment if status in ("sent", "logged") else None, row_id,
          claimed if postgres or claimed is None else claimed.isoformat(sep=" ")]
         for row_id, claimed, status, provider, error in done],
    )


async def sms_in_flight(conn: BaseDBAsyncClient, to: str, from_number: str) -> list[str]:
    """Ids of SMS deliveries being sent (marked, no SID yet) to `to` from `from_number`."""
    sql = Sql(conn)
    phone, number = sql.param(to), sql.param(from_number)
    rows = await sql.rows(
        "SELECT d.id FROM deliveries AS d JOIN patients AS pt ON pt.id = d.patient_id"
        " JOIN conversations AS c ON c.id = d.conversation_id"
        " JOIN phone_numbers AS n ON n.id = c.phone_number_id"
        " WHERE d.channel = 'sms' AND d.provider_sid IS NULL"
        f" AND d.sending_since IS NOT NULL AND pt.phone = {phone} AND n.number = {number}"
        " LIMIT 2"
    )
    return [row["id"] for row in rows]


AUDIT_COLUMNS = ("id", "org_id", "seq", "at", "actor_id", "actor_kind", "action",
                 "target_kind", "target_id", "patient_id", "ip", "user_agent", "details",
                 "prev_hash", "hash")


async def lock_audit_head(conn: BaseDBAsyncClient, org_id: str, genesis: str
                          ) -> tuple[int, str]:
    """Inside a transaction: an organisation's audit chain head (created empty on its
    first entry), locked until the commit on PostgreSQL (SQLite has one writer);
    (last seq, last hash)."""
    sql = Sql(conn)
    await sql.run("INSERT INTO audit_heads (org_id, seq, hash) VALUES"
                  f" ({sql.param(org_id)}, 0, {sql.param(genesis)})"
                  " ON CONFLICT (org_id) DO NOTHING")
    lock = " FOR UPDATE" if sql.postgres else ""
    rows = await sql.rows(f"SELECT seq, hash FROM audit_heads WHERE org_id = {sql.param(org_id)}"
                          f"{lock}")
    return int(rows[0]["seq"]), rows[0]["hash"]


async def insert_audit_entries(conn: BaseDBAsyncClient, rows: Sequence[dict[str, Any]]
                               ) -> None:
    """One multi-row INSERT for a batch of audit entries."""
    if not rows:
        return
    sql = Sql(conn)
    groups = []
    for row in rows:
        values = [sql.param(sql.moment(row[c]) if c == "at" else row[c])
                  for c in AUDIT_COLUMNS[:-3]]
        details = sql.param(json.dumps(row["details"]))
        # Text into jsonb explicitly (asyncpg would otherwise encode the text as a string).
        values.append(f"CAST({details}::text AS jsonb)" if sql.postgres else details)
        values += [sql.param(row["prev_hash"]), sql.param(row["hash"])]
        groups.append(f"({', '.join(values)})")
    await sql.run(f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)})"
                  f" VALUES {', '.join(groups)}")


async def move_audit_head(conn: BaseDBAsyncClient, org_id: str, seq: int, digest: str
                          ) -> None:
    sql = Sql(conn)
    await sql.run(f"UPDATE audit_heads SET seq = {sql.param(seq)}, hash = {sql.param(digest)}"
                  f" WHERE org_id = {sql.param(org_id)}")
