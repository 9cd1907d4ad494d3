"""Who may do what: every HTTP route and every websocket frame, called as an admin and a
member of organisation A, an admin of organisation B ("other"), an external (an account
of organisation C who joined one of A's conversations through an invitation, but not the
one the rows use), a bot of A, and nobody.

Every route the server has must have a row here: a route added later without one fails
`test_every_route_is_in_the_matrix`.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from server.http import ROUTES
from storage.models import Org
from tests.conftest import LiveServer, Session, expect, recv, send, twilio_env
from tests.fake_twilio import FakeTwilio

ROLES = ("admin", "member", "other", "external", "bot", "anon")
_n = itertools.count()


@dataclass
class World:
    tokens: dict[str, str | None]
    ids: dict[str, str]
    twilio: FakeTwilio

    def fresh_number(self) -> str:
        number = f"+1415555{next(_n) % 10000:04d}"
        self.twilio.set_available("415", [(number, None, None)])
        return number


@dataclass
class Upload:
    """A row's body sent as a multipart file (field `file`)."""

    name: str
    data: bytes


@pytest.fixture
def server_env(twilio: FakeTwilio) -> dict[str, str]:
    return twilio_env(twilio)


def fresh_email() -> str:
    return f"m{next(_n)}-{uuid.uuid4().hex[:8]}@example.test"


