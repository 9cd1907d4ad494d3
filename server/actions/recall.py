"""Taking back a message (and the files it carries): the `recall` event.

The recall event goes through the send path's statement, which marks the message
recalled in the same statement (storage/queries.py, `withdrawn`): from its commit on,
history, `sync`, the portal and file downloads serve no content, on every node (they read
the flag from the database; live clients apply the `recall` event). Secure links that
announced the message stop working. What was already delivered outside (a normal SMS)
cannot be unsent: the client says so before recalling. Admins of the organisation can
still read it (`retrieve`), giving a reason.
"""

from __future__ import annotations

import logging
from typing import Any

from server.actions import audit, messages
from server.actions.context import Actor, Services
from server.actions.views import event_view
from server.errors import ApiError, not_found
from server.ids import utcnow
from storage.models import Conversation, Event, Participant, PortalLink, User

log = logging.getLogger("bloomtext.recall")


def recall_client_id(message_id: str) -> str:
    """The recall event's client_id: a retried recall by the same person is stored once."""
    return f"recall-{message_id}"


async def recall_message(svc: Services, actor: Actor, message_id: str) -> dict[str, Any]:
    """Recall a message: its sender, or an admin of the sender's organisation. 404 for
    anyone who cannot see it, 403 for a participant who may not recall it. The answer is
    the `recall` event (the first one, when it was recalled already)."""
    message = await Event.get_or_none(id=message_id, kind="message")
    if message is None:
        raise not_found("message")
    conversation = await Conversation.get(id=message.conversation_id)
    takes_part = await Participant.exists(conversation_id=conversation.id, user_id=actor.id)
    sender = await User.get_or_none(id=message.sender_id) if message.sender_id else None  # type: ignore[attr-defined]
    sender_org = sender.org_id if sender is not None else conversation.org_id  # type: ignore[attr-defined]
    admin_of_sender = actor.is_admin and sender_org == actor.org_id
    if not takes_part and not (admin_of_sender and conversation.org_id == actor.org_id):  # type: ignore[attr-defined]
        raise not_found("message")
    if message.sender_id != actor.id and not admin_of_sender:  # type: ignore[attr-defined]
        raise ApiError("forbidden", "only the message's sender or an admin of the sender's "
                       "organisation may recall it")
    earlier = await Event.get_or_none(conversation_id=conversation.id, kind="recall",
                                      target_id=message.id)
    if earlier is not None:
        return event_view(earlier)
    # The recall is told by whoever recalled it; an admin outside the conversation
    # recalls in the sender's name (the audit trail says who did it).
    teller = actor.user if takes_part else sender
    if teller is None:
        raise ApiError("conflict", "nobody in this conversation can carry the recall")
    event = await messages.append_event(
        svc, conversation.id, teller, "recall", target_id=message.id,
        client_id=recall_client_id(message.id))
    if event is None:  # a concurrent recall by the same person: theirs stands
        found = await Event.get_or_none(conversation_id=conversation.id, kind="recall",
                                        target_id=message.id)
        if found is None:
            raise not_found("message")
        return event_view(found)
    revoked = await PortalLink.filter(event_id=message.id, revoked_at__isnull=True).update(
        revoked_at=utcnow())
    org_id: str = conversation.org_id  # type: ignore[attr-defined]
    await svc.audit.record(audit.Entry(
        org_id=org_id, action="message.recall", **audit.by(actor, org_id),
        target_kind="message", target_id=message.id,
        patient_id=await audit.patient_in(conversation.id),
        details={"conversation_id": conversation.id, "links_revoked": revoked,
                 "files": len(message.attachments or [])}))
    return event


async def retrieve(svc: Services, actor: Actor, message_id: str, reason: str | None
                   ) -> dict[str, Any]:
    """A message as it was sent, recalled or not, for an admin of the conversation's
    organisation who gives a reason; the read is in the audit trail (with the reason)
    before the content is answered."""
    reason = audit.admin_reason(actor, reason)
    message = await Event.get_or_none(id=message_id, kind="message")
    if message is None:
        raise not_found("message")
    conversation = await Conversation.get(id=message.conversation_id)
    org_id: str = conversation.org_id  # type: ignore[attr-defined]
    if org_id != actor.org_id:
        raise not_found("message")
    await svc.audit.record(audit.Entry(
        org_id=org_id, action="message.retrieve", **audit.by(actor, org_id),
        target_kind="message", target_id=message.id,
        patient_id=await audit.patient_in(conversation.id),
        details={"reason": reason, "recalled": message.recalled}))
    view = event_view(message)
    view["body"], view["attachments"] = message.body, message.attachments or []
    return view
