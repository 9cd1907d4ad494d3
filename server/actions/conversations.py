"""Conversations: creating, listing, reading the timeline, receipts, typing, sync."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tortoise.expressions import Q, Subquery
from tortoise.transactions import in_transaction

from realtime.hub import conversation_topic, user_topic
from server.actions import access, audit, delivery, externals, phone_numbers
from server.actions import patients as patients_actions
from server.actions.context import Actor, Services
from server.actions.orgs import allows_patients, require_patient_plan
from server.actions.views import conversation_view, event_view, participant_view
from server.errors import ApiError, invalid, not_found
from server.ids import iso, new_id, utcnow
from storage import db, queries
from storage.models import Conversation, Event, Org, Participant, PhoneNumber, User

SYNC_LIMIT = 1000  # events per conversation per `sync` call (the contract's bound)


async def membership(actor: Actor, conversation_id: str) -> Participant:
    """The caller's place in a conversation; 404 when they are not in it (or it is
    elsewhere), 402 for a patient conversation the plan no longer allows."""
    _, participant = await access.conversation_access(actor, conversation_id)
    if participant is None:
        raise not_found("conversation")
    return participant


async def _resolve_targets(actor: Actor, targets: list[dict[str, Any]]) -> externals.Targets:
    user_ids: list[str] = []
    emails: list[str] = []
    for i, target in enumerate(targets):
        if "user_id" in target and isinstance(target["user_id"], str):
            user_ids.append(target["user_id"])
        elif "email" in target and isinstance(target["email"], str):
            emails.append(target["email"].strip().lower())
        elif "patient_id" in target or "patient" in target:
            continue  # create_conversation takes the patient
        else:
            raise invalid("each target names a user_id or an email", **{f"to[{i}]": "unknown"})
    result = externals.Targets()
    outsiders: list[User] = []
    if user_ids:
        found = await User.filter(id__in=user_ids, active=True, kind__in=("member", "bot"))
        own = [u for u in found if u.org_id == actor.org_id]  # type: ignore[attr-defined]
        others = [u for u in found if u.org_id != actor.org_id and u.kind == "member"]  # type: ignore[attr-defined]
        known = await externals.known_to_org(actor.org_id, [u.id for u in others])
        outsiders = [u for u in others if u.id in known]
        missing = set(user_ids) - {u.id for u in own} - {u.id for u in outsiders}
        if missing:
            # Strangers of other organisations are not revealed: same answer as unknown ids.
            raise ApiError("not_found", "user not found", {"user_ids": sorted(missing)})
        result.users.extend(own)
    if emails:
        found = {u.email: u for u in await User.filter(email__in=emails)}
        strangers: list[User] = []
        for email in dict.fromkeys(emails):
            user = found.get(email)
            if user is not None and user.org_id == actor.org_id:  # type: ignore[attr-defined]
                if not user.active or user.kind != "member":
                    raise invalid("this member is deactivated", to="deactivated member")
                result.users.append(user)
            elif user is not None and user.active and user.kind == "member":
                strangers.append(user)
            else:
                result.new_emails.append(email)
        known = await externals.known_to_org(actor.org_id, [u.id for u in strangers])
        for user in strangers:
            if user.id in known:
                outsiders.append(user)
            else:
                # An account we have never talked to: invited like anyone new, so whether
                # an address has an account is never revealed to the caller.
                result.new_emails.append(user.email or "")
    await externals.check_outside_allowed(actor, outsiders, result.new_emails)
    result.users.extend(outsiders)
    return result


def participant_kind(user: User, org_id: str) -> str:
    """How a user takes part in a conversation of `org_id`."""
    if user.org_id != org_id:  # type: ignore[attr-defined]
        return "external"
    return user.kind


def _patient_targets(to: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in to if "patient_id" in t or "patient" in t]


async def create_conversation(
    svc: Services, actor: Actor, *, to: list[dict[str, Any]], subject: str | None,
    phone_number_id: str | None = None, channel: str | None = None,
) -> dict[str, Any]:
    if actor.user.kind not in ("member", "bot"):
        raise ApiError("forbidden", "only members of an organisation may start conversations")
    if not to:
        raise invalid("name at least one participant", to="empty")
    if _patient_targets(to):
        return await _create_patient_conversation(svc, actor, to=to, subject=subject,
                                                  phone_number_id=phone_number_id,
                                                  channel=channel)
    if phone_number_id is not None or channel is not None:
        raise invalid("phone_number_id and channel are for conversations with a patient",
                      **{k: "only with a patient target" for k, v in
                         (("phone_number_id", phone_number_id), ("channel", channel)) if v})
    targets = await _resolve_targets(actor, to)
    people: dict[str, User] = {actor.id: actor.user}
    for user in targets.users:
        people.setdefault(user.id, user)
    now = utcnow()
    links: dict[str, str | None] = {}
    async with in_transaction():
        org = await Org.get(id=actor.org_id)
        conversation = await Conversation.create(
            id=new_id("cv"),
            org_id=actor.org_id,
            kind="internal",
            subject=(subject or "").strip() or None,
            created_by_id=actor.id,
            created_at=now,
            updated_at=now,
        )
        participants = [
            Participant(conversation=conversation, user_id=user.id,
                        kind=participant_kind(user, actor.org_id), joined_at=now)
            for user in people.values()
        ]
        await Participant.bulk_create(participants)
        if targets.new_emails:
            links = await externals.hold_invitations(
                svc.settings.public_url, svc.settings.secret_key, actor, org, conversation.id,
                targets.new_emails,
            )
    views = [participant_view(p, people[p.user_id]) for p in participants]  # type: ignore[attr-defined]
    invited = [{"email": e, "kind": "external", "invited": False} for e in targets.new_emails]
    frame_view = conversation_view(conversation, views, 0, org_name=org.name, invitees=invited)
    for user in people.values():
        svc.hub.publish(user_topic(user.id), {"type": "conversation", "conversation": frame_view})
    if svc.settings.smtp_url:
        return frame_view
    # No mail server: the creator passes the links on (never in the frames to others).
    mine = [{**i, "link": links.get(i["email"])} for i in invited]
    return {**frame_view, "invitees": mine}


CHANNELS = ("secure_sms", "sms", "secure_email")


async def _create_patient_conversation(
    svc: Services, actor: Actor, *, to: list[dict[str, Any]], subject: str | None,
    phone_number_id: str | None, channel: str | None,
) -> dict[str, Any]:
    """One patient, on a number of the caller's team: the patient, the creator and the
    number's team are its participants."""
    await require_patient_plan(actor)
    patients = _patient_targets(to)
    bad: dict[str, str] = {}
    if len(patients) != 1:
        bad["to"] = "exactly one patient per conversation"
    if len(to) != len(patients):
        bad["to"] = "a patient conversation names only the patient (the team is added)"
    if not phone_number_id:
        bad["phone_number_id"] = "required for a patient conversation"
    channel = channel or "secure_sms"
    if channel not in CHANNELS:
        bad["channel"] = "secure_sms, sms or secure_email"
    if bad:
        raise ApiError("invalid", "invalid patient conversation", {"fields": bad})
    assert phone_number_id is not None
    target = patients[0]
    if "patient_id" in target and isinstance(target["patient_id"], str):
        patient = await patients_actions.find(actor, target["patient_id"],
                                              include_archived=False)
    elif isinstance(target.get("patient"), dict):
        patient = await patients_actions.find_or_create(svc, actor, target["patient"])
    else:
        raise invalid("a patient target is {patient_id} or {patient: {...}}", to="patient")
    number = await phone_numbers.number_for_conversation(actor, phone_number_id)
    delivery.require_reachable(channel, patient.phone, patient.email)
    team = await access.team_member_ids(number.team_id)  # type: ignore[attr-defined]
    _, view = await open_patient_conversation(
        svc, org_id=actor.org_id, number_id=number.id, patient_id=patient.id,
        staff=[actor.id, *team], channel=channel, subject=subject, created_by=actor.id)
    return view


