"""Delivery of patient-conversation messages to the patient, and its state.

The send statement queues one outbox row per staff message in a patient conversation
(storage/queries.py, `notified`). The outbox worker hands such a row to `PatientMessages`:
`prepare` turns it into what to send, by the conversation's channel:

- `sms`: the text itself, from the team's number (staff were warned: no PHI);
- `secure_sms`: only "New secure message from {organisation}: {link}";
- `secure_email`: only the organisation's name and the link, to the patient's email.

and `record` keeps the outcome on the message's `Delivery` (the provider's SID first,
before the outbox row is acknowledged) and tells staff with a `delivery` frame. A secure
SMS refused for good falls back to a secure email when the patient has an email.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tortoise.transactions import in_transaction

from channels.outbox import Outcome
from channels.sender import Outbound, SendResult
from realtime.hub import Hub, conversation_topic
from server.actions import audit, portal_links
from server.config import Settings
from server.errors import ApiError
from server.ids import iso, new_id, utcnow
from storage import db, queries
from storage.models import (
    Conversation,
    Delivery,
    Event,
    OptOut,
    Org,
    OutboxMessage,
    Participant,
    Patient,
    PhoneNumber,
)
from storage.queries import PATIENT_MESSAGE, outbox_id_for

log = logging.getLogger("bloomtext.delivery")

# A status only moves forward: a late or repeated callback never undoes a later one.
RANK = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2, "opted_out": 2}
TWILIO_STATUS = {  # Twilio's MessageStatus -> ours
    "accepted": "queued", "scheduled": "queued", "queued": "queued", "sending": "sent",
    "sent": "sent", "delivered": "delivered", "read": "delivered",
    "undelivered": "undelivered", "failed": "failed", "canceled": "failed",
}
OPTED_OUT_CODE = 21610  # Twilio: "Attempt to send to unsubscribed recipient"
SECURE_SMS_TEXT = "New secure message from {org}: {link}"
REMINDER_SMS_TEXT = "Reminder: you have an unread secure message from {org}: {link}"
PATIENT_REMINDER = "patient_reminder"  # the outbox purpose of an unread reminder


def delivery_view(d: Delivery) -> dict[str, Any]:
    view = {"recipient_id": d.patient_id, "channel": d.channel, "mode": d.mode,
            "status": d.status, "at": iso(d.updated_at)}
    if d.fallback:
        view["fallback"] = True
    if d.error and d.status in ("failed", "undelivered"):
        view["error"] = d.error
    return view


def delivery_frame(d: Delivery) -> dict[str, Any]:
    return {"type": "delivery", "conversation_id": d.conversation_id,
            "message_id": d.event_id, **delivery_view(d)}


async def deliveries_of(conversation_id: str, event_ids: list[str]
                        ) -> dict[str, list[dict[str, Any]]]:
    """event id -> its deliveries, for message events shown with their state."""
    if not event_ids:
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    for d in await Delivery.filter(conversation_id=conversation_id, event_id__in=event_ids,
                                   kind="message").order_by("created_at"):
        found.setdefault(d.event_id, []).append(delivery_view(d))
    return found


def require_reachable(channel: str, phone: str | None, email: str | None) -> None:
    """The patient has what `channel` needs (422 naming `channel` otherwise): the one
    rule for starting a conversation, switching its channel and sending in it."""
    if channel in ("sms", "secure_sms") and not phone:
        raise ApiError("invalid", "this patient has no mobile phone: add one to their "
                       "profile, or choose secure email",
                       {"fields": {"channel": "patient has no phone"}})
    if channel == "secure_email" and not email:
        raise ApiError("invalid", "this patient has no email address: add one to their "
                       "profile, or choose SMS",
                       {"fields": {"channel": "patient has no email"}})


class ContactCheck:
    """Before a staff message in a patient conversation is stored: the patient must have
    what the conversation's channel needs (422 otherwise). A conversation found reachable
    is not read again for `ttl` seconds: a send is then spared a query, and a contact
    removed meanwhile shows as that one message's failed delivery (the worker checks
    again when it sends). A PATCH of the conversation on this node forgets it at once."""

    def __init__(self, ttl: float = 10.0, size: int = 100_000) -> None:
        self._ttl, self._size = ttl, size
        self._reachable: dict[str, float] = {}  # conversation -> checked until (monotonic)

    async def require(self, conversation_id: str) -> None:
        now = time.monotonic()
        if self._reachable.get(conversation_id, 0.0) > now:
            return
        found = await queries.patient_contact(db.connection(), conversation_id)
        if found is None:  # not a patient conversation any more (the send decides)
            return
        require_reachable(found["channel"] or "secure_sms", found["phone"], found["email"])
        if len(self._reachable) >= self._size:
            self._reachable.clear()
        self._reachable[conversation_id] = now + self._ttl

    def forget(self, conversation_id: str) -> None:
        self._reachable.pop(conversation_id, None)


async def opted_out(number_id: str, phone: str) -> bool:
    return await OptOut.exists(phone_number_id=number_id, phone=phone)


def secure_mail(org_name: str, link: str, *, reminder: bool = False) -> dict[str, str]:
    """The secure email: the organisation's name and the link, nothing else."""
    e = html.escape
    subject = (f"Reminder: unread secure message from {org_name}" if reminder
               else f"New secure message from {org_name}")
    text = (f"You have {'an unread' if reminder else 'a new'} secure message from "
            f"{org_name}.\n\n"
            f"Open it here: {link}\n\n"
            "The link is personal: please do not forward this email.\n")
    body = (f"<!doctype html><html><body style=\"font-family:sans-serif;line-height:1.5\">"
            f"<p>You have {'an unread' if reminder else 'a new'} secure message from "
            f"<strong>{e(org_name)}</strong>.</p>"
            f"<p><a href=\"{e(link)}\" style=\"display:inline-block;padding:10px 16px;"
            f"background:#1d4ed8;color:#fff;text-decoration:none;border-radius:6px\">"
            f"Read the message</a></p>"
            f"<p style=\"color:#555;font-size:13px\">The link is personal: please do not "
            f"forward this email.</p></body></html>")
    return {"subject": subject, "text": text, "html": body}


