"""How stored objects are shown to clients (the contract's object shapes)."""

from __future__ import annotations

from typing import Any

from server.ids import iso
from storage.models import Conversation, Event, Org, Participant, User
from storage.queries import EVENT_COLUMNS


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "org_id": user.org_id,  # type: ignore[attr-defined]
        "kind": user.kind,
        "role": user.role,
        "name": user.name,
        "email": user.email,
        "created_at": iso(user.created_at),
    }


def org_view(org: Org, plan: str, seats_used: int, seat_limit: int | None) -> dict[str, Any]:
    """`plan` is the plan in force (an expired trial is `free`)."""
    return {
        "id": org.id,
        "name": org.name,
        "plan": plan,
        "trial_ends_at": iso(org.trial_ends_at),
        "seats": {"used": seats_used, "limit": seat_limit},
        "policies": org.policies or {},
    }


def participant_view(participant: Participant, user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "kind": participant.kind,
        "name": user.name,
        "read_seq": participant.read_seq,
    }


def conversation_view(
    conversation: Conversation,
    participants: list[dict[str, Any]],
    read_seq: int,
    *,
    org_name: str,
    invitees: list[dict[str, Any]],
) -> dict[str, Any]:
    """`org_name` names the host organisation (for externals and the client's switch);
    `invitees` are outside addresses invited but not joined yet."""
    return {
        "id": conversation.id,
        "org_id": conversation.org_id,  # type: ignore[attr-defined]
        "org_name": org_name,
        "kind": conversation.kind,
        "subject": conversation.subject,
        "participants": participants,
        "invitees": invitees,
        "phone_number_id": conversation.phone_number_id,
        "channel": conversation.channel,
        "last_seq": conversation.last_seq,
        "read_seq": read_seq,
        "created_at": iso(conversation.created_at),
    }


def event_view(event: Event) -> dict[str, Any]:
    return event_row_view({column: getattr(event, column) for column in EVENT_COLUMNS})


def event_row_view(row: dict[str, Any]) -> dict[str, Any]:
    """An event as clients see it, from its stored columns. A recalled message shows no
    content (admins read the original through the audited admin route)."""
    view: dict[str, Any] = {
        "id": row["id"],
        "conversation_id": row["conversation_id"],
        "seq": row["seq"],
        "kind": row["kind"],
        "sender": (
            {"id": row["sender_id"], "name": row["sender_name"], "kind": row["sender_kind"]}
            if row["sender_id"]
            else None
        ),
        "body": row["body"],
        "attachments": row["attachments"] or [],
        "client_id": row["client_id"],
        "created_at": iso(row["created_at"]),
    }
    if row["kind"] == "message":
        view["recalled"] = bool(row["recalled"])
        if row["recalled"]:
            view["body"] = None
            view["attachments"] = []
        elif row["body"] is None:  # emptied by the organisation's retention policy
            view["expired"] = True
    if row["target_id"]:
        view["target_id"] = row["target_id"]
    return view
