"""Member invitations: the link by email, its page, accepting it.

`POST /api/v1/members` without a password invites: an `Invitation` (only the keyed hash
of its secret is stored) and the mail that carries the link are written in one
transaction; the outbox worker sends the mail. A pending member invitation holds a seat
until it is accepted, revoked or expired. Inviting the same address again revokes the
earlier link. Accepting creates the member and a login session.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from channels import outbox
from realtime.hub import user_topic
from server.actions import conversations, externals, messages
from server.actions.context import Actor, Services
from server.actions.orgs import require_admin, take_seat
from server.actions.views import user_view
from server.auth import hash_password, hash_secret, new_secret
from server.errors import ApiError, not_found
from server.ids import iso, new_id, utcnow
from storage.models import Invitation, Org, OutboxMessage, User

INVITATION_DAYS = 7
TOKEN_RE = re.compile(r"^bi_[A-Za-z0-9_-]{20,80}$")


def pending(query):  # type: ignore[no-untyped-def]
    """Invitations that still work (and so hold a seat, for members)."""
    return query.filter(accepted_at__isnull=True, revoked_at__isnull=True,
                        expires_at__gt=utcnow())


def invitation_view(invitation: Invitation, link: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": invitation.id,
        "kind": invitation.kind,
        "email": invitation.email,
        "name": invitation.name,
        "role": invitation.role,
        "created_at": iso(invitation.created_at),
        "expires_at": iso(invitation.expires_at),
    }
    if link is not None:
        view["link"] = link
    return view


def invitation_mail(org_name: str, inviter: str, link: str, expires: str) -> dict[str, str]:
    """No message content, no PHI: who invites, to what, and the link."""
    subject = f"{inviter} invited you to {org_name} on BloomText"
    text = (
        f"{inviter} invited you to join {org_name} on BloomText, the secure messaging "
        f"service your colleagues use.\n\nGet started: {link}\n\n"
        f"The link works once and until {expires}. If you did not expect this, ignore it.\n"
    )
    e = html.escape
    body = (
        f"<p>{e(inviter)} invited you to join <strong>{e(org_name)}</strong> on BloomText, "
        "the secure messaging service your colleagues use.</p>"
        f'<p><a href="{e(link)}" style="font-weight:bold">Get started</a></p>'
        f"<p>The link works once and until {e(expires)}. "
        "If you did not expect this, ignore it.</p>"
    )
    return {"subject": subject, "text": text, "html": body}


async def invite_member(
    svc: Services, actor: Actor, *, email: str, name: str, role: str
) -> dict[str, Any]:
    """Called by `accounts.create_member` when no password is given; `email` is normal."""
    require_admin(actor)
    if await User.exists(email=email):
        # One account per email today; belonging to several organisations comes with
        # the organisation switch.
        raise ApiError("conflict", "an account with this email exists",
                       {"fields": {"email": "taken"}})
    secret = new_secret("bi")
    now = utcnow()
    link = f"{svc.settings.public_url}/join/{secret}"
    async with in_transaction():
        # The organisation's row first (as every seat change takes it), then a resend's
        # earlier link stops working and gives its seat back before the new one takes it.
        org = await Org.select_for_update().get(id=actor.org_id)
        await pending(Invitation.filter(org_id=org.id, email=email, kind="member")).update(
            revoked_at=now
        )
        await take_seat(svc, org.id)
        invitation = await Invitation.create(
            id=new_id("in"), org=org, kind="member", email=email, name=name.strip(), role=role,
            token_hash=hash_secret(secret, svc.settings.secret_key), invited_by_id=actor.id,
            created_at=now, mailed_at=now, expires_at=now + timedelta(days=INVITATION_DAYS),
        )
        mail = await outbox.enqueue(
            org_id=org.id, channel="email", purpose="invitation", to=email,
            payload=invitation_mail(org.name, actor.user.name, link,
                                    f"{invitation.expires_at:%d %B %Y, %H:%M} UTC"),
        )
        invitation.outbox_id = mail.id
        await invitation.save(update_fields=["outbox_id"])
    if svc.outbox is not None:
        svc.outbox.notify()
    # Without SMTP nothing reaches the person: the admin gets the link to pass on.
    return invitation_view(invitation, None if svc.settings.smtp_url else link)


# What the admin sees of an invitation's mail: the outbox row's status, or `held` for an
# external invitation waiting for its conversation's first message.
def delivery_of(invitation: Invitation, mail: OutboxMessage | None) -> dict[str, Any]:
    if mail is None:
        return {"status": "unknown", "attempts": 0, "error": None}
    return {"status": mail.status, "attempts": mail.attempts, "error": mail.last_error}


async def list_invitations(
    svc: Services, actor: Actor, *, after: tuple[str, str] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """The organisation's invitations not yet accepted or revoked, newest first, with how
    their mail fared: a mail that failed after its retries shows here as `failed`."""
    require_admin(actor)
    query = Invitation.filter(org_id=actor.org_id, accepted_at__isnull=True,
                              revoked_at__isnull=True)
    if after is not None:
        query = query.filter(id__lt=after[1])
    rows = await query.order_by("-id").limit(limit + 1)
    page = rows[:limit]
    mails = {m.id: m for m in await OutboxMessage.filter(
        id__in=[i.outbox_id for i in page if i.outbox_id])}
    now = utcnow()
    items = []
    for invitation in page:
        view = invitation_view(invitation)
        view["expired"] = invitation.mailed_at is not None and invitation.expires_at <= now
        view["delivery"] = delivery_of(invitation, mails.get(invitation.outbox_id or ""))
        items.append(view)
    next_key = ("id", page[-1].id) if len(rows) > limit else None
    return items, next_key


async def revoke(svc: Services, actor: Actor, invitation_id: str) -> None:
    """The link stops working, a member invitation's seat is free again, and an external
    one's pending addresses leave their conversations. 404 once used or elsewhere."""
    require_admin(actor)
    now = utcnow()
    async with in_transaction():
        invitation = await Invitation.filter(
            id=invitation_id, org_id=actor.org_id, accepted_at__isnull=True,
            revoked_at__isnull=True).select_for_update().first()
        if invitation is None:
            raise not_found("invitation")
        invitation.revoked_at = now
        await invitation.save(update_fields=["revoked_at"])
        if invitation.outbox_id:
            await OutboxMessage.filter(id=invitation.outbox_id, status__in=("held", "pending")
                                       ).update(status="cancelled", payload=None)
        if invitation.kind == "external":
            await externals.drop_pending(invitation)