async def open_patient_conversation(
    svc: Services, *, org_id: str, number_id: str, patient_id: str, staff: list[str],
    channel: str, subject: str | None = None, created_by: str | None = None,
) -> tuple[Conversation, dict[str, Any]]:
    """A new patient conversation on a number: the patient and `staff` (the number's team,
    and whoever started it) as participants, each told with a `conversation` frame. The
    one way one is made, by staff or by an inbound SMS; (the row, the staff's view)."""
    staff = list(dict.fromkeys(staff))
    now = utcnow()
    async with in_transaction():
        conversation = await Conversation.create(
            id=new_id("cv"), org_id=org_id, kind="patient",
            subject=(subject or "").strip() or None, phone_number_id=number_id,
            channel=channel, created_by_id=created_by, created_at=now, updated_at=now,
        )
        await Participant.bulk_create(
            [Participant(conversation=conversation, user_id=patient_id, kind="patient",
                         joined_at=now)]
            + [Participant(conversation=conversation, user_id=uid, kind="member",
                           joined_at=now) for uid in staff]
        )
    # New: every staff member's view is the same (nothing read yet), so one is built.
    view: dict[str, Any] = {}
    if staff:
        (view,) = await conversation_views([conversation.id], viewer_id=staff[0])
    for uid in staff:
        svc.hub.publish(user_topic(uid), {"type": "conversation",
                                          "conversation": {**view, "read_seq": 0}})
    return conversation, view


