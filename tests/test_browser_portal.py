"""The whole patient story in Debian's chromium (Playwright): a staff member sends a secure
SMS from the web client; the local fake of Twilio's API receives a link and no message
text; the patient opens the link in another browser context, confirms their DOB, reads,
and replies with the form; the staff page shows the patient-viewed mark and the reply
live, and the delivery state."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.conftest import twilio_env
from tests.fake_twilio import FakeTwilio
from tests.test_browser_client import PASSWORD, SCREENSHOTS, _log_in, _open_page, chromium
from tests.test_patient_delivery import sms_to

pytestmark = pytest.mark.browser

CANARY = "CANARY-A1C-9.1"


@pytest.fixture
def server_env(twilio: FakeTwilio) -> dict[str, str]:
    return twilio_env(twilio)


async def _shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"portal-{name}.png"))


async def test_secure_sms_portal_reply_and_patient_viewed(live_server, twilio: FakeTwilio
                                                          ) -> None:
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    email = f"nurse.{suffix}@example.com"
    number = f"+1415555{uuid.uuid4().int % 10000:04d}"
    phone = f"+1628555{uuid.uuid4().int % 10000:04d}"
    twilio.set_available("415", [(number, "San Francisco", "CA")])
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        r = await http.post("/api/v1/signup", json={
            "org_name": f"Lakeside {suffix}", "name": "Nina Nurse", "email": email,
            "password": PASSWORD})
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        me = r.json()["user"]["id"]
        assert (await http.post("/api/v1/org/trial", headers=auth)).status_code == 200
        team = (await http.post("/api/v1/teams", json={"name": "Front desk"},
                                headers=auth)).json()["id"]
        await http.put(f"/api/v1/teams/{team}/members/{me}", headers=auth)
        r = await http.post("/api/v1/phone-numbers", json={"number": number, "team_id": team},
                            headers=auth)
        assert r.status_code == 201, r.text
        number_id = r.json()["id"]
        r = await http.post("/api/v1/patients", json={
            "first_name": "Paula", "last_name": "Patient", "dob": "1984-02-29",
            "phone": phone}, headers=auth)
        patient = r.json()
        r = await http.post("/api/v1/conversations", json={
            "to": [{"patient_id": patient["id"]}], "phone_number_id": number_id,
            "channel": "secure_sms", "subject": "Lab results"}, headers=auth)
        assert r.status_code == 201, r.text

    errors: list[str] = []
    async with chromium() as browser:
        _, staff = await _open_page(browser, base_url, errors)
        await _log_in(staff, email)
        await staff.get_by_test_id("conversation-item").filter(has_text="Lab results").click()
        await expect(staff.get_by_test_id("channel-switch")).to_have_value("secure_sms")
        text = f"Your A1C is {CANARY}. Call us to talk it through."
        await staff.get_by_label("Message", exact=True).fill(text)
        await staff.get_by_test_id("send").click()
        sent = staff.get_by_test_id("message").filter(has_text=text)
        await expect(sent.get_by_test_id("deliveries")).to_contain_text("SMS: sent")

        (sms,) = await sms_to(twilio, phone)
        assert CANARY not in sms.body
        link = re.search(r"https?://\S+/p/\S+", sms.body)
        assert link, sms.body
        await _shot(staff, "1-sent")

        # The patient, in their own browser: DOB first (a wrong one is said so), then the
        # conversation; the reply form works without any script.
        _, patient_page = await _open_page(browser, base_url, errors)
        await patient_page.goto(link.group(0).removeprefix(base_url))
        await expect(patient_page.get_by_role("heading", name="Secure message")).to_be_visible()
        await patient_page.get_by_label("Date of birth").fill("1984-03-01")
        await patient_page.get_by_role("button", name="Continue").click()
        await expect(patient_page.get_by_role("alert")).to_contain_text("does not match")
        await patient_page.get_by_label("Date of birth").fill("1984-02-29")
        await patient_page.get_by_role("button", name="Continue").click()
        await expect(patient_page.locator("#messages")).to_contain_text(CANARY)
        await _shot(patient_page, "2-portal")

        # Staff see the patient-viewed mark under the message, live.
        await expect(sent.get_by_test_id("patient-viewed")).to_have_text(
            "Viewed by Paula Patient")

        await patient_page.get_by_label("Your reply").fill("Thanks, I will call tomorrow.")
        await patient_page.get_by_role("button", name="Send", exact=True).click()
        await expect(patient_page.locator("#messages")).to_contain_text(
            "Thanks, I will call tomorrow.")
        reply = staff.get_by_test_id("message").filter(has_text="Thanks, I will call tomorrow.")
        await expect(reply).to_have_count(1)

        # A later staff message reaches the open portal page live (its script's socket).
        await staff.get_by_label("Message", exact=True).fill("Talk tomorrow then.")
        await staff.get_by_test_id("send").click()
        await expect(patient_page.locator("#messages")).to_contain_text("Talk tomorrow then.")
        later = staff.get_by_test_id("message").filter(has_text="Talk tomorrow then.")
        await expect(later.get_by_test_id("patient-viewed")).to_have_count(1)
        await expect(sent.get_by_test_id("patient-viewed")).to_have_count(0)
        await _shot(staff, "3-viewed")
    assert errors == [], errors