@dataclass
class _Notice:
    """One row of a batch being prepared: what it needs, until it becomes what to send."""

    row: OutboxMessage
    ctx: dict[str, Any]
    mode: str  # sms | secure_sms | secure_email
    delivery: Delivery
    fresh: bool  # the delivery was created by this batch (its send is marked already)


class PatientMessages:
    """The outbox worker's handler for `patient_message` rows (see the module's doc).

    A claimed batch is prepared and recorded together: one read for every notice's
    context, one for their deliveries, one insert of the new deliveries, one transaction
    for the portal links, one update for the accepted sends. What is rare (a send to
    check after a crash, an opt-out, a failure, a fallback) is handled row by row."""

    purpose = PATIENT_MESSAGE

    def __init__(self, settings: Settings, hub: Hub, sms_lookup: Any = None) -> None:
        self._settings = settings
        self._hub = hub
        # The SMS sender, when it can say whether a send went through (after a crash).
        self._sms_lookup = sms_lookup
        self._working: dict[str, Delivery] = {}  # outbox row id -> its delivery

    async def prepare(self, rows: list[OutboxMessage]) -> list[Outbound | SendResult]:
        wanted = [((row.payload or {}).get("event_id", ""), row.recipient) for row in rows]
        contexts = await queries.notice_contexts(db.connection(), wanted)
        existing = {(d.event_id, d.channel): d for d in await Delivery.filter(
            event_id__in=list({event for event, _ in wanted}), kind="message")}
        answers: list[Outbound | SendResult | _Notice] = []
        fresh: list[Delivery] = []
        now = utcnow()
        for row, key in zip(rows, wanted, strict=True):
            ctx = contexts.get(key)
            if ctx is None or ctx["recalled"]:
                answers.append(SendResult("cancelled", error="the message was recalled"))
                continue
            if ctx["patient_id"] is None:
                answers.append(SendResult("permanent", error="the patient no longer exists"))
                continue
            payload = row.payload or {}
            mode = payload.get("mode") or ctx["channel"] or "secure_sms"
            if mode == "sms" and ctx["has_files"]:  # a file never goes by plain SMS
                mode = "secure_sms"
            channel = "email" if mode == "secure_email" else "sms"
            delivery = existing.get((ctx["event_id"], channel))
            if delivery is None:
                delivery = Delivery(
                    id=new_id("dl"), org_id=ctx["org_id"], event_id=ctx["event_id"],
                    conversation_id=ctx["conversation_id"], patient_id=row.recipient,
                    channel=channel, mode=mode, status="queued",
                    fallback=bool(payload.get("fallback")), created_at=now, updated_at=now,
                    sending_since=now)  # marked at once: a send follows
                existing[(ctx["event_id"], channel)] = delivery
                fresh.append(delivery)
                answers.append(_Notice(row, ctx, mode, delivery, fresh=True))
            elif any(isinstance(a, _Notice) and a.delivery is delivery for a in answers):
                # Two rows for one delivery in a batch: this one waits for the next round.
                answers.append(SendResult("retryable", error="sent by another row"))
            else:
                answers.append(_Notice(row, ctx, mode, delivery, fresh=False))
        if fresh:
            await Delivery.bulk_create(fresh)
            for delivery in fresh:
                self._hub.publish(conversation_topic(delivery.conversation_id),
                                  delivery_frame(delivery))
        checked = await asyncio.gather(*(
            self._check(a) if isinstance(a, _Notice) else asyncio.sleep(0, a) for a in answers))
        going = [a for a in checked if isinstance(a, _Notice)]
        retried = [n.delivery.id for n in going if not n.fresh]
        if retried:  # mark this attempt: after a crash, the provider is asked first
            await Delivery.filter(id__in=retried).update(sending_since=now)
        secure = [n for n in going if n.mode != "sms"]
        links = dict(zip((n.row.id for n in secure), await portal_links.new_links(
            self._settings, [portal_links.LinkFor(
                n.ctx["org_id"], n.ctx["patient_id"], n.ctx["conversation_id"],
                n.ctx["event_id"]) for n in secure]), strict=True))
        prepared: list[Outbound | SendResult] = []
        for answer, now_answer in zip(answers, checked, strict=True):
            if isinstance(answer, _Notice):  # its outcome is kept on its delivery
                self._working[answer.row.id] = answer.delivery
            prepared.append(self._message(now_answer, links.get(now_answer.row.id, ""))
                            if isinstance(now_answer, _Notice) else now_answer)
        return prepared

    async def _check(self, notice: _Notice) -> _Notice | SendResult:
        """What stops a notice from being sent now, or the notice."""
        delivery, ctx = notice.delivery, notice.ctx
        if delivery.provider_sid or delivery.status == "sent":
            # Already sent (the worker died after recording it): acknowledge, never resend.
            return SendResult("sent", provider_id=delivery.provider_sid)
        if delivery.status != "queued":  # settled earlier (opted out, failed): nothing to do
            return SendResult("cancelled", error=f"already {delivery.status}")
        if delivery.channel == "email":
            if not ctx["email"]:
                return SendResult("permanent", error="the patient has no email address")
            return notice
        if ctx["number"] is None:
            return SendResult("permanent", error="the conversation's number is gone")
        if not ctx["phone"]:
            return SendResult("permanent", error="the patient has no mobile phone")
        if ctx["opted_out"]:
            await self._move(delivery, "opted_out", error="the patient replied STOP")
            return SendResult("cancelled", error="opted out")
        if (not notice.fresh and delivery.sending_since is not None
                and self._sms_lookup is not None):
            # A worker died during this send: did Twilio take it? Then never send twice.
            sid = await self._taken(delivery, ctx["phone"], ctx["number"], notice.mode,
                                    ctx["body"] or "", ctx["org_name"])
            if sid:
                return SendResult("sent", provider_id=sid)
        return notice

    def _message(self, notice: _Notice, link: str) -> Outbound:
        ctx, row = notice.ctx, notice.row
        if notice.delivery.channel == "email":
            mail = secure_mail(ctx["org_name"], link)
            return Outbound(id=row.id, channel="email", purpose=row.purpose, to=ctx["email"],
                            subject=mail["subject"], text=mail["text"], html=mail["html"])
        text = (ctx["body"] or "" if notice.mode == "sms"
                else SECURE_SMS_TEXT.format(org=ctx["org_name"], link=link))
        return Outbound(
            id=row.id, channel="sms", purpose=row.purpose, to=ctx["phone"], text=text,
            from_number=ctx["number"],
            status_callback=f"{self._settings.public_url}/webhooks/twilio/status")

    async def record(self, outcomes: list[Outcome]) -> None:
        """Keep the outcomes on the deliveries before the worker acknowledges the rows:
        the accepted sends in one statement, the rest one by one."""
        worked = [(o, self._working.pop(o.row.id, None)) for o in outcomes]
        accepted = [(o, d) for o, d in worked if d is not None and o.result.status == "sent"]
        now = utcnow()
        statuses = await queries.settle_sent(
            db.connection(), [(d.id, o.result.provider_id) for o, d in accepted], now)
        for _, delivery in accepted:
            if statuses.get(delivery.id) == "sent" and delivery.status == "queued":
                delivery.status, delivery.updated_at = "sent", now
                self._hub.publish(conversation_topic(delivery.conversation_id),
                                  delivery_frame(delivery))
        for outcome, delivery in worked:
            if delivery is not None and outcome.result.status != "sent":
                await self._record_one(outcome, delivery.id)

    async def _record_one(self, outcome: Outcome, delivery_id: str) -> None:
        delivery = await Delivery.get_or_none(id=delivery_id)  # a callback may have moved it
        if delivery is None:
            return
        result, message = outcome.result, outcome.message
        if result.status == "logged":  # no provider configured: say so, as a failure
            delivery.sending_since = None
            await self._move(delivery, "failed", error=result.error, save_anyway=True)
            return
        if result.status == "cancelled":
            return
        opted = f"twilio {OPTED_OUT_CODE}" in (result.error or "")
        if message is not None and message.channel == "sms" and opted:
            await self._opt_out_from(delivery, message)
            await self._move(delivery, "opted_out", error="the patient replied STOP")
            return
        if result.status == "retryable" and not outcome.final:
            if "no answer in time" not in (result.error or ""):
                # The provider answered: it did not take the message.
                delivery.sending_since = None
                await delivery.save(update_fields=["sending_since", "updated_at"])
            return
        await self._move(delivery, "failed", error=result.error)
        if delivery.mode == "secure_sms":
            await self._fall_back(delivery)

    # -- helpers -----------------------------------------------------------------------

    async def _taken(self, delivery: Delivery, phone: str, from_number: str, mode: str,
                     body: str, org_name: str) -> str | None:
        """The SID of an SMS Twilio took for this delivery before its worker died: the
        oldest one to that phone from that number since the send began, with this text
        (a secure notice's link differs each time: its fixed start), that no other
        delivery owns."""
        assert delivery.sending_since is not None
        found = await self._sms_lookup.find_sent(phone, from_number, delivery.sending_since)
        prefix = SECURE_SMS_TEXT.format(org=org_name, link="")
        fits = [m for m in found if (m.body == body if mode == "sms"
                                     else m.body.startswith(prefix))]
        if not fits:
            return None
        owned = set(await Delivery.filter(provider_sid__in=[m.sid for m in fits])
                    .values_list("provider_sid", flat=True))
        return next((m.sid for m in fits if m.sid not in owned), None)

    async def _move(self, delivery: Delivery, status: str, *, error: str | None = None,
                    save_anyway: bool = False) -> None:
        if RANK[status] > RANK[delivery.status] or (
                status == delivery.status and save_anyway):
            changed = status != delivery.status
            delivery.status = status
            delivery.error = (error or "")[:300] or delivery.error
            delivery.updated_at = utcnow()
            await Delivery.filter(id=delivery.id).update(
                status=delivery.status, error=delivery.error, updated_at=delivery.updated_at,
                sending_since=delivery.sending_since)
            if changed:
                self._hub.publish(conversation_topic(delivery.conversation_id),
                                  delivery_frame(delivery))

    async def _opt_out_from(self, delivery: Delivery, message: Outbound) -> None:
        number = await PhoneNumber.get_or_none(number=message.from_number or "")
        if number is not None:
            await record_opt_out(number.id, message.to, utcnow())

    async def _fall_back(self, delivery: Delivery) -> None:
        """A secure SMS failed for good: the same notice by secure email, when possible."""
        patient = await Patient.get_or_none(id=delivery.patient_id)
        if patient is None or not patient.email:
            return
        await enqueue_fallback(delivery)