async def _find(svc: Services, token: str) -> Invitation:
    """A working invitation, or 404 for unknown, used, revoked and expired alike."""
    if not TOKEN_RE.match(token):
        raise not_found("invitation")
    invitation = await pending(
        Invitation.filter(token_hash=hash_secret(token, svc.settings.secret_key))
    ).prefetch_related("org").first()
    if invitation is None:
        raise not_found("invitation")
    return invitation


async def describe(svc: Services, token: str) -> dict[str, Any]:
    invitation = await _find(svc, token)
    return {
        "kind": invitation.kind,
        "email": invitation.email,
        "org_name": invitation.org.name,
        "account_exists": await User.exists(email=invitation.email),
        "name": invitation.name,
    }


async def accept(
    svc: Services, token: str, *, name: str | None, password: str, org_name: str | None,
    address: str,
) -> dict[str, Any]:
    """A member invitation makes the account; an external one makes the account and its
    own organisation, or signs in the account the address already has."""
    invitation = await _find(svc, token)
    if invitation.kind == "external":
        return await _accept_external(svc, invitation, name=name, password=password,
                                      org_name=org_name, address=address)
    from server.actions.accounts import check_password, issue_session

    if not name or not name.strip():
        raise ApiError("invalid", "name is required", {"fields": {"name": "required"}})
    check_password(password)
    password_hash = await hash_password(password)
    now = utcnow()
    try:
        async with in_transaction():
            # Single use: only the first of two concurrent accepts changes the row.
            taken = await pending(Invitation.filter(id=invitation.id)).update(accepted_at=now)
            if not taken:
                raise not_found("invitation")
            user = await User.create(
                id=new_id("us"), org_id=invitation.org_id, kind="member", role=invitation.role,
                name=name.strip(), email=invitation.email, password_hash=password_hash,
                created_at=now,
            )
    except IntegrityError:
        raise ApiError("conflict", "an account with this email exists",
                       {"fields": {"email": "taken"}}) from None
    secret, _ = await issue_session(svc, user)
    return {"token": secret, "user": user_view(user)}


async def _accept_external(
    svc: Services, invitation: Invitation, *, name: str | None, password: str,
    org_name: str | None, address: str,
) -> dict[str, Any]:
    from server.actions.accounts import check_credentials, check_password, issue_session

    now = utcnow()
    account = await User.get_or_none(email=invitation.email)
    new_org: Org | None = None
    if account is not None:
        # The address has an account: its password proves it is theirs (counted like a
        # login); a deactivated account cannot come in this way either.
        account = await check_credentials(svc, email=invitation.email, password=password,
                                          address=address)
        password_hash = None
    else:
        missing = {f: "required" for f, v in (("name", name), ("org_name", org_name))
                   if not v or not v.strip()}
        if missing:
            raise ApiError("invalid", "name and org_name are required for a new account",
                           {"fields": missing})
        check_password(password)
        password_hash = await hash_password(password)
    try:
        async with in_transaction():
            taken = await pending(Invitation.filter(id=invitation.id)).update(accepted_at=now)
            if not taken:
                raise not_found("invitation")
            if account is None:
                assert name and org_name and password_hash
                new_org = await Org.create(id=new_id("or"), name=org_name.strip(),
                                           created_at=now)
                account = await User.create(
                    id=new_id("us"), org=new_org, kind="member", role="admin",
                    name=name.strip(), email=invitation.email, password_hash=password_hash,
                    created_at=now,
                )
            joined = await externals.take_pending(invitation, account)
    except IntegrityError:
        raise ApiError("conflict", "an account with this email exists",
                       {"fields": {"email": "taken"}}) from None
    for conversation_id, _ in joined:
        await messages.append_event(svc, conversation_id, account, "participant_added",
                                    target_id=account.id)
    for conversation_id, _ in joined:
        # Their sockets (a signed-in account may have some) join and hear of it.
        view = await conversations.get_conversation(svc, Actor(account, ""), conversation_id)
        svc.hub.publish(user_topic(account.id), {"type": "conversation", "conversation": view})
    secret, _ = await issue_session(svc, account)
    return {"token": secret, "user": user_view(account),
            "conversation_ids": [cid for cid, _ in joined]}
