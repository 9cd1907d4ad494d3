"""Sending messages: the one path for HTTP and /ws, with writes batched.

Concurrent sends are stored together by a writer, in one round trip: one statement
(`queries.append_messages`) first checks each sender takes part and each client_id is
new, then locks the touched conversation rows, gives each new event the next seq,
inserts them, moves `last_seq` and commits. Only then are the events acknowledged and
published. A (sender, client_id) pair seen before returns the first event: retries never
duplicate, across nodes too (a unique index catches two writers racing with the same
client_id; the batch is then retried one send at a time).

Each node runs several writers ("lanes"); a conversation always goes to the same lane
(so its events are published in seq order), and a slow batch holds back only its own
lane's conversations. Whatever later features add to a send (outbox rows, audit rows)
belongs in the write statement itself (another CTE) or before it, never between the
lock and the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from tortoise.exceptions import IntegrityError

from realtime.hub import conversation_topic
from server.actions import access, audit
from server.actions.context import Actor, Services
from server.actions.views import event_row_view
from server.errors import ApiError, invalid, not_found
from server.ids import new_id, utcnow
from server.metrics import Metrics
from storage import db, queries
from storage.models import User
from storage.outage import is_outage

log = logging.getLogger("bloomtext.messages")

MAX_BODY = 10_000
# Sends waiting for the writer. Past this the node is overloaded: new sends are refused
# with `unavailable` (the client retries with the same client_id) instead of queueing
# without limit while acks fall ever further behind.
MAX_PENDING_SENDS = 20_000


def lane_of(conversation_id: str, lanes: int) -> int:
    """A stable hash (not Python's per-process one): the same lane for the same id."""
    return zlib.crc32(conversation_id.encode()) % lanes


@dataclass
class PendingSend:
    conversation_id: str
    sender_id: str
    sender_name: str
    client_id: str
    body: str
    future: asyncio.Future[tuple[dict[str, Any], bool]] = field(repr=False)
    attachments: list[dict[str, Any]] = field(default_factory=list)  # [{id, name, ...}]


class SendBatcher:
    """Collects concurrent sends into batches, one writer task per lane."""

    def __init__(self, svc: Services, lanes: int = 1, max_batch: int = 200) -> None:
        self._svc = svc
        self._queues: list[asyncio.Queue[PendingSend]] = [asyncio.Queue() for _ in range(lanes)]
        self._max_batch = max_batch
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def lanes(self) -> int:
        return len(self._queues)

    def depth(self) -> int:
        return sum(queue.qsize() for queue in self._queues)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(queue)) for queue in self._queues]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for queue in self._queues:
            while not queue.empty():
                item = queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(ApiError("unavailable", "server shutting down"))


    async def submit(
        self, actor: Actor, conversation_id: str, client_id: str, body: str,
        attachments: list[dict[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store a message; returns (event, created). Raises ApiError."""
        if self.depth() >= MAX_PENDING_SENDS:
            raise ApiError("unavailable", "the server is overloaded; retry with the same client_id")
        future: asyncio.Future[tuple[dict[str, Any], bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queues[lane_of(conversation_id, len(self._queues))].put_nowait(
            PendingSend(conversation_id, actor.id, actor.user.name, client_id, body, future,
                        attachments or [])
        )
        return await future

    async def _run(self, queue: asyncio.Queue[PendingSend]) -> None:
        while True:
            first = await queue.get()
            batch = [first]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._store_and_publish(batch)
            except Exception:  # never let one bad batch stop the writer
                log.exception("storing a batch of %d messages failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(
                            ApiError("unavailable", "could not store the message; retry")
                        )

    async def _store_and_publish(self, batch: list[PendingSend]) -> None:
        metrics = self._svc.metrics
        started = time.perf_counter()
        try:
            results = await _store(batch, metrics)
        except IntegrityError:
            # Another writer stored one of these client_ids between our check and our
            # write: go one by one, and the retry finds the stored event.
            results = []
            for item in batch:
                try:
                    results.extend(await _store([item], metrics))
                except Exception as exc:
                    results.append((item, _as_api_error(exc)))
        except Exception as exc:
            error = _as_api_error(exc)
            results = [(item, error) for item in batch]

        created: list[dict[str, Any]] = []
        for _, outcome in results:
            if isinstance(outcome, tuple) and outcome[1]:
                created.append(outcome[0])
        metrics.send_batches.inc()
        metrics.send_batch_size.observe(len(batch))
        metrics.send_batch_seconds.observe(time.perf_counter() - started)
        metrics.messages_stored.inc(len(created))
        created.sort(key=lambda e: (e["conversation_id"], e["seq"]))
        for hook in self._svc.after_store:
            try:
                await hook(created)
            except Exception:
                log.exception("an after-store hook failed")
        for event in created:  # queued, so a slow broker never holds back acks or writes
            self._svc.hub.publish(
                conversation_topic(event["conversation_id"]), {"type": "event", "event": event}
            )
        for item, outcome in results:
            if item.future.done():
                continue
            if isinstance(outcome, ApiError):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if is_outage(exc):
        return ApiError("unavailable", "the database is unavailable; retry with the same client_id")
    log.error("unexpected error while storing a message: %r", exc)
    return ApiError("unavailable", "could not store the message; retry with the same client_id")


Outcome = tuple[dict[str, Any], bool] | ApiError


async def _store(batch: list[PendingSend], metrics: Metrics) -> list[tuple[PendingSend, Outcome]]:
    conn = db.connection()
    now = utcnow()
    rows: list[dict[str, Any]] = []
    first_of: dict[tuple[str, str], dict[str, Any]] = {}  # a client_id twice in one batch
    for item in batch:
        key = (item.sender_id, item.client_id)
        if key in first_of:
            continue
        first_of[key] = {
            "id": new_id("ev"),
            "conversation_id": item.conversation_id,
            "seq": 0,  # given by the write
            "kind": "message",
            "sender_id": item.sender_id,
            "sender_name": item.sender_name,
            "sender_kind": None,  # the sender's participant kind, found by the write
            "body": item.body,
            "attachments": item.attachments,
            "client_id": item.client_id,
            "target_id": None,
            "recalled": False,
            "created_at": now,
        }
        rows.append(first_of[key])

    locked_at = time.perf_counter()
    appended = await queries.append_messages(conn, rows, now)
    if appended.locked_round_trips:
        metrics.send_lock_hold_seconds.observe(time.perf_counter() - locked_at)
        metrics.send_lock_round_trips.inc(appended.locked_round_trips)

    # Rows left out: a retry of a stored client_id, or a sender who is not in the
    # conversation. Rare, so looked up only then.
    earlier: dict[tuple[str, str], dict[str, Any]] = {}
    left_out = [row for row in rows if row["id"] not in appended.stored]
    if left_out:
        for row in await queries.events_by_client_id(
            conn, list({r["sender_id"] for r in left_out}), list({r["client_id"] for r in left_out})
        ):
            earlier[(row["sender_id"], row["client_id"])] = row

    results: list[tuple[PendingSend, Outcome]] = []
    views: dict[str, dict[str, Any]] = {}
    answered: set[str] = set()
    for item in batch:
        row = first_of[(item.sender_id, item.client_id)]
        stored = appended.stored.get(row["id"])
        if stored is not None:
            row["seq"], row["sender_kind"] = stored
        else:
            row = earlier.get((item.sender_id, item.client_id))
            if row is None:
                results.append((item, not_found("conversation")))
                continue
        if row["conversation_id"] != item.conversation_id:
            results.append((item, ApiError(
                "conflict", "this client_id was already used for another conversation",
                {"fields": {"client_id": "reused"}},
            )))
            continue
        if row["id"] not in views:
            views[row["id"]] = event_row_view(row)
        created = stored is not None and row["id"] not in answered
        answered.add(row["id"])
        results.append((item, (views[row["id"]], created)))
    return results


async def send_message(
    svc: Services, actor: Actor, conversation_id: str, *, client_id: str, body: str,
    attachments: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a message from the caller; returns (event, created). Same path for HTTP and /ws
    (and for files: `attachments` are stored files, then the body may be empty)."""
    if not attachments and (not body or not body.strip()):
        raise invalid("body must not be empty", body="empty")
    if len(body) > MAX_BODY:
        raise invalid(f"body is longer than {MAX_BODY} characters", body="too long")
    if not client_id or len(client_id) > 64:
        raise invalid("client_id is 1 to 64 characters", client_id="1..64 characters")
    assert svc.batcher is not None
    notifies = patient = False
    if svc.patient_gate is not None and await svc.patient_gate.check(conversation_id):
        # 402 above for patients on the free plan; here 422 if the patient cannot be
        # reached on the conversation's channel (a staff message notifies the patient).
        patient = True
        if actor.user.kind != "patient":
            assert svc.contacts is not None  # set with patient_gate
            await svc.contacts.require(conversation_id)
            notifies = True
    try:
        result = await svc.batcher.submit(actor, conversation_id, client_id, body, attachments)
    except ApiError as exc:
        # An admin may post in any patient conversation of their organisation: they
        # join it first (rare, so only looked up when the send path said not_found).
        if exc.code != "not_found" or not await access.admin_joins(actor, conversation_id):
            raise
        result = await svc.batcher.submit(actor, conversation_id, client_id, body, attachments)
    if notifies and result[1] and svc.outbox is not None:
        svc.outbox.notify()  # its notification is queued: send it now, not at the next poll
    if patient and result[1]:
        _audit_send(svc, actor, conversation_id, result[0])
    return result


def _audit_send(svc: Services, actor: Actor, conversation_id: str,
                event: dict[str, Any]) -> None:
    """A message in a patient conversation is in the trail (queued: nothing is added to
    the send's own statement or wait)."""
    assert svc.patient_gate is not None
    org_id = svc.patient_gate.org_of(conversation_id) or actor.org_id
    who = ({"actor_id": actor.id, "actor_kind": "patient"} if actor.user.kind == "patient"
           else audit.by(actor, org_id))
    svc.audit.note(audit.Entry(
        org_id=org_id, action="message.send", **who, target_kind="message",
        target_id=event["id"], patient_of=conversation_id,
        details={"conversation_id": conversation_id,
                 "files": len(event.get("attachments") or [])}))


async def append_event(
    svc: Services, conversation_id: str, sender: User, kind: str, *,
    target_id: str | None = None, client_id: str | None = None,
) -> dict[str, Any] | None:
    """A timeline event that is not a message (`participant_added`, `recall`): stored by
    the send path's statement (the sender must already be a participant), then published.
    None when it was not stored (not a participant, or `client_id` used already)."""
    now = utcnow()
    row = {
        "id": new_id("ev"), "conversation_id": conversation_id, "seq": 0, "kind": kind,
        "sender_id": sender.id, "sender_name": sender.name, "sender_kind": None, "body": None,
        "attachments": [], "client_id": client_id, "target_id": target_id, "recalled": False,
        "created_at": now,
    }
    appended = await queries.append_messages(db.connection(), [row], now)
    stored = appended.stored.get(row["id"])
    if stored is None:
        return None
    row["seq"], row["sender_kind"] = stored
    event = event_row_view(row)
    svc.hub.publish(conversation_topic(conversation_id), {"type": "event", "event": event})
    return event
