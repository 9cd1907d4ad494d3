"""People of other organisations: the invitation that goes with the first message, the
Get started setup, known externals, the policy, and what an external can never see."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from storage.models import Org, OutboxMessage
from tests.conftest import LiveServer, Session, expect, send, smtp_env
from tests.mail import Mailbox
from tests.test_invitations import link_in, mail_to

CANARY = "PHI-CANARY-7731 potassium 6.1"


@pytest.fixture
def server_env(mailbox: tuple[Mailbox, int]) -> dict[str, str]:
    return smtp_env(mailbox)


def outside_email() -> str:
    return f"dr-{uuid.uuid4().hex[:8]}@referrer.test"


def as_session(result: dict) -> Session:
    return Session(result["token"], result["user"])


async def start(live: LiveServer, who: Session, to: list[dict], subject: str = "") -> dict:
    r = await live.http.post("/api/v1/conversations", json={"to": to, "subject": subject},
                             headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def post(live: LiveServer, who: Session, cid: str, body: str) -> dict:
    r = await live.http.post(f"/api/v1/conversations/{cid}/messages",
                             json={"body": body, "client_id": uuid.uuid4().hex},
                             headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def join_new(live: LiveServer, token: str, org_name: str = "Riverside Cardiology",
                   name: str = "Dr Rivera") -> dict:
    r = await live.http.post(f"/api/v1/invites/{token}/accept",
                             json={"name": name, "password": "outside-pass-1",
                                   "org_name": org_name})
    assert r.status_code == 200, r.text
    return r.json()


async def invited_external(live: LiveServer, box: Mailbox, host: Session,
                           *others: Session) -> tuple[Session, str, str]:
    """An outsider invited by `host` (with `others`), joined through the mail's link."""
    email = outside_email()
    conv = await start(live, host, [{"email": email}, *({"user_id": o.user["id"]}
                                                        for o in others)])
    await post(live, host, conv["id"], "hello")
    (mail,) = await mail_to(box, email)
    _, token = link_in(mail)
    joined = await join_new(live, token)
    return as_session(joined), email, conv["id"]


