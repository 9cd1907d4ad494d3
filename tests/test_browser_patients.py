"""Patients in the demo web client (Debian's chromium, driven by Playwright).

An admin on the free plan opens the Directory and is told how to start the trial; with the
trial on, adds a patient (the phone shows in E.164; a DOB in the future is refused next to
the field), searches, imports a CSV with good and bad rows and reads the report, buys a
phone number for a team (a local fake of Twilio's API), filters the inbox by that number,
and starts a patient conversation from the Directory.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.conftest import twilio_env
from tests.fake_twilio import FakeTwilio
from tests.test_browser_client import PASSWORD, SCREENSHOTS, _log_in, _open_page, chromium

pytestmark = pytest.mark.browser

CSV = (
    "first_name,last_name,dob,mrn,email,phone\n"
    "Grace,Hopper,1906-12-09,MRN-1001,grace@example.com,4155550111\n"  # line 2
    "Ada,Byron,13/45/1999,MRN-1002,,4155550112\n"  # line 3: no such date
    "Alan,Turing,1912-06-23,MRN-1003,alan@example.com,\n"  # line 4
    "Nobody,Here,1970-01-01,,,\n"  # line 5: no phone, email or MRN
    "Katherine,Johnson,08/26/1918,,kj@example.com,\n"  # line 6: a US date is fine
)


@pytest.fixture
def server_env(twilio: FakeTwilio) -> dict[str, str]:
    return twilio_env(twilio)


async def _shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"patients-{name}.png"))


async def test_directory_import_numbers_and_patient_conversation(
    live_server, twilio: FakeTwilio
) -> None:
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    email = f"admin.{suffix}@example.com"
    number = f"+1415555{uuid.uuid4().int % 10000:04d}"
    twilio.set_available("415", [(number, "San Francisco", "CA")])
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        r = await http.post("/api/v1/signup", json={
            "org_name": f"Clinic {suffix}", "name": "Alice Admin", "email": email,
            "password": PASSWORD})
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        admin_id = r.json()["user"]["id"]
        r = await http.post("/api/v1/teams", json={"name": "Front desk"}, headers=auth)
        assert r.status_code == 201, r.text
        team_id = r.json()["id"]
        r = await http.put(f"/api/v1/teams/{team_id}/members/{admin_id}", headers=auth)
        assert r.status_code == 204, r.text

    errors: list[str] = []
    async with chromium() as browser:
        _, page = await _open_page(browser, base_url, errors)
        page.on("dialog", lambda dialog: dialog.accept())
        await _log_in(page, email)

        # Free plan: the Directory says how to get the trial; no inbox switcher.
        await page.get_by_test_id("directory-open").click()
        notice = page.get_by_test_id("directory-plan")
        await expect(notice).to_contain_text("7-day trial")
        await expect(page.get_by_test_id("inbox-switch")).to_be_hidden()
        await _shot(page, "1-plan-required")
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
            r = await http.post("/api/v1/org/trial", headers=auth)
            assert r.status_code == 200, r.text
        await page.get_by_test_id("directory-open").click()
        await expect(notice).to_have_count(0)

        # Add a patient: a DOB in the future is refused next to the field.
        await page.get_by_test_id("patient-add").click()
        await page.get_by_test_id("patient-first_name").fill("Ada")
        await page.get_by_test_id("patient-last_name").fill("Lovelace")
        await page.get_by_test_id("patient-dob").fill("2999-01-01")
        await page.get_by_test_id("patient-phone").fill("(415) 555-0123")
        await page.get_by_test_id("patient-email").fill(f"ada.{suffix}@example.com")
        await page.get_by_test_id("patient-save").click()
        await expect(page.get_by_test_id("patient-dob-error")).to_contain_text("future")
        await _shot(page, "2-dob-in-the-future")
        await page.get_by_test_id("patient-dob").fill("1980-12-10")
        await page.get_by_test_id("patient-save").click()
        await expect(page.get_by_test_id("patient-form")).to_have_count(0)
        ada = page.get_by_test_id("patient-row").filter(has_text="Lovelace")
        await expect(ada.get_by_test_id("patient-phone-cell")).to_have_text("+14155550123")
        await expect(ada.get_by_test_id("patient-dob-cell")).to_have_text("1980-12-10")

        # Import: 3 good rows, 2 bad ones (the header is line 1).
        await page.get_by_test_id("directory-import").click()
        await page.get_by_test_id("import-file").set_input_files(
            {"name": "patients.csv", "mimeType": "text/csv", "buffer": CSV.encode()})
        await page.get_by_test_id("import-submit").click()
        report = page.get_by_test_id("import-report")
        await expect(report).to_be_visible()
        await expect(report.get_by_test_id("import-created")).to_have_text("3")
        await expect(report.get_by_test_id("import-updated")).to_have_text("0")
        await expect(report.get_by_test_id("import-rejected")).to_have_text("2")
        rows = report.get_by_test_id("import-error-row")
        await expect(rows).to_have_count(2)
        await expect(rows.get_by_test_id("import-error-line")).to_have_text(["3", "5"])
        await expect(rows.nth(0)).to_contain_text("Date of birth is not a date")
        await expect(rows.nth(1)).to_contain_text("Needs an MRN, a phone or an email")
        progress = page.get_by_test_id("import-progress")
        assert await progress.evaluate("p => p.max > 0 && p.value === p.max")
        await _shot(page, "3-import-report")
        await page.get_by_test_id("import-close").click()

        # Search as you type.
        await expect(page.get_by_test_id("patient-row")).to_have_count(4)
        await page.get_by_test_id("directory-search").fill("lovel")
        await expect(page.get_by_test_id("patient-row")).to_have_count(1)
        await expect(page.get_by_test_id("patient-row")).to_contain_text("Ada Lovelace")
        await page.get_by_test_id("directory-search").fill("5550123")  # phone digits
        await expect(page.get_by_test_id("patient-row")).to_have_count(1)
        await _shot(page, "4-search")

        # Edit, archive (gone from the list), show archived, restore.
        row = page.get_by_test_id("patient-row")
        await row.get_by_test_id("patient-edit").click()
        await expect(page.get_by_test_id("patient-phone")).to_have_value("+14155550123")
        await page.get_by_test_id("patient-mrn").fill("MRN-2001")
        await page.get_by_test_id("patient-save").click()
        await expect(row.get_by_test_id("patient-mrn-cell")).to_have_text("MRN-2001")
        await row.get_by_test_id("patient-edit").click()
        await page.get_by_test_id("patient-archive").click()  # confirm() is accepted
        await expect(row).to_have_count(0)
        await page.get_by_test_id("directory-show-archived").check()
        await expect(row.get_by_test_id("patient-archived")).to_have_text("archived")
        await row.get_by_test_id("patient-edit").click()
        await page.get_by_test_id("patient-restore").click()
        await expect(row.get_by_test_id("patient-archived")).to_have_count(0)
        await page.get_by_test_id("directory-show-archived").uncheck()
        await expect(row).to_have_count(1)

        # Buy a number for the team.
        await page.get_by_test_id("directory-numbers").click()
        await page.get_by_test_id("numbers-area-code").fill("415")
        await page.get_by_test_id("numbers-search").click()
        offer = page.get_by_test_id("numbers-available-row").filter(has_text=number)
        await expect(offer).to_have_count(1)
        await offer.get_by_test_id("numbers-team").select_option(label="Front desk")
        await _shot(page, "5-numbers-available")
        await offer.get_by_test_id("numbers-buy").click()
        owned = page.get_by_test_id("numbers-owned-row").filter(has_text=number)
        await expect(owned.get_by_test_id("numbers-owned-team")).to_have_text("Front desk")
        await _shot(page, "6-numbers-owned")
        # The inbox can now be filtered by team and number.
        switch = page.get_by_test_id("inbox-switch")
        await expect(switch).to_be_visible()
        await expect(switch.locator("option")).to_contain_text(
            ["All conversations", "Internal", "Team: Front desk", f"{number} · Front desk"])

        # Message the patient from the Directory: plain SMS warns; secure SMS starts it.
        await page.get_by_test_id("directory-open").click()
        await page.get_by_test_id("directory-search").fill("Lovelace")
        await expect(page.get_by_test_id("patient-row")).to_have_count(1)
        await page.get_by_test_id("patient-row").get_by_test_id("patient-message").click()
        await page.get_by_test_id("message-channel").select_option("sms")
        await expect(page.get_by_test_id("message-sms-warning")).to_have_text(
            "Normal SMS: the text itself is sent. Never include patient information.")
        await _shot(page, "7-message-sms-warning")
        await page.get_by_test_id("message-channel").select_option("secure_sms")
        await expect(page.get_by_test_id("message-sms-warning")).to_be_hidden()
        await page.get_by_test_id("message-submit").click()
        await expect(page.get_by_test_id("conversation-title")).to_contain_text("Ada Lovelace")
        await expect(page.locator("[data-testid=participant][data-kind=patient]")).to_have_text(
            "Ada Lovelace")
        await expect(page.get_by_test_id("channel-text")).to_have_text(
            f"Secure SMS (a link only) from {number} · Front desk.")
        await expect(page.get_by_test_id("channel-switch")).to_have_value("secure_sms")

        # The New conversation box: a patient by phone (new to the directory), plain SMS.
        await page.get_by_test_id("new-conversation").click()
        await page.get_by_test_id("new-conversation-kind").select_option("patient")
        await page.get_by_test_id("new-conversation-patient-contact").fill("(415) 555-0199")
        await page.get_by_test_id("new-conversation-patient-first-name").fill("Charles")
        await page.get_by_test_id("new-conversation-patient-last-name").fill("Babbage")
        await page.get_by_test_id("new-conversation-channel").select_option("sms")
        await expect(page.get_by_test_id("new-conversation-sms-warning")).to_be_visible()
        await _shot(page, "8-new-patient-conversation")
        await page.get_by_test_id("new-conversation-submit").click()
        await expect(page.get_by_test_id("conversation-title")).to_contain_text("Charles Babbage")
        await expect(page.get_by_test_id("channel-notice")).to_contain_text(
            "Never include patient information.")

        # The number's filter shows it; Internal does not.
        await switch.select_option(label=f"{number} · Front desk")
        items = page.get_by_test_id("conversation-item")
        await expect(items.filter(has_text="Ada Lovelace")).to_have_count(1)
        await switch.select_option(label="Internal")
        await expect(items.filter(has_text="Ada Lovelace")).to_have_count(0)
        await switch.select_option(label="All conversations")
        await expect(items.filter(has_text="Ada Lovelace")).to_have_count(1)
        await _shot(page, "9-patient-conversation")

    assert errors == [], errors


async def test_member_who_leaves_the_team_loses_its_conversations(
    live_server, twilio: FakeTwilio
) -> None:
    """A member sees the patient conversations of their team's number; taken off the team,
    the open one closes and they leave the inbox at once, without a reload."""
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    number = f"+1415555{uuid.uuid4().int % 10000:04d}"
    twilio.set_available("415", [(number, "San Francisco", "CA")])
    bob_email = f"bob.{suffix}@example.com"
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        r = await http.post("/api/v1/signup", json={
            "org_name": f"Clinic {suffix}", "name": "Alice Admin",
            "email": f"alice.{suffix}@example.com", "password": PASSWORD})
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        assert (await http.post("/api/v1/org/trial", headers=auth)).status_code == 200
        r = await http.post("/api/v1/members", json={
            "email": bob_email, "name": "Bob Member", "role": "member", "password": PASSWORD},
            headers=auth)
        assert r.status_code == 201, r.text
        bob_id = r.json().get("user", r.json())["id"]
        r = await http.post("/api/v1/teams", json={"name": "Front desk"}, headers=auth)
        team_id = r.json()["id"]
        r = await http.put(f"/api/v1/teams/{team_id}/members/{bob_id}", headers=auth)
        assert r.status_code == 204, r.text
        r = await http.post("/api/v1/phone-numbers", json={"number": number, "team_id": team_id},
                            headers=auth)
        assert r.status_code == 201, r.text
        number_id = r.json()["id"]
        r = await http.post("/api/v1/conversations", json={
            "to": [{"patient": {"phone": "4155550177", "first_name": "Mary",
                                "last_name": "Somerville"}}],
            "phone_number_id": number_id, "channel": "secure_sms"}, headers=auth)
        assert r.status_code == 201, r.text

        errors: list[str] = []
        async with chromium() as browser:
            _, page = await _open_page(browser, base_url, errors)
            await _log_in(page, bob_email)
            item = page.get_by_test_id("conversation-item").filter(has_text="Mary Somerville")
            await expect(page.get_by_test_id("inbox-switch")).to_be_visible()
            await item.click()
            await expect(page.get_by_test_id("conversation-title")).to_contain_text(
                "Mary Somerville")

            r = await http.delete(f"/api/v1/teams/{team_id}/members/{bob_id}", headers=auth)
            assert r.status_code == 204, r.text
            await expect(item).to_have_count(0)
            await expect(page.get_by_test_id("conversation-title")).to_be_hidden()
            await expect(page.get_by_test_id("inbox-switch")).to_be_hidden()
            await _shot(page, "10-member-removed")
        assert errors == [], errors
