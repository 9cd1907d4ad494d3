"""Who may see and post in a conversation, and keeping patient conversations' staff in
step with the teams that own their numbers.

Rules (PROTOCOL, "Teams, phone numbers, patients" and its v1.1 precisions):
- Internal conversations: their participants only.
- Patient conversations: the members of the team that owns the conversation's number
  are participants (kept so by the functions below: joining or leaving a team, or a
  number moving to another team, adds or removes their rows), so they get its live
  events, receipts and `ready` like any participant, and the send path's participant
  check is the team check. Admins read every patient conversation of their organisation
  (inbox, filters, GET) without being participants, and become one when they post.
- A patient feature on the free plan is 402, checked before anything is looked up where
  the route says it is a patient feature, and after the lookup where only the
  conversation says so.

Removing access is immediate for storage (the participant row goes, so a send is
`not_found`); the user's sockets on every node get `conversation_removed` and leave the
conversation's topic.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from tortoise.transactions import in_transaction

from realtime.hub import session_topic, user_topic
from server.actions.context import Actor, Services
from server.actions.orgs import PLAN_REQUIRED_MESSAGE, allows_patients, effective_plan
from server.errors import ApiError, not_found
from server.ids import utcnow
from storage.models import ApiToken, Conversation, Org, Participant, PhoneNumber, TeamMember

# A user added to this many conversations at once reconnects (and gets them all in
# `ready`) instead of getting one `conversation` frame each.
MAX_FRAMES_PER_GRANT = 100


async def conversation_access(
    actor: Actor, conversation_id: str
) -> tuple[Conversation, Participant | None]:
    """The conversation and the caller's participant row (None for an admin reading a
    patient conversation they are not in); 404 for anyone else, 402 when it is a patient
    conversation and the plan does not allow patients."""
    participant = await Participant.get_or_none(conversation_id=conversation_id,
                                                user_id=actor.id)
    conversation = await Conversation.get_or_none(id=conversation_id)
    if conversation is None:
        raise not_found("conversation")
    if participant is None and not (
        actor.is_admin and conversation.kind == "patient"
        and conversation.org_id == actor.org_id  # type: ignore[attr-defined]
    ):
        raise not_found("conversation")
    if conversation.kind == "patient":
        org = await Org.get(id=conversation.org_id)  # type: ignore[attr-defined]
        if not allows_patients(org):
            raise ApiError("plan_required", PLAN_REQUIRED_MESSAGE,
                           {"plan": effective_plan(org)})
    return conversation, participant


async def team_member_ids(team_id: str) -> list[str]:
    return list(await TeamMember.filter(team_id=team_id, user__active=True)
                .values_list("user_id", flat=True))


async def _patient_conversations(number_ids: list[str]) -> list[str]:
    if not number_ids:
        return []
    return list(await Conversation.filter(kind="patient", phone_number_id__in=number_ids)
                .values_list("id", flat=True))


async def grant(svc: Services, user_ids: list[str], conversation_ids: list[str]) -> None:
    """Make these staff participants of these patient conversations (what they are
    already in is left alone), then tell their sockets."""
    if not user_ids or not conversation_ids:
        return
    existing = set(await Participant.filter(
        conversation_id__in=conversation_ids, user_id__in=user_ids
    ).values_list("conversation_id", "user_id"))
    now = utcnow()
    rows = [Participant(conversation_id=cid, user_id=uid, kind="member", joined_at=now)
            for cid in conversation_ids for uid in user_ids if (cid, uid) not in existing]
    if not rows:
        return
    await Participant.bulk_create(rows, ignore_conflicts=True)
    added: dict[str, list[str]] = {}
    for row in rows:
        added.setdefault(row.user_id, []).append(row.conversation_id)  # type: ignore[attr-defined]
    from server.actions.conversations import conversation_views

    for uid, cids in added.items():
        if len(cids) > MAX_FRAMES_PER_GRANT:
            await reconnect(svc, uid, "new conversations: reconnect and sync")
            continue
        views = await conversation_views(cids, viewer_id=uid)
        for view in views:
            svc.hub.publish(user_topic(uid), {"type": "conversation", "conversation": view})


async def revoke(svc: Services, user_ids: list[str], conversation_ids: list[str]) -> None:
    """These staff leave these patient conversations: stored at once, then every node's
    sockets of theirs leave the topics."""
    if not user_ids or not conversation_ids:
        return
    rows = await Participant.filter(conversation_id__in=conversation_ids, user_id__in=user_ids,
                                    kind="member").values_list("user_id", "conversation_id")
    if not rows:
        return
    await Participant.filter(conversation_id__in=conversation_ids, user_id__in=user_ids,
                             kind="member").delete()
    removed: dict[str, list[str]] = {}
    for uid, cid in rows:
        removed.setdefault(uid, []).append(cid)
    for uid, cids in removed.items():
        svc.hub.publish(user_topic(uid), {"type": "conversation_removed",
                                          "conversation_ids": cids})


async def reconnect(svc: Services, user_id: str, reason: str) -> None:
    sessions = await ApiToken.filter(user_id=user_id, revoked_at__isnull=True
                                     ).values_list("id", flat=True)
    for session_id in sessions:
        svc.hub.publish(session_topic(session_id), {"type": "close", "code": 4008,
                                                    "reason": reason})


async def joined_team(svc: Services, team_id: str, user_id: str) -> None:
    numbers = list(await PhoneNumber.filter(team_id=team_id).values_list("id", flat=True))
    await grant(svc, [user_id], await _patient_conversations(numbers))


async def left_team(svc: Services, team_id: str, user_id: str) -> None:
    numbers = list(await PhoneNumber.filter(team_id=team_id).values_list("id", flat=True))
    await revoke(svc, [user_id], await _patient_conversations(numbers))


async def number_moved(svc: Services, number_id: str, old_team: str, new_team: str) -> None:
    conversations = await _patient_conversations([number_id])
    old, new = set(await team_member_ids(old_team)), set(await team_member_ids(new_team))
    await revoke(svc, sorted(old - new), conversations)
    await grant(svc, sorted(new - old), conversations)


class PatientSendGate:
    """The send path's plan check for patient conversations, without a query per send:
    a conversation's org and kind never change (cached, bounded), an organisation's
    plan is re-read after `ttl` seconds."""

    def __init__(self, ttl: float = 10.0, size: int = 100_000) -> None:
        self._ttl = ttl
        self._size = size
        self._kinds: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._plans: dict[str, tuple[bool, float]] = {}

    async def check(self, conversation_id: str) -> bool:
        """402 for a patient conversation the plan does not allow; True when it is one."""
        known = self._kinds.get(conversation_id)
        if known is None:
            row = await Conversation.filter(id=conversation_id).values_list("org_id", "kind")
            if not row:
                return False  # the send path answers not_found
            known = self._kinds[conversation_id] = (row[0][0], row[0][1])
            if len(self._kinds) > self._size:
                self._kinds.popitem(last=False)
        org_id, kind = known
        if kind != "patient":
            return False
        allowed, until = self._plans.get(org_id, (False, 0.0))
        if until < time.monotonic():
            org = await Org.get(id=org_id)
            allowed = allows_patients(org)
            self._plans[org_id] = (allowed, time.monotonic() + self._ttl)
        if not allowed:
            raise ApiError("plan_required", PLAN_REQUIRED_MESSAGE)
        return True

    def org_of(self, conversation_id: str) -> str | None:
        """The organisation of a conversation `check` has seen (None otherwise)."""
        known = self._kinds.get(conversation_id)
        return known[0] if known else None


async def admin_joins(actor: Actor, conversation_id: str) -> bool:
    """An admin posting in a patient conversation of their organisation becomes a
    participant first (the send path accepts participants only)."""
    if not actor.is_admin:
        return False
    conversation = await Conversation.get_or_none(id=conversation_id, org_id=actor.org_id,
                                                  kind="patient")
    if conversation is None:
        return False
    async with in_transaction():
        exists = await Participant.exists(conversation_id=conversation_id, user_id=actor.id)
        if not exists:
            await Participant.create(conversation_id=conversation_id, user_id=actor.id,
                                     kind="member", joined_at=utcnow())
    return not exists
