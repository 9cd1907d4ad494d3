"""Admins change roles and deactivate members: sessions and sockets end at once."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer, recv


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"SEATS_FREE": "2"}


async def test_deactivate_ends_sessions_and_sockets(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    ws = await live_server.socket(member)
    r = await live_server.http.patch(f"/api/v1/members/{member.user['id']}",
                                     json={"active": False}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["active"] is False
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(20):
            await recv(ws, 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    assert (await live_server.http.get("/api/v1/me", headers=member.headers)).status_code == 401
    r = await live_server.http.post("/api/v1/auth/login", json={
        "email": member.user["email"], "password": member.password})
    assert r.status_code == 401

    # Their seat is free again; reactivating takes one, when there is one.
    r = await live_server.http.get("/api/v1/org", headers=admin.headers)
    assert r.json()["seats"]["used"] == 1
    other = await live_server.add_member(admin, name="Other")
    r = await live_server.http.patch(f"/api/v1/members/{member.user['id']}",
                                     json={"active": True}, headers=admin.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "seat_limit_reached"
    await live_server.http.patch(f"/api/v1/members/{other.user['id']}",
                                 json={"active": False}, headers=admin.headers)
    r = await live_server.http.patch(f"/api/v1/members/{member.user['id']}",
                                     json={"active": True}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["active"] is True
    r = await live_server.http.post("/api/v1/auth/login", json={
        "email": member.user["email"], "password": member.password})
    assert r.status_code == 200


async def test_roles_and_who_may_change_them(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    path = f"/api/v1/members/{member.user['id']}"
    r = await live_server.http.patch(path, json={"role": "admin"}, headers=member.headers)
    assert r.status_code == 403
    r = await live_server.http.patch(path, json={"role": "admin"}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["role"] == "admin"
    r = await live_server.http.patch(path, json={"role": "owner"}, headers=admin.headers)
    assert r.status_code == 422
    for body in ({"active": False}, {"role": "member"}):  # not oneself
        r = await live_server.http.patch(f"/api/v1/members/{admin.user['id']}", json=body,
                                         headers=admin.headers)
        assert r.status_code == 409
    elsewhere = await live_server.signup(org_name="Elsewhere")
    r = await live_server.http.patch(path, json={"active": False}, headers=elsewhere.headers)
    assert r.status_code == 404
    r = await live_server.http.patch("/api/v1/members/us_nosuchuser000000",
                                     json={"active": False}, headers=admin.headers)
    assert r.status_code == 404
