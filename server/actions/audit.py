"""The audit trail: an append-only, hash-chained log per organisation of who did what to
which record, from where (HIPAA §164.312(b)).

Entries hold references (ids, kinds, counts, reasons typed by an admin), never content:
no message body, no patient name, no phone. Each entry stores the hash of the one before
it in its organisation's chain and its own hash over its fields; `AuditHead` holds the
last one. Appending takes the head row's lock (`FOR UPDATE` on PostgreSQL), so entries
from several nodes form one chain. `verify` walks a chain and names the first entry that
does not fit: an edited field, a removed or inserted row, a removed tail.

Writes are batched by one writer task per process (one transaction per organisation per
batch): `record` waits until its entry is stored (an admin's retrieval is answered only
then); `note` does not (a read of a conversation is not held up by its audit line; an
entry lost to a crash right after is the price, and it is logged when a write fails).
Where a request came from (address, user agent) is taken from the request's context.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tortoise.transactions import in_transaction

from server.errors import ApiError
from server.ids import new_id, utcnow
from storage import queries
from storage.models import AuditEntry, AuditHead, Participant

log = logging.getLogger("bloomtext.audit")

GENESIS = "0" * 64  # the prev_hash of an organisation's first entry
MAX_BATCH = 500
# How long the writer waits for more entries after the first: a trickle (one entry per
# patient-conversation send) is then written a batch at a time, at five statements per
# batch and organisation instead of per entry, on the database the sends share. An entry
# someone waits for (`record`) cuts the wait short.
LINGER_SECONDS = 0.25


@dataclass(frozen=True)
class Origin:
    """Where the current request or socket came from."""

    ip: str | None = None
    user_agent: str | None = None


NOWHERE = Origin()  # outside any request (the worker, the CLI)
ORIGIN: ContextVar[Origin] = ContextVar("bloomtext_origin", default=NOWHERE)


def origin_of_scope(scope: dict[str, Any]) -> Origin:
    """The client address (after uvicorn's trusted-proxy handling) and user agent."""
    client = scope.get("client")
    agent = next((v for k, v in scope.get("headers", []) if k == b"user-agent"), b"")
    return Origin(client[0] if client else None,
                  agent.decode("latin-1")[:300] or None)


@dataclass
class Entry:
    org_id: str
    action: str
    actor_id: str | None
    actor_kind: str
    target_kind: str | None = None
    target_id: str | None = None
    patient_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    ip: str | None = None
    user_agent: str | None = None
    at: datetime = field(default_factory=utcnow)
    # The patient conversation the entry is about, when its patient is not known yet: the
    # writer looks the patients up, a batch at a time (kept off the send path).
    patient_of: str | None = None


def by(actor: Any, org_id: str) -> dict[str, Any]:
    """The actor fields of an entry in `org_id`'s trail: an account of another
    organisation acting there is an `external`."""
    kind = actor.user.kind
    if kind == "member" and actor.org_id != org_id:
        kind = "external"
    return {"actor_id": actor.id, "actor_kind": kind}


def staff_did(svc: Any, actor: Any, action: str, target_kind: str, target_id: str | None,
              *, patient_id: str | None = None, **details: Any) -> None:
    """Note what a staff member did in their own organisation (queued)."""
    svc.audit.note(Entry(org_id=actor.org_id, action=action, **by(actor, actor.org_id),
                         target_kind=target_kind, target_id=target_id,
                         patient_id=patient_id, details=details))


async def patient_in(conversation_id: str) -> str | None:
    """The patient of a patient conversation (whose PHI an entry is about)."""
    return await Participant.filter(conversation_id=conversation_id, kind="patient"
                                    ).first().values_list("user_id", flat=True)


def entry_hash(row: AuditEntry | Entry, seq: int, prev_hash: str) -> str:
    """The hash of an entry: its fields and the previous entry's hash, canonical JSON."""
    fields = [row.org_id, seq, row.at.astimezone(UTC).isoformat(timespec="microseconds"),
              row.actor_id, row.actor_kind, row.action, row.target_kind, row.target_id,
              row.patient_id, row.ip, row.user_agent, row.details or {}, prev_hash]
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_view(e: AuditEntry) -> dict[str, Any]:
    return {"id": e.id, "at": e.at.astimezone(UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"), "org_id": e.org_id,
            "actor": {"id": e.actor_id, "kind": e.actor_kind}, "action": e.action,
            "target": {"kind": e.target_kind, "id": e.target_id}, "patient_id": e.patient_id,
            "ip": e.ip, "user_agent": e.user_agent, "details": e.details or {}}


class AuditLog:
    """The process's audit writer: entries queue here and are stored in batches."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[Entry, asyncio.Future[None] | None]] = (
            asyncio.Queue())
        self._task: asyncio.Task[None] | None = None
        self._waited = asyncio.Event()  # a `record` is queued: write now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Store what is queued, then stop."""
        if self._task is None:
            return
        while not self._queue.empty():
            await self._write(self._take())
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def record(self, entry: Entry) -> None:
        """Store `entry` in its chain; returns once it is stored (raises if it cannot be)."""
        if self._task is None:  # no writer (a tool, a test): straight to the database
            await append(entry.org_id, [_with_origin(entry)])
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((_with_origin(entry), done))
        self._waited.set()
        await done

    def note(self, entry: Entry) -> None:
        """Queue `entry` without waiting for it."""
        self._queue.put_nowait((_with_origin(entry), None))
        if self._task is None:
            self.start()

    def _take(self) -> list[tuple[Entry, asyncio.Future[None] | None]]:
        batch = []
        while not self._queue.empty() and len(batch) < MAX_BATCH:
            batch.append(self._queue.get_nowait())
        return batch

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first[1] is None:  # only notes so far: let more gather
                try:
                    await asyncio.wait_for(self._waited.wait(), LINGER_SECONDS)
                except TimeoutError:
                    pass
            self._waited.clear()
            batch = [first, *self._take()]
            await self._write(batch)

    async def _write(self, batch: list[tuple[Entry, asyncio.Future[None] | None]]) -> None:
        unknown = {e.patient_of for e, _ in batch if e.patient_of and e.patient_id is None}
        if unknown:
            try:
                patients = dict(await Participant.filter(
                    conversation_id__in=list(unknown), kind="patient"
                ).values_list("conversation_id", "user_id"))
            except Exception as exc:  # stored without the patient rather than not at all
                log.warning("audit: patients of %d conversations not found: %r",
                            len(unknown), exc)
                patients = {}
            for entry, _ in batch:
                if entry.patient_of and entry.patient_id is None:
                    entry.patient_id = patients.get(entry.patient_of)
        by_org: dict[str, list[tuple[Entry, asyncio.Future[None] | None]]] = {}
        for item in batch:
            by_org.setdefault(item[0].org_id, []).append(item)
        for org_id, items in by_org.items():
            try:
                await append(org_id, [entry for entry, _ in items])
            except Exception as exc:
                log.error("audit: %d entr(y/ies) of %s not stored: %r", len(items), org_id,
                          exc)
                for _, done in items:
                    if done is not None and not done.done():
                        done.set_exception(exc)
                continue
            for _, done in items:
                if done is not None and not done.done():
                    done.set_result(None)


def _with_origin(entry: Entry) -> Entry:
    if entry.ip is None and entry.user_agent is None:
        origin = ORIGIN.get()
        entry.ip, entry.user_agent = origin.ip, origin.user_agent
    return entry


async def append(org_id: str, entries: list[Entry]) -> None:
    """Add entries to the end of an organisation's chain, in one transaction."""
    async with in_transaction() as tx:
        seq, prev = await queries.lock_audit_head(tx, org_id, GENESIS)
        rows = []
        for entry in entries:
            seq += 1
            digest = entry_hash(entry, seq, prev)
            rows.append({
                "id": new_id("au"), "org_id": org_id, "seq": seq, "at": entry.at,
                "actor_id": entry.actor_id, "actor_kind": entry.actor_kind,
                "action": entry.action, "target_kind": entry.target_kind,
                "target_id": entry.target_id, "patient_id": entry.patient_id,
                "ip": entry.ip, "user_agent": entry.user_agent,
                "details": entry.details or {}, "prev_hash": prev, "hash": digest})
            prev = digest
        # Hand-written, like the send path: the ORM's per-row cost showed on it.
        await queries.insert_audit_entries(tx, rows)
        await queries.move_audit_head(tx, org_id, seq, prev)


@dataclass
class Broken:
    org_id: str
    seq: int | None
    why: str


async def verify(org_id: str | None = None) -> tuple[int, list[Broken]]:
    """Walk every chain (or one organisation's): (entries checked, what is broken)."""
    orgs = ([org_id] if org_id else
            sorted(set(await AuditHead.all().values_list("org_id", flat=True))
                   | set(await AuditEntry.all().distinct().values_list("org_id", flat=True))))
    checked, broken = 0, []
    for org in orgs:
        expected_seq, prev = 1, GENESIS
        found: Broken | None = None
        async for e in _entries(org):
            checked += 1
            if e.seq != expected_seq:
                found = Broken(org, expected_seq, f"entry {expected_seq} is missing "
                               f"(the next one is {e.seq})")
                break
            if e.prev_hash != prev:
                found = Broken(org, e.seq, "does not follow the entry before it")
                break
            if entry_hash(e, e.seq, e.prev_hash) != e.hash:
                found = Broken(org, e.seq, "its content does not match its hash (edited)")
                break
            expected_seq, prev = e.seq + 1, e.hash
        if found is None:
            head = await AuditHead.get_or_none(org_id=org)
            last = expected_seq - 1
            if head is None and last > 0:
                found = Broken(org, None, "the chain's head is missing")
            elif head is not None and (head.seq != last or head.hash != prev):
                found = Broken(org, last + 1, f"the chain ends at {last}, its head says "
                               f"{head.seq}: entries were removed from its end")
        if found is not None:
            broken.append(found)
    return checked, broken


async def _entries(org_id: str, page: int = 1000) -> AsyncIterator[AuditEntry]:
    after = 0
    while True:
        rows = await AuditEntry.filter(org_id=org_id, seq__gt=after).order_by("seq").limit(page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after = rows[-1].seq



# -- reading the trail (admins) --------------------------------------------------------

EXPORT_COLUMNS = ("id", "at", "actor_kind", "actor_id", "action", "target_kind", "target_id",
                  "patient_id", "ip", "user_agent", "details")
EXPORT_PAGE = 1000


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    actor_id: str | None = None
    patient_id: str | None = None
    action: str | None = None

    def as_details(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v)
                for k, v in self.__dict__.items() if v is not None}


def parse_since(raw: str | None) -> datetime | None:
    """`since`: an ISO 8601 timestamp (a date alone is its midnight UTC); 422 otherwise."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError("invalid", "since is an ISO 8601 timestamp, e.g. 2026-12-01T09:00:00Z",
                       {"fields": {"since": "timestamp"}}) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def admin_reason(actor: Any, reason: str | None) -> str:
    """An admin's reason to read recalled or restricted content: 403 for anyone but an
    admin, 422 without a reason (1 to 500 characters)."""
    if not actor.is_admin:
        raise ApiError("forbidden", "only admins may retrieve content")
    reason = (reason or "").strip()
    if not reason or len(reason) > 500:
        raise ApiError("invalid", "give the reason for this retrieval (1 to 500 characters)",
                       {"fields": {"reason": "required" if not reason else "too long"}})
    return reason


def _require_admin(actor: Any) -> None:
    if not actor.is_admin:
        raise ApiError("forbidden", "only admins may read the audit trail")


def _query(org_id: str, filters: Filters) -> Any:
    query = AuditEntry.filter(org_id=org_id)
    if filters.since is not None:
        query = query.filter(at__gte=filters.since)
    if filters.actor_id:
        query = query.filter(actor_id=filters.actor_id)
    if filters.patient_id:
        query = query.filter(patient_id=filters.patient_id)
    if filters.action:
        query = query.filter(action=filters.action)
    return query


async def list_entries(actor: Any, filters: Filters, *, before_seq: int | None, limit: int
                       ) -> tuple[list[dict[str, Any]], int | None]:
    """A page of the caller's organisation's trail, newest first; the next page's key."""
    _require_admin(actor)
    query = _query(actor.org_id, filters)
    if before_seq is not None:
        query = query.filter(seq__lt=before_seq)
    rows = await query.order_by("-seq").limit(limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return [entry_view(e) for e in rows], rows[-1].seq if more and rows else None


def csv_cell(value: Any) -> str:
    """A value as a spreadsheet will not run it: text that starts like a formula (=, +,
    -, @, tab, carriage return) gets a leading apostrophe (OWASP's CSV injection advice)."""
    text = "" if value is None else (
        json.dumps(value, sort_keys=True, ensure_ascii=False) if isinstance(value, dict)
        else str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def export(svc: Any, actor: Any, filters: Filters) -> AsyncIterator[str]:
    """The filtered trail as CSV lines, oldest first. The export is itself audited, before
    the first line goes out."""
    _require_admin(actor)
    count = await _query(actor.org_id, filters).count()
    await svc.audit.record(Entry(
        org_id=actor.org_id, action="audit.export", **by(actor, actor.org_id),
        target_kind="audit", details={"filters": filters.as_details(), "entries": count}))
    return _csv_lines(actor.org_id, filters)


async def _csv_lines(org_id: str, filters: Filters) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    yield _drain(buffer)
    after = 0
    while True:
        rows = await _query(org_id, filters).filter(seq__gt=after).order_by("seq").limit(
            EXPORT_PAGE)
        for e in rows:
            view = entry_view(e)
            writer.writerow([csv_cell(v) for v in (
                e.id, view["at"], e.actor_kind, e.actor_id, e.action, e.target_kind,
                e.target_id, e.patient_id, e.ip, e.user_agent, e.details or {})])
        yield _drain(buffer)
        if len(rows) < EXPORT_PAGE:
            return
        after = rows[-1].seq


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
