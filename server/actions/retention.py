"""Retention: an organisation that sets the policy `retention_days` has the content of
older messages removed: their text and their files (the blobs too, once nothing else
names them). The events themselves stay (the timeline keeps its seqs, with no gaps) and
read as `expired`; deliveries and the audit trail stay. Each purge is an entry of the
organisation's audit trail (the chain goes on). Run by the outbox workers at most every
`PURGE_EVERY` seconds (server/app.py), and by `python -m server purge` at once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from server.actions import audit, files
from server.actions.orgs import RETENTION_POLICY
from server.ids import utcnow
from storage.blobs import BlobStore
from storage.models import Event, Org, StoredFile

log = logging.getLogger("bloomtext.retention")

PURGE_EVERY = 3600.0  # seconds between purges by a worker
BATCH = 500


async def purge_expired(blobs: BlobStore, now: datetime | None = None) -> dict[str, int]:
    """Remove expired content in every organisation with a retention policy; messages
    emptied per organisation."""
    now = now or utcnow()
    done: dict[str, int] = {}
    for org in await Org.all():
        days = (org.policies or {}).get(RETENTION_POLICY)
        if isinstance(days, int) and not isinstance(days, bool) and days > 0:
            emptied, removed = await _purge_org(blobs, org.id, now - timedelta(days=days))
            if emptied:
                done[org.id] = emptied
                await audit.append(org.id, [audit.Entry(
                    org_id=org.id, action="retention.purge", actor_id=None,
                    actor_kind="system", target_kind="organisation", target_id=org.id,
                    details={"before": cutoff_text(now - timedelta(days=days)),
                             "messages": emptied, "files": removed})])
                log.info("retention: %d message(s), %d file(s) of %s removed", emptied,
                         removed, org.id)
    return done


def cutoff_text(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


async def _purge_org(blobs: BlobStore, org_id: str, cutoff: datetime) -> tuple[int, int]:
    emptied = removed = 0
    while True:
        ids = await Event.filter(
            conversation__org_id=org_id, kind="message", created_at__lt=cutoff,
            body__not_isnull=True).limit(BATCH).values_list("id", flat=True)
        if not ids:
            return emptied, removed
        stored = await StoredFile.filter(event_id__in=ids)
        await Event.filter(id__in=ids).update(body=None, attachments=[])
        await files.release(blobs, stored)
        emptied, removed = emptied + len(ids), removed + len(stored)


async def purge_round(blobs: BlobStore) -> int:
    """The workers' hourly round: messages emptied."""
    return sum((await purge_expired(blobs)).values())
