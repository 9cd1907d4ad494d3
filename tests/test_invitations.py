"""Member invitations: the mail through a real SMTP server, the link, single use, resend,
expiry, seats, the page, and secrets kept out of the access log."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta

import pytest

from server.cli import RedactSecretPaths
from server.ids import utcnow
from storage.models import Invitation
from tests.conftest import LiveServer, Session, smtp_env
from tests.mail import Mailbox

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/join/(bi_[A-Za-z0-9_-]+))")


@pytest.fixture
def server_env(mailbox: tuple[Mailbox, int]) -> dict[str, str]:
    return {**smtp_env(mailbox), "SEATS_FREE": "3"}


async def invite(live: LiveServer, admin: Session, email: str, name: str = "Dr Lee") -> dict:
    r = await live.http.post("/api/v1/members", json={"email": email, "name": name},
                             headers=admin.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def mail_to(box: Mailbox, email: str, count: int = 1) -> list:
    for _ in range(200):
        mails = [m for m in box.received if m["To"] == email]
        if len(mails) >= count:
            return mails
        await asyncio.sleep(0.05)
    raise AssertionError(f"no mail to {email}")


def link_in(mail) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    text = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_content()
    html = next(p for p in mail.walk() if p.get_content_type() == "text/html").get_content()
    match = LINK.search(text)
    assert match and match.group(1) in html, text
    return match.group(1), match.group(2)


async def test_invitation_by_email_then_join(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    admin = await live_server.signup(org_name="Lakeside Clinic")
    email = f"lee-{admin.user['id'][-6:].lower()}@partner.test"
    invitation = await invite(live_server, admin, email)
    assert invitation["kind"] == "member" and invitation["email"] == email
    assert "link" not in invitation  # the mail carries it
    (mail,) = await mail_to(box, email)
    assert "Lakeside Clinic" in mail["Subject"]
    link, token = link_in(mail)
    assert link.startswith(live_server.base_url + "/join/")

    r = await live_server.http.get(f"/api/v1/invites/{token}")
    assert r.status_code == 200
    assert r.json() == {"kind": "member", "email": email, "org_name": "Lakeside Clinic",
                        "account_exists": False, "name": "Dr Lee"}
    page = await live_server.http.get(f"/join/{token}")
    assert page.status_code == 200 and "Get started" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]

    r = await live_server.http.post(f"/api/v1/invites/{token}/accept",
                                    json={"name": "Dr Ana Lee", "password": "short"})
    assert r.status_code == 422 and "password" in r.json()["error"]["details"]["fields"]
    r = await live_server.http.post(f"/api/v1/invites/{token}/accept",
                                    json={"name": "Dr Ana Lee", "password": "long-enough-1"})
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["user"]["name"] == "Dr Ana Lee" and session["user"]["role"] == "member"
    r = await live_server.http.get("/api/v1/me",
                                   headers={"Authorization": f"Bearer {session['token']}"})
    assert r.json()["org"]["name"] == "Lakeside Clinic"
    r = await live_server.http.post("/api/v1/auth/login",
                                    json={"email": email, "password": "long-enough-1"})
    assert r.status_code == 200

    # Single use: the link is gone, the same way an unknown one is.
    for path in (f"/api/v1/invites/{token}", "/api/v1/invites/bi_" + "x" * 43):
        assert (await live_server.http.get(path)).status_code == 404
    r = await live_server.http.post(f"/api/v1/invites/{token}/accept",
                                    json={"name": "Again", "password": "long-enough-1"})
    assert r.status_code == 404


async def test_resend_revokes_the_old_link_and_seats_count_invitations(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    admin = await live_server.signup()
    tag = admin.user["id"][-6:].lower()
    first_email = f"first-{tag}@partner.test"
    await invite(live_server, admin, first_email)
    await invite(live_server, admin, first_email)  # resend
    # The two mails may arrive in either order (the outbox sends a batch concurrently):
    # of their two links, exactly one still works.
    mails = await mail_to(box, first_email, 2)
    tokens = [link_in(mail)[1] for mail in mails]
    statuses = [(await live_server.http.get(f"/api/v1/invites/{t}")).status_code
                for t in tokens]
    assert sorted(statuses) == [200, 404], statuses
    new_token = tokens[statuses.index(200)]

    r = await live_server.http.get("/api/v1/org", headers=admin.headers)
    assert r.json()["seats"] == {"used": 2, "limit": 3}  # the admin and one invitation
    await invite(live_server, admin, f"second-{tag}@partner.test")
    r = await live_server.http.post("/api/v1/members",
                                    json={"email": f"third-{tag}@partner.test", "name": "X"},
                                    headers=admin.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "seat_limit_reached"

    # An expired invitation neither works nor holds its seat.
    await Invitation.filter(email=first_email).update(expires_at=utcnow() - timedelta(seconds=1))
    assert (await live_server.http.get(f"/api/v1/invites/{new_token}")).status_code == 404
    r = await live_server.http.get("/api/v1/org", headers=admin.headers)
    assert r.json()["seats"]["used"] == 2


async def test_only_admins_invite(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    r = await live_server.http.post("/api/v1/members",
                                    json={"email": "x@partner.test", "name": "X"},
                                    headers=member.headers)
    assert r.status_code == 403
    r = await live_server.http.post("/api/v1/members", json={"email": member.user["email"],
                                    "name": "X"}, headers=admin.headers)
    assert r.status_code == 409  # one account per email


class TestWithoutSmtp:
    @pytest.fixture
    def server_env(self) -> dict[str, str]:
        return {}

    async def test_the_admin_gets_the_link(
        self, live_server: LiveServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        admin = await live_server.signup()
        with caplog.at_level(logging.INFO):
            invitation = await invite(live_server, admin, "nomail@partner.test")
            token = invitation["link"].rsplit("/", 1)[1]
            r = await live_server.http.get(f"/api/v1/invites/{token}")
            assert r.status_code == 200
            for _ in range(100):  # the worker logs that the mail was not sent
                if "not sent" in caplog.text:
                    break
                await asyncio.sleep(0.05)
        server_lines = "\n".join(r.getMessage() for r in caplog.records
                                  if not r.name.startswith("httpx"))  # the test's own client
        assert "not sent" in server_lines and token not in server_lines


def test_access_log_never_shows_a_link_secret() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/join/bi_secretsecretsecretsecret?x=1", "1.1", 200), None,
    )
    assert RedactSecretPaths().filter(record)
    assert "secret" not in record.getMessage() and "/join/<redacted>?x=1" in record.getMessage()
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/api/v1/invites/bi_secretsecretsecret/accept", "1.1", 200),
        None,
    )
    RedactSecretPaths().filter(record)
    assert "/api/v1/invites/<redacted>/accept" in record.getMessage()


async def test_admin_sees_a_failed_invitation_and_revokes_one(
    live_server: LiveServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    admin = await live_server.signup()
    tag = admin.user["id"][-6:].lower()
    box.fail, box.code = 1, "550 5.1.1 mailbox unavailable"
    try:
        bounced = await invite(live_server, admin, f"bounce-{tag}@partner.test")
        for _ in range(100):
            r = await live_server.http.get("/api/v1/invitations", headers=admin.headers)
            listed = {i["id"]: i for i in r.json()["items"]}
            if listed[bounced["id"]]["delivery"]["status"] == "failed":
                break
            await asyncio.sleep(0.1)
    finally:
        box.fail, box.code = 0, Mailbox.code
    delivery = listed[bounced["id"]]["delivery"]
    assert delivery["status"] == "failed" and "550" in delivery["error"]
    assert listed[bounced["id"]]["expired"] is False

    other = await invite(live_server, admin, f"other-{tag}@partner.test")
    (mail,) = await mail_to(box, f"other-{tag}@partner.test")
    _, token = link_in(mail)
    seats = (await live_server.http.get("/api/v1/org", headers=admin.headers)).json()["seats"]
    r = await live_server.http.delete(f"/api/v1/invitations/{other['id']}",
                                      headers=admin.headers)
    assert r.status_code == 204
    assert (await live_server.http.get(f"/api/v1/invites/{token}")).status_code == 404
    after = (await live_server.http.get("/api/v1/org", headers=admin.headers)).json()["seats"]
    assert after["used"] == seats["used"] - 1
    r = await live_server.http.delete(f"/api/v1/invitations/{other['id']}",
                                      headers=admin.headers)
    assert r.status_code == 404
    stranger = await live_server.signup()
    r = await live_server.http.delete(f"/api/v1/invitations/{bounced['id']}",
                                      headers=stranger.headers)
    assert r.status_code == 404
    member = await live_server.add_member(admin)
    r = await live_server.http.get("/api/v1/invitations", headers=member.headers)
    assert r.status_code == 403