async def update_conversation(
    svc: Services, actor: Actor, conversation_id: str, *, subject: str | None,
    channel: str | None, named: set[str],
) -> dict[str, Any]:
    """Rename a conversation (its staff), or switch a patient conversation's channel:
    the patient must have what the channel needs. Its staff get a `conversation` frame."""
    if actor.user.kind not in ("member", "bot"):
        raise not_found("conversation")
    conversation, _ = await access.conversation_access(actor, conversation_id)
    changes: dict[str, Any] = {}
    if "subject" in named:
        changes["subject"] = (subject or "").strip() or None
    if "channel" in named:
        if conversation.kind != "patient":
            raise invalid("channel is for conversations with a patient",
                          channel="only in a patient conversation")
        if channel is None:
            raise invalid("channel is secure_sms, sms or secure_email",
                          channel="secure_sms, sms or secure_email")
        contact = await queries.patient_contact(db.connection(), conversation.id)
        if contact is not None:
            delivery.require_reachable(channel, contact["phone"], contact["email"])
        changes["channel"] = channel
    if changes:
        await Conversation.filter(id=conversation.id).update(**changes, updated_at=utcnow())
        if svc.contacts is not None:
            svc.contacts.forget(conversation.id)
    staff = await Participant.filter(conversation_id=conversation.id).exclude(
        kind="patient").values_list("user_id", flat=True)
    for uid in staff:
        (view,) = await conversation_views([conversation.id], viewer_id=uid)
        svc.hub.publish(user_topic(uid), {"type": "conversation", "conversation": view})
    return (await conversation_views([conversation.id], viewer_id=actor.id))[0]


async def conversation_views(ids: list[str], *, viewer_id: str) -> list[dict[str, Any]]:
    """Conversations as `viewer_id` sees them (their own read_seq), in the order given."""
    rows = {c.id: c for c in await Conversation.filter(id__in=ids)}
    return await _views([rows[i] for i in ids if i in rows], viewer_id)


async def _views(conversations: list[Conversation], viewer_id: str) -> list[dict[str, Any]]:
    if not conversations:
        return []
    ids = [c.id for c in conversations]
    rows = await Participant.filter(conversation_id__in=ids).select_related("user")
    pending = await externals.invitees(ids)
    org_names = dict(await Org.filter(
        id__in=list({c.org_id for c in conversations})  # type: ignore[attr-defined]
    ).values_list("id", "name"))
    by_conversation: dict[str, list[Participant]] = {}
    for row in rows:
        by_conversation.setdefault(row.conversation_id, []).append(row)  # type: ignore[attr-defined]
    views = []
    for conversation in conversations:
        members = by_conversation.get(conversation.id, [])
        mine = next((p.read_seq for p in members if p.user_id == viewer_id), 0)  # type: ignore[attr-defined]
        views.append(conversation_view(
            conversation, [participant_view(p, p.user) for p in members], mine,
            org_name=org_names.get(conversation.org_id, ""),  # type: ignore[attr-defined]
            invitees=pending.get(conversation.id, []),
        ))
    return views