async def enqueue_fallback(delivery: Delivery) -> None:
    row_id = outbox_id_for(delivery.event_id) + "_e"
    if await OutboxMessage.exists(id=row_id):
        return
    now = utcnow()
    await OutboxMessage.create(
        id=row_id, org_id=delivery.org_id, channel="patient", purpose=PATIENT_MESSAGE,
        recipient=delivery.patient_id, next_attempt_at=now, created_at=now,
        payload={"event_id": delivery.event_id, "mode": "secure_email", "fallback": True})


async def record_opt_out(number_id: str, phone: str, now: datetime) -> None:
    if not await OptOut.exists(phone_number_id=number_id, phone=phone):
        try:
            await OptOut.create(phone_number_id=number_id, phone=phone, created_at=now)
        except Exception:  # a concurrent STOP: already recorded
            if not await OptOut.exists(phone_number_id=number_id, phone=phone):
                raise


async def apply_status(hub: Hub, sid: str, twilio_status: str, error_code: str | None,
                       to: str = "", from_number: str = "",
                       trail: audit.AuditLog | None = None) -> bool:
    """A status callback: move the delivery with this SID forward (never backwards).
    False when no delivery has that SID (an SMS this server did not send).

    A callback may beat the worker's record of the SID (Twilio answers the send, then
    calls back; the worker writes the SID after the answer): then the one SMS delivery
    being sent to that phone from that number takes the SID now."""
    delivery = await Delivery.get_or_none(provider_sid=sid)
    if delivery is None and to and from_number:
        flying = await queries.sms_in_flight(db.connection(), to, from_number)
        if len(flying) == 1 and await Delivery.filter(
                id=flying[0], provider_sid__isnull=True).update(provider_sid=sid):
            delivery = await Delivery.get(id=flying[0])
    if delivery is None:
        return False
    status = TWILIO_STATUS.get(twilio_status.lower())
    if status is None:
        return True
    error = f"twilio {error_code}" if error_code else None
    if error_code == str(OPTED_OUT_CODE):
        status = "opted_out"
    if RANK[status] > RANK[delivery.status]:
        delivery.status = status
        delivery.error = error or delivery.error
        delivery.updated_at = utcnow()
        await delivery.save()
        hub.publish(conversation_topic(delivery.conversation_id), delivery_frame(delivery))
        if trail is not None:
            trail.note(audit.Entry(
                org_id=delivery.org_id, action="delivery.status", actor_id=None,
                actor_kind="system", target_kind="message", target_id=delivery.event_id,
                patient_id=delivery.patient_id,
                details={"status": status, "channel": delivery.channel,
                         "via": "twilio webhook"}))
    return True



