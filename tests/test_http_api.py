"""The HTTP API against a real server: accounts, conversations, messages, errors."""

from __future__ import annotations

from tests.conftest import LiveServer


def _error(r, code: str) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


async def test_signup_login_me_logout(live_server: LiveServer) -> None:
    admin = await live_server.signup(name="Dr Lee", org_name="Lee Clinic")
    assert admin.user["role"] == "admin" and admin.user["kind"] == "member"
    assert admin.org["name"] == "Lee Clinic" and admin.org["plan"] == "free"

    r = await live_server.http.post(
        "/api/v1/auth/login",
        json={"email": admin.user["email"].upper(), "password": admin.password},
    )
    assert r.status_code == 200
    token = r.json()["token"]
    assert token != admin.token

    r = await live_server.http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    me = r.json()
    assert me["user"]["id"] == admin.user["id"] and me["org"]["id"] == admin.org["id"]
    assert me["org"]["seats"]["used"] == 1 and me["policies"] == {}

    r = await live_server.http.post(
        "/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 204
    r = await live_server.http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    _error(r, "unauthenticated")
    # The other session is untouched.
    r = await live_server.http.get("/api/v1/me", headers=admin.headers)
    assert r.status_code == 200


async def test_wrong_password_and_duplicate_email(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    r = await live_server.http.post(
        "/api/v1/auth/login", json={"email": admin.user["email"], "password": "wrong-password"}
    )
    assert r.status_code == 401
    _error(r, "unauthenticated")
    r = await live_server.http.post(
        "/api/v1/signup",
        json={"org_name": "X", "name": "Y", "email": admin.user["email"], "password": "password-1"},
    )
    assert r.status_code == 409
    _error(r, "conflict")


async def test_members_admin_only_and_scoped_to_org(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin, name="Nurse Kim")
    r = await live_server.http.post(
        "/api/v1/members",
        json={"email": "x@example.test", "name": "X", "password": "password-1"},
        headers=member.headers,
    )
    assert r.status_code == 403
    _error(r, "forbidden")

    other = await live_server.signup(org_name="Other Clinic")
    r = await live_server.http.get("/api/v1/members", headers=admin.headers)
    assert r.status_code == 200
    ids = {u["id"] for u in r.json()["items"]}
    assert ids == {admin.user["id"], member.user["id"]}
    assert r.json()["next"] is None
    assert other.user["id"] not in ids


async def test_members_pagination(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    for i in range(4):
        await live_server.add_member(admin, name=f"M{i}")
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await live_server.http.get("/api/v1/members", params=params, headers=admin.headers)
        assert r.status_code == 200
        seen += [u["id"] for u in r.json()["items"]]
        cursor = r.json()["next"]
        if cursor is None:
            break
    assert len(seen) == 5 and len(set(seen)) == 5


async def test_conversation_messages_and_idempotent_retry(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member, subject="Rounds")

    r = await live_server.http.get(f"/api/v1/conversations/{cid}", headers=member.headers)
    assert r.status_code == 200
    conv = r.json()
    assert conv["kind"] == "internal" and conv["subject"] == "Rounds" and conv["last_seq"] == 0
    assert {p["id"] for p in conv["participants"]} == {admin.user["id"], member.user["id"]}
    assert {p["kind"] for p in conv["participants"]} == {"member"}

    url = f"/api/v1/conversations/{cid}/messages"
    r1 = await live_server.http.post(url, json={"body": "hello", "client_id": "c-1"},
                                     headers=admin.headers)
    assert r1.status_code == 201
    event = r1.json()
    assert event["seq"] == 1 and event["kind"] == "message" and event["body"] == "hello"
    assert event["sender"] == {"id": admin.user["id"], "name": admin.user["name"],
                               "kind": "member"}
    assert event["created_at"].endswith("Z") and len(event["created_at"]) == 24

    r2 = await live_server.http.post(url, json={"body": "hello", "client_id": "c-1"},
                                     headers=admin.headers)
    assert r2.status_code == 200 and r2.json() == event

    # Another sender may use the same client_id: it is theirs.
    r3 = await live_server.http.post(url, json={"body": "hi", "client_id": "c-1"},
                                     headers=member.headers)
    assert r3.status_code == 201 and r3.json()["seq"] == 2

    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   params={"after": 0}, headers=member.headers)
    assert r.status_code == 200
    assert [e["seq"] for e in r.json()["events"]] == [1, 2] and r.json()["last_seq"] == 2
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   params={"after": 1, "limit": 1}, headers=member.headers)
    assert [e["seq"] for e in r.json()["events"]] == [2]


async def test_inbox_and_read(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    outsider = await live_server.add_member(admin, name="Not In It")
    cid = await live_server.conversation(admin, member)
    for i in range(3):
        await live_server.http.post(f"/api/v1/conversations/{cid}/messages",
                                    json={"body": f"m{i}", "client_id": f"c{i}"},
                                    headers=admin.headers)
    r = await live_server.http.get("/api/v1/conversations", headers=member.headers)
    assert r.status_code == 200
    (item,) = r.json()["items"]
    assert item["id"] == cid and item["last_seq"] == 3 and item["read_seq"] == 0

    r = await live_server.http.post(f"/api/v1/conversations/{cid}/read", json={"seq": 2},
                                    headers=member.headers)
    assert r.status_code == 204
    # Going backwards changes nothing; beyond the end is clamped.
    await live_server.http.post(f"/api/v1/conversations/{cid}/read", json={"seq": 1},
                                headers=member.headers)
    r = await live_server.http.get(f"/api/v1/conversations/{cid}", headers=member.headers)
    assert r.json()["read_seq"] == 2
    await live_server.http.post(f"/api/v1/conversations/{cid}/read", json={"seq": 99},
                                headers=member.headers)
    r = await live_server.http.get(f"/api/v1/conversations/{cid}", headers=member.headers)
    assert r.json()["read_seq"] == 3

    r = await live_server.http.get("/api/v1/conversations", headers=outsider.headers)
    assert r.json()["items"] == []
    r = await live_server.http.get(f"/api/v1/conversations/{cid}", headers=outsider.headers)
    assert r.status_code == 404
    _error(r, "not_found")


async def test_inbox_pagination_newest_first(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    ids = [await live_server.conversation(admin, member, subject=f"s{i}") for i in range(5)]
    await live_server.http.post(f"/api/v1/conversations/{ids[0]}/messages",
                                json={"body": "bump", "client_id": "b"}, headers=admin.headers)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await live_server.http.get("/api/v1/conversations", params=params,
                                       headers=admin.headers)
        seen += [c["id"] for c in r.json()["items"]]
        cursor = r.json()["next"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert seen[0] == ids[0]  # the most recently active first


async def test_other_org_is_not_found(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member)
    stranger = await live_server.signup(org_name="Elsewhere")
    for method, path, body in [
        ("GET", f"/api/v1/conversations/{cid}", None),
        ("GET", f"/api/v1/conversations/{cid}/events", None),
        ("POST", f"/api/v1/conversations/{cid}/messages", {"body": "x", "client_id": "z"}),
        ("POST", f"/api/v1/conversations/{cid}/read", {"seq": 1}),
    ]:
        r = await live_server.http.request(method, path, json=body, headers=stranger.headers)
        assert r.status_code == 404, (path, r.text)
        _error(r, "not_found")
    # Nor can a conversation be started with someone of another organisation.
    r = await live_server.http.post(
        "/api/v1/conversations", json={"to": [{"user_id": admin.user["id"]}]},
        headers=stranger.headers,
    )
    assert r.status_code == 404
    _error(r, "not_found")


async def test_bad_input_is_4xx_in_the_error_shape(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member)
    url = f"/api/v1/conversations/{cid}/messages"
    h = admin.headers | {"Content-Type": "application/json"}
    cases = [
        (url, b"{not json", 422, "invalid", None),
        (url, b"", 422, "invalid", None),
        (url, b"[1,2]", 422, "invalid", None),
        (url, b'{"body": 5, "client_id": "a"}', 422, "invalid", "body"),
        (url, b'{"client_id": "a"}', 422, "invalid", "body"),
        (url, b'{"body": "x", "client_id": "a", "extra": 1}', 422, "invalid", "extra"),
        (url, b'{"body": "", "client_id": "a"}', 422, "invalid", "body"),
        (url, b'{"body": "x", "client_id": "has space"}', 422, "invalid", "client_id"),
        (url, b'{"body": "' + b"x" * 10_001 + b'", "client_id": "a"}', 422, "invalid", "body"),
        (url, b'{"body": "x", "client_id": "a"}' + b" " * (1024 * 1024 + 10), 413, "too_large",
         None),
        ("/api/v1/signup", b'{"org_name": "a", "name": "b", "email": "nope", "password": '
         b'"password-1"}', 422, "invalid", "email"),
        ("/api/v1/signup", b'{"org_name": "a", "name": "b", "email": "n@x.test", "password": '
         b'"short"}', 422, "invalid", "password"),
        ("/api/v1/conversations", b'{"to": []}', 422, "invalid", "to"),
        ("/api/v1/conversations", b'{"to": [{"user_id": "us_nobody"}]}', 404, "not_found", None),
        (f"/api/v1/conversations/{cid}/read", b'{"seq": -1}', 422, "invalid", "seq"),
        # NUL cannot be stored in PostgreSQL text: refused at the edge, never a 5xx.
        (url, b'{"body": "a\\u0000b", "client_id": "nul"}', 422, "invalid", "body"),
        ("/api/v1/signup", b'{"org_name": "a", "name": "b\\u0000", "email": "n@x.test", '
         b'"password": "password-1"}', 422, "invalid", "name"),
        ("/api/v1/conversations/cv%00x/messages", b'{"body": "x", "client_id": "a"}', 404,
         "not_found", None),
    ]
    for path, raw, status, code, field in cases:
        r = await live_server.http.post(path, content=raw, headers=h)
        assert r.status_code == status, (path, raw[:60], r.text)
        error = _error(r, code)
        if field:
            assert field in error["details"]["fields"], error

    for path, params in [
        (f"/api/v1/conversations/{cid}/events", {"after": "x"}),
        (f"/api/v1/conversations/{cid}/events", {"limit": 0}),
        (f"/api/v1/conversations/{cid}/events", {"limit": 5000}),
        ("/api/v1/conversations", {"cursor": "%%%"}),
        ("/api/v1/conversations", {"cursor": "WyJ4IiwgIlx1MDAwMCJd"}),  # ["x", "\u0000"]
        ("/api/v1/conversations", {"kind": "nonsense"}),
    ]:
        r = await live_server.http.get(path, params=params, headers=admin.headers)
        assert r.status_code == 422, (path, params, r.text)
        _error(r, "invalid")

    r = await live_server.http.get("/api/v1/no-such-route", headers=admin.headers)
    assert r.status_code == 404
    _error(r, "not_found")
    r = await live_server.http.delete("/api/v1/me", headers=admin.headers)
    assert r.status_code == 405
    r = await live_server.http.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    _error(r, "unauthenticated")
    r = await live_server.http.get("/api/v1/me", headers={"Authorization": "Bearer " + "x" * 500})
    assert r.status_code == 401


async def test_health_and_openapi_cover_every_route(live_server: LiveServer) -> None:
    assert (await live_server.http.get("/healthz")).status_code == 200
    r = await live_server.http.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}
    doc = (await live_server.http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    from starlette.routing import Route

    from server.http import ROUTES

    for spec in ROUTES:
        assert spec.method.lower() in doc["paths"][spec.path], spec.path
    app_routes = {
        (r.path, m) for r in live_server_routes() if isinstance(r, Route) for m in r.methods or ()
    }
    for path, method in app_routes:
        if method != "HEAD":
            assert method.lower() in doc["paths"][path], (method, path)
    # Every referenced schema exists.
    import re

    for name in set(re.findall(r"#/components/schemas/(\w+)", str(doc))):
        assert name in doc["components"]["schemas"], name


def live_server_routes() -> list:  # type: ignore[type-arg]
    from server.app import create_app
    from server.config import load_settings

    return list(create_app(load_settings({})).routes)


async def test_security_headers_and_client_page(live_server: LiveServer) -> None:
    r = await live_server.http.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"


async def test_bots_get_a_key_that_works(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    r = await live_server.http.post("/api/v1/bots", json={"name": "Triage bot"},
                                    headers=admin.headers)
    assert r.status_code == 201
    bot = r.json()
    assert bot["user"]["kind"] == "bot"
    r = await live_server.http.get("/api/v1/me",
                                   headers={"Authorization": f"Bearer {bot['token']}"})
    assert r.status_code == 200 and r.json()["user"]["id"] == bot["user"]["id"]
    member = await live_server.add_member(admin)
    r = await live_server.http.post("/api/v1/bots", json={"name": "x"}, headers=member.headers)
    assert r.status_code == 403
    # Bots never count as seats.
    r = await live_server.http.get("/api/v1/org", headers=admin.headers)
    assert r.json()["seats"]["used"] == 2


async def test_every_invalid_field_is_named(live_server: LiveServer) -> None:
    r = await live_server.http.post("/api/v1/signup", json={"org_name": "X"})
    assert r.status_code == 422
    fields = r.json()["error"]["details"]["fields"]
    assert set(fields) == {"name", "email", "password"}
    assert all(reason == "required" for reason in fields.values())
    r = await live_server.http.post("/api/v1/signup", json={
        "org_name": "", "name": "Ann", "email": "not-an-email", "password": "short",
        "colour": "blue"})
    fields = r.json()["error"]["details"]["fields"]
    assert set(fields) == {"org_name", "email", "password", "colour"}, fields
    assert fields["colour"] == "unknown field"