# (method, path template, body or a function of the world giving one, statuses by role).
# Statuses: admin, member, other, external, bot, anon. An external is an account of its
# own organisation: of A it sees only the conversations it is in, exactly like "other".
# Path placeholders come from World.ids.
MATRIX: list[tuple[str, str, Any, tuple[int, int, int, int, int, int]]] = [
    ("POST", "/api/v1/signup", lambda w: {"org_name": "New", "name": "N", "email": fresh_email(),
                                          "password": "correct-horse-1"},
     (201, 201, 201, 201, 201, 201)),
    # A fresh address each time: five failures for one account would be 429.
    ("POST", "/api/v1/auth/login", lambda w: {"email": fresh_email(), "password": "wrong-guess"},
     (401, 401, 401, 401, 401, 401)),
    ("GET", "/api/v1/me", None, (200, 200, 200, 200, 200, 401)),
    ("GET", "/api/v1/org", None, (200, 200, 200, 200, 200, 401)),
    ("PATCH", "/api/v1/org", {"policies": {"no_screenshots": True}},
     (200, 403, 200, 200, 403, 401)),
    # A and B are on pro (the patient rows need a paid plan): starting a trial is 409 there.
    ("POST", "/api/v1/org/trial", None, (409, 403, 409, 200, 403, 401)),
    ("POST", "/api/v1/members", lambda w: {"email": fresh_email(), "name": "M",
                                           "password": "correct-horse-2"},
     (201, 403, 201, 201, 403, 401)),
    ("PATCH", "/api/v1/members/{target}", {"role": "member"}, (200, 403, 404, 404, 403, 401)),
    ("GET", "/api/v1/members", None, (200, 200, 200, 200, 200, 401)),
    ("GET", "/api/v1/invitations", None, (200, 403, 200, 200, 403, 401)),
    ("DELETE", "/api/v1/invitations/{invitation}", None, (204, 403, 404, 404, 403, 401)),
    ("POST", "/api/v1/bots", {"name": "B"}, (201, 403, 201, 201, 403, 401)),
    ("POST", "/api/v1/conversations", lambda w: {"to": [{"user_id": w.ids["target"]}]},
     (201, 201, 404, 404, 201, 401)),
    ("GET", "/api/v1/conversations", None, (200, 200, 200, 200, 200, 401)),
    ("GET", "/api/v1/conversations/{conversation}", None, (200, 200, 404, 404, 404, 401)),
    ("POST", "/api/v1/conversations/{conversation}/messages",
     lambda w: {"body": "hello", "client_id": f"m{next(_n)}"}, (201, 201, 404, 404, 404, 401)),
    ("GET", "/api/v1/conversations/{conversation}/events", None, (200, 200, 404, 404, 404, 401)),
    ("POST", "/api/v1/conversations/{conversation}/files",
     lambda w: Upload("note.txt", b"a file"), (201, 201, 404, 404, 404, 401)),
    ("GET", "/api/v1/files/{file}", None, (200, 200, 404, 404, 404, 401)),
    # Recall: the sender (admin here); a participant who is not is 403.
    ("POST", "/api/v1/messages/{message}/recall", None, (200, 403, 404, 404, 404, 401)),
    ("GET", "/api/v1/admin/messages/{message}?reason=review", None,
     (200, 403, 404, 404, 403, 401)),
    ("GET", "/api/v1/admin/files/{file}?reason=review", None, (200, 403, 404, 404, 403, 401)),
    # Each admin reads their own organisation's trail (the external is C's admin).
    ("GET", "/api/v1/admin/audit", None, (200, 403, 200, 200, 403, 401)),
    ("GET", "/api/v1/admin/audit/export", None, (200, 403, 200, 200, 403, 401)),
    ("POST", "/api/v1/conversations/{conversation}/read", {"seq": 0},
     (204, 204, 404, 404, 404, 401)),
    ("GET", "/api/v1/invites/{invite}", None, (404, 404, 404, 404, 404, 404)),
    ("POST", "/api/v1/invites/{invite}/accept", {"name": "X", "password": "correct-horse-3"},
     (404, 404, 404, 404, 404, 404)),
    ("POST", "/api/v1/teams", {"name": "T"}, (201, 403, 201, 201, 403, 401)),
    ("GET", "/api/v1/teams", None, (200, 200, 200, 200, 200, 401)),
    ("PATCH", "/api/v1/teams/{team}", {"name": "Renamed"}, (200, 403, 404, 404, 403, 401)),
    ("PUT", "/api/v1/teams/{team}/members/{target}", None, (204, 403, 404, 404, 403, 401)),
    ("DELETE", "/api/v1/teams/{team}/members/{target}", None, (204, 403, 404, 404, 403, 401)),
    # Patient features: A and B are on pro, and C (the external's own organisation) started
    # its trial in the row above, so of A's patients they all see nothing (404); the
    # free plan's 402 is in tests/test_patients.py.
    ("POST", "/api/v1/patients", lambda w: {"phone": f"+1415555{next(_n) % 10000:04d}"},
     (201, 201, 201, 201, 201, 401)),
    ("GET", "/api/v1/patients", None, (200, 200, 200, 200, 200, 401)),
    ("GET", "/api/v1/patients/{patient}", None, (200, 200, 404, 404, 200, 401)),
    ("PATCH", "/api/v1/patients/{patient}", {"first_name": "Pat"},
     (200, 200, 404, 404, 200, 401)),
    ("POST", "/api/v1/patients/import", b"phone\n+14155550111\n",
     (202, 202, 202, 202, 202, 401)),
    ("GET", "/api/v1/jobs/{job}", None, (200, 200, 404, 404, 200, 401)),
    ("GET", "/api/v1/phone-numbers/available?area_code=415", None,
     (200, 403, 200, 200, 403, 401)),
    ("POST", "/api/v1/phone-numbers", lambda w: {"number": w.fresh_number(),
                                                 "team_id": w.ids["team"]},
     (201, 403, 404, 404, 403, 401)),
    ("GET", "/api/v1/phone-numbers", None, (200, 200, 200, 200, 200, 401)),
    ("PATCH", "/api/v1/phone-numbers/{number}", lambda w: {"team_id": w.ids["patient_team"]},
     (200, 403, 404, 404, 403, 401)),
    ("POST", "/api/v1/conversations", lambda w: {"to": [{"patient_id": w.ids["patient"]}],
                                                 "phone_number_id": w.ids["number"]},
     (201, 201, 404, 404, 403, 401)),
    ("GET", "/api/v1/conversations/{patient_conversation}", None,
     (200, 200, 404, 404, 404, 401)),
    ("PATCH", "/api/v1/conversations/{patient_conversation}", {"channel": "secure_sms"},
     (200, 200, 404, 404, 404, 401)),
    # The portal: only a link and its session cookie open it, never a bearer token.
    ("GET", "/p/{invite}", None, (404, 404, 404, 404, 404, 404)),
    ("POST", "/p/{invite}", None, (404, 404, 404, 404, 404, 404)),
    ("POST", "/p/{invite}/files", lambda w: Upload("a.txt", b"text"),
     (404, 404, 404, 404, 404, 404)),
    ("POST", "/portal/ws-ticket", None, (401, 401, 401, 401, 401, 401)),
    # Twilio's webhooks: no bearer token opens them, only Twilio's signature.
    ("POST", "/webhooks/twilio/sms", None, (403, 403, 403, 403, 403, 403)),
    ("POST", "/webhooks/twilio/status", None, (403, 403, 403, 403, 403, 403)),
    ("GET", "/healthz", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/readyz", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/metrics", None, (404, 404, 404, 404, 404, 404)),  # METRICS_TOKEN unset
    ("GET", "/openapi.json", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/join/{invite}", None, (200, 200, 200, 200, 200, 200)),  # the page; it asks the API
    # Last: it ends the session the rows above used (a bot gives up its own key).
    ("POST", "/api/v1/auth/logout", None, (204, 204, 204, 204, 204, 401)),
]


def test_every_route_is_in_the_matrix() -> None:
    def shape(path: str) -> str:
        return re.sub(r"\{[^}]+\}", "{}", path.split("?")[0])

    covered = {(m, shape(p)) for m, p, _, _ in MATRIX}
    missing = [f"{spec.method} {spec.path}" for spec in ROUTES
               if (spec.method, shape(spec.path)) not in covered]
    assert not missing, f"routes without a row in the authorization matrix: {missing}"


@pytest.fixture
async def world(live_server: LiveServer, twilio: FakeTwilio) -> World:
    admin = await live_server.signup(org_name="A")
    member = await live_server.add_member(admin, name="A member")
    target = await live_server.add_member(admin, name="A target")
    other = await live_server.signup(org_name="B")
    for org in (admin, other):
        await Org.filter(id=org.user["org_id"]).update(plan="pro")
    r = await live_server.http.post("/api/v1/bots", json={"name": "A bot"},
                                    headers=admin.headers)
    bot_token = r.json()["token"]
    conversation = await live_server.conversation(admin, member)
    r = await live_server.http.post(f"/api/v1/conversations/{conversation}/files",
                                    files={"file": ("a.txt", b"shared")}, headers=admin.headers)
    file_id = r.json()["attachments"][0]["id"]
    r = await live_server.http.post(f"/api/v1/conversations/{conversation}/messages",
                                    json={"body": "to recall", "client_id": "recall-me"},
                                    headers=admin.headers)
    message = r.json()["id"]
    # The external: invited into another of A's conversations (no SMTP here, so the
    # creator gets the link), with its own organisation C.
    r = await live_server.http.post("/api/v1/conversations",
                                    json={"to": [{"email": fresh_email()}]}, headers=admin.headers)
    link = r.json()["invitees"][0]["link"]
    r = await live_server.http.post(
        f"/api/v1/invites/{link.rsplit('/', 1)[1]}/accept",
        json={"name": "C external", "password": "correct-horse-4", "org_name": "C"})
    external_token = r.json()["token"]
    r = await live_server.http.post("/api/v1/members", json={"email": fresh_email(), "name": "I"},
                                    headers=admin.headers)
    invitation = r.json()["id"]
    r = await live_server.http.post("/api/v1/teams", json={"name": "A team"},
                                    headers=admin.headers)
    team = r.json()["id"]
    # Patients: a number owned by a team the member is on, a patient and a conversation.
    r = await live_server.http.post("/api/v1/teams", json={"name": "A patients"},
                                    headers=admin.headers)
    patient_team = r.json()["id"]
    await live_server.http.put(f"/api/v1/teams/{patient_team}/members/{member.user['id']}",
                               headers=admin.headers)
    world = World(tokens={}, ids={}, twilio=twilio)
    r = await live_server.http.post("/api/v1/phone-numbers", json={
        "number": world.fresh_number(), "team_id": patient_team}, headers=admin.headers)
    number = r.json()["id"]
    r = await live_server.http.post("/api/v1/patients", json={"phone": "+14155550100"},
                                    headers=admin.headers)
    patient = r.json()["id"]
    r = await live_server.http.post("/api/v1/conversations", json={
        "to": [{"patient_id": patient}], "phone_number_id": number}, headers=admin.headers)
    patient_conversation = r.json()["id"]
    r = await live_server.http.post("/api/v1/patients/import", content=b"phone\n+14155550112\n",
                                    headers={**admin.headers, "Content-Type": "text/csv"})
    job = r.json()["job_id"]
    world.tokens = {"admin": admin.token, "member": member.token, "other": other.token,
                    "external": external_token, "bot": bot_token, "anon": None}
    world.ids = {"target": target.user["id"], "conversation": conversation, "team": team,
                 "invite": "bi_" + "x" * 43, "invitation": invitation,
                 "patient_team": patient_team, "number": number, "patient": patient,
                 "patient_conversation": patient_conversation, "job": job, "file": file_id,
                 "message": message}
    return world


async def test_http_matrix(live_server: LiveServer, world: World) -> None:
    wrong: list[str] = []
    for method, template, body, expected in MATRIX:
        path = template.format(**world.ids)
        for role, status in zip(ROLES, expected, strict=True):
            token = world.tokens[role]
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            payload = body(world) if callable(body) else body
            if isinstance(payload, Upload):
                r = await live_server.http.request(
                    method, path, files={"file": (payload.name, payload.data)}, headers=headers)
            elif isinstance(payload, bytes):  # a file upload (CSV)
                r = await live_server.http.request(
                    method, path, content=payload,
                    headers={**headers, "Content-Type": "text/csv"})
            else:
                r = await live_server.http.request(method, path, json=payload,
                                                   headers=headers)
            if r.status_code != status:
                wrong.append(f"{method} {template} as {role}: {r.status_code} "
                             f"(expected {status}) {r.text[:160]}")
            if r.status_code >= 400 and "json" in r.headers.get("content-type", ""):
                assert "error" in r.json() and "code" in r.json()["error"], r.text
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", ["admin", "member", "other", "external", "bot"])
async def test_websocket_frames(live_server: LiveServer, world: World, role: str) -> None:
    """In A's conversation: its participants may send, read, type and sync; anyone else
    gets `not_found` for each, exactly as for a conversation that does not exist."""
    allowed = role in ("admin", "member")
    session = Session(world.tokens[role] or "", {"id": "?"})
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": session.token})
    await expect(ws, "ready")
    cid = world.ids["conversation"]
    frames = [
        {"type": "send", "ref": 1, "conversation_id": cid, "client_id": f"w{role}",
         "body": "hi"},
        {"type": "read", "ref": 2, "conversation_id": cid, "seq": 0},
        {"type": "typing", "ref": 3, "conversation_id": cid},
        {"type": "sync", "ref": 4, "since": {cid: 0}},
    ]
    for frame in frames:
        await send(ws, frame)
    answers: dict[int, dict[str, Any]] = {}
    try:
        while len(answers) < (2 if allowed else 4):
            reply = await recv(ws, 3)
            if reply.get("ref") in (1, 2, 3, 4) and reply["type"] != "event":
                answers[reply["ref"]] = reply
    except TimeoutError:
        pass
    if allowed:
        assert answers[1]["type"] == "ack" and answers[4]["type"] == "synced", answers
        assert 2 not in answers and 3 not in answers  # read and typing answer nothing
    else:
        assert {ref: a.get("code") for ref, a in answers.items()} == {
            1: "not_found", 2: "not_found", 3: "not_found", 4: "not_found"}, answers


async def test_websocket_without_auth(live_server: LiveServer) -> None:
    ws = await live_server.socket()
    await send(ws, {"type": "sync", "since": {}})
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws, 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
