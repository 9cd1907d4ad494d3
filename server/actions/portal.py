"""The patient portal: what a secure link opens, without an app or a password.

A link (portal_links.py) opens one conversation for one patient. With a DOB on file the
patient confirms it first; five wrong answers lock the link for 30 minutes and tell the
team. A good answer (or none needed) starts a portal session: a cookie holding a secret
whose keyed hash is stored, ending after 15 idle minutes or 12 hours in all. The page
shows the conversation; showing it records the patient's receipt (the patient-viewed
mark); the patient replies by form. A page script may ask a one-time ticket (60 s) to
follow the conversation live over `/ws`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from realtime.hub import conversation_topic
from server.actions import audit, conversations, files, messages, portal_links
from server.actions.context import Actor, Services
from server.auth import hash_secret, new_secret
from server.errors import ApiError
from server.ids import new_id, utcnow
from server.uploads import Upload
from storage.models import (
    Conversation,
    Event,
    Org,
    Participant,
    Patient,
    PortalLink,
    PortalSession,
    PortalTicket,
    User,
)

log = logging.getLogger("bloomtext.portal")

MAX_DOB_FAILURES = 5
LOCK = timedelta(minutes=30)
IDLE = timedelta(minutes=15)
ABSOLUTE = timedelta(hours=12)
TICKET_TTL = timedelta(seconds=60)
PAGE_EVENTS = 200  # the most recent events a page shows


class LinkLocked(Exception):
    """Too many wrong DOBs: the link rests until `until`."""


@dataclass
class Opened:
    """What a link shows: the DOB question, or the conversation (with a session)."""

    link: PortalLink
    needs_dob: bool
    session_token: str | None = None  # set when a session was just started


@dataclass
class PortalView:
    org_name: str
    patient_name: str
    subject: str | None
    conversation_id: str
    events: list[dict[str, Any]]
    last_seq: int


async def _usable_link(svc: Services, token: str) -> PortalLink | None:
    """The link a token opens (None: unknown, expired, revoked); LinkLocked while it rests."""
    link = await portal_links.live_link(svc.settings, token)
    if link is not None and link.locked_until is not None and link.locked_until > utcnow():
        raise LinkLocked()
    return link


def _live(session: PortalSession | None) -> bool:
    now = utcnow()
    return (session is not None and session.ended_at is None and session.expires_at > now
            and session.last_seen_at + IDLE > now)


async def open_link(svc: Services, token: str, session_token: str | None) -> Opened | None:
    """None for an unknown, expired or revoked link (the caller shows the same 404)."""
    link = await _usable_link(svc, token)
    if link is None:
        return None
    if await session_for(svc, session_token, link=link) is not None:
        return Opened(link, needs_dob=False)
    patient = await Patient.get(id=link.patient_id)
    if patient.dob is not None:
        return Opened(link, needs_dob=True)
    return Opened(link, needs_dob=False, session_token=await _start_session(svc, link))


async def check_dob(svc: Services, token: str, answer: str) -> Opened | None:
    """The patient's answer to the DOB question: a session, or the question again (with
    the failure counted). None like `open_link`."""
    link = await _usable_link(svc, token)
    if link is None:
        return None
    now = utcnow()
    patient = await Patient.get(id=link.patient_id)
    try:
        given = date.fromisoformat(answer.strip())
    except ValueError:
        given = None
    if patient.dob is None or given == patient.dob:
        await PortalLink.filter(id=link.id).update(failed_checks=0, locked_until=None)
        return Opened(link, needs_dob=False, session_token=await _start_session(svc, link))
    failures = link.failed_checks + 1
    if failures >= MAX_DOB_FAILURES:
        await PortalLink.filter(id=link.id).update(failed_checks=0, locked_until=now + LOCK)
        await _tell_team_locked(svc, link)
        raise LinkLocked()
    await PortalLink.filter(id=link.id).update(failed_checks=failures)
    return Opened(link, needs_dob=True)


async def _tell_team_locked(svc: Services, link: PortalLink) -> None:
    """Staff in the conversation learn that its secure link is locked (no PHI)."""
    log.warning("portal link %s locked after %d wrong DOBs", link.id, MAX_DOB_FAILURES)
    svc.hub.publish(conversation_topic(link.conversation_id), {
        "type": "portal_locked", "conversation_id": link.conversation_id,
        "patient_id": link.patient_id, "until": (utcnow() + LOCK).isoformat()})


async def _start_session(svc: Services, link: PortalLink) -> str:
    token = new_secret("ps")
    now = utcnow()
    await PortalSession.create(
        id=new_id("ps"), token_hash=hash_secret(token, svc.settings.secret_key),
        link_id=link.id, org_id=link.org_id, patient_id=link.patient_id,
        conversation_id=link.conversation_id, created_at=now, last_seen_at=now,
        expires_at=now + ABSOLUTE)
    return token


async def session_for(svc: Services, token: str | None, *, link: PortalLink | None = None
                      ) -> PortalSession | None:
    """The live session a cookie holds (for `link`'s conversation when given); its idle
    clock restarts."""
    if not token or not token.startswith("ps_") or len(token) > 100:
        return None
    session = await PortalSession.get_or_none(
        token_hash=hash_secret(token, svc.settings.secret_key))
    if session is None or not _live(session):
        return None
    if link is not None and (session.conversation_id != link.conversation_id
                             or session.patient_id != link.patient_id):
        return None
    await PortalSession.filter(id=session.id).update(last_seen_at=utcnow())
    return session


async def view(svc: Services, session: PortalSession) -> PortalView:
    """The conversation as the patient sees it; records their receipt for what it shows."""
    conversation = await Conversation.get(id=session.conversation_id)
    org = await Org.get(id=session.org_id)
    patient_user = await User.get(id=session.patient_id)
    events = await Event.filter(conversation_id=conversation.id).order_by("-seq").limit(
        PAGE_EVENTS)
    shown = [_portal_event(e) for e in reversed(events) if e.kind == "message"]
    participant = await Participant.get_or_none(conversation_id=conversation.id,
                                                user_id=session.patient_id)
    if participant is not None and events:
        await conversations.store_receipt(svc, participant, patient_user.name, events[0].seq)
    svc.audit.note(audit.Entry(
        org_id=session.org_id, action="portal.view", actor_id=session.patient_id,
        actor_kind="patient", target_kind="conversation", target_id=conversation.id,
        patient_id=session.patient_id, details={"events": len(shown)}))
    return PortalView(org.name, patient_user.name, conversation.subject, conversation.id,
                      shown, conversation.last_seq)


def _portal_event(e: Event) -> dict[str, Any]:
    return {"id": e.id, "seq": e.seq, "from_patient": e.sender_kind == "patient",
            "sender": e.sender_name or "", "body": None if e.recalled else e.body,
            "attachments": [] if e.recalled else (e.attachments or []),
            "recalled": e.recalled, "at": e.created_at}


async def reply(svc: Services, session: PortalSession, body: str, client_id: str) -> None:
    """The patient's answer, through the send path (a repeated form post is stored once)."""
    user = await User.get(id=session.patient_id)
    actor = Actor(user=user, session_id=session.id)
    await messages.send_message(svc, actor, session.conversation_id, client_id=client_id,
                                body=body)


async def send_file(svc: Services, session: PortalSession,
                    receive: Callable[[], Awaitable[Upload]]) -> None:
    """A file from the patient, like a staff upload (size and type checked)."""
    user = await User.get(id=session.patient_id)
    actor = Actor(user=user, session_id=session.id)
    await files.send_file(svc, actor, session.conversation_id, receive)


async def end_session(svc: Services, token: str | None) -> None:
    if token and token.startswith("ps_"):
        await PortalSession.filter(token_hash=hash_secret(token, svc.settings.secret_key)
                                   ).update(ended_at=utcnow())


async def new_ticket(svc: Services, session: PortalSession) -> str:
    ticket = new_secret("pt")
    await PortalTicket.create(token_hash=hash_secret(ticket, svc.settings.secret_key),
                              session_id=session.id, expires_at=utcnow() + TICKET_TTL)
    return ticket


async def redeem_ticket(svc: Services, ticket: str) -> PortalSession | None:
    """The session a one-time ticket was issued for; None if unknown, used or expired."""
    if not ticket.startswith("pt_") or len(ticket) > 100:
        return None
    key = hash_secret(ticket, svc.settings.secret_key)
    now = utcnow()
    used = await PortalTicket.filter(token_hash=key, used_at__isnull=True,
                                     expires_at__gt=now).update(used_at=now)
    if not used:
        return None
    row = await PortalTicket.get(token_hash=key)
    session = await PortalSession.get_or_none(id=row.session_id)
    return session if _live(session) else None


def unauthenticated() -> ApiError:
    return ApiError("unauthenticated", "no portal session: open your secure link again")


async def socket_actor(svc: Services, ticket: str) -> tuple[Actor, str] | None:
    """A `/ws` auth with a ticket: the patient as an actor, and their one conversation."""
    session = await redeem_ticket(svc, ticket)
    if session is None:
        return None
    user = await User.get(id=session.patient_id)
    return Actor(user=user, session_id=session.id), session.conversation_id


async def session_alive(svc: Services, session_id: str) -> float | None:
    """When a portal socket's session ends (epoch seconds), or None if it has ended."""
    session = await PortalSession.get_or_none(id=session_id)
    if session is None or not _live(session):
        return None
    return min(session.expires_at, session.last_seen_at + IDLE).timestamp()


async def org_view(actor: Actor) -> dict[str, Any]:
    """The organisation as a patient's socket sees it: its name only."""
    org = await Org.get(id=actor.org_id)
    return {"id": org.id, "name": org.name}


async def touch_session(session_id: str) -> None:
    """Activity on the portal's socket restarts the session's idle clock."""
    await PortalSession.filter(id=session_id, ended_at__isnull=True).update(
        last_seen_at=utcnow())
