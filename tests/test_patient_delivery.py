"""Patient delivery through the real twilio client (against the tests' local fake of
Twilio's API) and a real SMTP server: normal SMS, secure SMS, secure email, delivery
states and status callbacks, opt-out, inbound SMS, fallback from SMS to email."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import LiveServer, Session, expect, quiet, send, smtp_env, twilio_env
from tests.fake_twilio import FakeTwilio, ReceivedMessage
from tests.mail import Mailbox
from tests.test_invitations import mail_to
from tests.test_patient_access import buy, clinic, team

ROOT = Path(__file__).resolve().parent.parent
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

    async def with_patient(self, channel: str = "secure_sms", **values: Any
                           ) -> tuple[str, dict[str, Any], str]:
        """A new patient with a fresh phone, in a new conversation: (phone, patient, id)."""
        phone = fresh_phone()
        patient = await self.patient(phone=phone, **values)
        return phone, patient, await self.conversation(patient, channel)

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


class TestWorkerKilledMidBatch:
    """Real worker processes on PostgreSQL: one is killed while Twilio holds its requests
    (Twilio takes the messages anyway); another takes the rows over after their lease.
    Every message reaches its patient exactly once."""

    @pytest.fixture
    def server_env(self, twilio: FakeTwilio, mailbox: tuple[Mailbox, int]) -> dict[str, str]:
        return {**twilio_env(twilio), **smtp_env(mailbox), "BLOOMTEXT_OUTBOX_WORKER": "off"}

    @pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
    @pytest.mark.parametrize("channel", ["sms", "secure_sms"])
    async def test_no_second_sms_after_a_crash(
        self, live_server: LiveServer, twilio: FakeTwilio, database_url: str, channel: str
    ) -> None:
        c = await Clinic(live_server, twilio).setup()
        phones = [fresh_phone() for _ in range(5)]
        conversations = [await c.conversation(await c.patient(phone=p), channel)
                         for p in phones]
        texts = [f"Notice {i} {uuid.uuid4().hex[:6]}" for i in range(30)]
        for i, text in enumerate(texts):  # stored; no worker runs yet
            r = await c.say(conversations[i % 5], text)
            assert r.status_code == 201, r.text
        before = len(twilio.messages)
        for _ in range(12):  # the first batch hangs in Twilio: the kill lands mid-send
            twilio.hang_next("messages", 1.5)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOOMTEXT_")}
        env.update({**twilio_env(twilio), "DATABASE_URL": database_url,
                    "PUBLIC_URL": live_server.base_url, "BLOOMTEXT_OUTBOX_LEASE_SECONDS": "2",
                    "BLOOMTEXT_TWILIO_TIMEOUT": "10"})
        first = subprocess.Popen([sys.executable, "-m", "server", "worker"], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):  # until its first requests are in Twilio's hands
                if len(twilio.requests("messages")) > 0 or len(twilio.messages) > before:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        await asyncio.sleep(2.0)  # the hung requests complete: Twilio took those messages
        second = subprocess.Popen([sys.executable, "-m", "server", "worker"], env=env,
                                  cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(400):
                if len(twilio.messages) - before >= len(texts):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(3.0)  # time for a duplicate to show, were there one
        finally:
            second.terminate()
            second.wait(10)
        received = [m for m in twilio.messages[before:] if m.to in phones]
        assert len(received) == len(texts), [(m.to, m.body) for m in received]
        if channel == "sms":
            assert sorted(m.body for m in received) == sorted(texts)
        for i, cid in enumerate(conversations):
            r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                           headers=c.member.headers)
            statuses = [d["status"] for e in r.json()["events"] for d in e["deliveries"]]
            assert statuses == ["sent"] * 6, statuses
            assert len([m for m in received if m.to == phones[i]]) == 6


async def test_no_phi_in_secure_notices_or_logs(
    live_server: LiveServer, twilio: FakeTwilio, mailbox: tuple[Mailbox, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every patient and message field holds a canary; secure SMS and email carry none of
    them, and no log line at INFO or above does either (normal SMS carries the text, by
    the staff's choice)."""
    box, _ = mailbox
    caplog.set_level(logging.INFO)
    c = await Clinic(live_server, twilio).setup()
    canaries = {f"PHI{i}-{uuid.uuid4().hex[:8]}" for i in range(4)}
    first, last, mrn, body = sorted(canaries)
    email = f"{first.lower()}@example.org"
    phone = fresh_phone()
    patient = await c.patient(first_name=first, last_name=last, mrn=mrn, phone=phone,
                              email=email, dob="1961-05-06")
    for channel in ("secure_sms", "secure_email"):
        cid = await c.conversation(patient, channel)
        r = await c.say(cid, f"{body} results attached")
        assert r.status_code == 201
    await sms_to(twilio, phone)
    await mail_to(box, email)
    r = await c.inbound(phone, f"reply {body}")
    assert r.status_code == 200
    await asyncio.sleep(0.3)
    carried = [m.body for m in twilio.messages if m.to == phone]
    carried += [m.as_string() for m in box.received if m["To"] == email]
    for text in carried:
        assert not any(x in text for x in canaries), text
    for record in caplog.records:
        line = record.getMessage()
        assert not any(x in line for x in canaries), line
        assert phone not in line, line


