"""The patient portal behind a secure link: DOB check and lock, the session cookie, the
conversation page and its reply form (no JavaScript), the patient-viewed receipt, the
one-time websocket ticket, and the same 404 for every link that does not work."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import LiveServer, expect, quiet, send, smtp_env, twilio_env
from tests.fake_twilio import FakeTwilio
from tests.mail import Mailbox
from tests.test_patient_delivery import CANARY, LINK, Clinic, sms_to
from tests.test_ws import _closed_with


@pytest.fixture
def server_env(twilio: FakeTwilio, mailbox: tuple[Mailbox, int]) -> dict[str, str]:
    return {**twilio_env(twilio), **smtp_env(mailbox)}


async def secure_link(c: Clinic, twilio: FakeTwilio, cid: str, phone: str, body: str,
                      count: int = 1) -> str:
    r = await c.say(cid, body)
    assert r.status_code == 201, r.text
    sms = (await sms_to(twilio, phone, count))[-1]
    match = LINK.search(sms.body)
    assert match, sms.body
    return match.group(1).removeprefix(c.live.base_url)


def cookie_of(r: httpx.Response) -> str:
    header = r.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/" in header, header
    assert "Secure" not in header  # PUBLIC_URL is http here
    return re.match(r"bt_portal=([^;]+)", header).group(1)  # type: ignore[union-attr]


async def test_dob_session_page_reply_and_patient_viewed(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone, patient, cid = await c.with_patient(dob="1980-04-12")
    staff = await live_server.socket()
    await send(staff, {"type": "auth", "token": c.member.token})
    await expect(staff, "ready")
    path = await secure_link(c, twilio, cid, phone, f"Your results are in: {CANARY} <b>ok</b>")
    http = live_server.http

    r = await http.get(path)
    assert r.status_code == 200
    assert 'name="dob"' in r.text and CANARY not in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "set-cookie" not in r.headers

    r = await http.post(path, data={"dob": "1980-04-13"})
    assert r.status_code == 200 and "does not match" in r.text and "set-cookie" not in r.headers
    r = await http.post(path, data={"dob": "1980-04-12"})
    assert r.status_code == 303 and r.headers["location"] == path
    cookie = cookie_of(r)
    http.cookies.clear()

    r = await http.get(path, headers={"Cookie": f"bt_portal={cookie}"})
    assert r.status_code == 200, r.text
    assert f"Your results are in: {CANARY} &lt;b&gt;ok&lt;/b&gt;" in r.text  # escaped
    assert '<textarea id="reply" name="body"' in r.text
    receipt = await expect(staff, "receipt", conversation_id=cid)
    assert receipt["participant"]["kind"] == "patient"
    assert receipt["participant"]["id"] == patient["id"]

    client_id = re.search(r'name="client_id" value="([0-9a-f]+)"', r.text).group(1)  # type: ignore[union-attr]
    for _ in range(2):  # a form posted twice is stored once
        r = await http.post(path, data={"body": "Thank you!", "client_id": client_id},
                            headers={"Cookie": f"bt_portal={cookie}"})
        assert r.status_code == 303
    event = (await expect(staff, "event"))["event"]
    assert (event["sender"]["kind"], event["body"]) == ("patient", "Thank you!")
    assert not [f for f in await quiet(staff) if f["type"] == "event"]

    # Without the cookie the reply is not taken (the page asks for the DOB again).
    r = await http.post(path, data={"body": "sneaky"})
    assert r.status_code == 303
    r = await http.get(f"/api/v1/conversations/{cid}/events", headers=c.member.headers)
    assert [e["body"] for e in r.json()["events"]][-1] == "Thank you!"
    await staff.close()


async def test_links_that_do_not_work_all_look_the_same(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone, patient, cid = await c.with_patient()  # no DOB: straight in
    first = await secure_link(c, twilio, cid, phone, "one")
    second = await secure_link(c, twilio, cid, phone, "two", count=2)
    http = live_server.http

    r = await http.get(second)
    assert r.status_code == 200 and "two" in r.text and "one" in r.text
    cookie_of(r)
    http.cookies.clear()
    revoked = await http.get(first)
    unknown = await http.get("/p/pl_" + "A" * 43)
    garbage = await http.get("/p/nonsense")
    assert revoked.status_code == unknown.status_code == garbage.status_code == 404
    assert revoked.text == unknown.text == garbage.text
    assert "Link not valid" in revoked.text


async def test_five_wrong_dobs_lock_the_link_and_tell_the_team(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone, patient, cid = await c.with_patient(dob="1975-01-02")
    staff = await live_server.socket()
    await send(staff, {"type": "auth", "token": c.member.token})
    await expect(staff, "ready")
    path = await secure_link(c, twilio, cid, phone, "hello")
    for _ in range(4):
        r = await live_server.http.post(path, data={"dob": "2000-01-01"})
        assert r.status_code == 200
    r = await live_server.http.post(path, data={"dob": "2000-01-01"})
    assert r.status_code == 429 and "locked" in r.text
    locked = await expect(staff, "portal_locked", conversation_id=cid)
    assert locked["patient_id"] == patient["id"]
    r = await live_server.http.post(path, data={"dob": "1975-01-02"})  # even the right one
    assert r.status_code == 429
    await staff.close()


async def test_portal_socket_with_a_one_time_ticket(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone, patient, cid = await c.with_patient()
    other = await c.conversation(patient, "secure_sms")  # the same patient, elsewhere
    path = await secure_link(c, twilio, cid, phone, "first")
    http = live_server.http
    r = await http.post("/portal/ws-ticket")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    cookie = cookie_of(await http.get(path))
    http.cookies.clear()
    r = await http.post("/portal/ws-ticket", headers={"Cookie": f"bt_portal={cookie}"})
    assert r.status_code == 200, r.text
    ticket = r.json()["ticket"]
    assert r.json()["conversation_id"] == cid

    ws = await live_server.socket()
    await send(ws, {"type": "auth", "ticket": ticket})
    ready = await expect(ws, "ready")
    assert [x["id"] for x in ready["conversations"]] == [cid]
    assert ready["user"]["id"] == patient["id"]
    staff = await live_server.socket(c.member)
    await send(staff, {"type": "typing", "conversation_id": cid})
    r = await c.say(cid, "live one")
    await expect(staff, "delivery", status="sent")  # all of it published by now
    # Staff's own state (typing, receipts, delivery reports) is not the patient's to see.
    frames = await quiet(ws)
    assert [f["type"] for f in frames] == ["event"], frames
    assert frames[0]["event"]["body"] == "live one"
    await send(ws, {"type": "send", "ref": 1, "conversation_id": other, "client_id": "x1",
                    "body": "elsewhere"})
    error = await expect(ws, "error")
    assert error["code"] == "not_found"
    await send(ws, {"type": "send", "ref": 2, "conversation_id": cid, "client_id": "x2",
                    "body": "from the portal socket"})
    ack = await expect(ws, "ack")
    assert ack["event"]["sender"]["kind"] == "patient"
    await ws.close()

    again = await live_server.socket()  # the ticket was used
    await send(again, {"type": "auth", "ticket": ticket})
    assert await _closed_with(again) == 4001
