"""Organisations: plans, seats, the trial, settings.

A plan decides the seat limit (`SEATS_FREE`, `SEATS_TRIAL`, `SEATS_PRO`). Seats are held
by the organisation's active members (admins included) and by member invitations that
still work; external users, bots and patients never hold one. A trial that has run out
is the free plan again: nothing is removed, the limits are the free plan's until the
organisation upgrades.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from tortoise.transactions import in_transaction

from server.actions import audit
from server.actions.context import Actor, Services
from server.actions.views import org_view
from server.config import Settings
from server.errors import ApiError, invalid, not_found
from server.ids import utcnow
from storage.models import Invitation, Org, User

PLANS = ("free", "trial", "pro")
TRIAL_DAYS = 7
SEAT_KINDS = ("member",)
POLICY_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_POLICIES = 50
# How long messages and files are kept, in days (server/actions/retention.py); unset: for
# ever, the default.
RETENTION_POLICY = "retention_days"
MAX_RETENTION_DAYS = 36500


def effective_plan(org: Org, now: datetime | None = None) -> str:
    """The plan in force: a trial past its end is the free plan."""
    if org.plan != "trial":
        return org.plan
    ended = org.trial_ends_at is None or org.trial_ends_at <= (now or utcnow())
    return "free" if ended else "trial"


def seat_limit(settings: Settings, plan: str) -> int | None:
    return {"free": settings.seats_free, "trial": settings.seats_trial,
            "pro": settings.seats_pro}[plan]


async def seats_used(org_id: str) -> int:
    """Active members, and member invitations that still work (they are kept for the
    person invited)."""
    members = await User.filter(org_id=org_id, kind__in=SEAT_KINDS, active=True).count()
    invited = await Invitation.filter(
        org_id=org_id, kind="member", accepted_at__isnull=True, revoked_at__isnull=True,
        expires_at__gt=utcnow(),
    ).count()
    return members + invited


async def org_summary(svc: Services, org: Org) -> dict[str, Any]:
    plan = effective_plan(org)
    return org_view(org, plan, await seats_used(org.id), seat_limit(svc.settings, plan))


async def get_org(svc: Services, actor: Actor) -> dict[str, Any]:
    return await org_summary(svc, await Org.get(id=actor.org_id))


def require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise ApiError("forbidden", "only an admin of this organisation may do this")


async def take_seat(svc: Services, org_id: str) -> None:
    """Inside the transaction that adds a seat holder: refuse past the plan's limit.

    The organisation's row is locked first (PostgreSQL), so two admins adding the last
    seat at once cannot both get it; SQLite has one writer anyway.
    """
    org = await Org.select_for_update().get(id=org_id)
    plan = effective_plan(org)
    limit = seat_limit(svc.settings, plan)
    if limit is not None and await seats_used(org_id) >= limit:
        raise ApiError(
            "seat_limit_reached",
            f"the {plan} plan has {limit} seats and all are taken"
            + ("; start the trial or upgrade to add members" if plan == "free" else ""),
            {"seats": {"limit": limit, "plan": plan}},
        )


async def start_trial(svc: Services, actor: Actor) -> dict[str, Any]:
    require_admin(actor)
    async with in_transaction():
        org = await Org.select_for_update().get(id=actor.org_id)
        if org.trial_ends_at is not None:
            raise ApiError("conflict", "this organisation has already had its trial")
        if org.plan == "pro":
            raise ApiError("conflict", "this organisation is on the pro plan already")
        org.plan = "trial"
        org.trial_ends_at = utcnow() + timedelta(days=TRIAL_DAYS)
        await org.save(update_fields=["plan", "trial_ends_at"])
    return await org_summary(svc, org)


def merge_policies(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Key by key; a key set to null is removed (PROTOCOL.md, Precisions v1.1)."""
    merged = dict(current)
    for key, value in changes.items():
        if not POLICY_KEY.match(key):
            raise invalid("policy names are lower_snake_case, at most 64 characters",
                          policies=f"bad name {key[:64]!r}")
        if value is None:
            merged.pop(key, None)
        elif key == RETENTION_POLICY and (isinstance(value, bool) or not isinstance(value, int)
                                          or not 1 <= value <= MAX_RETENTION_DAYS):
            raise invalid(f"{RETENTION_POLICY} is a whole number of days, 1 to "
                          f"{MAX_RETENTION_DAYS} (null: keep everything)",
                          policies=f"bad value for {key}")
        elif isinstance(value, bool | int | float | str) and len(str(value)) <= 200:
            merged[key] = value
        else:
            raise invalid("a policy's value is a boolean, number or short text",
                          policies=f"bad value for {key}")
    if len(merged) > MAX_POLICIES:
        raise invalid(f"at most {MAX_POLICIES} policies", policies="too many")
    return merged


async def update_org(
    svc: Services, actor: Actor, *, name: str | None, policies: dict[str, Any] | None
) -> dict[str, Any]:
    require_admin(actor)
    if name is not None and not name.strip():
        raise invalid("name must not be blank", name="blank")
    async with in_transaction():
        org = await Org.select_for_update().get(id=actor.org_id)
        if name is not None:
            org.name = name.strip()
        if policies is not None:
            org.policies = merge_policies(org.policies or {}, policies)
        await org.save(update_fields=["name", "policies"])
    audit.staff_did(svc, actor, "org.update", "organisation", org.id,
                    name=name is not None, policies=sorted(policies or {}))
    return await org_summary(svc, org)


async def set_plan(org_id: str, plan: str) -> Org:
    """For the operator (CLI): billing lives outside this server."""
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {', '.join(PLANS)}")
    org = await Org.get_or_none(id=org_id)
    if org is None:
        raise not_found("organisation")
    org.plan = plan
    if plan == "trial":
        org.trial_ends_at = utcnow() + timedelta(days=TRIAL_DAYS)
    await org.save(update_fields=["plan", "trial_ends_at"])
    return org


PLAN_REQUIRED_MESSAGE = (
    "Patient messaging needs the trial or a paid plan. An admin can start the free 7-day "
    "trial in the Organisation panel."
)


def allows_patients(org: Org) -> bool:
    return effective_plan(org) != "free"


async def require_patient_plan(actor: Actor) -> Org:
    """402 for every patient feature on the free plan (a lapsed trial included). Nothing
    stored is removed: it is readable again once the organisation upgrades."""
    org = await Org.get(id=actor.org_id)
    if not allows_patients(org):
        raise ApiError("plan_required", PLAN_REQUIRED_MESSAGE, {"plan": effective_plan(org)})
    return org
