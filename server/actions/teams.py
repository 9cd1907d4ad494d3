"""Teams: named groups of an organisation's members. Admins create, rename and staff them;
every member of the organisation can see them. Phone numbers (and so patient inboxes)
belong to teams: joining a team gives its numbers' patient conversations, leaving it
ends that access at once (server/actions/access.py)."""

from __future__ import annotations

from typing import Any

from tortoise.exceptions import IntegrityError

from server.actions import access, audit
from server.actions.context import Actor, Services
from server.actions.orgs import require_admin
from server.errors import ApiError, invalid
from server.ids import iso, new_id, utcnow
from storage.models import Team, TeamMember, User

MAX_TEAMS = 500


def require_member(actor: Actor) -> None:
    if actor.user.kind not in ("member", "bot"):
        raise ApiError("forbidden", "only members of this organisation may see its teams")


async def team_views(teams: list[Team]) -> list[dict[str, Any]]:
    """Teams with their active members, in one query for all of them."""
    rows = await TeamMember.filter(
        team_id__in=[t.id for t in teams], user__active=True
    ).select_related("user").order_by("id")
    members: dict[str, list[dict[str, str]]] = {t.id: [] for t in teams}
    for row in rows:
        members[row.team_id].append({"id": row.user.id, "name": row.user.name})  # type: ignore[attr-defined]
    return [
        {"id": t.id, "name": t.name, "members": members[t.id], "created_at": iso(t.created_at)}
        for t in teams
    ]


async def team_view(team: Team) -> dict[str, Any]:
    (view,) = await team_views([team])
    return view


async def _team(actor: Actor, team_id: str) -> Team:
    team = await Team.get_or_none(id=team_id, org_id=actor.org_id)
    if team is None:
        raise ApiError("not_found", "team not found")
    return team


def _name(name: str) -> str:
    name = name.strip()
    if not name:
        raise invalid("name must not be blank", name="blank")
    return name


async def create_team(svc: Services, actor: Actor, *, name: str) -> dict[str, Any]:
    require_admin(actor)
    name = _name(name)
    if await Team.filter(org_id=actor.org_id).count() >= MAX_TEAMS:
        raise ApiError("conflict", f"an organisation has at most {MAX_TEAMS} teams")
    team = await Team.create(id=new_id("tm"), org_id=actor.org_id, name=name,
                             created_at=utcnow())
    return await team_view(team)


async def rename_team(svc: Services, actor: Actor, team_id: str, *, name: str) -> dict[str, Any]:
    require_admin(actor)
    name = _name(name)
    team = await _team(actor, team_id)
    team.name = name
    await team.save(update_fields=["name"])
    return await team_view(team)


async def list_teams(svc: Services, actor: Actor) -> list[dict[str, Any]]:
    require_member(actor)
    teams = await Team.filter(org_id=actor.org_id).order_by("name", "id")
    return await team_views(list(teams))


async def add_to_team(svc: Services, actor: Actor, team_id: str, user_id: str) -> None:
    require_admin(actor)
    team = await _team(actor, team_id)
    user = await User.get_or_none(id=user_id, org_id=actor.org_id, kind="member", active=True)
    if user is None:
        raise ApiError("not_found", "member not found")
    try:
        await TeamMember.create(team=team, user=user, added_at=utcnow())
    except IntegrityError:
        return  # already in it: PUT is idempotent
    await access.joined_team(svc, team.id, user.id)  # its numbers' patient conversations
    audit.staff_did(svc, actor, "team.add_member", "team", team.id, user_id=user.id)


async def remove_from_team(svc: Services, actor: Actor, team_id: str, user_id: str) -> None:
    require_admin(actor)
    team = await _team(actor, team_id)
    removed = await TeamMember.filter(team_id=team.id, user_id=user_id).delete()
    if removed:
        await access.left_team(svc, team.id, user_id)  # at once, sockets included
        audit.staff_did(svc, actor, "team.remove_member", "team", team.id, user_id=user_id)
