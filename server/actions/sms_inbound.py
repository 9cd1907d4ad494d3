"""What Twilio posts to us: inbound SMS to a clinic's number, and status callbacks.

An inbound SMS is a `message` event from the patient, stored by the send path's statement
with Twilio's MessageSid as its client_id, so a redelivery is stored once. It lands in the
patient's open conversation on that number (their most recent one), or a new one in that
team's inbox; a phone no patient of the organisation has becomes a new patient marked
unverified. STOP and Twilio's other opt-out words opt the phone out of SMS from that
number, START and its synonyms opt back in, HELP is answered. The webhook answers only
after what it carries is stored: an MMS's media are fetched from Twilio first and kept as
the message's attachments (those that cannot be kept are named in the message's text).
"""

from __future__ import annotations

import asyncio
import logging
from html import escape
from typing import Any

from tortoise.transactions import in_transaction

from channels.twilio import TelephonyError
from realtime.hub import conversation_topic
from server import uploads
from server.actions import access, audit, delivery, files, patients
from server.actions.context import Services
from server.actions.views import event_row_view
from server.errors import ApiError
from server.ids import new_id, utcnow
from storage import db, queries
from storage.blobs import discard
from storage.models import (
    Conversation,
    Event,
    OptOut,
    Org,
    Patient,
    PhoneNumber,
    StoredFile,
    User,
)

log = logging.getLogger("bloomtext.sms")

STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "UNSTOP", "YES"}
HELP_WORDS = {"HELP", "INFO"}
MAX_MEDIA = 10  # Twilio's own limit per MMS
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def twiml_message(text: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?><Response><Message>'
            f"{escape(text)}</Message></Response>")


def keyword(body: str, opt_out_type: str) -> str | None:
    """stop, start, help or None: Twilio's OptOutType when present, else the body."""
    kind = opt_out_type.strip().upper()
    word = body.strip().upper()
    if kind == "STOP" or word in STOP_WORDS:
        return "stop"
    if kind == "START" or word in START_WORDS:
        return "start"
    if kind == "HELP" or word in HELP_WORDS:
        return "help"
    return None


