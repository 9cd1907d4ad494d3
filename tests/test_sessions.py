"""Automatic logoff and the failed-login limiter."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer, send


@pytest.fixture
def server_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return getattr(request, "param", {})


@pytest.mark.parametrize("server_env", [{"BLOOMTEXT_SESSION_IDLE_SECONDS": "2"}], indirect=True)
async def test_idle_session_ends_and_its_socket_closes(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    active = await live_server.signup(org_name="Busy")
    idle_ws = await live_server.socket(admin)
    busy_ws = await live_server.socket(active)
    start = asyncio.get_running_loop().time()
    # One socket keeps talking; the other says nothing.
    code = None
    while asyncio.get_running_loop().time() - start < 8:
        await send(busy_ws, {"type": "sync", "since": {}})  # activity (a ping is not)
        try:
            await asyncio.wait_for(idle_ws.recv(), 0.4)
        except TimeoutError:
            continue
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            break
    assert code == 4001
    r = await live_server.http.get("/api/v1/me", headers=admin.headers)
    assert r.status_code == 401
    # Activity on the socket kept the other session alive.
    r = await live_server.http.get("/api/v1/me", headers=active.headers)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "server_env",
    [{"BLOOMTEXT_SESSION_MAX_SECONDS": "2", "BLOOMTEXT_SESSION_IDLE_SECONDS": "60"}],
    indirect=True,
)
async def test_absolute_lifetime_ends_a_busy_session(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    for _ in range(10):
        r = await live_server.http.get("/api/v1/me", headers=admin.headers)
        if r.status_code == 401:
            break
        await asyncio.sleep(0.5)
    assert r.status_code == 401


@pytest.mark.parametrize("server_env", [{"BLOOMTEXT_LOGIN_MAX_FAILURES": "3"}], indirect=True)
async def test_failed_logins_are_rate_limited(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    email = admin.user["email"]
    for _ in range(3):
        r = await live_server.http.post("/api/v1/auth/login",
                                        json={"email": email, "password": "wrong-guess"})
        assert r.status_code == 401
    # Even the right password waits now, and the answer says for how long.
    r = await live_server.http.post("/api/v1/auth/login",
                                    json={"email": email, "password": admin.password})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) > 0


@pytest.mark.parametrize("server_env", [{"BLOOMTEXT_LOGIN_MAX_FAILURES": "2",
                                         "BLOOMTEXT_LOGIN_MAX_FAILURES_PER_ADDRESS": "7"}],
                         indirect=True)
async def test_one_address_may_fail_more_than_one_account(live_server: LiveServer) -> None:
    """A clinic's staff share one public address: one person's typos lock only them."""
    people = [await live_server.signup(name=f"P{i}") for i in range(4)]
    for person in people[:3]:
        for _ in range(2):
            r = await live_server.http.post("/api/v1/auth/login", json={
                "email": person.user["email"], "password": "wrong-guess"})
            assert r.status_code == 401
    r = await live_server.http.post("/api/v1/auth/login", json={
        "email": people[0].user["email"], "password": people[0].password})
    assert r.status_code == 429  # that account is locked
    r = await live_server.http.post("/api/v1/auth/login", json={
        "email": people[3].user["email"], "password": people[3].password})
    assert r.status_code == 200  # 6 failures from the address, under its limit of 7
    r = await live_server.http.post("/api/v1/auth/login", json={
        "email": people[3].user["email"], "password": "wrong-guess"})
    assert r.status_code == 401  # the 7th
    r = await live_server.http.post("/api/v1/auth/login", json={
        "email": people[3].user["email"], "password": people[3].password})
    assert r.status_code == 429  # now the address waits too
