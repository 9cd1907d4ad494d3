"""Secure links to the patient portal (`PUBLIC_URL/p/<token>`): 256 random bits, only
their keyed hash stored, bound to one patient and one conversation, expiring after
`PORTAL_LINK_TTL_SECONDS`; a newer link for the same conversation and patient revokes
the older ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tortoise.transactions import in_transaction

from server.auth import hash_secret, new_secret
from server.config import Settings
from server.ids import new_id, utcnow
from storage.models import PortalLink

TOKEN_PREFIX = "pl"


@dataclass(frozen=True)
class LinkFor:
    """Who a new link is for: one patient in one conversation, announcing one message."""

    org_id: str
    patient_id: str
    conversation_id: str
    event_id: str | None


async def new_link(settings: Settings, *, org_id: str, patient_id: str, conversation_id: str,
                   event_id: str | None) -> str:
    """A fresh link for the patient to this conversation (older ones stop working)."""
    return (await new_links(settings, [LinkFor(org_id, patient_id, conversation_id,
                                               event_id)]))[0]


async def new_links(settings: Settings, wanted: Sequence[LinkFor]) -> list[str]:
    """Fresh links, in the order asked, in one transaction of two statements whatever
    their number (the outbox worker asks for a batch's worth). Older links of each
    conversation and patient stop working; of several asked for one pair, the last wins."""
    if not wanted:
        return []
    now = utcnow()
    expires = now + timedelta(seconds=settings.portal_link_ttl_seconds)
    tokens = [new_secret(TOKEN_PREFIX) for _ in wanted]
    last = {(w.conversation_id, w.patient_id): i for i, w in enumerate(wanted)}
    links = [PortalLink(
        id=new_id("lk"), token_hash=hash_secret(token, settings.secret_key), org_id=w.org_id,
        patient_id=w.patient_id, conversation_id=w.conversation_id, event_id=w.event_id,
        created_at=now, expires_at=expires,
        revoked_at=None if last[(w.conversation_id, w.patient_id)] == i else now)
        for i, (w, token) in enumerate(zip(wanted, tokens, strict=True))]
    async with in_transaction():  # one commit for both
        await PortalLink.filter(
            conversation_id__in=list({w.conversation_id for w in wanted}),
            patient_id__in=list({w.patient_id for w in wanted}),
            revoked_at__isnull=True).update(revoked_at=now)
        await PortalLink.bulk_create(links)
    return [f"{settings.public_url}/p/{token}" for token in tokens]


async def live_link(settings: Settings, token: str, now: datetime | None = None
                    ) -> PortalLink | None:
    """The link a token opens, or None when unknown, expired or revoked (all alike)."""
    if not token.startswith(f"{TOKEN_PREFIX}_") or len(token) > 100:
        return None
    link = await PortalLink.get_or_none(token_hash=hash_secret(token, settings.secret_key))
    now = now or utcnow()
    if link is None or link.revoked_at is not None or link.expires_at <= now:
        return None
    return link
