"""People of other organisations in a conversation ("externals").

An external is an ordinary staff account of another organisation; `Participant.kind`
says `external` because the conversation belongs to someone else's organisation. The
host organisation's data stays where it is: every other route is about the caller's own
organisation, so an external sees of the host exactly the conversations they are in.

Naming an outside address in `POST /conversations`:
- a member of the caller's organisation is a member;
- a known external (an account of another organisation that already shares a
  conversation with someone of the caller's organisation) is added at once;
- anyone else is a *pending participant*: the address is kept on the conversation and
  one external invitation per host organisation and address is written, with its mail
  `held` in the outbox. Adding the address sends nothing; the outbox worker lets the
  mail go once one of that address's conversations has an event (its first message),
  through `release_due` below. A crash between storing the message and that release
  loses nothing: the worker finds the held mail at its next round.
- Accepting the invitation (a new account with its own organisation on the free plan, or
  the password of the account the address already has) turns every pending row of the
  host organisation for that address into a participant and writes `participant_added`.

The organisation policy `allow_external_contacts` (on unless set to false) decides whether
its members may start conversations with outside people, and whether outsiders may start
new ones with them; conversations that already exist go on.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tortoise.expressions import Q

from channels import outbox
from server.actions.context import Actor
from server.auth import hash_secret, new_secret
from server.errors import ApiError
from server.ids import new_id, utcnow
from storage import db, queries
from storage.models import Invitation, Org, OutboxMessage, Participant, PendingParticipant, User

log = logging.getLogger("bloomtext.externals")

INVITATION_DAYS = 7
POLICY = "allow_external_contacts"


def allows_external_contacts(policies: dict[str, Any] | None) -> bool:
    return (policies or {}).get(POLICY) is not False


@dataclass
class Targets:
    """Who a new conversation names: accounts (members, bots, known externals) and the
    outside addresses that get an invitation."""

    users: list[User] = field(default_factory=list)
    new_emails: list[str] = field(default_factory=list)


async def known_to_org(org_id: str, user_ids: list[str]) -> set[str]:
    """Those of `user_ids` who share a conversation with someone of `org_id`."""
    return await queries.users_known_to_org(db.connection(), org_id, user_ids)


async def check_outside_allowed(actor: Actor, outsiders: list[User], new_emails: list[str]) -> None:
    """403 when the caller's organisation, or an outsider's, keeps to itself."""
    if not outsiders and not new_emails:
        return
    own = await Org.get(id=actor.org_id)
    if not allows_external_contacts(own.policies):
        raise ApiError(
            "forbidden",
            "your organisation does not allow conversations with people outside it "
            f"(an admin can change the policy {POLICY})",
            {"policy": POLICY},
        )
    their_orgs = {u.org_id for u in outsiders}  # type: ignore[attr-defined]
    for org in await Org.filter(id__in=list(their_orgs)):
        if not allows_external_contacts(org.policies):
            raise ApiError(
                "forbidden",
                f"{org.name} does not accept new conversations from outside its organisation",
                {"policy": POLICY},
            )


def external_invitation_mail(
    org_name: str, inviter: str, link: str, account_exists: bool
) -> dict[str, str]:
    """Who wrote and the link: never the subject or any message text (it may be PHI)."""
    subject = f"{inviter} at {org_name} sent you a secure message on BloomText"
    step = (
        "Sign in with your BloomText password to read it"
        if account_exists
        else "Set up your free account in a few steps to read it"
    )
    text = (
        f"{inviter} at {org_name} started a secure conversation with you on BloomText.\n\n"
        f"{step}: {link}\n\n"
        f"The link works once, for {INVITATION_DAYS} days. This email holds no message "
        "content. If you did not expect it, ignore it.\n"
    )
    e = html.escape
    body = (
        f"<p>{e(inviter)} at <strong>{e(org_name)}</strong> started a secure conversation "
        "with you on BloomText.</p>"
        f"<p>{e(step)}:</p>"
        f'<p><a href="{e(link)}" style="font-weight:bold">Get started</a></p>'
        f"<p>The link works once, for {INVITATION_DAYS} days. This email holds no message "
        "content. If you did not expect it, ignore it.</p>"
    )
    return {"subject": subject, "text": text, "html": body}


def _live_external(org_id: str, email: str, now: datetime):  # type: ignore[no-untyped-def]
    """The organisation's external invitation for an address that can still be used:
    held (not mailed yet), or mailed and not expired."""
    return Invitation.filter(
        org_id=org_id, email=email, kind="external", accepted_at__isnull=True,
        revoked_at__isnull=True,
    ).filter(Q(mailed_at__isnull=True) | Q(expires_at__gt=now))


async def hold_invitations(
    public_url: str, secret_key: str, actor: Actor, org: Org, conversation_id: str,
    emails: list[str],
) -> dict[str, str | None]:
    """Inside the conversation's transaction: the pending rows, and for each address an
    invitation whose mail waits for the first message. Returns each address's link when
    a new one was made (shown to the creator when no SMTP server is configured)."""
    now = utcnow()
    links: dict[str, str | None] = {}
    existing = set(await User.filter(email__in=emails).values_list("email", flat=True))
    for email in emails:
        await PendingParticipant.create(conversation_id=conversation_id, email=email,
                                        invited_by_id=actor.id, created_at=now)
        invitation = await _live_external(org.id, email, now).order_by("-created_at").first()
        if invitation is not None and invitation.mailed_at is not None:
            links[email] = None  # mailed already: that link covers this conversation too
            continue
        secret = new_secret("bi")
        link = f"{public_url}/join/{secret}"
        payload = external_invitation_mail(org.name, actor.user.name, link, email in existing)
        if invitation is None:
            mail = await outbox.enqueue(org_id=org.id, channel="email", purpose="invitation",
                                        to=email, payload=payload, held=True)
            await Invitation.create(
                id=new_id("in"), org=org, kind="external", email=email, role="member",
                token_hash=hash_secret(secret, secret_key), invited_by_id=actor.id,
                outbox_id=mail.id, created_at=now,
                expires_at=now + timedelta(days=INVITATION_DAYS),
            )
        else:
            # Still held: a fresh secret (only its hash was kept) in the waiting mail.
            invitation.token_hash = hash_secret(secret, secret_key)
            invitation.expires_at = now + timedelta(days=INVITATION_DAYS)
            await invitation.save(update_fields=["token_hash", "expires_at"])
            await OutboxMessage.filter(id=invitation.outbox_id, status="held").update(
                payload=payload)
        links[email] = link
    return links


async def release_due() -> int:
    """Outbox round hook: let go the held invitation mails whose conversation now has
    its first event. The link's seven days start now."""
    due = await queries.held_invitations_due(db.connection())
    if not due:
        return 0
    now = utcnow()
    released = 0
    for row in due:
        moved = await Invitation.filter(id=row["id"], mailed_at__isnull=True).update(
            mailed_at=now, expires_at=now + timedelta(days=INVITATION_DAYS))
        if moved and row["outbox_id"]:
            released += await OutboxMessage.filter(id=row["outbox_id"], status="held").update(
                status="pending", next_attempt_at=now)
    if released:
        log.info("outbox: %d external invitation(s) released by a first message", released)
    return released


