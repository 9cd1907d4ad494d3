"""Sending messages: the one path for HTTP and /ws, with writes batched.

Concurrent sends are stored together: one transaction locks each touched
conversation row (PostgreSQL `FOR UPDATE`; SQLite has one writer), gives each new
event the next seq, inserts them all at once and commits. Only then are they
published and acknowledged. A (sender, client_id) pair seen before returns the first
event: retries never duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from realtime.hub import conversation_topic
from server.actions.context import Actor, Services
from server.actions.views import event_row_view
from server.errors import ApiError, invalid, not_found
from server.ids import new_id, utcnow
from server.metrics import Metrics
from storage import queries
from storage.outage import is_outage

log = logging.getLogger("bloomtext.messages")

MAX_BODY = 10_000
# Sends waiting for the writer. Past this the node is overloaded: new sends are refused
# with `unavailable` (the client retries with the same client_id) instead of queueing
# without limit while acks fall ever further behind.
MAX_PENDING_SENDS = 20_000


@dataclass
class PendingSend:
    conversation_id: str
    sender_id: str
    sender_name: str
    client_id: str
    body: str
    future: asyncio.Future[tuple[dict[str, Any], bool]] = field(repr=False)


class SendBatcher:
    """Collects concurrent sends and stores each batch in one transaction."""

    def __init__(self, svc: Services, max_batch: int = 200) -> None:
        self._svc = svc
        self._queue: asyncio.Queue[PendingSend] = asyncio.Queue()
        self._max_batch = max_batch
        self._task: asyncio.Task[None] | None = None

    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ApiError("unavailable", "server shutting down"))

    async def submit(
        self, actor: Actor, conversation_id: str, client_id: str, body: str
    ) -> tuple[dict[str, Any], bool]:
        """Store a message; returns (event, created). Raises ApiError."""
        if self._queue.qsize() >= MAX_PENDING_SENDS:
            raise ApiError("unavailable", "the server is overloaded; retry with the same client_id")
        future: asyncio.Future[tuple[dict[str, Any], bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.put_nowait(
            PendingSend(conversation_id, actor.id, actor.user.name, client_id, body, future)
        )
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
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
            # Another node stored one of these client_ids meanwhile: go one by one,
            # and the retry finds the stored event.
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
    conversation_ids = sorted({item.conversation_id for item in batch})
    sender_ids = list({item.sender_id for item in batch})
    client_ids = list({item.client_id for item in batch})
    results: list[tuple[PendingSend, Outcome]] = []
    async with in_transaction() as conn:
        locked_at = time.perf_counter()
        conversations = await queries.lock_conversations(conn, conversation_ids)
        kinds = await queries.participant_kinds(conn, conversation_ids, sender_ids)
        seen: dict[tuple[str, str], dict[str, Any]] = {
            (row["sender_id"], row["client_id"]): event_row_view(row)
            for row in await queries.events_by_client_id(conn, sender_ids, client_ids)
        }
        now = utcnow()
        rows: list[dict[str, Any]] = []
        last_seqs: dict[str, int] = {}
        for item in batch:
            key = (item.sender_id, item.client_id)
            kind = kinds.get((item.conversation_id, item.sender_id))
            conversation = conversations.get(item.conversation_id)
            if kind is None or conversation is None:
                results.append((item, not_found("conversation")))
                continue
            if key in seen:
                previous = seen[key]
                if previous["conversation_id"] != item.conversation_id:
                    results.append((item, ApiError(
                        "conflict",
                        "this client_id was already used for another conversation",
                        {"fields": {"client_id": "reused"}},
                    )))
                else:
                    results.append((item, (previous, False)))
                continue
            conversation["last_seq"] += 1
            last_seqs[item.conversation_id] = conversation["last_seq"]
            row = {
                "id": new_id("ev"),
                "conversation_id": item.conversation_id,
                "seq": conversation["last_seq"],
                "kind": "message",
                "sender_id": item.sender_id,
                "sender_name": item.sender_name,
                "sender_kind": kind,
                "body": item.body,
                "attachments": [],
                "client_id": item.client_id,
                "target_id": None,
                "recalled": False,
                "created_at": now,
            }
            rows.append(row)
            view = event_row_view(row)
            seen[key] = view
            results.append((item, (view, True)))
        await queries.insert_events(conn, rows)
        await queries.set_last_seqs(conn, last_seqs, now)
    metrics.send_lock_hold_seconds.observe(time.perf_counter() - locked_at)
    metrics.send_lock_round_trips.inc(6)  # lock, members, client ids, insert, update, commit
    return results


async def send_message(
    svc: Services, actor: Actor, conversation_id: str, *, client_id: str, body: str
) -> tuple[dict[str, Any], bool]:
    """Store a message from the caller; returns (event, created). Same path for HTTP and /ws."""
    if not body or not body.strip():
        raise invalid("body must not be empty", body="empty")
    if len(body) > MAX_BODY:
        raise invalid(f"body is longer than {MAX_BODY} characters", body="too long")
    if not client_id or len(client_id) > 64:
        raise invalid("client_id is 1 to 64 characters", client_id="1..64 characters")
    assert svc.batcher is not None
    return await svc.batcher.submit(actor, conversation_id, client_id, body)
