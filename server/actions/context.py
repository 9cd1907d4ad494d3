"""What every action receives: the node's services and the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from realtime.hub import Hub
from server.actions.audit import AuditLog
from server.auth import LoginLimiter
from server.config import Settings
from server.metrics import Metrics
from storage.blobs import BlobStore
from storage.models import User

if TYPE_CHECKING:
    from channels.outbox import OutboxWorker
    from channels.twilio import TwilioMedia, TwilioNumbers
    from server.actions.access import PatientSendGate
    from server.actions.delivery import ContactCheck
    from server.actions.messages import SendBatcher

# Called after a batch of events is committed (before fan-out): the seam where the
# outbox for SMS and email will queue deliveries. Must not raise.
AfterStoreHook = Callable[[list[dict[str, Any]]], Awaitable[None]]


@dataclass
class Services:
    settings: Settings
    hub: Hub
    login_limiter: LoginLimiter
    batcher: SendBatcher | None = None
    metrics: Metrics = field(default_factory=Metrics)
    outbox: OutboxWorker | None = None
    after_store: list[AfterStoreHook] = field(default_factory=list)
    numbers: TwilioNumbers | None = None  # None without Twilio credentials
    media: TwilioMedia | None = None  # an inbound MMS's media; None without Twilio
    patient_gate: PatientSendGate | None = None
    contacts: ContactCheck | None = None  # set with patient_gate by the app
    blobs: BlobStore | None = None  # files' bytes (storage/blobs.py); set by the app
    audit: AuditLog = field(default_factory=AuditLog)  # started by the app


@dataclass(frozen=True)
class Actor:
    """The caller of an action: a user, through one login session (or bot key)."""

    user: User
    session_id: str
    expires_at: float | None = None  # absolute end of the session (epoch seconds)

    @property
    def id(self) -> str:
        return self.user.id

    @property
    def org_id(self) -> str:
        return self.user.org_id  # type: ignore[attr-defined]

    @property
    def is_admin(self) -> bool:
        return self.user.kind == "member" and self.user.role == "admin"
