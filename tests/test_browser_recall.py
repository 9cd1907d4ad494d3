"""Recall, files and the audit trail through the demo web client, in Debian's chromium.

Two people of one organisation in one conversation, each in their own browser context:
A (an admin) writes a message and sends a small PNG from the composer (a refused file
first: the toast says why); B sees both and downloads the file with its name and bytes;
A recalls the message from its menu, by keyboard, after the confirmation; B sees
"Message recalled" live, without a reload. A then opens the Audit view, finds the
`message.recall` entry, filters on it and exports the CSV.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path

import pytest
from playwright.async_api import Dialog, Page, expect

from tests.test_browser_client import (
    SCREENSHOTS,
    _api_setup,
    _log_in,
    _open_page,
    chromium,
)

pytestmark = pytest.mark.browser

UPLOAD_LIMIT = 64 * 1024  # small, so that a too-large file is quick to make


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}


def _png() -> bytes:
    """A real 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\x2f\x7d\x5b")) + chunk(b"IEND", b""))


async def _shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"recall-{name}.png"))


async def test_recall_files_and_audit(live_server) -> None:
    base_url = live_server.base_url.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    setup = await _api_setup(base_url, suffix)  # Alice (admin) and Bob, one conversation
    subject = setup["subject"]
    text = f"Lab results are in ({suffix})"
    caption = f"Scan attached ({suffix})"
    png = _png()
    errors: list[str] = []

    async with chromium() as browser:
        _, page_a = await _open_page(browser, base_url, errors)
        _, page_b = await _open_page(browser, base_url, errors)
        questions: list[str] = []

        async def confirm(dialog: Dialog) -> None:
            questions.append(dialog.message)
            await dialog.accept()

        page_a.on("dialog", confirm)
        await _log_in(page_a, setup["a_email"])
        await _log_in(page_b, setup["b_email"])
        await page_b.evaluate("window.__bloomtextTestMarker = 'still-here'")

        # A writes the message.
        await page_a.get_by_test_id("conversation-item").filter(has_text=subject).click()
        await page_a.get_by_label("Message", exact=True).fill(text)
        await page_a.get_by_test_id("send").click()
        sent = page_a.get_by_test_id("message").filter(has_text=text)
        await expect(sent).to_have_attribute("data-status", "sent")
        message_id = await sent.get_attribute("data-event-id")
        assert message_id

        # Refused files: the server's reason in the toast (422, 413), the file kept staged.
        attach = page_a.get_by_label("Attach a file")
        toast = page_a.locator("#toast")
        await attach.set_input_files(files=[
            {"name": "tool.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90"}])
        await expect(page_a.get_by_test_id("attach-name")).to_contain_text("tool.exe")
        await page_a.get_by_test_id("send").click()
        await expect(toast).to_contain_text("Could not send tool.exe: this type of file is not")
        await expect(page_a.get_by_test_id("attach-name")).to_contain_text("tool.exe")
        await attach.set_input_files(files=[
            {"name": "big.txt", "mimeType": "text/plain", "buffer": b"x" * (UPLOAD_LIMIT * 3)}])
        await expect(page_a.get_by_test_id("attach-name")).to_contain_text("big.txt")
        await page_a.get_by_test_id("send").click()
        await expect(toast).to_contain_text("Could not send big.txt: the file is too large")
        await page_a.get_by_test_id("attach-remove").click()
        await expect(page_a.get_by_test_id("attach-staged")).to_be_hidden()

        # The PNG, with the text typed in the box, as one message.
        await attach.set_input_files(files=[
            {"name": "scan.png", "mimeType": "image/png", "buffer": png}])
        await page_a.get_by_label("Message", exact=True).fill(caption)
        await _shot(page_a, "1-attached")
        await page_a.get_by_test_id("send").click()
        with_file = page_a.get_by_test_id("message").filter(has_text=caption)
        await expect(with_file.get_by_test_id("attachment")).to_have_text(
            f"scan.png ({len(png)} B)")
        await expect(page_a.get_by_test_id("attach-staged")).to_be_hidden()

        # B sees both and downloads the file (fetched with the token, saved as a Blob).
        await page_b.get_by_test_id("conversation-item").filter(has_text=subject).click()
        message_b = page_b.locator(f'[data-testid="message"][data-event-id="{message_id}"]')
        await expect(message_b).to_contain_text(text)
        file_b = page_b.get_by_test_id("message").filter(has_text=caption).get_by_role(
            "button", name="Download scan.png")
        async with page_b.expect_download() as info:
            await file_b.click()
        download = await info.value
        assert download.suggested_filename == "scan.png"
        assert Path(await download.path()).read_bytes() == png
        # B may not recall A's message: no menu on it.
        await expect(message_b.get_by_test_id("message-menu")).to_have_count(0)

        # A recalls the message from its menu, by keyboard, after the confirmation.
        menu_button = sent.get_by_role("button", name="Message actions")
        await menu_button.focus()
        await page_a.keyboard.press("Enter")
        recall_item = page_a.get_by_role("menuitem", name="Recall")
        await expect(recall_item).to_be_focused()
        await _shot(page_a, "2-menu")
        await page_a.keyboard.press("Enter")
        mine = page_a.locator(f'[data-testid="message"][data-event-id="{message_id}"]')
        await expect(mine.get_by_test_id("message-body")).to_have_text("Message recalled")
        assert len(questions) == 1 and questions[0].startswith("Recall this message?"), questions
        assert "cannot be unsent" not in questions[0]  # not a patient's normal SMS

        # B sees it live: the placeholder and who recalled it, the page never reloaded.
        await expect(message_b.get_by_test_id("message-body")).to_have_text("Message recalled")
        await expect(message_b).not_to_contain_text(text)
        await expect(page_b.locator('[data-testid="system-event"][data-kind="recall"]')
                     ).to_contain_text("Alice Admin recalled a message")
        assert await page_b.evaluate("window.__bloomtextTestMarker") == "still-here"
        await _shot(page_b, "3-recalled")

        # The wording for a normal SMS already on the patient's phone.
        warning = await page_a.evaluate("""async () => {
            const m = await import('/message-actions.js');
            return m.recallQuestion({data: {kind: 'patient', channel: 'sms'}},
              {attachments: [], deliveries: [{channel: 'sms', status: 'delivered'}]});
        }""")
        assert "already delivered to the patient’s phone cannot be unsent" in warning
        linked = await page_a.evaluate("""async () => {
            const m = await import('/message-actions.js');
            return m.recallQuestion({data: {kind: 'patient', channel: 'sms'}}, {attachments: [],
              deliveries: [{channel: 'sms', mode: 'secure_sms', status: 'delivered'}]});
        }""")
        assert "cannot be unsent" not in linked  # only a link went: the recall revokes it

        # The admin's Audit view: the recall is there (entries are written in batches).
        await page_a.get_by_test_id("audit-open").click()
        recalls = page_a.locator('[data-testid="audit-row"][data-action="message.recall"]')
        for _ in range(20):
            if await recalls.count():
                break
            await page_a.wait_for_timeout(250)
            await page_a.get_by_test_id("audit-apply").click()
        await expect(recalls).to_have_count(1)
        await expect(recalls).to_contain_text(message_id)
        await page_a.get_by_label("Action", exact=True).fill("message.recall")
        await page_a.get_by_test_id("audit-apply").click()
        await expect(page_a.get_by_test_id("audit-row")).to_have_count(1)
        await _shot(page_a, "4-audit")

        async with page_a.expect_download() as info:
            await page_a.get_by_test_id("audit-export").click()
        export = await info.value
        assert export.suggested_filename == "audit.csv"
        lines = Path(await export.path()).read_text().splitlines()
        assert lines[0].startswith("id,at,actor_kind,actor_id,action"), lines[:1]
        assert len(lines) == 2 and ",message.recall," in lines[1], lines

    assert errors == [], errors
