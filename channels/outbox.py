"""The outbox: mail and SMS written in the transaction of the change that causes them,
then sent by a worker, so a slow or down provider never holds up a request and nothing
is lost if the process dies between the change and the send.

The worker claims due rows (each for a lease), sends them through the channel's
`Sender`, and records the outcome: sent; retried later with exponential backoff and
jitter; or failed after `max_attempts` or a permanent refusal, which is reported
(`on_failed`). Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL, so workers on several
nodes never send one row twice while its lease holds. A worker that dies mid-send leaves
its rows to be claimed again after the lease: for email that can mean a second copy of
the same message (same Message-ID).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from channels.sender import Outbound, Sender, SendResult
from storage import db, queries
from storage.models import OutboxMessage
from storage.outage import is_outage

log = logging.getLogger("bloomtext.outbox")

FailedHook = Callable[[OutboxMessage], Awaitable[None]]


class PurposeHandler(Protocol):
    """For rows that hold a reference rather than the message (a patient message: its
    event's id): `prepare` builds what to send at send time, or answers without sending
    (recalled, opted out); `record` keeps the outcome where the caller needs it (the
    provider's id first) before the row is acknowledged. If `record` raises, the row is
    not acknowledged: it is claimed again after its lease, and `prepare` must then find
    out whether the earlier send went through."""

    purpose: str

    async def prepare(self, row: OutboxMessage) -> Outbound | SendResult: ...

    async def record(self, row: OutboxMessage, message: Outbound | None,
                     result: SendResult, final: bool) -> None: ...
# Run before each claim; returns how many held rows it let go. Owned by the caller (the
# server's actions), so this module knows nothing of what makes a row due.
RoundHook = Callable[[], Awaitable[int]]


async def enqueue(
    *, org_id: str | None, channel: str, purpose: str, to: str, payload: dict[str, Any],
    held: bool = False,
) -> OutboxMessage:
    """Queue a message. Call it inside the transaction of the change that causes it (the
    ORM writes on that transaction), and `OutboxWorker.notify()` after the commit.

    A `held` message waits (status `held`) until something sets it `pending`; a
    `RoundHook` of the worker does that, e.g. for an external invitation that goes out
    with its conversation's first message."""
    now = _now()
    return await OutboxMessage.create(
        id=f"ob_{secrets.token_urlsafe(12)}", org_id=org_id, channel=channel, purpose=purpose,
        recipient=to, payload=payload, next_attempt_at=now, created_at=now,
        status="held" if held else "pending",
    )


def _now() -> datetime:
    return datetime.now(UTC)


class OutboxWorker:
    def __init__(
        self,
        senders: Mapping[str, Sender],
        *,
        batch_size: int = 20,
        poll_seconds: float = 2.0,
        max_attempts: int = 8,
        base_delay: float = 10.0,
        max_delay: float = 3600.0,
        lease_seconds: float = 120.0,
        on_failed: FailedHook | None = None,
        before_round: Sequence[RoundHook] = (),
        handlers: Sequence[PurposeHandler] = (),
    ) -> None:
        self._senders = dict(senders)
        self._handlers = {h.purpose: h for h in handlers}
        self._batch = batch_size
        self._poll = poll_seconds
        self.max_attempts = max_attempts
        self._base = base_delay
        self._max_delay = max_delay
        self._lease = timedelta(seconds=lease_seconds)
        self._on_failed = on_failed
        self._before_round = list(before_round)
        self._wake = asyncio.Event()

    async def close(self) -> None:
        """Release what the senders hold (pooled connections), at shutdown."""
        for sender in self._senders.values():
            closer = getattr(sender, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("outbox: closing the %s sender failed", sender.channel)

    def notify(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    def retry_delay(self, attempts: int) -> float:
        """Exponential backoff with ±20% jitter, so retries from many rows spread out."""
        delay = min(self._max_delay, self._base * 2 ** max(0, attempts - 1))
        return delay * random.uniform(0.8, 1.2)

    async def run(self) -> None:
        while True:
            try:
                done = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage: try again at the next poll
                if is_outage(exc):
                    log.warning("outbox: database unavailable (%s)", type(exc).__name__)
                else:
                    log.exception("outbox: a round failed")
                done = 0
            if done == 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def run_once(self) -> int:
        """Claim what is due, send it, record the outcomes; the number of rows handled."""
        for hook in self._before_round:
            try:
                await hook()
            except Exception as exc:  # never a reason to stop sending what is due
                if not is_outage(exc):
                    log.exception("outbox: a round hook failed")
        now = _now()
        ids = await queries.claim_outbox(db.connection(), now, now + self._lease, self._batch)
        if not ids:
            return 0
        rows = await OutboxMessage.filter(id__in=ids)
        await asyncio.gather(*(self._deliver(row) for row in rows))
        return len(rows)

    async def _deliver(self, row: OutboxMessage) -> None:
        handler = self._handlers.get(row.purpose)
        if handler is None:
            payload = row.payload or {}
            message = Outbound(
                id=row.id, channel=row.channel, purpose=row.purpose, to=row.recipient,
                subject=payload.get("subject", ""), text=payload.get("text", ""),
                html=payload.get("html"),
            )
            await self._record(row, await self._send(message))
            return
        try:
            prepared = await handler.prepare(row)
        except Exception as exc:
            if not is_outage(exc):
                log.exception("outbox: preparing %s %s failed", row.purpose, row.id)
            await self._record(row, SendResult("retryable", error=type(exc).__name__))
            return
        if isinstance(prepared, SendResult):
            sent, result = None, prepared
        else:
            sent, result = prepared, await self._send(prepared)
        final = result.status != "retryable" or row.attempts >= self.max_attempts
        try:
            await handler.record(row, sent, result, final)
        except Exception as exc:  # left claimed: taken again after the lease
            log.warning("outbox: recording %s %s failed (%s): it will be checked again",
                        row.purpose, row.id, type(exc).__name__)
            return
        await self._record(row, result)

    async def _send(self, message: Outbound) -> SendResult:
        sender = self._senders.get(message.channel)
        if sender is None:
            return SendResult("permanent", error=f"no sender for channel {message.channel}")
        try:
            return await sender.send(message)
        except Exception as exc:  # a sender bug must not lose the row
            log.exception("outbox: sender for %s raised", message.channel)
            return SendResult("retryable", error=f"{type(exc).__name__}")

    async def _record(self, row: OutboxMessage, result: SendResult) -> None:
        now = _now()
        mine = OutboxMessage.filter(id=row.id, claimed_until=row.claimed_until)
        if result.status == "cancelled":
            await mine.update(status="cancelled", payload=None, claimed_until=None,
                              last_error=result.error)
            return
        if result.status in ("sent", "logged"):
            await mine.update(status=result.status, sent_at=now, provider_id=result.provider_id,
                              payload=None, claimed_until=None, last_error=result.error)
            return
        if result.status == "retryable" and row.attempts < self.max_attempts:
            delay = self.retry_delay(row.attempts)
            await mine.update(next_attempt_at=now + timedelta(seconds=delay),
                              claimed_until=None, last_error=result.error)
            log.info("outbox: %s %s (%s) attempt %d failed, retry in %.0f s: %s", row.channel,
                     row.id, row.purpose, row.attempts, delay, result.error)
            return
        await mine.update(status="failed", payload=None, claimed_until=None,
                          last_error=result.error)
        log.warning("outbox: %s %s (%s) failed after %d attempt(s): %s", row.channel, row.id,
                    row.purpose, row.attempts, result.error)
        if self._on_failed is not None:
            row.status, row.last_error = "failed", result.error
            try:
                await self._on_failed(row)
            except Exception:
                log.exception("outbox: reporting a failure failed")
