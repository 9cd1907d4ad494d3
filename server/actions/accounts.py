"""Organisations, members, bots, login sessions."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from realtime.hub import session_topic
from server.actions import audit
from server.actions.context import Actor, Services
from server.actions.orgs import org_summary, require_admin, take_seat
from server.actions.views import user_view
from server.auth import hash_password, hash_secret, new_secret, verify_password
from server.errors import ApiError, invalid
from server.ids import new_id, utcnow
from storage.models import ApiToken, Org, User

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 320:
        raise invalid("not a valid email address", email="not a valid email address")
    return email


def check_password(password: str) -> None:
    if len(password) < 8:
        raise invalid("password too short", password="at least 8 characters")


async def issue_session(svc: Services, user: User) -> tuple[str, ApiToken]:
    secret = new_secret("bt")
    now = utcnow()
    token = await ApiToken.create(
        id=new_id("se"),
        user=user,
        token_hash=hash_secret(secret, svc.settings.secret_key),
        kind="session",
        created_at=now,
        last_used_at=now,
        expires_at=now + timedelta(seconds=svc.settings.session_max_seconds),
    )
    return secret, token


async def signup(
    svc: Services, *, org_name: str, name: str, email: str, password: str
) -> dict[str, Any]:
    if not svc.settings.signup_open:
        raise ApiError("forbidden", "signup is closed on this server")
    email = normalise_email(email)
    check_password(password)
    password_hash = await hash_password(password)
    now = utcnow()
    try:
        async with in_transaction():
            org = await Org.create(id=new_id("or"), name=org_name.strip(), created_at=now)
            user = await User.create(
                id=new_id("us"),
                org=org,
                kind="member",
                role="admin",
                name=name.strip(),
                email=email,
                password_hash=password_hash,
                created_at=now,
            )
    except IntegrityError:
        raise ApiError(
            "conflict", "an account with this email exists", {"fields": {"email": "taken"}}
        ) from None
    secret, _ = await issue_session(svc, user)
    return {"token": secret, "user": user_view(user), "org": await org_summary(svc, org)}


async def login(svc: Services, *, email: str, password: str, address: str) -> dict[str, Any]:
    user = await check_credentials(svc, email=email, password=password, address=address)
    secret, _ = await issue_session(svc, user)
    return {"token": secret, "user": user_view(user)}


async def check_credentials(svc: Services, *, email: str, password: str, address: str) -> User:
    """The active staff account with this email and password, or 401; every failure is
    counted by the login limiter, per account and per address (429 past the limit)."""
    email = email.strip().lower()
    account_key, address_key = "email:" + email, "addr:" + address
    limiter = svc.login_limiter
    wait = await limiter.retry_after([account_key, address_key])
    if wait:
        raise ApiError(
            "rate_limited",
            "too many failed logins; try again later",
            {"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )
    user = await User.get_or_none(email=email, active=True)
    ok = await verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.kind not in ("member", "external"):
        await limiter.failed([account_key, address_key])
        if user is not None:  # an unknown address has no organisation to tell
            _audit_login(svc, user, "auth.login_failed")
        raise ApiError("unauthenticated", "wrong email or password")
    await limiter.succeeded(account_key)
    _audit_login(svc, user, "auth.login")
    return user


def _audit_login(svc: Services, user: User, action: str) -> None:
    org_id: str = user.org_id  # type: ignore[attr-defined]
    svc.audit.note(audit.Entry(org_id=org_id, action=action, actor_id=user.id,
                               actor_kind=user.kind, target_kind="user", target_id=user.id))


async def authenticate(svc: Services, secret: str) -> Actor:
    """The caller behind a bearer secret, or `unauthenticated`.

    A session ends when revoked, after its absolute lifetime, or after
    `session_idle_seconds` without use (automatic logoff).
    """
    if not secret or len(secret) > 200:
        raise ApiError("unauthenticated", "missing or malformed token")
    token = await ApiToken.get_or_none(
        token_hash=hash_secret(secret, svc.settings.secret_key)
    ).select_related("user")
    now = utcnow()
    if token is None or token.revoked_at is not None or not token.user.active:
        raise ApiError("unauthenticated", "invalid or expired token")
    if token.kind == "session":
        idle = timedelta(seconds=svc.settings.session_idle_seconds)
        if (token.expires_at and now >= token.expires_at) or now - token.last_used_at >= idle:
            raise ApiError("unauthenticated", "session expired; log in again")
        if now - token.last_used_at >= touch_interval(svc):
            await ApiToken.filter(id=token.id).update(last_used_at=now)
            token.last_used_at = now
    expires = token.expires_at.timestamp() if token.expires_at else None
    return Actor(user=token.user, session_id=token.id, expires_at=expires)


async def session_alive(svc: Services, session_id: str) -> float | None:
    """For an open socket: when its session lapses next (epoch s), or None if it has ended."""
    token = await ApiToken.get_or_none(id=session_id)
    if token is None or token.revoked_at is not None:
        return None
    if token.kind != "session":
        return float("inf")
    idle_end = token.last_used_at + timedelta(seconds=svc.settings.session_idle_seconds)
    end = min(idle_end, token.expires_at) if token.expires_at else idle_end
    return end.timestamp() if end > utcnow() else None


def touch_interval(svc: Services) -> timedelta:
    """How often use of a session is written down: rarely, but well inside the idle limit."""
    return timedelta(seconds=min(60.0, svc.settings.session_idle_seconds / 4))


async def touch_session(svc: Services, session_id: str) -> None:
    """Activity on a socket keeps its session from idling out."""
    now = utcnow()
    await ApiToken.filter(
        id=session_id, last_used_at__lt=now - touch_interval(svc)
    ).update(last_used_at=now)


async def logout(svc: Services, actor: Actor) -> None:
    await ApiToken.filter(id=actor.session_id, revoked_at__isnull=True).update(
        revoked_at=utcnow()
    )
    await end_session_sockets(svc, actor.session_id, "logged out")


async def end_session_sockets(svc: Services, session_id: str, reason: str) -> None:
    svc.hub.publish(
        session_topic(session_id), {"type": "close", "code": 4001, "reason": reason}
    )


async def me(svc: Services, actor: Actor) -> dict[str, Any]:
    org = await Org.get(id=actor.org_id)
    return {
        "user": user_view(actor.user),
        "org": await org_summary(svc, org),
        "policies": org.policies or {},
    }


async def create_member(
    svc: Services, actor: Actor, *, email: str, name: str, role: str, password: str | None
) -> dict[str, Any]:
    require_admin(actor)
    email = normalise_email(email)
    if role not in ("admin", "member"):
        raise invalid("role must be admin or member", role="admin or member")
    if password is None:
        from server.actions import invitations

        return await invitations.invite_member(svc, actor, email=email, name=name, role=role)
    check_password(password)
    password_hash = await hash_password(password)
    try:
        async with in_transaction():
            await take_seat(svc, actor.org_id)
            user = await User.create(
                id=new_id("us"),
                org_id=actor.org_id,
                kind="member",
                role=role,
                name=name.strip(),
                email=email,
                password_hash=password_hash,
                created_at=utcnow(),
            )
    except IntegrityError:
        raise ApiError(
            "conflict", "an account with this email exists", {"fields": {"email": "taken"}}
        ) from None
    audit.staff_did(svc, actor, "member.create", "user", user.id, role=user.role)
    return user_view(user)


async def list_members(
    svc: Services, actor: Actor, *, after: tuple[str, str] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    if actor.user.kind not in ("member", "bot"):
        raise ApiError("forbidden", "only members of this organisation may list its members")
    query = User.filter(org_id=actor.org_id, kind__in=("member", "bot"), active=True)
    if after is not None:
        query = query.filter(id__gt=after[1])
    users = await query.order_by("id").limit(limit + 1)
    page = users[:limit]
    # Keyset on id: the cursor's first part is unused for members (kept for one format).
    next_key = ("id", page[-1].id) if len(users) > limit else None
    return [user_view(u) for u in page], next_key


async def create_bot(svc: Services, actor: Actor, *, name: str) -> dict[str, Any]:
    require_admin(actor)
    now = utcnow()
    secret = new_secret("bb")
    async with in_transaction():
        user = await User.create(
            id=new_id("us"), org_id=actor.org_id, kind="bot", role="member",
            name=name.strip(), created_at=now,
        )
        await ApiToken.create(
            id=new_id("bk"), user=user, token_hash=hash_secret(secret, svc.settings.secret_key),
            kind="bot", created_at=now, last_used_at=now, expires_at=None,
        )
    return {"user": user_view(user), "token": secret}


async def update_member(
    svc: Services, actor: Actor, user_id: str, *, role: str | None, active: bool | None
) -> dict[str, Any]:
    """Change a member's role, or deactivate (reactivate) them. Deactivating ends every
    session and open socket of theirs at once, on every node, and frees their seat."""
    require_admin(actor)
    if user_id == actor.id and (active is False or role == "member"):
        raise ApiError("conflict", "an admin cannot deactivate or demote themselves; "
                       "ask another admin")
    async with in_transaction():
        user = await User.select_for_update().get_or_none(
            id=user_id, org_id=actor.org_id, kind="member"
        )
        if user is None:
            raise ApiError("not_found", "member not found")
        if active is True and not user.active:
            await take_seat(svc, actor.org_id)
        if role is not None:
            user.role = role
        if active is not None:
            user.active = active
        await user.save(update_fields=["role", "active"])
        sessions: list[str] = []
        if active is False:
            now = utcnow()
            sessions = await ApiToken.filter(user_id=user.id, revoked_at__isnull=True
                                             ).values_list("id", flat=True)  # type: ignore[assignment]
            await ApiToken.filter(id__in=sessions).update(revoked_at=now)
    for session_id in sessions:  # after commit: every node closes those sockets
        await end_session_sockets(svc, session_id, "account deactivated")
    audit.staff_did(svc, actor, "member.update", "user", user.id, role=user.role,
                    active=user.active)
    return {**user_view(user), "active": user.active}
