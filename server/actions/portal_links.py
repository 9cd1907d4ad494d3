"""Secure links to the patient portal (`PUBLIC_URL/p/<token>`): 256 random bits, only
their keyed hash stored, bound to one patient and one conversation, expiring after
`PORTAL_LINK_TTL_SECONDS`; a newer link for the same conversation and patient revokes
the older ones."""

from __future__ import annotations

from datetime import datetime, timedelta

from tortoise.transactions import in_transaction

from server.auth import hash_secret, new_secret
from server.config import Settings
from server.ids import new_id, utcnow
from storage.models import PortalLink

TOKEN_PREFIX = "pl"


async def new_link(settings: Settings, *, org_id: str, patient_id: str, conversation_id: str,
                   event_id: str | None) -> str:
    """A fresh link for the patient to this conversation (older ones stop working)."""
    now = utcnow()
    token = new_secret(TOKEN_PREFIX)
    async with in_transaction():  # one commit for both
        await PortalLink.filter(conversation_id=conversation_id, patient_id=patient_id,
                                revoked_at__isnull=True).update(revoked_at=now)
        await PortalLink.create(
            id=new_id("lk"), token_hash=hash_secret(token, settings.secret_key),
            org_id=org_id, patient_id=patient_id, conversation_id=conversation_id,
            event_id=event_id, created_at=now,
            expires_at=now + timedelta(seconds=settings.portal_link_ttl_seconds),
        )
    return f"{settings.public_url}/p/{token}"


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