async def receive_sms(svc: Services, form: dict[str, str]) -> str:
    """Store an inbound SMS; the TwiML to answer with."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    to, sender = form.get("To", ""), form.get("From", "")
    body = form.get("Body", "")
    number = await PhoneNumber.get_or_none(number=to)
    if number is None or not sid:
        log.warning("inbound SMS %s to a number this server does not have", sid or "-")
        return EMPTY_TWIML
    try:
        phone = patients.normalise_phone(sender, svc.settings.default_region)
    except ValueError:
        log.warning("inbound SMS %s from an address that is not a phone number", sid)
        return EMPTY_TWIML
    now = utcnow()
    word = keyword(body, form.get("OptOutType", ""))
    org_id: str = number.org_id  # type: ignore[attr-defined]
    if word == "stop":
        await delivery.record_opt_out(number.id, phone, now)
    elif word == "start":
        await OptOut.filter(phone_number_id=number.id, phone=phone).delete()
    if word in ("stop", "start"):  # the phone number itself stays out of the trail
        svc.audit.note(audit.Entry(
            org_id=org_id, action=f"sms.opt_{'out' if word == 'stop' else 'in'}",
            actor_id=None, actor_kind="system", target_kind="phone_number",
            target_id=number.id, details={"via": "twilio webhook"}))
    patient, conversation = await _conversation_for(svc, number, org_id, phone)
    await _store(svc, conversation, patient, sid, body, form)
    if word == "help":
        org = await Org.get(id=org_id)
        return twiml_message(f"{org.name}: you receive messages from your care team. "
                             "Reply STOP to stop texts, START to receive them again.")
    return EMPTY_TWIML


async def _conversation_for(svc: Services, number: PhoneNumber, org_id: str, phone: str
                            ) -> tuple[Patient, Conversation]:
    """The open conversation on this number of a patient with this phone, or a new one
    (and a new, unverified patient when no patient has the phone)."""
    candidates = await Patient.filter(org_id=org_id, phone=phone, archived_at__isnull=True
                                      ).order_by("created_at")
    if candidates:
        by_id = {p.id: p for p in candidates}
        latest = await queries.latest_patient_conversation(db.connection(), number.id,
                                                           list(by_id))
        if latest is not None:
            return by_id[latest[1]], await Conversation.get(id=latest[0])
        patient = candidates[0]
    else:
        async with in_transaction():
            patient = await patients.new_patient(org_id, {"phone": phone}, unverified=True)
    return patient, await _new_conversation(svc, number, org_id, patient)


async def _new_conversation(svc: Services, number: PhoneNumber, org_id: str,
                            patient: Patient) -> Conversation:
    from server.actions.conversations import open_patient_conversation  # a cycle otherwise

    team = await access.team_member_ids(number.team_id)  # type: ignore[attr-defined]
    conversation, _ = await open_patient_conversation(
        svc, org_id=org_id, number_id=number.id, patient_id=patient.id, staff=team,
        channel="secure_sms")
    return conversation


async def _store(svc: Services, conversation: Conversation, patient: Patient, sid: str,
                 body: str, form: dict[str, str]) -> None:
    user = await User.get(id=patient.id)
    if await Event.exists(sender_id=user.id, client_id=sid[:64]):
        return  # a redelivery of a MessageSid already stored: its media are kept already
    kept, missed = await _media(svc, form, conversation, user.id)
    if missed:  # said in the message itself, so staff know to ask for them again
        body = (f"{body}\n\n" if body else "") + (
            f"[{len(missed)} attachment(s) not kept: {'; '.join(missed)}]")
    now = utcnow()
    row: dict[str, Any] = {
        "id": new_id("ev"), "conversation_id": conversation.id, "seq": 0, "kind": "message",
        "sender_id": user.id, "sender_name": user.name, "sender_kind": None,
        "body": (body or ("" if kept else "(empty message)"))[:4000],
        "attachments": [files.attachment_view(f) for f in kept], "client_id": sid[:64],
        "target_id": None, "recalled": False, "created_at": now,
    }
    appended = await queries.append_messages(db.connection(), [row], now)
    stored = appended.stored.get(row["id"])
    if stored is None:  # a redelivery that raced the first: that one keeps the media
        if kept and svc.blobs is not None:
            await files.release(svc.blobs, kept)
        return
    if kept:
        await files.attach(kept, row["id"])
    row["seq"], row["sender_kind"] = stored
    svc.audit.note(audit.Entry(
        org_id=conversation.org_id, action="message.receive_sms",  # type: ignore[attr-defined]
        actor_id=patient.id, actor_kind="patient", target_kind="message",
        target_id=row["id"], patient_id=patient.id,
        details={"conversation_id": conversation.id, "files": len(kept),
                 "files_not_kept": len(missed)}))
    svc.hub.publish(conversation_topic(conversation.id),
                    {"type": "event", "event": event_row_view(row)})


async def _media(svc: Services, form: dict[str, str], conversation: Conversation,
                 sender_id: str) -> tuple[list[StoredFile], list[str]]:
    """An MMS's media (`MediaUrlN`), fetched from Twilio at once and kept as files like
    an upload (size limit, type by content); and why each one that was not kept was not."""
    count = form.get("NumMedia", "0")
    count_n = min(int(count), MAX_MEDIA) if count.isdigit() else 0
    got = await asyncio.gather(*(_one_media(svc, form, conversation, sender_id, i)
                                 for i in range(count_n)))
    return ([f for f in got if isinstance(f, StoredFile)],
            [why for why in got if isinstance(why, str)])


async def _one_media(svc: Services, form: dict[str, str], conversation: Conversation,
                     sender_id: str, index: int) -> StoredFile | str:
    declared = form.get(f"MediaContentType{index}", "")
    if svc.media is None or svc.blobs is None:
        return "Twilio is not configured"
    try:
        upload = await uploads.stage(
            svc.media.chunks(form.get(f"MediaUrl{index}", "")), svc.blobs,
            limit=svc.settings.max_upload_bytes, declared_type=declared,
            name=f"mms-{index + 1}{files.extension_for(declared)}")
    except TelephonyError as exc:
        log.warning("inbound MMS media %d could not be fetched: %s", index, exc.message)
        return "could not be fetched from Twilio"
    except ApiError as exc:  # too large
        return exc.message
    try:
        content_type = files.content_type_of(upload)
    except ApiError:
        discard(upload.staged)
        return f"{declared or 'this type of file'} is not accepted"
    return await files.keep(svc.blobs, upload, org_id=conversation.org_id,  # type: ignore[attr-defined]
                            conversation_id=conversation.id, uploader_id=sender_id,
                            content_type=content_type, source="mms")


async def status_callback(svc: Services, form: dict[str, str]) -> None:
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if sid and status:
        await delivery.apply_status(svc.hub, sid, status, form.get("ErrorCode") or None,
                                    to=form.get("To", ""), from_number=form.get("From", ""),
                                    trail=svc.audit)
