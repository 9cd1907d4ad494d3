"""Recall (messages and their files), admin retrieval, and the hash-chained audit trail:
who may recall, what participants see afterwards (live, history, sync, files, portal
links), retrieval with a reason, the trail's entries, filters, CSV export, and
`python -m server audit verify` catching a tampered, removed or truncated chain."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from server.actions import audit
from storage.models import AuditEntry, AuditHead, Event
from tests.conftest import LiveServer, Session, expect, recv, send
from tests.fake_twilio import FakeTwilio
from tests.test_files import PDF, upload
from tests.test_patient_delivery import (
    LINK,
    Clinic,
    server_env,  # noqa: F401  (its Twilio and SMTP)
    sms_to,
)

ROOT = Path(__file__).resolve().parent.parent


async def say(live: LiveServer, who: Session, cid: str, body: str) -> dict:
    r = await live.http.post(f"/api/v1/conversations/{cid}/messages",
                             json={"body": body, "client_id": uuid.uuid4().hex},
                             headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def trail(live: LiveServer, admin: Session, **filters: str) -> list[dict]:
    r = await live.http.get("/api/v1/admin/audit", params=filters, headers=admin.headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_recall_is_seen_live_and_hides_content_everywhere(live_server: LiveServer
                                                                ) -> None:
    live = live_server
    admin = await live.signup()
    member = await live.add_member(admin)
    other = await live.add_member(admin, "Other Member")
    elsewhere = await live.signup(org_name="Elsewhere")
    cid = await live.conversation(member, other)
    message = await say(live, member, cid, "wrong patient's results")
    r = await upload(live, member, cid, "results.pdf", PDF, body="the file")
    with_file = r.json()
    file_id = with_file["attachments"][0]["id"]
    watcher = await live.socket(other)

    # Not the sender, not an admin: 403; outside the conversation and the org: 404.
    r = await live.http.post(f"/api/v1/messages/{message['id']}/recall",
                             headers=other.headers)
    assert r.status_code == 403, r.text
    r = await live.http.post(f"/api/v1/messages/{message['id']}/recall",
                             headers=elsewhere.headers)
    assert r.status_code == 404, r.text

    r = await live.http.post(f"/api/v1/messages/{message['id']}/recall",
                             headers=member.headers)
    assert r.status_code == 200, r.text
    recall = r.json()
    assert (recall["kind"], recall["target_id"]) == ("recall", message["id"])
    frame = await expect(watcher, "event")
    assert frame["event"]["id"] == recall["id"]
    again = await live.http.post(f"/api/v1/messages/{message['id']}/recall",
                                 headers=member.headers)
    assert again.status_code == 200 and again.json()["id"] == recall["id"]

    # An admin of the sender's organisation recalls the file message (not a participant).
    r = await live.http.post(f"/api/v1/messages/{with_file['id']}/recall",
                             headers=admin.headers)
    assert r.status_code == 200, r.text

    r = await live.http.get(f"/api/v1/conversations/{cid}/events", headers=other.headers)
    shown = {e["id"]: e for e in r.json()["events"]}
    for recalled in (message["id"], with_file["id"]):
        assert shown[recalled]["recalled"] is True
        assert shown[recalled]["body"] is None and shown[recalled]["attachments"] == []
    await send(watcher, {"type": "sync", "ref": 9, "since": {cid: 0}})
    synced = {e["id"]: e for e in await _synced_events(watcher, 9)}
    for recalled in (message["id"], with_file["id"]):
        assert synced[recalled]["recalled"] is True and synced[recalled]["body"] is None
    r = await live.http.get(f"/api/v1/files/{file_id}", headers=other.headers)
    assert r.status_code == 404

    # Admins still retrieve it, with a reason, and that read is in the trail.
    url = f"/api/v1/admin/messages/{message['id']}"
    assert (await live.http.get(url, headers=admin.headers)).status_code == 422
    assert (await live.http.get(url, params={"reason": "x"}, headers=member.headers)
            ).status_code == 403
    assert (await live.http.get(url, params={"reason": "x"}, headers=elsewhere.headers)
            ).status_code == 404  # another organisation's admin
    r = await live.http.get(url, params={"reason": "Complaint #12"}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["body"] == "wrong patient's results"
    r = await live.http.get(f"/api/v1/admin/files/{file_id}",
                            params={"reason": "Complaint #12"}, headers=admin.headers)
    assert r.status_code == 200 and r.content == PDF
    entries = await trail(live, admin, action="message.retrieve")
    assert [e["details"]["reason"] for e in entries] == ["Complaint #12"]
    assert entries[0]["actor"] == {"id": admin.user["id"], "kind": "member"}
    assert entries[0]["target"] == {"kind": "message", "id": message["id"]}
    assert entries[0]["ip"] == "127.0.0.1" and entries[0]["user_agent"]
    recalls = await trail(live, admin, action="message.recall")
    assert {e["target"]["id"] for e in recalls} == {message["id"], with_file["id"]}
    r = await live.http.get("/api/v1/admin/audit", headers=member.headers)
    assert r.status_code == 403


async def _synced_events(ws: ClientConnection, ref: int) -> list[dict]:
    """The events a `sync` with `ref` sent, up to its `synced`."""
    events = []
    while True:
        frame = await recv(ws)
        if frame["type"] == "event":
            events.append(frame["event"])
        elif frame["type"] == "synced" and frame.get("ref") == ref:
            return events


async def test_recalling_a_patient_message_revokes_its_link(
    live_server: LiveServer, twilio: FakeTwilio
) -> None:
    c = await Clinic(live_server, twilio).setup()
    phone, patient, cid = await c.with_patient()
    r = await c.say(cid, "Your results")
    message = r.json()
    [sms] = await sms_to(twilio, phone)
    path = LINK.search(sms.body).group(1).removeprefix(live_server.base_url)  # type: ignore[union-attr]
    assert (await live_server.http.get(path)).status_code == 200
    live_server.http.cookies.clear()
    r = await live_server.http.post(f"/api/v1/messages/{message['id']}/recall",
                                    headers=c.member.headers)
    assert r.status_code == 200, r.text
    r = await live_server.http.get(path)
    assert r.status_code == 404  # the link that announced it works no more
    r = await c.webhook("/webhooks/twilio/status", {
        "MessageSid": sms.sid, "MessageStatus": "delivered", "To": phone,
        "From": c.number["number"], "AccountSid": twilio.account_sid})
    assert r.status_code == 204, r.text
    for _ in range(100):  # reads and callbacks are written by the trail's writer, queued
        entries = await trail(live_server, c.admin, patient_id=patient["id"])
        actions = {e["action"] for e in entries}
        if "delivery.status" in actions:
            break
        await asyncio.sleep(0.05)
    assert {"message.send", "message.recall", "portal.view", "delivery.status"} <= actions
    [sent] = [e for e in entries if e["action"] == "message.send"]
    assert sent["target"]["id"] == message["id"] and sent["actor"]["id"] == c.member.user["id"]
    r = await c.inbound(phone, "STOP")
    assert r.status_code == 200
    for _ in range(100):
        opt_outs = await trail(live_server, c.admin, action="sms.opt_out")
        if opt_outs:
            break
        await asyncio.sleep(0.05)
    assert len(opt_outs) == 1 and phone not in str(opt_outs)
    [recall] = [e for e in entries if e["action"] == "message.recall"]
    assert recall["details"]["links_revoked"] == 1


async def test_the_trail_filters_exports_and_verifies(live_server: LiveServer,
                                                      database_url: str) -> None:
    live = live_server
    admin = await live.signup()
    member = await live.add_member(admin)
    r = await live.http.post("/api/v1/auth/login", json={
        "email": member.user["email"], "password": "wrong-password-1"})
    assert r.status_code == 401
    formula = "=cmd|' /C calc'!A0"  # a user agent a spreadsheet would run
    await live.http.post("/api/v1/auth/login", json={"email": member.user["email"],
                                                     "password": member.password},
                         headers={"User-Agent": formula})
    # member.create, then add_member's login, the failure, this one
    entries = await _settled(live, admin, 4)
    logins = await trail(live, admin, actor=member.user["id"])
    assert [e["action"] for e in logins][:3] == ["auth.login", "auth.login_failed",
                                                 "auth.login"]
    assert (await trail(live, admin, since="2999-01-01T00:00:00Z")) == []
    r = await live.http.get("/api/v1/admin/audit", params={"since": "yesterday"},
                            headers=admin.headers)
    assert r.status_code == 422
    page = await live.http.get("/api/v1/admin/audit", params={"limit": 1},
                               headers=admin.headers)
    assert page.json()["next"] is not None
    second = await live.http.get("/api/v1/admin/audit", params={
        "limit": 1, "cursor": page.json()["next"]}, headers=admin.headers)
    assert second.json()["items"][0]["id"] != page.json()["items"][0]["id"]

    r = await live.http.get("/api/v1/admin/audit/export", headers=admin.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0][:5] == ["id", "at", "actor_kind", "actor_id", "action"]
    assert len(rows) - 1 == len(entries) + 1  # the export is in it
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert "'" + formula in [row[9] for row in rows]
    exported = await trail(live, admin, action="audit.export")
    assert exported and exported[0]["details"]["entries"] == len(entries)

    # The chain verifies; an edited row, a removed row and a removed tail are caught.
    env = {**os.environ, "DATABASE_URL": database_url}

    async def verify() -> subprocess.CompletedProcess[str]:
        return await server_command("audit", "verify", env=env)

    ok = await verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    org = admin.user["org_id"]
    # The server runs in this process: its ORM connection is this test's too.
    second_entry = await AuditEntry.get(org_id=org, seq=2)
    await AuditEntry.filter(id=second_entry.id).update(action="auth.logout")
    bad = await verify()
    assert bad.returncode == 1 and f"organisation {org} at entry 2" in bad.stdout
    assert "edited" in bad.stdout
    await AuditEntry.filter(id=second_entry.id).update(action=second_entry.action)
    assert (await verify()).returncode == 0
    await AuditEntry.filter(id=second_entry.id).delete()
    assert "entry 2 is missing" in (await verify()).stdout
    await AuditEntry.create(**{f: getattr(second_entry, f) for f in (
        "id", "org_id", "seq", "at", "actor_id", "actor_kind", "action", "target_kind",
        "target_id", "patient_id", "ip", "user_agent", "details", "prev_hash", "hash")})
    head = await AuditHead.get(org_id=org)
    last = await AuditEntry.get(org_id=org, seq=head.seq)
    await last.delete()
    tail = await verify()
    assert tail.returncode == 1 and "removed from its end" in tail.stdout
    checked, broken = await audit.verify(org)
    assert [b.org_id for b in broken] == [org]


async def server_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS` in its own process, without blocking this test's event
    loop: the live server runs on it, and a tool waiting on a row lock the server holds
    (the audit chain's head) would otherwise wait for ever."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "server", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60)


async def _settled(live: LiveServer, admin: Session, at_least: int) -> list[dict]:
    """The trail once the writer has stored what was noted (it does not hold requests)."""
    for _ in range(100):
        items = await trail(live, admin, limit="500")
        if len(items) >= at_least:
            return items
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} audit entries")


async def test_retention_empties_old_content_and_keeps_the_chain(
    live_server: LiveServer, database_url: str
) -> None:
    live = live_server
    admin = await live.signup()
    member = await live.add_member(admin)
    cid = await live.conversation(admin, member)
    old = await say(live, admin, cid, "old news")
    r = await upload(live, admin, cid, "old.pdf", PDF)
    old_file = r.json()
    recent = await say(live, admin, cid, "still here")
    r = await live.http.patch("/api/v1/org", json={"policies": {"retention_days": "7"}},
                              headers=admin.headers)
    assert r.status_code == 422  # a whole number of days
    r = await live.http.patch("/api/v1/org", json={"policies": {"retention_days": 30}},
                              headers=admin.headers)
    assert r.status_code == 200, r.text
    # The server runs in this process: its ORM connection is this test's too.
    long_ago = datetime.now(UTC) - timedelta(days=31)
    await Event.filter(id__in=[old["id"], old_file["id"]]).update(created_at=long_ago)
    env = {**os.environ, "DATABASE_URL": database_url,
           "BLOOMTEXT_DATA_DIR": str(live.settings.data_dir)}
    done = await server_command("purge", env=env)
    assert done.returncode == 0 and "2 message(s) emptied" in done.stdout, done.stderr
    r = await live.http.get(f"/api/v1/conversations/{cid}/events", headers=member.headers)
    shown = {e["id"]: e for e in r.json()["events"]}
    assert shown[old["id"]]["expired"] is True and shown[old["id"]]["body"] is None
    assert shown[old_file["id"]]["attachments"] == []
    assert shown[recent["id"]]["body"] == "still here"
    file_id = old_file["attachments"][0]["id"]
    r = await live.http.get(f"/api/v1/files/{file_id}", headers=member.headers)
    assert r.status_code == 404
    assert not [p for p in (live.settings.data_dir / "blobs").rglob("*") if p.is_file()]
    [purge] = await trail(live, admin, action="retention.purge")
    assert purge["actor"]["kind"] == "system" and purge["details"]["messages"] == 2
    verified = await server_command("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stdout