async def queue_reminders(settings: Settings) -> int:
    """The outbox worker's round hook: one reminder (no PHI) for each secure notice the
    patient has not viewed in `reminder_after_seconds`, up to `reminder_max` per notice.
    Taking the turn is a conditional update, so two nodes never queue the same one."""
    if settings.reminder_max <= 0:
        return 0
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.reminder_after_seconds)
    queued = 0
    found = await queries.unread_notices_due(db.connection(), cutoff, settings.reminder_max)
    for due in found:
        turn = int(due["reminders"]) + 1
        async with in_transaction():
            taken = await Delivery.filter(id=due["id"], reminders=turn - 1).update(
                reminders=turn, reminded_at=now)
            if not taken:
                continue
            delivery = await Delivery.get(id=due["id"])
            await OutboxMessage.create(
                id=f"ob_rm_{delivery.id}_{turn}", org_id=delivery.org_id, channel="patient",
                purpose=PATIENT_REMINDER, recipient=delivery.patient_id, next_attempt_at=now,
                created_at=now, payload={"delivery_id": delivery.id})
        queued += 1
    return queued


class PatientReminders:
    """The outbox worker's handler for `patient_reminder` rows: the same notice again,
    by the same channel, with a fresh link; not sent once the patient has viewed the
    message, or if it was recalled."""

    purpose = PATIENT_REMINDER

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def prepare(self, rows: list[OutboxMessage]) -> list[Outbound | SendResult]:
        return list(await asyncio.gather(*(self._prepare_one(row) for row in rows)))

    async def _prepare_one(self, row: OutboxMessage) -> Outbound | SendResult:
        delivery = await Delivery.get_or_none(id=(row.payload or {}).get("delivery_id", ""))
        if delivery is None:
            return SendResult("cancelled", error="the notice is gone")
        event = await Event.get_or_none(id=delivery.event_id)
        participant = await Participant.get_or_none(conversation_id=delivery.conversation_id,
                                                    user_id=delivery.patient_id)
        if event is None or event.recalled or participant is None:
            return SendResult("cancelled", error="the message was recalled")
        if participant.read_seq >= event.seq:
            return SendResult("cancelled", error="the patient has viewed it")
        conversation = await Conversation.get(id=delivery.conversation_id)
        patient = await Patient.get_or_none(id=delivery.patient_id)
        org = await Org.get(id=delivery.org_id)
        if patient is None:
            return SendResult("cancelled", error="the patient no longer exists")
        link = await portal_links.new_link(
            self._settings, org_id=delivery.org_id, patient_id=patient.id,
            conversation_id=conversation.id, event_id=event.id)
        if delivery.channel == "email":
            if not patient.email:
                return SendResult("permanent", error="the patient has no email address")
            mail = secure_mail(org.name, link, reminder=True)
            return Outbound(id=row.id, channel="email", purpose=row.purpose, to=patient.email,
                            subject=mail["subject"], text=mail["text"], html=mail["html"])
        number = await PhoneNumber.get_or_none(id=conversation.phone_number_id or "")
        if number is None or not patient.phone:
            return SendResult("permanent", error="no number or no phone to remind by")
        if await opted_out(number.id, patient.phone):
            return SendResult("cancelled", error="opted out")
        return Outbound(id=row.id, channel="sms", purpose=row.purpose, to=patient.phone,
                        text=REMINDER_SMS_TEXT.format(org=org.name, link=link),
                        from_number=number.number)

    async def record(self, outcomes: list[Outcome]) -> None:
        """A reminder's outcome stays on its outbox row (no delivery state of its own)."""

