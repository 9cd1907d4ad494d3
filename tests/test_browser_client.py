"""The demo web client (client_demo/) in Debian's chromium, driven by Playwright.

Two people of one organisation, each in their own browser context: A writes, B sees the
message arrive live with an unread badge, opens the conversation, and A then sees
"Seen by B" under the message.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT_MS = 10_000
# Set TEST_SCREENSHOTS_DIR to keep a picture of each page the tests drive.
SCREENSHOTS = os.environ.get("TEST_SCREENSHOTS_DIR")
PASSWORD = "correct-horse-battery-staple"


async def _api_setup(base_url: str, suffix: str) -> dict:
    """Signs up an organisation, adds a second member, and starts a conversation."""
    admin_email = f"alice.{suffix}@example.com"
    member_email = f"bob.{suffix}@example.com"
    subject = f"Rounds {suffix}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        r = await http.post(
            "/api/v1/signup",
            json={
                "org_name": f"Clinic {suffix}",
                "name": "Alice Admin",
                "email": admin_email,
                "password": PASSWORD,
            },
        )
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}

        r = await http.post(
            "/api/v1/members",
            json={
                "email": member_email,
                "name": "Bob Member",
                "role": "member",
                "password": PASSWORD,
            },
            headers=auth,
        )
        assert r.status_code == 201, r.text
        created = r.json()
        member = created.get("user", created)
        assert member.get("id"), created

        r = await http.post(
            "/api/v1/conversations",
            json={"to": [{"user_id": member["id"]}], "subject": subject},
            headers=auth,
        )
        assert r.status_code == 201, r.text
    return {
        "a_email": admin_email,
        "b_email": member_email,
        "b_name": "Bob Member",
        "subject": subject,
    }


async def _open_page(
    browser: Browser, base_url: str, errors: list[str]
) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(base_url=base_url)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    return context, page


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, closed at the end."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "install Debian's chromium: apt-get install chromium, or run scripts/test as root"
        )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def _log_in(page: Page, email: str) -> None:
    await page.goto("/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    # Logged in and connected to /ws.
    await expect(page.get_by_test_id("connection-status")).to_have_text("Online", timeout=WAIT_MS)


async def test_live_message_unread_badge_and_read_receipt(live_server):
    base_url = live_server.base_url.rstrip("/")
    setup = await _api_setup(base_url, uuid.uuid4().hex[:8])
    subject = setup["subject"]
    text = "hello from A"
    errors: list[str] = []

    async with chromium() as browser:
        _, page_a = await _open_page(browser, base_url, errors)
        _, page_b = await _open_page(browser, base_url, errors)
        await _log_in(page_a, setup["a_email"])
        await _log_in(page_b, setup["b_email"])
        # Proves later that B's page was never reloaded.
        await page_b.evaluate("window.__bloomtextTestMarker = 'still-here'")

        # A opens the conversation and sends.
        item_a = page_a.get_by_test_id("conversation-item").filter(has_text=subject)
        await item_a.click()
        await expect(page_a.get_by_test_id("conversation-title")).to_have_text(
            subject, timeout=WAIT_MS
        )
        await page_a.get_by_label("Message", exact=True).fill(text)
        await page_a.get_by_test_id("send").click()
        sent = page_a.get_by_test_id("message").filter(has_text=text)
        await expect(sent).to_have_count(1, timeout=WAIT_MS)
        await expect(sent).to_have_attribute("data-status", "sent", timeout=WAIT_MS)

        # B sees it arrive live: unread badge 1 and the preview, before opening.
        item_b = page_b.get_by_test_id("conversation-item").filter(has_text=subject)
        await expect(item_b.get_by_test_id("unread-count")).to_have_text("1", timeout=WAIT_MS)
        await expect(item_b).to_contain_text(text, timeout=WAIT_MS)
        assert await page_b.evaluate("window.__bloomtextTestMarker") == "still-here"

        # B opens it: the message is there and the badge is gone.
        await item_b.click()
        received = page_b.get_by_test_id("message").filter(has_text=text)
        await expect(received).to_have_count(1, timeout=WAIT_MS)
        await expect(received).to_be_visible(timeout=WAIT_MS)
        await expect(item_b.get_by_test_id("unread-count")).to_have_count(0, timeout=WAIT_MS)

        # A sees B's read receipt under the message, live.
        await expect(sent.get_by_test_id("receipt")).to_have_text(
            f"Seen by {setup['b_name']}", timeout=WAIT_MS
        )
        await expect(page_a.get_by_test_id("message").filter(has_text=text)).to_have_count(1)

    assert errors == [], errors


async def test_join_page_sets_up_an_invited_member(live_server):
    """An invitation link opened in the browser: name, password, Get started, and in."""
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        r = await http.post("/api/v1/signup", json={
            "org_name": f"Clinic {suffix}", "name": "Alice Admin",
            "email": f"alice.{suffix}@example.com", "password": PASSWORD})
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await http.post("/api/v1/members", json={
            "email": f"new.{suffix}@example.com", "name": "Nora New"}, headers=auth)
        assert r.status_code == 201, r.text
        link = r.json()["link"]  # no SMTP in this test server: the admin gets the link
    path = link.removeprefix(base_url)
    errors: list[str] = []
    async with chromium() as browser:
        _, page = await _open_page(browser, base_url, errors)
        await page.goto(path)
        await expect(page.get_by_test_id("join-intro")).to_contain_text(f"Clinic {suffix}")
        await expect(page.get_by_test_id("join-name")).to_have_value("Nora New")
        await page.get_by_test_id("join-password").fill(PASSWORD)
        await page.get_by_test_id("join-submit").click()
        await expect(page.get_by_test_id("connection-status")).to_have_text(
            "Online", timeout=WAIT_MS
        )
        # The link worked once: opened again, the page says so.
        await page.goto(path)
        await expect(page.get_by_test_id("join-gone")).to_be_visible()
    assert errors == [], errors


async def test_admin_manages_the_organisation(live_server):
    """An admin invites someone (no mail server: the link is shown), makes a team, puts
    a member in it, and deactivates another member, all from the Organisation panel."""
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    setup = await _api_setup(base_url, suffix)  # Alice (admin) and Bob (member)
    errors: list[str] = []
    async with chromium() as browser:
        _, page = await _open_page(browser, base_url, errors)
        page.on("dialog", lambda dialog: dialog.accept())
        await _log_in(page, setup["a_email"])
        await page.get_by_test_id("org-open").click()
        await expect(page.get_by_test_id("org-plan")).to_have_text(
            "Free plan · 2 of 5 seats used")

        await page.get_by_test_id("invite-email").fill(f"carol.{suffix}@example.com")
        await page.get_by_test_id("invite-name").fill("Carol New")
        await page.get_by_test_id("invite-submit").click()
        await expect(page.get_by_test_id("invite-result")).to_contain_text("/join/bi_")
        await expect(page.get_by_test_id("org-plan")).to_have_text(
            "Free plan · 3 of 5 seats used")  # the invitation holds a seat

        await page.get_by_test_id("team-name").fill("Front desk")
        await page.get_by_test_id("team-create").click()
        team = page.get_by_test_id("org-team").filter(has_text="Front desk")
        await expect(team).to_have_count(1)
        await team.get_by_test_id("team-add").select_option(label=setup["b_name"])
        await expect(team.get_by_test_id("team-member")).to_contain_text(setup["b_name"])

        bob = page.get_by_test_id("org-member").filter(has_text=setup["b_name"])
        await bob.get_by_test_id("deactivate").click()
        await expect(page.get_by_test_id("org-member").filter(
            has_text=setup["b_name"])).to_have_count(0)
        await expect(page.get_by_test_id("org-plan")).to_have_text(
            "Free plan · 2 of 5 seats used")
        if SCREENSHOTS:
            await page.screenshot(path=str(Path(SCREENSHOTS) / "org-panel.png"),
                                  full_page=True)
    assert errors == [], errors
