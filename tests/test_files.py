"""Files in conversations: upload (multipart, streamed, limited, checked by content and
name), the attachment on the message and its frame, download by participants only (and
the patient through the portal), one blob per content, retries by client_id."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, Session, expect, quiet, smtp_env, twilio_env
from tests.fake_twilio import FakeTwilio
from tests.mail import Mailbox
from tests.test_patient_delivery import CANARY, LINK, Clinic, fresh_phone, sms_to

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"1 0 obj << >> endobj\n" * 50 + b"%%EOF\n"
LIMIT = 64 * 1024


@pytest.fixture
def server_env(twilio: FakeTwilio, mailbox: tuple[Mailbox, int]) -> dict[str, str]:
    return {**twilio_env(twilio), **smtp_env(mailbox), "MAX_UPLOAD_BYTES": str(LIMIT)}


async def upload(live: LiveServer, who: Session, cid: str, name: str, data: bytes,
                 **fields: str) -> httpx.Response:
    return await live.http.post(f"/api/v1/conversations/{cid}/files",
                                files={"file": (name, data, "application/octet-stream")},
                                data=fields, headers=who.headers)


def blobs(live: LiveServer) -> list[Path]:
    root = live.settings.data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_upload_frame_download_and_who_may(live_server: LiveServer) -> None:
    live = live_server
    admin = await live.signup()
    member = await live.add_member(admin)
    bystander = await live.add_member(admin, "Not In It")
    elsewhere = await live.signup(org_name="Other clinic")
    cid = await live.conversation(admin, member)
    ws = await live.socket(member)

    r = await upload(live, admin, cid, "scan.png", PNG, body="The scan",
                     client_id="up-1")
    assert r.status_code == 201, r.text
    event = r.json()
    [attachment] = event["attachments"]
    assert attachment["name"] == "scan.png" and attachment["content_type"] == "image/png"
    assert attachment["size"] == len(PNG) and event["body"] == "The scan"
    frame = await expect(ws, "event")
    assert frame["event"]["attachments"] == [attachment]

    r = await live.http.get(f"/api/v1/files/{attachment['id']}", headers=member.headers)
    assert r.status_code == 200 and r.content == PNG
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''scan.png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    for outsider in (bystander, elsewhere):
        r = await live.http.get(f"/api/v1/files/{attachment['id']}", headers=outsider.headers)
        assert r.status_code == 404, r.text
        r = await upload(live, outsider, cid, "x.png", PNG)
        assert r.status_code == 404, r.text
    assert (await live.http.get(f"/api/v1/files/{attachment['id']}")).status_code == 401
    assert (await live.http.get("/api/v1/files/fl_nothing", headers=admin.headers)
            ).status_code == 404

    # History carries it too.
    r = await live.http.get(f"/api/v1/conversations/{cid}/events", headers=member.headers)
    assert r.json()["events"][-1]["attachments"] == [attachment]

    # A retry with the same client_id: the first event, and no second row or blob.
    r = await upload(live, admin, cid, "scan.png", PNG, body="The scan", client_id="up-1")
    assert r.status_code == 200 and r.json()["id"] == event["id"]
    # The same bytes in another message: another file, one blob.
    r = await upload(live, member, cid, "again.png", PNG)
    assert r.status_code == 201 and r.json()["body"] == ""
    assert r.json()["attachments"][0]["id"] != attachment["id"]
    assert len(blobs(live)) == 1
    r = await upload(live, member, cid, "letter.pdf", PDF)
    assert r.status_code == 201 and r.json()["attachments"][0]["content_type"] == \
        "application/pdf"
    assert len(blobs(live)) == 2


@pytest.mark.parametrize("name, data, why", [
    ("scan.png", PDF, "content does not match the name"),
    ("letter.pdf", b"MZ\x90\x00" + bytes(500), "content does not match the name"),
    ("tool.exe", b"MZ\x90\x00" + bytes(500), "type not accepted"),
    ("notes.txt", b"caf\xe9 \x00 binary", "content does not match the name"),
    ("noname", b"hello", "type not accepted"),
    ("empty.txt", b"", "empty"),
])
async def test_types_are_checked_by_content_and_name(
    live_server: LiveServer, name: str, data: bytes, why: str
) -> None:
    live = live_server
    admin = await live.signup()
    cid = await live.conversation(admin, await live.add_member(admin))
    r = await upload(live, admin, cid, name, data)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["fields"]["file"] == why
    assert blobs(live) == []
    r = await upload(live, admin, cid, "notes.txt", "Grüße, plain text\n".encode())
    assert r.status_code == 201 and r.json()["attachments"][0]["content_type"] == "text/plain"


async def test_too_large_is_refused_while_streaming(live_server: LiveServer) -> None:
    live = live_server
    admin = await live.signup()
    cid = await live.conversation(admin, await live.add_member(admin))
    big = b"%PDF-1.4\n" + b"x" * (LIMIT + 1)
    r = await upload(live, admin, cid, "big.pdf", big)  # Content-Length says so
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert r.json()["error"]["details"]["limit"] == LIMIT

    boundary = uuid.uuid4().hex

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").encode()
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await live.http.post(
        f"/api/v1/conversations/{cid}/files", content=chunked(),
        headers={**admin.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert blobs(live) == []  # nothing kept, staging emptied
    r = await live.http.post(f"/api/v1/conversations/{cid}/files", json={"body": "x"},
                             headers=admin.headers)
    assert r.status_code == 422 and "file" in r.json()["error"]["details"]["fields"]
    r = await upload(live, admin, cid, "fits.pdf", b"%PDF-1.4\n" + b"x" * (LIMIT - 9))
    assert r.status_code == 201, r.text


async def test_a_file_to_a_patient_goes_by_secure_link_and_opens_in_the_portal(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    http = live_server.http
    phone, patient, cid = await c.with_patient("sms")  # normal SMS: still no file by plain SMS
    r = await upload(live_server, c.member, cid, "results.pdf", PDF, body=f"Results {CANARY}")
    assert r.status_code == 201, r.text
    file_id = r.json()["attachments"][0]["id"]
    [sms] = await sms_to(twilio, phone)
    assert CANARY not in sms.body and "results.pdf" not in sms.body
    match = LINK.search(sms.body)
    assert match, sms.body
    path = match.group(1).removeprefix(live_server.base_url)
    assert (await http.get(f"/api/v1/files/{file_id}")).status_code == 401

    r = await http.get(path)  # no DOB on file: straight in, with a session cookie
    assert r.status_code == 200, r.text
    assert f'href="/api/v1/files/{file_id}"' in r.text and "results.pdf" in r.text
    cookie = re.match(r"bt_portal=([^;]+)", r.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    http.cookies.clear()
    as_patient = {"Cookie": f"bt_portal={cookie}"}
    r = await http.get(f"/api/v1/files/{file_id}", headers=as_patient)
    assert r.status_code == 200 and r.content == PDF
    assert r.headers["content-disposition"].startswith("attachment;")

    # The patient sends a file from the portal (a plain form, no script needed).
    staff = await live_server.socket(c.member)
    r = await http.post(f"{path}/files", files={"file": ("insurance.png", PNG)},
                        data={"client_id": "portal-up-1"}, headers=as_patient)
    assert r.status_code == 303, r.text
    event = (await expect(staff, "event"))["event"]
    assert event["sender"]["kind"] == "patient"
    assert [a["name"] for a in event["attachments"]] == ["insurance.png"]
    r = await http.post(f"{path}/files", files={"file": ("big.pdf", b"%PDF-" + bytes(LIMIT))},
                        headers=as_patient)
    assert r.status_code == 413 and "at most" in r.text
    r = await http.post(f"{path}/files", files={"file": ("x.png", PNG)})  # no session
    assert r.status_code == 303
    assert [f for f in await quiet(staff) if f["type"] == "event"] == []

    # Another patient's file is not theirs to fetch.
    other = await c.patient(phone=fresh_phone())
    other_cid = await c.conversation(other, "secure_sms")
    r = await upload(live_server, c.member, other_cid, "other.pdf", PDF)
    other_file = r.json()["attachments"][0]["id"]
    r = await http.get(f"/api/v1/files/{other_file}", headers=as_patient)
    assert r.status_code == 404
    r = await http.get(f"/api/v1/files/{file_id}", headers={"Cookie": "bt_portal=ps_forged"})
    assert r.status_code == 401


async def test_inbound_mms_media_become_attachments(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone, patient, cid = await c.with_patient()
    staff = await live_server.socket(c.member)
    sid = "MM" + uuid.uuid4().hex
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
    media = [(twilio.add_media(sid, jpeg, "image/jpeg"), "image/jpeg"),
             (twilio.add_media(sid, b"\x00\x00\x00\x18ftypmp42", "video/mp4"), "video/mp4"),
             (twilio.add_media(sid, b"x" * (LIMIT + 1), "image/png"), "image/png")]
    form = {"NumMedia": str(len(media))}
    for i, (url, kind) in enumerate(media):
        form |= {f"MediaUrl{i}": url, f"MediaContentType{i}": kind}
    fetched = len(twilio.requests("media"))  # the fake serves the whole module
    for _ in range(2):  # Twilio's redelivery is stored once, its media fetched once
        r = await c.inbound(phone, "Photo of the rash", sid=sid, **form)
        assert r.status_code == 200, r.text
    event = (await expect(staff, "event", timeout=10))["event"]
    assert event["conversation_id"] == cid and event["sender"]["kind"] == "patient"
    [photo] = event["attachments"]
    assert (photo["name"], photo["content_type"], photo["size"]) == \
        ("mms-1.jpg", "image/jpeg", len(jpeg))
    assert event["body"].startswith("Photo of the rash\n\n[2 attachment(s) not kept: ")
    assert "video/mp4 is not accepted" in event["body"] and "at most" in event["body"]
    r = await live_server.http.get(f"/api/v1/files/{photo['id']}", headers=c.member.headers)
    assert r.status_code == 200 and r.content == jpeg
    # Fetched once, and the credentials went to Twilio only (the media store refuses them).
    assert [status for _, status in twilio.requests("media")[fetched:]] == ["302"] * 3
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   headers=c.member.headers)
    assert [e["id"] for e in r.json()["events"] if e["kind"] == "message"][-1] == event["id"]
    assert len(blobs(live_server)) == 1
