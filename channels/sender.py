"""What every channel's sender takes and answers. Senders know nothing of routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger("bloomtext.channels")


@dataclass(frozen=True)
class Outbound:
    """One message to one recipient, as the outbox holds it."""

    id: str  # the outbox row's id: a stable Message-ID / idempotency reference
    channel: str  # email | sms
    purpose: str  # what it is for (e.g. invitation): logs name this, never the content
    to: str
    subject: str = ""
    text: str = ""
    html: str | None = None
    # SMS only: the clinic's number it goes out from, and where the provider should post
    # delivery status (a URL of ours). Email ignores both.
    from_number: str | None = None
    status_callback: str | None = None


@dataclass(frozen=True)
class SendResult:
    # sent: done. retryable: try again later (a timeout, a 4xx, a server down).
    # permanent: trying again will not help (a refused recipient, a 5xx).
    # logged: not sent, on purpose (the channel is not configured), and recorded as such.
    # cancelled: not sent because it no longer should be (recalled, opted out).
    status: Literal["sent", "retryable", "permanent", "logged", "cancelled"]
    provider_id: str | None = None
    error: str | None = None


class Sender(Protocol):
    channel: str

    async def send(self, message: Outbound) -> SendResult: ...


class LoggingSender:
    """Without SMTP_URL (or Twilio credentials): say that a message was not sent, never
    what it said (it may hold a secret link)."""

    def __init__(self, channel: str, why: str) -> None:
        self.channel = channel
        self._why = why

    async def send(self, message: Outbound) -> SendResult:
        log.warning("%s %s (%s) not sent: %s", self.channel, message.id, message.purpose,
                    self._why)
        return SendResult("logged", error=self._why)