class TestUnreadReminder:
    @pytest.fixture
    def server_env(self, twilio: FakeTwilio, mailbox: tuple[Mailbox, int]) -> dict[str, str]:
        return {**twilio_env(twilio), **smtp_env(mailbox),
                "BLOOMTEXT_REMINDER_AFTER_SECONDS": "1", "BLOOMTEXT_REMINDER_MAX": "1"}

    async def test_one_reminder_unless_viewed(self, live_server: LiveServer,
                                              twilio: FakeTwilio) -> None:
        c = await Clinic(live_server, twilio).setup()
        unread_phone, read_phone = fresh_phone(), fresh_phone()
        unread = await c.conversation(await c.patient(phone=unread_phone), "secure_sms")
        read = await c.conversation(await c.patient(phone=read_phone), "secure_sms")
        assert (await c.say(unread, f"first {CANARY}")).status_code == 201
        assert (await c.say(read, f"second {CANARY}")).status_code == 201
        (notice,) = await sms_to(twilio, read_phone)
        link = LINK.search(notice.body)
        assert link
        r = await live_server.http.get(link.group(1).removeprefix(live_server.base_url))
        assert r.status_code == 200  # no DOB on file: straight in, and viewed
        first, reminder = await sms_to(twilio, unread_phone, count=2)
        assert reminder.body.startswith("Reminder: you have an unread secure message from "
                                        "Clinic: ")
        assert CANARY not in reminder.body and LINK.search(reminder.body)
        await asyncio.sleep(3.5)  # at most one reminder; none for what was viewed
        assert len([m for m in twilio.messages if m.to == unread_phone]) == 2
        assert len([m for m in twilio.messages if m.to == read_phone]) == 1


async def test_a_status_callback_that_beats_the_send_answer(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    """Twilio may call back before the worker has written the SID down: the callback goes
    to the one SMS in flight to that phone from that number, and the late answer does not
    move the status back."""
    c = await Clinic(live_server, twilio).setup()
    phone = fresh_phone()
    cid = await c.conversation(await c.patient(phone=phone), "sms")
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": c.member.token})
    await expect(ws, "ready")
    twilio.hang_next("messages", 0.8)  # the answer comes late (within the 1 s timeout)
    r = await c.say(cid, "see you at 3")
    message_id = r.json()["id"]
    await expect(ws, "delivery", message_id=message_id, status="queued")
    await asyncio.sleep(0.3)  # the worker is waiting for Twilio's answer
    form = {"MessageSid": "SM" + "e" * 32, "MessageStatus": "delivered", "To": phone,
            "From": c.number["number"], "AccountSid": twilio.account_sid}
    r = await c.webhook("/webhooks/twilio/status", form)
    assert r.status_code == 204
    await expect(ws, "delivery", message_id=message_id, status="delivered")
    await sms_to(twilio, phone)
    await asyncio.sleep(0.5)
    assert [f for f in await quiet(ws, 0.5) if f["type"] == "delivery"] == []
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   headers=c.member.headers)
    (event,) = r.json()["events"]
    assert [d["status"] for d in event["deliveries"]] == ["delivered"]
    await ws.close()
