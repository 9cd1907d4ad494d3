"""Phone numbers: searched and bought through Twilio, each owned by one team.

Buying points the number's SMS webhook and status callback at this server
(`PUBLIC_URL/webhooks/twilio/sms` and `/status`). Twilio's refusals reach the admin as
409 `conflict` with Twilio's words and code; Twilio down or too slow is 503
`unavailable`; a server without Twilio credentials says so (503, `not_configured`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from channels.twilio import TelephonyError
from server.actions import access, audit
from server.actions.context import Actor, Services
from server.actions.orgs import require_admin, require_patient_plan
from server.actions.patients import normalise_phone
from server.errors import ApiError, invalid, not_found
from server.ids import iso, new_id, utcnow
from storage.models import PhoneNumber, Team, TeamMember

log = logging.getLogger("bloomtext.phone_numbers")
AREA_CODE = re.compile(r"^[2-9][0-9]{2}$")


def number_view(number: PhoneNumber) -> dict[str, Any]:
    return {"id": number.id, "number": number.number,
            "team_id": number.team_id,  # type: ignore[attr-defined]
            "created_at": iso(number.created_at)}


def _telephony(svc: Services):  # type: ignore[no-untyped-def]
    if svc.numbers is None:
        raise ApiError("conflict", "Twilio is not configured on this server: the operator "
                       "sets TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
                       {"reason": "not_configured"})
    return svc.numbers


def _as_api_error(exc: TelephonyError) -> ApiError:
    details: dict[str, Any] = {"provider": "twilio"}
    if exc.provider_code is not None:
        details["provider_code"] = exc.provider_code
    if exc.kind == "refused":
        return ApiError("conflict", f"Twilio refused: {exc.message}", details)
    return ApiError("unavailable", f"Twilio is unavailable: {exc.message}", details,
                    headers={"Retry-After": "30"})


async def search_available(svc: Services, actor: Actor, area_code: str) -> list[dict[str, Any]]:
    await require_patient_plan(actor)
    require_admin(actor)
    if not AREA_CODE.match(area_code or ""):
        raise invalid("area_code is three digits, e.g. 415", area_code="three digits")
    provider = _telephony(svc)
    try:
        found = await provider.search_available(area_code)
    except TelephonyError as exc:
        raise _as_api_error(exc) from None
    return [{"number": n.number, "locality": n.locality, "region": n.region} for n in found]


async def buy(svc: Services, actor: Actor, *, number: str, team_id: str) -> dict[str, Any]:
    await require_patient_plan(actor)
    require_admin(actor)
    try:
        e164 = normalise_phone(number, svc.settings.default_region)
    except ValueError as exc:
        raise invalid(f"number {exc}", number=str(exc)) from None
    team = await Team.get_or_none(id=team_id, org_id=actor.org_id)
    if team is None:
        raise not_found("team")
    if await PhoneNumber.exists(number=e164):
        raise ApiError("conflict", "this number is already in use on this server",
                       {"fields": {"number": "taken"}})
    provider = _telephony(svc)
    base = svc.settings.public_url
    try:
        owned = await provider.buy(e164, sms_url=f"{base}/webhooks/twilio/sms",
                                   status_callback=f"{base}/webhooks/twilio/status")
    except TelephonyError as exc:
        raise _as_api_error(exc) from None
    try:
        row = await PhoneNumber.create(id=new_id("pn"), org_id=actor.org_id, team=team,
                                       number=owned.number, provider_sid=owned.sid,
                                       created_at=utcnow())
    except IntegrityError:
        log.error("number %s (Twilio %s) was bought but is already stored", owned.number,
                  owned.sid)
        raise ApiError("conflict", "this number is already in use on this server") from None
    audit.staff_did(svc, actor, "number.buy", "phone_number", row.id, team_id=team_id)
    return number_view(row)


async def list_numbers(svc: Services, actor: Actor) -> list[dict[str, Any]]:
    """Admins: every number; members: their teams' numbers."""
    await require_patient_plan(actor)
    if actor.user.kind not in ("member", "bot"):
        raise ApiError("forbidden", "only members of this organisation may see its numbers")
    query = PhoneNumber.filter(org_id=actor.org_id)
    if not actor.is_admin:
        teams = await TeamMember.filter(user_id=actor.id).values_list("team_id", flat=True)
        query = query.filter(team_id__in=list(teams))
    return [number_view(n) for n in await query.order_by("number")]


async def move(svc: Services, actor: Actor, number_id: str, *, team_id: str) -> dict[str, Any]:
    """Give the number to another team: the old team's members lose its patient
    conversations at once, the new team's gain them."""
    await require_patient_plan(actor)
    require_admin(actor)
    async with in_transaction():
        number = await PhoneNumber.filter(id=number_id, org_id=actor.org_id
                                          ).select_for_update().first()
        if number is None:
            raise not_found("phone number")
        team = await Team.get_or_none(id=team_id, org_id=actor.org_id)
        if team is None:
            raise not_found("team")
        old_team = number.team_id  # type: ignore[attr-defined]
        number.team = team
        await number.save(update_fields=["team_id"])
    if old_team != team.id:
        await access.number_moved(svc, number.id, old_team, team.id)
    audit.staff_did(svc, actor, "number.move", "phone_number", number.id, team_id=team_id)
    return number_view(number)


async def number_for_conversation(actor: Actor, number_id: str) -> PhoneNumber:
    """The number a patient conversation is started on: 404 elsewhere, 403 when the
    caller is neither an admin nor on the team that owns it."""
    number = await PhoneNumber.get_or_none(id=number_id, org_id=actor.org_id)
    if number is None:
        raise not_found("phone number")
    if not actor.is_admin and not await TeamMember.exists(
        team_id=number.team_id, user_id=actor.id  # type: ignore[attr-defined]
    ):
        raise ApiError("forbidden", "only the team that owns this number (and admins) may "
                       "start conversations on it")
    return number
