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
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from channels.sender import Outbound, Sender, SendResult
from storage import db, queries
from storage.models import OutboxMessage
from storage.outage import is_outage

log = logging.getLogger("bloomtext.outbox")

FailedHook = Callable[[OutboxMessage], Awaitable[None]]


@dataclass
class Outcome:
    """What became of one claimed row: what was sent (None when nothing was), the
    sender's answer, and whether the worker will try the row again (`final`: no)."""

    row: OutboxMessage
    message: Outbound | None
    result: SendResult
    final: bool


class PurposeHandler(Protocol):
    """For rows that hold a reference rather than the message (a patient message: its
    event's id). Called with all of a claimed batch's rows of its purpose at once, so a
    handler can read and write for the whole batch in a few statements: `prepare` builds
    what to send at send time, one answer per row in order, or answers without sending
    (recalled, opted out); `record` keeps the outcomes where the caller needs them (the
    provider's ids first) before the rows are acknowledged. If `record` raises, no row of
    the batch is acknowledged: they are claimed again after their lease, and `prepare`
    must then find out whether the earlier send went through."""

    purpose: str

    async def prepare(self, rows: list[OutboxMessage]) -> list[Outbound | SendResult]: ...

    async def record(self, outcomes: list[Outcome]) -> None: ...


# Run before each claim; returns how many held rows it let go. Owned by the caller (the
# server's actions), so this module knows nothing of what makes a row due.
RoundHook = Callable[[], Awaitable[int]]


class Every:
    """A round hook that runs at most every `seconds` (the first round runs it): for
    what need not be looked at twice a second (reminders due, retention)."""

    def __init__(self, seconds: float, hook: RoundHook) -> None:
        self._seconds, self._hook, self._next = seconds, hook, 0.0

    async def __call__(self) -> int:
        if time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + self._seconds
        return await self._hook()


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
        linger_seconds: float = 0.05,
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
        self._linger = linger_seconds
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
            if done < self._batch:
                # A trickle (one notification per send) would otherwise be claimed, sent
                # and recorded one row at a time, at ten statements each: waiting a moment
                # lets a batch gather, for a few tens of ms on an SMS's way.
                await asyncio.sleep(self._linger)

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
        by_purpose: dict[str, list[OutboxMessage]] = {}
        for row in rows:
            by_purpose.setdefault(row.purpose, []).append(row)
        await asyncio.gather(*(self._deliver(self._handlers.get(purpose), group)
                               for purpose, group in by_purpose.items()))
        return len(rows)

    async def _deliver(self, handler: PurposeHandler | None, rows: list[OutboxMessage]) -> None:
        if handler is None:  # the row holds the message itself
            messages = [Outbound(
                id=row.id, channel=row.channel, purpose=row.purpose, to=row.recipient,
                subject=(row.payload or {}).get("subject", ""),
                text=(row.payload or {}).get("text", ""), html=(row.payload or {}).get("html"),
            ) for row in rows]
            results = await asyncio.gather(*(self._send(m) for m in messages))
            await self._record(list(zip(rows, results, strict=True)))
            return
        try:
            prepared = await handler.prepare(rows)
        except Exception as exc:
            if not is_outage(exc):
                log.exception("outbox: preparing %d %s row(s) failed", len(rows), handler.purpose)
            await self._record([(row, SendResult("retryable", error=type(exc).__name__))
                                for row in rows])
            return
        # (asyncio.sleep(0, x) answers x: a result known without sending)
        results = await asyncio.gather(*(
            self._send(p) if isinstance(p, Outbound) else asyncio.sleep(0, p) for p in prepared))
        outcomes = [Outcome(row, p if isinstance(p, Outbound) else None, result,
                            result.status != "retryable" or row.attempts >= self.max_attempts)
                    for row, p, result in zip(rows, prepared, results, strict=True)]
        try:
            await handler.record(outcomes)
        except Exception as exc:  # left claimed: taken again after the lease
            log.warning("outbox: recording %d %s row(s) failed (%s): they will be checked "
                        "again", len(rows), handler.purpose, type(exc).__name__)
            return
        await self._record([(o.row, o.result) for o in outcomes])

    async def _send(self, message: Outbound) -> SendResult:
        sender = self._senders.get(message.channel)
        if sender is None:
            return SendResult("permanent", error=f"no sender for channel {message.channel}")
        try:
            return await sender.send(message)
        except Exception as exc:  # a sender bug must not lose the row
            log.exception("outbox: sender for %s raised", message.channel)
            return SendResult("retryable", error=f"{type(exc).__name__}")

    async def _record(self, outcomes: list[tuple[OutboxMessage, SendResult]]) -> None:
        """Acknowledge what is settled (sent, logged, cancelled) in one round trip; each
        row to retry or that failed for good on its own (with its log line)."""
        now = _now()
        settled = [(row.id, row.claimed_until, result.status, result.provider_id, result.error)
                   for row, result in outcomes
                   if result.status in ("sent", "logged", "cancelled")]
        await queries.settle_outbox(db.connection(), settled, now)
        for row, result in outcomes:
            if result.status not in ("sent", "logged", "cancelled"):
                await self._unsettled(row, result, now)

    async def _unsettled(self, row: OutboxMessage, result: SendResult, now: datetime) -> None:
        mine = OutboxMessage.filter(id=row.id, claimed_until=row.claimed_until)
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