async def invitees(conversation_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Pending outside addresses per conversation, and whether their invitation has gone."""
    if not conversation_ids:
        return {}
    rows = await PendingParticipant.filter(conversation_id__in=conversation_ids).values(
        "conversation_id", "email", "conversation__org_id")
    if not rows:
        return {}
    now = utcnow()
    mailed = {
        (r["org_id"], r["email"])
        for r in await Invitation.filter(
            kind="external", email__in=list({r["email"] for r in rows}),
            accepted_at__isnull=True, revoked_at__isnull=True, mailed_at__isnull=False,
            expires_at__gt=now,
        ).values("org_id", "email")
    }
    result: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        result.setdefault(r["conversation_id"], []).append({
            "email": r["email"],
            "kind": "external",
            "invited": (r["conversation__org_id"], r["email"]) in mailed,
        })
    return result


async def take_pending(invitation: Invitation, user: User) -> list[tuple[str, str]]:
    """Inside the accepting transaction: the user joins every conversation of the host
    organisation that names their address. Returns (conversation_id, kind) joined."""
    pending = await PendingParticipant.filter(
        email=invitation.email, conversation__org_id=invitation.org_id  # type: ignore[attr-defined]
    ).values("id", "conversation_id")
    if not pending:
        return []
    ids = [p["conversation_id"] for p in pending]
    already = set(await Participant.filter(conversation_id__in=ids, user_id=user.id)
                  .values_list("conversation_id", flat=True))
    kind = "member" if user.org_id == invitation.org_id else "external"  # type: ignore[attr-defined]
    now = utcnow()
    joined = [cid for cid in dict.fromkeys(ids) if cid not in already]
    await Participant.bulk_create([
        Participant(conversation_id=cid, user_id=user.id, kind=kind, joined_at=now)
        for cid in joined
    ])
    await PendingParticipant.filter(id__in=[p["id"] for p in pending]).delete()
    if invitation.outbox_id:  # accepted before the first message: the mail is not needed
        await OutboxMessage.filter(id=invitation.outbox_id, status="held").update(
            status="cancelled", payload=None)
    return [(cid, kind) for cid in joined]


async def drop_pending(invitation: Invitation) -> None:
    """A revoked external invitation: its address leaves the host's conversations."""
    await PendingParticipant.filter(
        email=invitation.email, conversation__org_id=invitation.org_id  # type: ignore[attr-defined]
    ).delete()
