"""Someone outside the organisation, through the demo web client in Debian's chromium.

A clinic member starts a conversation with an outside address from the New conversation
box and writes the first message; the invitation mail (read from a real SMTP server)
carries a link, the outsider opens it in their own browser, sets up their account and
organisation, lands in the conversation with its history, and answers; the member sees
the answer live, marked as coming from outside.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.conftest import smtp_env
from tests.mail import Mailbox
from tests.test_browser_client import (
    PASSWORD,
    SCREENSHOTS,
    WAIT_MS,
    _log_in,
    _open_page,
    chromium,
)
from tests.test_invitations import link_in, mail_to

pytestmark = pytest.mark.browser


@pytest.fixture
def server_env(mailbox: tuple[Mailbox, int]) -> dict[str, str]:
    return smtp_env(mailbox)


async def _sign_up(http: httpx.AsyncClient, org_name: str, name: str, email: str
                   ) -> dict[str, str]:
    """A new organisation with `email` as its admin; their Authorization header."""
    r = await http.post("/api/v1/signup", json={
        "org_name": org_name, "name": name, "email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"externals-{name}.png"))


async def test_outside_contact_invited_joins_and_answers(
    live_server, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    host_org = f"Lakeside Clinic {suffix}"
    host_email = f"host.{suffix}@example.com"
    outside = f"dr.rivera.{suffix}@referrer.example"
    subject = f"Referral {suffix}"
    first = f"Referral for review, ref {suffix}"
    reply = f"Thanks, I will see them Tuesday ({suffix})"
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        await _sign_up(http, host_org, "Dr Host", host_email)

    errors: list[str] = []
    async with chromium() as browser:
        _, host = await _open_page(browser, base_url, errors)
        await _log_in(host, host_email)

        # New conversation with an outside address: the box says how they are invited.
        await host.get_by_test_id("new-conversation").click()
        await expect(host.get_by_test_id("new-conversation-note")).to_contain_text(
            "get an invitation by email when you send the first message")
        await host.get_by_test_id("new-conversation-emails").fill(outside)
        await host.get_by_test_id("new-conversation-subject").fill(subject)
        await _shot(host, "1-new-conversation")
        await host.get_by_test_id("new-conversation-submit").click()

        await expect(host.get_by_test_id("conversation-title")).to_have_text(subject)
        invitee = host.get_by_test_id("invitee")
        await expect(invitee).to_have_text(
            f"{outside} (invitation goes with the first message)")
        notice = host.get_by_test_id("external-notice")
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("Sharing patient information here is a disclosure")
        item = host.get_by_test_id("conversation-item").filter(has_text=subject)
        await expect(item.get_by_test_id("external-mark")).to_be_visible()
        await expect(host.get_by_test_id("org-switch")).to_be_hidden()  # one organisation
        await _shot(host, "2-host-invitee")

        # The first message sends the invitation.
        await host.get_by_label("Message", exact=True).fill(first)
        await host.get_by_test_id("send").click()
        sent = host.get_by_test_id("message").filter(has_text=first)
        await expect(sent).to_have_attribute("data-status", "sent")

        (mail,) = await mail_to(box, outside)
        raw = mail.as_string()
        assert host_org in mail["Subject"]
        assert first not in raw and subject not in raw  # no message text, no subject
        link, _token = link_in(mail)
        # The conversation notices the mail has gone.
        await expect(invitee).to_have_text(f"{outside} (invited)", timeout=WAIT_MS)

        # The outsider opens the link in their own browser and gets started.
        _, guest = await _open_page(browser, base_url, errors)
        await guest.goto(link.removeprefix(base_url))
        await expect(guest.get_by_test_id("join-intro")).to_have_text(
            f"{host_org} invited you to a secure conversation.")
        await expect(guest.get_by_test_id("join-account")).to_be_hidden()
        await guest.get_by_test_id("join-name").fill("Dr Rivera")
        await guest.get_by_test_id("join-password").fill(PASSWORD)
        await guest.get_by_test_id("join-org").fill("Riverside Cardiology")
        await _shot(guest, "3-join")
        await guest.get_by_role("button", name="Get started").click()

        # In the conversation straight away, with its history.
        await expect(guest.get_by_test_id("connection-status")).to_have_text("Online")
        await expect(guest).to_have_url(re.compile(r"/#c=cv_"))
        await expect(guest.get_by_test_id("conversation-title")).to_have_text(subject)
        await expect(guest.get_by_test_id("message").filter(has_text=first)).to_be_visible()
        await expect(guest.get_by_test_id("org-name")).to_have_text("Riverside Cardiology")
        # The host is shown as a member of the host organisation.
        host_person = guest.get_by_test_id("participant").filter(has_text="Dr Host")
        await expect(host_person.get_by_test_id("org-mark")).to_have_text(host_org)
        from_host = guest.get_by_test_id("message").filter(has_text=first)
        await expect(from_host.get_by_test_id("org-mark")).to_have_text(host_org)
        await expect(guest.get_by_test_id("external-notice")).to_be_visible()
        switch = guest.get_by_test_id("org-switch")
        await expect(switch).to_be_visible()
        await expect(switch).to_contain_text(host_org)
        await expect(switch).to_contain_text("Riverside Cardiology")

        # The host sees them join; the invitee becomes an external participant.
        await expect(host.get_by_test_id("system-event").filter(
            has_text="Dr Rivera joined")).to_have_count(1)
        rivera = host.get_by_test_id("participant").filter(has_text="Dr Rivera")
        await expect(rivera.get_by_test_id("external-mark")).to_have_text("external")
        await expect(host.get_by_test_id("invitee")).to_have_count(0)

        # The outsider answers; the host sees it live, marked as external.
        await guest.get_by_label("Message", exact=True).fill(reply)
        await guest.get_by_test_id("send").click()
        await expect(guest.get_by_test_id("message").filter(has_text=reply)).to_have_attribute(
            "data-status", "sent")
        answer = host.get_by_test_id("message").filter(has_text=reply)
        await expect(answer).to_be_visible()
        await expect(answer.get_by_test_id("external-mark")).to_have_text("external")
        await _shot(guest, "4-guest-conversation")
        await _shot(host, "5-host-reply")

        # The org switch filters the inbox by organisation.
        await switch.select_option(label="Riverside Cardiology (yours)")
        await expect(guest.get_by_test_id("conversation-item")).to_have_count(0)
        await switch.select_option(label=host_org)
        await expect(guest.get_by_test_id("conversation-item")).to_have_count(1)

    assert errors == [], errors


@pytest.mark.parametrize("server_env", [{}])  # no mail server: the creator gets the link
async def test_link_without_mail_existing_account_and_policy(live_server) -> None:
    """No SMTP: the creator copies the invitation link from the conversation; someone who
    already has an account signs in with it; a closed organisation is told why."""
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    host_org = f"Hillside Clinic {suffix}"
    host_email = f"host.{suffix}@example.com"
    known = f"dr.osei.{suffix}@other.example"
    subject = f"Second opinion {suffix}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        host_auth = await _sign_up(http, host_org, "Dr Host", host_email)
        await _sign_up(http, "Osei Pediatrics", "Dr Osei", known)

        errors: list[str] = []
        async with chromium() as browser:
            _, host = await _open_page(browser, base_url, errors)
            await _log_in(host, host_email)
            await host.get_by_test_id("new-conversation").click()
            await host.get_by_test_id("new-conversation-emails").fill(f"{known}, not-an-address")
            await host.get_by_test_id("new-conversation-submit").click()
            await expect(host.get_by_test_id("new-conversation-error")).to_have_text(
                "Not an email address: not-an-address")
            await host.get_by_test_id("new-conversation-emails").fill(known)
            await host.get_by_test_id("new-conversation-subject").fill(subject)
            await host.get_by_test_id("new-conversation-submit").click()
            await expect(host.get_by_test_id("conversation-title")).to_have_text(subject)
            link_box = host.get_by_test_id("invite-link")
            await expect(link_box).to_have_count(1)
            link = await link_box.input_value()
            assert link.startswith(f"{base_url}/join/"), link
            await _shot(host, "6-link-without-mail")

            _, guest = await _open_page(browser, base_url, errors)
            await guest.goto(link.removeprefix(base_url))
            await expect(guest.get_by_test_id("join-account")).to_have_text(
                "You already have a BloomText account: sign in to join.")
            await expect(guest.get_by_test_id("join-name")).to_be_hidden()
            await expect(guest.get_by_test_id("join-org")).to_be_hidden()
            await guest.get_by_test_id("join-password").fill("wrong-password-123")
            await guest.get_by_role("button", name="Sign in and join").click()
            await expect(guest.get_by_test_id("join-error")).to_have_text(
                "Wrong password for this account.")
            await guest.get_by_test_id("join-password").fill(PASSWORD)
            await guest.get_by_role("button", name="Sign in and join").click()
            await expect(guest.get_by_test_id("conversation-title")).to_have_text(subject)
            await expect(guest.get_by_test_id("org-name")).to_have_text("Osei Pediatrics")
            await expect(host.get_by_test_id("system-event").filter(
                has_text="Dr Osei joined")).to_have_count(1)
            await expect(host.get_by_test_id("invite-links")).to_be_hidden()

            # An organisation that keeps to itself: the box says so, and so does the error.
            r = await http.patch("/api/v1/org", json={
                "policies": {"allow_external_contacts": False}}, headers=host_auth)
            assert r.status_code == 200, r.text
            await host.reload()
            await expect(host.get_by_test_id("connection-status")).to_have_text("Online")
            await host.get_by_test_id("new-conversation").click()
            await expect(host.get_by_test_id("new-conversation-note")).to_contain_text(
                "does not allow conversations with people outside it")
            await host.get_by_test_id("new-conversation-emails").fill(
                f"someone.{suffix}@elsewhere.example")
            await host.get_by_test_id("new-conversation-submit").click()
            await expect(host.get_by_test_id("new-conversation-error")).to_contain_text(
                "allow_external_contacts")
            await _shot(host, "7-policy")
        assert errors == [], errors