async def test_first_message_invites_then_get_started(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    host = await live_server.signup(org_name="Lakeside Clinic", name="Dr Host")
    colleague = await live_server.add_member(host, name="Nurse Kim")
    email = outside_email()

    conv = await start(live_server, host, [{"email": email}, {"user_id": colleague.user["id"]}],
                       subject="Referral")
    assert conv["invitees"] == [{"email": email, "kind": "external", "invited": False}]
    assert conv["org_name"] == "Lakeside Clinic"
    assert "link" not in str(conv)  # SMTP is configured: the mail carries the link
    # Naming the address sends nothing.
    await asyncio.sleep(2.5)
    assert not [m for m in box.received if m["To"] == email]

    await post(live_server, host, conv["id"], CANARY)
    await post(live_server, colleague, conv["id"], "second message")
    (mail,) = await mail_to(box, email)
    assert "Lakeside Clinic" in mail["Subject"] and "Dr Host" in mail["Subject"]
    raw = mail.as_string()
    assert "PHI-CANARY" not in raw and "Referral" not in raw
    _, token = link_in(mail)
    r = await live_server.http.get(f"/api/v1/conversations/{conv['id']}", headers=host.headers)
    assert r.json()["invitees"] == [{"email": email, "kind": "external", "invited": True}]
    await asyncio.sleep(2.5)  # later messages never send a second mail
    assert len([m for m in box.received if m["To"] == email]) == 1

    r = await live_server.http.get(f"/api/v1/invites/{token}")
    assert r.json() == {"kind": "external", "email": email, "org_name": "Lakeside Clinic",
                        "account_exists": False, "name": None}
    r = await live_server.http.post(f"/api/v1/invites/{token}/accept",
                                    json={"name": "Dr Rivera", "password": "outside-pass-1"})
    assert r.status_code == 422 and "org_name" in r.json()["error"]["details"]["fields"]

    host_ws = await live_server.socket()
    await send(host_ws, {"type": "auth", "token": host.token})
    await expect(host_ws, "ready")
    joined = await join_new(live_server, token)
    assert joined["conversation_ids"] == [conv["id"]]
    external = as_session(joined)
    added = await expect(host_ws, "event")
    assert added["event"]["kind"] == "participant_added"
    assert added["event"]["sender"]["kind"] == "external"

    # Their own organisation, on the free plan, with them as its admin.
    me = (await live_server.http.get("/api/v1/me", headers=external.headers)).json()
    assert me["org"]["name"] == "Riverside Cardiology" and me["user"]["role"] == "admin"
    assert (await live_server.http.get("/api/v1/org", headers=external.headers)
            ).json()["plan"] == "free"
    # The conversation with its history, the host's people marked as its members.
    r = await live_server.http.get(f"/api/v1/conversations/{conv['id']}",
                                   headers=external.headers)
    seen = r.json()
    assert seen["org_name"] == "Lakeside Clinic" and seen["invitees"] == []
    kinds = {p["name"]: p["kind"] for p in seen["participants"]}
    assert kinds == {"Dr Host": "member", "Nurse Kim": "member", "Dr Rivera": "external"}
    r = await live_server.http.get(f"/api/v1/conversations/{conv['id']}/events",
                                   headers=external.headers)
    bodies = [e["body"] for e in r.json()["events"]]
    assert bodies[:2] == [CANARY, "second message"]

    # They answer; the host hears it live, from an external.
    await post(live_server, external, conv["id"], "Thanks, seen.")
    event = await expect(host_ws, "event")
    assert event["event"]["body"] == "Thanks, seen."
    assert event["event"]["sender"]["kind"] == "external"
    await host_ws.close()
    # The link was single use.
    assert (await live_server.http.get(f"/api/v1/invites/{token}")).status_code == 404


async def test_what_an_external_never_sees(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    host = await live_server.signup(org_name="Host Clinic")
    private = await live_server.add_member(host, name="Private Colleague")
    await live_server.http.patch("/api/v1/org", json={"policies": {"no_screenshots": True}},
                                 headers=host.headers)
    team = (await live_server.http.post("/api/v1/teams", json={"name": "Front desk"},
                                        headers=host.headers)).json()
    hidden = await live_server.conversation(host, private)
    external, _, shared = await invited_external(live_server, box, host)

    h = external.headers
    assert (await live_server.http.get(f"/api/v1/conversations/{hidden}", headers=h)
            ).status_code == 404
    assert (await live_server.http.get(f"/api/v1/conversations/{hidden}/events", headers=h)
            ).status_code == 404
    r = await live_server.http.post(f"/api/v1/conversations/{hidden}/messages",
                                    json={"body": "x", "client_id": "x1"}, headers=h)
    assert r.status_code == 404
    inbox = (await live_server.http.get("/api/v1/conversations", headers=h)).json()["items"]
    assert [c["id"] for c in inbox] == [shared]
    members = (await live_server.http.get("/api/v1/members", headers=h)).json()["items"]
    assert {m["name"] for m in members} == {"Dr Rivera"}  # their own organisation only
    assert (await live_server.http.get("/api/v1/teams", headers=h)).json()["items"] == []
    r = await live_server.http.patch(f"/api/v1/teams/{team['id']}", json={"name": "x"},
                                     headers=h)
    assert r.status_code == 404
    r = await live_server.http.patch(f"/api/v1/members/{private.user['id']}",
                                     json={"active": False}, headers=h)
    assert r.status_code == 404
    me = (await live_server.http.get("/api/v1/me", headers=h)).json()
    assert me["policies"] == {}  # the host's no_screenshots binds the host's members
    # A host member they have never shared a conversation with cannot be named by id.
    r = await live_server.http.post("/api/v1/conversations",
                                    json={"to": [{"user_id": private.user["id"]}]}, headers=h)
    assert r.status_code == 404
    # ... and by email it is only an invitation, which tells nothing about the account.
    conv = await start(live_server, external, [{"email": private.user["email"]}])
    assert conv["participants"] == [{"id": external.user["id"], "kind": "member",
                                     "name": "Dr Rivera", "read_seq": 0}]
    assert conv["invitees"][0]["email"] == private.user["email"]


async def test_known_externals_are_added_at_once_both_ways(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    host = await live_server.signup(org_name="Host Clinic", name="Dr Host")
    colleague = await live_server.add_member(host, name="Dr Colleague")
    external, email, _ = await invited_external(live_server, box, host)

    # Someone else of the host organisation names the same address: no invitation now.
    conv = await start(live_server, colleague, [{"email": email.upper()}])
    assert conv["invitees"] == []
    assert {p["name"]: p["kind"] for p in conv["participants"]} == {
        "Dr Colleague": "member", "Dr Rivera": "external"}
    # The external starts one with a host member they share a conversation with: it is
    # the external's organisation's conversation, and the host member is external there.
    conv = await start(live_server, external, [{"user_id": host.user["id"]}])
    assert conv["org_id"] == external.user["org_id"]
    assert {p["name"]: p["kind"] for p in conv["participants"]} == {
        "Dr Rivera": "member", "Dr Host": "external"}
    await asyncio.sleep(2.5)
    assert len([m for m in box.received if m["To"] == email]) == 1


async def test_an_existing_account_signs_in_to_join(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    host = await live_server.signup(org_name="Host Clinic")
    elsewhere = await live_server.signup(org_name="Elsewhere Practice", name="Dr Else")
    email = elsewhere.user["email"]
    conv = await start(live_server, host, [{"email": email}])
    assert conv["participants"][0]["id"] == host.user["id"] and len(conv["participants"]) == 1
    await post(live_server, host, conv["id"], "hello")
    (mail,) = await mail_to(box, email)
    assert "Sign in with your BloomText password" in mail.as_string()
    _, token = link_in(mail)
    r = await live_server.http.get(f"/api/v1/invites/{token}")
    assert r.json()["account_exists"] is True
    r = await live_server.http.post(f"/api/v1/invites/{token}/accept",
                                    json={"password": "not-their-password"})
    assert r.status_code == 401
    r = await live_server.http.post(f"/api/v1/invites/{token}/accept",
                                    json={"password": elsewhere.password})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["id"] == elsewhere.user["id"]
    assert r.json()["conversation_ids"] == [conv["id"]]
    assert await Org.filter(name="Riverside Cardiology").count() == 0
    r = await live_server.http.get(f"/api/v1/conversations/{conv['id']}",
                                   headers=elsewhere.headers)
    assert r.status_code == 200


async def test_policy_off_refuses_outside_people(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    host = await live_server.signup(org_name="Host Clinic")
    external, email, _ = await invited_external(live_server, box, host)
    r = await live_server.http.patch(
        "/api/v1/org", json={"policies": {"allow_external_contacts": False}},
        headers=host.headers)
    assert r.status_code == 200
    for to in ({"email": outside_email()}, {"email": email}, {"user_id": external.user["id"]}):
        r = await live_server.http.post("/api/v1/conversations", json={"to": [to]},
                                        headers=host.headers)
        assert r.status_code == 403, r.text
        assert "allow_external_contacts" in r.json()["error"]["message"]
    # Nor may the outsider start a new one with them; the existing one goes on.
    r = await live_server.http.post("/api/v1/conversations",
                                    json={"to": [{"user_id": host.user["id"]}]},
                                    headers=external.headers)
    assert r.status_code == 403 and "Host Clinic" in r.json()["error"]["message"]


class TestWithoutSmtp:
    @pytest.fixture
    def server_env(self) -> dict[str, str]:
        return {}

    async def test_creator_gets_the_link_and_an_early_accept_cancels_the_mail(
        self, live_server: LiveServer
    ) -> None:
        host = await live_server.signup(org_name="Host Clinic")
        colleague = await live_server.add_member(host)
        ws = await live_server.socket()
        await send(ws, {"type": "auth", "token": colleague.token})
        await expect(ws, "ready")
        email = outside_email()
        conv = await start(live_server, host, [{"email": email},
                                               {"user_id": colleague.user["id"]}])
        (invitee,) = conv["invitees"]
        assert invitee["link"].startswith(live_server.base_url + "/join/bi_")
        frame = await expect(ws, "conversation")  # the others never get the link
        assert "link" not in str(frame)
        await ws.close()
        token = invitee["link"].rsplit("/", 1)[1]
        await join_new(live_server, token)
        mail = await OutboxMessage.get(recipient=email)
        assert mail.status == "cancelled" and mail.payload is None
        await post(live_server, host, conv["id"], "hello")
        await asyncio.sleep(2.5)
        assert (await OutboxMessage.get(recipient=email)).status == "cancelled"
