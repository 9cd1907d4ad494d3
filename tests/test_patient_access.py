"""Phone numbers through the real twilio client against a local fake of Twilio's API, and
who sees which patient conversations: the number's team, admins, nobody else; removing
someone from a team (or moving the number) ends their access at once, sockets included."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from server.ids import utcnow
from storage.models import Org
from tests.conftest import LiveServer, Session, expect, quiet, send, twilio_env
from tests.fake_twilio import FakeTwilio


@pytest.fixture
def server_env(twilio: FakeTwilio) -> dict[str, str]:
    return twilio_env(twilio)


def fresh_number(twilio: FakeTwilio, area: str = "415") -> str:
    number = f"+1{area}555{uuid.uuid4().int % 10000:04d}"
    twilio.set_available(area, [(number, "San Francisco", "CA"),
                                *[(n, None, None) for n in twilio.available(area)]])
    return number


async def team(live: LiveServer, admin: Session, name: str, *members: Session) -> str:
    r = await live.http.post("/api/v1/teams", json={"name": name}, headers=admin.headers)
    team_id = r.json()["id"]
    for m in members:
        r = await live.http.put(f"/api/v1/teams/{team_id}/members/{m.user['id']}",
                                headers=admin.headers)
        assert r.status_code == 204
    return team_id


async def buy(live: LiveServer, admin: Session, twilio: FakeTwilio, team_id: str) -> dict:
    number = fresh_number(twilio)
    r = await live.http.post("/api/v1/phone-numbers", json={"number": number, "team_id": team_id},
                             headers=admin.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def clinic(live: LiveServer) -> Session:
    admin = await live.signup(org_name="Clinic")
    r = await live.http.post("/api/v1/org/trial", headers=admin.headers)
    assert r.status_code == 200
    return admin


async def test_numbers_search_buy_list_and_twilio_errors(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    admin = await clinic(live_server)
    member = await live_server.add_member(admin)
    front = await team(live_server, admin, "Front desk", member)
    back = await team(live_server, admin, "Back office")

    r = await live_server.http.get("/api/v1/phone-numbers/available",
                                   params={"area_code": "212"}, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert {"number": "+12125550101", "locality": "New York", "region": "NY"} in r.json()["items"]
    for bad in ("12", "abc", "012"):
        r = await live_server.http.get("/api/v1/phone-numbers/available",
                                       params={"area_code": bad}, headers=admin.headers)
        assert r.status_code == 422
    r = await live_server.http.get("/api/v1/phone-numbers/available",
                                   params={"area_code": "212"}, headers=member.headers)
    assert r.status_code == 403

    number = await buy(live_server, admin, twilio, front)
    bought = twilio.numbers_bought[-1]
    assert bought.phone_number == number["number"]
    assert bought.sms_url == f"{live_server.base_url}/webhooks/twilio/sms"
    assert bought.status_callback == f"{live_server.base_url}/webhooks/twilio/status"
    other = await buy(live_server, admin, twilio, back)

    r = await live_server.http.get("/api/v1/phone-numbers", headers=admin.headers)
    assert {n["id"] for n in r.json()["items"]} >= {number["id"], other["id"]}
    r = await live_server.http.get("/api/v1/phone-numbers", headers=member.headers)
    assert [n["id"] for n in r.json()["items"]] == [number["id"]]

    # Twilio's refusals and silences reach the admin as clear errors, never a 5xx bug.
    r = await live_server.http.post("/api/v1/phone-numbers",
                                    json={"number": "+14155559999", "team_id": front},
                                    headers=admin.headers)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["details"]["provider_code"] == 21422
    assert "no longer available" in r.json()["error"]["message"]
    twilio.hang_next("available", 3)
    r = await live_server.http.get("/api/v1/phone-numbers/available",
                                   params={"area_code": "415"}, headers=admin.headers)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    r = await live_server.http.post("/api/v1/phone-numbers",
                                    json={"number": "+14155550000", "team_id": "tm_nope"},
                                    headers=admin.headers)
    assert r.status_code == 404


class TestWithoutTwilio:
    @pytest.fixture
    def server_env(self) -> dict[str, str]:
        return {}

    async def test_says_twilio_is_not_configured(self, live_server: LiveServer) -> None:
        admin = await clinic(live_server)
        r = await live_server.http.get("/api/v1/phone-numbers/available",
                                       params={"area_code": "415"}, headers=admin.headers)
        assert r.status_code == 409
        assert r.json()["error"]["details"]["reason"] == "not_configured"
        assert "TWILIO_ACCOUNT_SID" in r.json()["error"]["message"]


async def start_with_patient(live: LiveServer, who: Session, number_id: str,
                             **patient: str) -> dict:
    r = await live.http.post("/api/v1/conversations", json={
        "to": [{"patient": patient}], "phone_number_id": number_id, "subject": "Results"},
        headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def post(live: LiveServer, who: Session, cid: str, body: str = "hello") -> int:
    r = await live.http.post(f"/api/v1/conversations/{cid}/messages",
                             json={"body": body, "client_id": uuid.uuid4().hex},
                             headers=who.headers)
    return r.status_code


async def inbox(live: LiveServer, who: Session, **params: str) -> list[str]:
    r = await live.http.get("/api/v1/conversations", params=params, headers=who.headers)
    assert r.status_code == 200, r.text
    return [c["id"] for c in r.json()["items"]]


async def test_the_numbers_team_sees_its_patients_and_nobody_else(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    admin = await clinic(live_server)
    ana = await live_server.add_member(admin, name="Ana")
    ben = await live_server.add_member(admin, name="Ben")
    cal = await live_server.add_member(admin, name="Cal")
    front = await team(live_server, admin, "Front desk", ana, ben)
    back = await team(live_server, admin, "Back office", cal)
    number = await buy(live_server, admin, twilio, front)

    conv = await start_with_patient(live_server, ana, number["id"], first_name="Pat",
                                    phone="(415) 555-0142")
    assert conv["kind"] == "patient" and conv["channel"] == "secure_sms"
    kinds = {p["name"]: p["kind"] for p in conv["participants"]}
    assert kinds == {"Pat": "patient", "Ana": "member", "Ben": "member"}
    # The same phone from the new-conversation box finds the patient, not a second one.
    again = await start_with_patient(live_server, ben, number["id"], phone="+14155550142")
    patient_ids = {p["id"] for c in (conv, again) for p in c["participants"]
                   if p["kind"] == "patient"}
    assert len(patient_ids) == 1

    # Ben (teammate) sees and posts; Cal (other team) sees nothing; the admin sees all.
    assert conv["id"] in await inbox(live_server, ben, team_id=front)
    assert conv["id"] in await inbox(live_server, ben, phone_number_id=number["id"])
    assert await inbox(live_server, ben, team_id=back) == []
    assert await post(live_server, ben, conv["id"]) == 201
    assert conv["id"] not in await inbox(live_server, cal)
    r = await live_server.http.get(f"/api/v1/conversations/{conv['id']}", headers=cal.headers)
    assert r.status_code == 404
    assert await post(live_server, cal, conv["id"]) == 404
    assert conv["id"] in await inbox(live_server, admin, kind="patient")
    r = await live_server.http.get(f"/api/v1/conversations/{conv['id']}/events",
                                   headers=admin.headers)
    assert r.status_code == 200
    assert await post(live_server, admin, conv["id"], "from the admin") == 201
    # Cal may not start one on the front desk's number.
    r = await live_server.http.post("/api/v1/conversations", json={
        "to": [{"patient": {"phone": "4155550143"}}], "phone_number_id": number["id"]},
        headers=cal.headers)
    assert r.status_code == 403

    # Ben leaves the team: his socket hears it at once and gets nothing more.
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": ben.token})
    ready = await expect(ws, "ready")
    assert conv["id"] in {c["id"] for c in ready["conversations"]}
    r = await live_server.http.delete(f"/api/v1/teams/{front}/members/{ben.user['id']}",
                                      headers=admin.headers)
    assert r.status_code == 204
    removed = await expect(ws, "conversation_removed")
    assert conv["id"] in removed["conversation_ids"]
    assert await post(live_server, ana, conv["id"], "after ben left") == 201
    assert not [f for f in await quiet(ws, 0.5) if f["type"] == "event"]
    await send(ws, {"type": "send", "ref": 1, "conversation_id": conv["id"],
                    "client_id": "ben-late", "body": "still here?"})
    error = await expect(ws, "error")
    assert error["code"] == "not_found"
    assert conv["id"] not in await inbox(live_server, ben)

    # Cal joins the front desk: a `conversation` frame, then its live events.
    ws2 = await live_server.socket()
    await send(ws2, {"type": "auth", "token": cal.token})
    await expect(ws2, "ready")
    await live_server.http.put(f"/api/v1/teams/{front}/members/{cal.user['id']}",
                               headers=admin.headers)
    frames = [await expect(ws2, "conversation") for _ in range(2)]
    assert conv["id"] in {f["conversation"]["id"] for f in frames}
    assert await post(live_server, ana, conv["id"], "welcome cal") == 201
    event = await expect(ws2, "event")
    assert event["event"]["body"] == "welcome cal"

    # The number moves to the back office: the front desk (Ana) loses it.
    r = await live_server.http.patch(f"/api/v1/phone-numbers/{number['id']}",
                                     json={"team_id": back}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["team_id"] == back
    assert conv["id"] not in await inbox(live_server, ana)
    assert conv["id"] in await inbox(live_server, cal)
    await ws.close()
    await ws2.close()


async def test_patient_conversation_checks_and_the_lapsed_plan(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    admin = await clinic(live_server)
    front = await team(live_server, admin, "Front desk", admin)
    number = await buy(live_server, admin, twilio, front)
    for body, field in (
        ({"to": [{"patient": {"phone": "4155550150"}}]}, "phone_number_id"),
        ({"to": [{"patient": {"phone": "4155550150"}}], "phone_number_id": number["id"],
          "channel": "secure_email"}, "channel"),
        ({"to": [{"patient": {"first_name": "No contact"}}],
          "phone_number_id": number["id"]}, "to.patient"),
        ({"to": [{"patient": {"phone": "1"}}], "phone_number_id": number["id"]},
         "to.patient.phone"),
        ({"to": [{"patient": {"phone": "4155550150"}}, {"patient": {"phone": "4155550151"}}],
          "phone_number_id": number["id"]}, "to"),
    ):
        r = await live_server.http.post("/api/v1/conversations", json=body,
                                        headers=admin.headers)
        assert r.status_code == 422, (body, r.text)
        assert field in r.json()["error"]["details"]["fields"], r.text
    r = await live_server.http.post("/api/v1/conversations", json={
        "to": [{"patient_id": "pt_nobody"}], "phone_number_id": number["id"]},
        headers=admin.headers)
    assert r.status_code == 404

    conv = await start_with_patient(live_server, admin, number["id"], phone="4155550150",
                                    email="p@example.com")
    await Org.filter(id=admin.user["org_id"]).update(trial_ends_at=utcnow() - timedelta(days=1))
    assert await post(live_server, admin, conv["id"]) == 402
    r = await live_server.http.get(f"/api/v1/conversations/{conv['id']}", headers=admin.headers)
    assert r.status_code == 402
    assert conv["id"] not in await inbox(live_server, admin)  # kept, but out of sight
    await Org.filter(id=admin.user["org_id"]).update(plan="pro")
    assert conv["id"] in await inbox(live_server, admin)
