"""How stored objects are shown to clients (the contract's object shapes)."""

from __future__ import annotations

from typing import Any

from server.ids import iso
from storage.models import Conversation, Event, Org, Participant, User


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


def org_view(org: Org, seats_used: int) -> dict[str, Any]:
    return {
        "id": org.id,
        "name": org.name,
        "plan": org.plan,
        "trial_ends_at": iso(org.trial_ends_at),
        "seats": {"used": seats_used, "limit": None},
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
) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "org_id": conversation.org_id,  # type: ignore[attr-defined]
        "kind": conversation.kind,
        "subject": conversation.subject,
        "participants": participants,
        "phone_number_id": conversation.phone_number_id,
        "channel": conversation.channel,
        "last_seq": conversation.last_seq,
        "read_seq": read_seq,
        "created_at": iso(conversation.created_at),
    }


def event_view(event: Event) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": event.id,
        "conversation_id": event.conversation_id,  # type: ignore[attr-defined]
        "seq": event.seq,
        "kind": event.kind,
        "sender": (
            {"id": event.sender_id, "name": event.sender_name, "kind": event.sender_kind}  # type: ignore[attr-defined]
            if event.sender_id  # type: ignore[attr-defined]
            else None
        ),
        "body": event.body,
        "attachments": event.attachments or [],
        "client_id": event.client_id,
        "created_at": iso(event.created_at),
    }
    if event.kind == "message":
        view["recalled"] = event.recalled
        if event.recalled:
            view["body"] = None
            view["attachments"] = []
    if event.target_id:
        view["target_id"] = event.target_id
    return view
