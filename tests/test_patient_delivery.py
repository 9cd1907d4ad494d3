"""Patient delivery through the real twilio client (against the tests' local fake of
Twilio's API) and a real SMTP server: normal SMS, secure SMS, secure email, delivery
states and status callbacks, opt-out, inbound SMS, fallback from SMS to email."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import LiveServer, Session, expect, quiet, send, smtp_env, twilio_env
from tests.fake_twilio import FakeTwilio, ReceivedMessage
from tests.mail import Mailbox
from tests.test_invitations import mail_to
from tests.test_patient_access import buy, clinic, team

CANARY = "CANARY-PHI-7731"
LINK = re.compile(r"(https?://\S+/p/(pl_[A-Za-z0-9_-]{43}))")


@pytest.fixture
def server_env(twilio: FakeTwilio, mailbox: tuple[Mailbox, int]) -> dict[str, str]:
    return {**twilio_env(twilio), **smtp_env(mailbox)}


class Clinic:
    """A clinic on its trial with a team, its number, and a member on the team."""

    def __init__(self, live: LiveServer, twilio: FakeTwilio) -> None:
        self.live, self.twilio = live, twilio

    async def setup(self) -> Clinic:
        self.admin = await clinic(self.live)
        self.member: Session = await self.live.add_member(self.admin)
        self.team = await team(self.live, self.admin, "Front desk", self.member)
        self.number: dict[str, Any] = await buy(self.live, self.admin, self.twilio, self.team)
        return self

    async def patient(self, **values: Any) -> dict[str, Any]:
        values.setdefault("first_name", "Pat")
        values.setdefault("last_name", CANARY)
        r = await self.live.http.post("/api/v1/patients", json=values,
                                      headers=self.admin.headers)
        assert r.status_code == 201, r.text
        return r.json()

    async def conversation(self, patient: dict[str, Any], channel: str) -> str:
        r = await self.live.http.post("/api/v1/conversations", json={
            "to": [{"patient_id": patient["id"]}], "phone_number_id": self.number["id"],
            "channel": channel, "subject": f"Results {CANARY}"}, headers=self.member.headers)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    async def say(self, conversation_id: str, body: str) -> Any:
        return await self.live.http.post(
            f"/api/v1/conversations/{conversation_id}/messages",
            json={"body": body, "client_id": uuid.uuid4().hex}, headers=self.member.headers)

    def signed(self, path: str, form: dict[str, str]) -> dict[str, str]:
        url = f"{self.live.base_url}{path}"
        signature = RequestValidator(self.twilio.auth_token).compute_signature(url, form)
        return {"X-Twilio-Signature": signature}

    async def webhook(self, path: str, form: dict[str, str], *, sign: bool = True) -> Any:
        headers = self.signed(path, form) if sign else {}
        return await self.live.http.post(path, data=form, headers=headers)

    async def inbound(self, phone: str, body: str, sid: str | None = None, **extra: str
                      ) -> Any:
        form = {"MessageSid": sid or "SM" + uuid.uuid4().hex, "AccountSid":
                self.twilio.account_sid, "From": phone, "To": self.number["number"],
                "Body": body, "NumMedia": "0", **extra}
        return await self.webhook("/webhooks/twilio/sms", form)


async def sms_to(twilio: FakeTwilio, phone: str, count: int = 1) -> list[ReceivedMessage]:
    for _ in range(200):
        found = [m for m in twilio.messages if m.to == phone]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no SMS to {phone}")


def fresh_phone() -> str:
    return f"+1628555{uuid.uuid4().int % 10000:04d}"


async def test_secure_sms_carries_only_a_link_and_reports_delivery(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone = fresh_phone()
    patient = await c.patient(phone=phone, email=f"{uuid.uuid4().hex[:8]}@example.org")
    cid = await c.conversation(patient, "secure_sms")
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": c.member.token})
    await expect(ws, "ready")

    r = await c.say(cid, f"Your results: {CANARY}")
    assert r.status_code == 201, r.text
    message_id = r.json()["id"]
    queued = await expect(ws, "delivery", message_id=message_id, status="queued")
    assert (queued["recipient_id"], queued["channel"]) == (patient["id"], "sms")
    await expect(ws, "delivery", message_id=message_id, status="sent")
    (sms,) = await sms_to(twilio, phone)
    assert sms.from_ == c.number["number"]
    assert CANARY not in sms.body
    link = LINK.search(sms.body)
    assert link and sms.body == f"New secure message from Clinic: {link.group(1)}", sms.body
    assert link.group(1).startswith(f"{live_server.base_url}/p/")
    assert sms.status_callback == f"{live_server.base_url}/webhooks/twilio/status"

    # Status callbacks: signed, forward only, idempotent.
    form = {"MessageSid": sms.sid, "MessageStatus": "delivered",
            "AccountSid": twilio.account_sid}
    r = await c.webhook("/webhooks/twilio/status", form, sign=False)
    assert r.status_code == 403
    r = await c.webhook("/webhooks/twilio/status", {**form, "MessageStatus": "delivered"})
    assert r.status_code == 204, r.text
    await expect(ws, "delivery", message_id=message_id, status="delivered")
    for late in ("sent", "queued", "delivered"):  # late, repeated: nothing moves back
        r = await c.webhook("/webhooks/twilio/status", {**form, "MessageStatus": late})
        assert r.status_code == 204
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   headers=c.member.headers)
    (event,) = [e for e in r.json()["events"] if e["id"] == message_id]
    assert [(d["channel"], d["status"]) for d in event["deliveries"]] == [("sms", "delivered")]
    assert [f for f in await quiet(ws, 0.5) if f["type"] == "delivery"] == []
    await ws.close()


async def test_normal_sms_secure_email_and_missing_contact(
    live_server: LiveServer, twilio: FakeTwilio, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    c = await Clinic(live_server, twilio).setup()
    phone = fresh_phone()
    email = f"{uuid.uuid4().hex[:8]}@example.org"
    patient = await c.patient(phone=phone, email=email)

    sms_conversation = await c.conversation(patient, "sms")
    r = await c.say(sms_conversation, "The office is closed Friday")
    assert r.status_code == 201
    (sms,) = await sms_to(twilio, phone)
    assert sms.body == "The office is closed Friday"

    mail_conversation = await c.conversation(patient, "secure_email")
    r = await c.say(mail_conversation, f"Your biopsy: {CANARY}")
    assert r.status_code == 201
    (mail,) = await mail_to(box, email)
    raw = mail.as_string()
    assert CANARY not in raw
    assert mail["Subject"] == "New secure message from Clinic"
    assert LINK.search(raw)

    # Staff switch the SMS conversation to secure email: the next message goes by email.
    r = await live_server.http.patch(f"/api/v1/conversations/{sms_conversation}",
                                     json={"channel": "secure_email"},
                                     headers=c.member.headers)
    assert r.status_code == 200 and r.json()["channel"] == "secure_email", r.text
    r = await c.say(sms_conversation, f"Follow-up {CANARY}")
    assert r.status_code == 201
    await mail_to(box, email, count=2)
    assert len([m for m in twilio.messages if m.to == phone]) == 1

    # A patient without the channel's contact: the send is refused, nothing stored.
    no_email = await c.patient(phone=fresh_phone())
    cid = await c.conversation(no_email, "sms")
    r = await live_server.http.patch(f"/api/v1/patients/{no_email['id']}",
                                     json={"phone": None, "email": "x@example.org"},
                                     headers=c.admin.headers)
    assert r.status_code == 200, r.text
    r = await c.say(cid, "hello")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["fields"] == {"channel": "patient has no phone"}
    r = await live_server.http.patch(f"/api/v1/conversations/{cid}", json={"channel": "sms"},
                                     headers=c.member.headers)
    assert r.status_code == 422
    r = await live_server.http.patch(f"/api/v1/conversations/{cid}",
                                     json={"channel": "secure_email"}, headers=c.member.headers)
    assert r.status_code == 200
    r = await c.say(cid, "hello")
    assert r.status_code == 201, r.text


async def test_opt_out_inbound_and_redelivery(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone = fresh_phone()
    patient = await c.patient(phone=phone)
    cid = await c.conversation(patient, "sms")
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": c.member.token})
    await expect(ws, "ready")

    # A reply lands in the patient's open conversation; the same MessageSid again is
    # stored once.
    r = await c.inbound(phone, "Thanks, see you then", sid="SMreply0001")
    assert r.status_code == 200, r.text
    event = (await expect(ws, "event"))["event"]
    assert (event["conversation_id"], event["sender"]["id"], event["sender"]["kind"],
            event["body"]) == (cid, patient["id"], "patient", "Thanks, see you then")
    r = await c.inbound(phone, "Thanks, see you then", sid="SMreply0001")
    assert r.status_code == 200
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   headers=c.member.headers)
    assert [e["body"] for e in r.json()["events"]] == ["Thanks, see you then"]

    # Unsigned: 403 and nothing stored.
    form = {"MessageSid": "SMforged", "From": phone, "To": c.number["number"], "Body": "hi"}
    r = await c.webhook("/webhooks/twilio/sms", form, sign=False)
    assert r.status_code == 403
    form["X"] = "tampered"
    r = await live_server.http.post("/webhooks/twilio/sms", data=form,
                                    headers=c.signed("/webhooks/twilio/sms",
                                                     {k: v for k, v in form.items()
                                                      if k != "X"}))
    assert r.status_code == 403

    # STOP (any case, spaces): no SMS afterwards, staff see opted_out; START resumes.
    r = await c.inbound(phone, "  stop ")
    assert r.status_code == 200
    r = await c.say(cid, "Reminder: appointment tomorrow")
    message_id = r.json()["id"]
    await expect(ws, "delivery", message_id=message_id, status="opted_out")
    assert [m.body for m in twilio.messages if m.to == phone] == []
    r = await c.inbound(phone, "START")
    r = await c.say(cid, "Welcome back")
    await expect(ws, "delivery", message_id=r.json()["id"], status="sent")
    assert [m.body for m in twilio.messages if m.to == phone] == ["Welcome back"]

    # HELP is answered (TwiML), and stored like any message.
    r = await c.inbound(phone, "help")
    assert r.status_code == 200 and "<Message>Clinic: " in r.text and "STOP" in r.text

    # An unknown phone: a new unverified patient, a conversation in the team's inbox.
    stranger = fresh_phone()
    r = await c.inbound(stranger, "Is the clinic open Saturday?")
    assert r.status_code == 200
    frame = await expect(ws, "conversation")
    new = frame["conversation"]
    kinds = {p["kind"] for p in new["participants"]}
    assert new["phone_number_id"] == c.number["id"] and "patient" in kinds
    r = await live_server.http.get("/api/v1/patients", params={"q": stranger[2:]},
                                   headers=c.admin.headers)
    (found,) = r.json()["items"]
    assert found["unverified"] is True and found["phone"] == stranger
    await ws.close()


async def test_twilio_refusals_opt_out_and_fall_back_to_email(
    live_server: LiveServer, twilio: FakeTwilio, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    c = await Clinic(live_server, twilio).setup()
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": c.member.token})
    await expect(ws, "ready")

    # Twilio's 21610 on a send: the phone is opted out from then on.
    phone = fresh_phone()
    cid = await c.conversation(await c.patient(phone=phone), "secure_sms")
    twilio.opt_out(phone)
    r = await c.say(cid, "first")
    await expect(ws, "delivery", message_id=r.json()["id"], status="opted_out")
    r = await c.say(cid, "second")
    await expect(ws, "delivery", message_id=r.json()["id"], status="opted_out")
    requests_before = len(twilio.requests("messages"))
    await asyncio.sleep(0.2)
    assert len(twilio.requests("messages")) == requests_before

    # A secure SMS refused for good falls back to a secure email, and staff see it.
    email = f"{uuid.uuid4().hex[:8]}@example.org"
    cid = await c.conversation(await c.patient(phone=fresh_phone(), email=email),
                               "secure_sms")
    twilio.fail_next("messages", 400, 21614, "To number is not a mobile number")
    r = await c.say(cid, f"Lab results {CANARY}")
    message_id = r.json()["id"]
    failed = await expect(ws, "delivery", message_id=message_id, status="failed")
    assert failed["channel"] == "sms" and "21614" in failed["error"]
    await expect(ws, "delivery", message_id=message_id, channel="email", status="sent")
    (mail,) = await mail_to(box, email)
    assert CANARY not in mail.as_string()
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   headers=c.member.headers)
    (event,) = r.json()["events"]
    assert [(d["channel"], d["status"], d.get("fallback", False))
            for d in event["deliveries"]] == [("sms", "failed", False),
                                              ("email", "sent", True)]

    # Twilio down (5xx): retried later, not failed.
    phone = fresh_phone()
    cid = await c.conversation(await c.patient(phone=phone), "sms")
    twilio.fail_next("messages", 503, None, "Service unavailable")
    r = await c.say(cid, "retry me")
    await expect(ws, "delivery", message_id=r.json()["id"], status="queued")
    await asyncio.sleep(0.5)
    assert [m for m in twilio.messages if m.to == phone] == []
    await ws.close()