async def list_conversations(
    svc: Services,
    actor: Actor,
    *,
    kind: str | None,
    after: tuple[str, str] | None,
    limit: int,
    team_id: str | None = None,
    phone_number_id: str | None = None,
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """The caller's inbox, most recently active first; keyset-paginated on (updated_at, id).

    Admins also see every patient conversation of their organisation. `team_id` and
    `phone_number_id` narrow it to patient conversations on those numbers (402 when the
    plan has no patients); without them, patient conversations the plan no longer
    allows are left out (they are kept, and back on upgrade)."""
    if kind and kind not in ("internal", "patient"):
        raise invalid("kind is internal or patient", kind="internal or patient")
    wants_patients = kind == "patient" or team_id is not None or phone_number_id is not None
    org = await Org.get(id=actor.org_id)
    patients_allowed = allows_patients(org)
    if wants_patients and not patients_allowed:
        await require_patient_plan(actor)  # raises, with the message
    mine = Participant.filter(user_id=actor.id).values("conversation_id")
    if actor.is_admin and patients_allowed:
        query = Conversation.filter(
            Q(id__in=Subquery(mine)) | Q(org_id=actor.org_id, kind="patient"))
    else:
        query = Conversation.filter(id__in=Subquery(mine))
    if not patients_allowed:
        # An external's host may allow patients while theirs does not: the plan that
        # counts is the conversation's organisation's; only the caller's own is gated here.
        query = query.filter(~Q(kind="patient", org_id=actor.org_id))
    if kind:
        query = query.filter(kind=kind)
    if team_id is not None:
        numbers = PhoneNumber.filter(team_id=team_id, org_id=actor.org_id).values("id")
        query = query.filter(kind="patient", phone_number_id__in=Subquery(numbers))
    if phone_number_id is not None:
        query = query.filter(kind="patient", phone_number_id=phone_number_id)
    if after is not None:
        moment, last_id = after
        try:
            when = datetime.fromisoformat(moment)
        except ValueError:
            raise invalid("malformed cursor", cursor="malformed") from None
        query = query.filter(Q(updated_at__lt=when) | Q(updated_at=when, id__lt=last_id))
    rows = await query.order_by("-updated_at", "-id").limit(limit + 1)
    page = rows[:limit]
    next_key = (page[-1].updated_at.isoformat(), page[-1].id) if len(rows) > limit else None
    return await _views(page, actor.id), next_key


async def get_conversation(svc: Services, actor: Actor, conversation_id: str) -> dict[str, Any]:
    conversation, _ = await access.conversation_access(actor, conversation_id)
    return (await _views([conversation], actor.id))[0]


async def read_events(conversation_id: str, after: int, limit: int, *,
                      patient: bool = False) -> list[dict[str, Any]]:
    """Stored events after `after`; in a patient conversation (`patient`), staff messages
    carry their `deliveries` to the patient."""
    events = (
        await Event.filter(conversation_id=conversation_id, seq__gt=after)
        .order_by("seq")
        .limit(limit)
    )
    views = [event_view(e) for e in events]
    if patient:
        staff = [v for v in views if v["kind"] == "message" and v["sender"]
                 and v["sender"]["kind"] != "patient"]
        found = await delivery.deliveries_of(conversation_id, [v["id"] for v in staff])
        for view in staff:
            view["deliveries"] = found.get(view["id"], [])
    return views


async def read_gap(conversation_id: str, after: int, before: int) -> list[dict[str, Any]]:
    """For the hub: the stored events strictly between two seqs."""
    return await read_events(conversation_id, after, max(0, before - after - 1))


async def list_events(
    svc: Services, actor: Actor, conversation_id: str, *, after: int, limit: int
) -> dict[str, Any]:
    conversation, _ = await access.conversation_access(actor, conversation_id)
    events = await read_events(conversation_id, after, limit,
                               patient=conversation.kind == "patient")
    if conversation.kind == "patient" and events:
        await _audit_read(svc, actor, conversation, "conversation.read", len(events))
    last_seq = await Conversation.filter(id=conversation_id).values_list("last_seq", flat=True)
    return {"events": events, "last_seq": last_seq[0] if last_seq else 0}


async def mark_read(svc: Services, actor: Actor, conversation_id: str, seq: int) -> None:
    """Move the caller's read position forward; an old or repeated receipt changes nothing."""
    participant = await membership(actor, conversation_id)
    if seq < 0:
        raise invalid("seq must be at least 0", seq=">= 0")
    await store_receipt(svc, participant, actor.user.name, seq)


async def store_receipt(svc: Services, participant: Participant, name: str, seq: int) -> None:
    """Move a participant's read position forward to `seq` (at most the last event) and
    tell the others with a `receipt`; an old or repeated receipt changes nothing."""
    conversation_id: str = participant.conversation_id  # type: ignore[attr-defined]
    user_id: str = participant.user_id  # type: ignore[attr-defined]
    last_seq = (
        await Conversation.filter(id=conversation_id).values_list("last_seq", flat=True)
    )[0]
    seq = min(seq, last_seq)
    if seq <= participant.read_seq:
        return
    now = utcnow()
    moved = await Participant.filter(id=participant.id, read_seq__lt=seq).update(
        read_seq=seq, read_at=now
    )
    if not moved:
        return
    svc.hub.publish(
        conversation_topic(conversation_id),
        {
            "type": "receipt",
            "conversation_id": conversation_id,
            "participant": {"id": user_id, "kind": participant.kind, "name": name},
            "seq": seq,
            "at": iso(now),
        },
        skip_user=user_id,
    )


async def typing(svc: Services, actor: Actor, conversation_id: str) -> None:
    await membership(actor, conversation_id)
    svc.hub.publish(
        conversation_topic(conversation_id),
        {"type": "typing", "conversation_id": conversation_id, "user_id": actor.id},
        skip_user=actor.id,
    )


async def sync(
    svc: Services, actor: Actor, since: dict[str, int]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Missed events per conversation (at most SYNC_LIMIT each) and those that have more."""
    if len(since) > 1000:
        raise invalid("sync at most 1000 conversations per call", since="too many")
    allowed = set(
        await Participant.filter(
            user_id=actor.id, conversation_id__in=list(since)
        ).values_list("conversation_id", flat=True)
    )
    unknown = [cid for cid in since if cid not in allowed]
    if unknown:
        raise ApiError("not_found", "conversation not found", {"conversation_ids": unknown})
    events: list[dict[str, Any]] = []
    more: list[str] = []
    patient = set(await Conversation.filter(id__in=list(since), kind="patient")
                  .values_list("id", flat=True))
    for conversation_id, seq in since.items():
        batch = await read_events(conversation_id, seq, SYNC_LIMIT + 1,
                                  patient=conversation_id in patient)
        if len(batch) > SYNC_LIMIT:
            more.append(conversation_id)
            batch = batch[:SYNC_LIMIT]
        events.extend(batch)
        if batch and conversation_id in patient:
            conversation = await Conversation.get(id=conversation_id)
            await _audit_read(svc, actor, conversation, "conversation.sync", len(batch))
    return events, more


async def _audit_read(svc: Services, actor: Actor, conversation: Conversation, action: str,
                      events: int) -> None:
    """A read of a patient conversation's messages (PHI) goes into the trail."""
    org_id: str = conversation.org_id  # type: ignore[attr-defined]
    svc.audit.note(audit.Entry(org_id=org_id, action=action, **audit.by(actor, org_id),
                               target_kind="conversation", target_id=conversation.id,
                               patient_id=await audit.patient_in(conversation.id),
                               details={"events": events}))


async def ready_snapshot(actor: Actor) -> list[dict[str, Any]]:
    """Every conversation of the caller with its newest seq and the caller's read seq."""
    rows = await Participant.filter(user_id=actor.id).values(
        "conversation_id", "read_seq", "conversation__last_seq"
    )
    return [
        {
            "id": row["conversation_id"],
            "last_seq": row["conversation__last_seq"],
            "read_seq": row["read_seq"],
        }
        for row in rows
    ]
