"""Teams: admins create, rename and staff them; members see them; others get nothing."""

from __future__ import annotations

from tests.conftest import LiveServer


async def test_teams(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    nurse = await live_server.add_member(admin, name="Nurse Sam")
    desk = await live_server.add_member(admin, name="Kim Desk")
    http = live_server.http

    r = await http.post("/api/v1/teams", json={"name": "Front desk"}, headers=nurse.headers)
    assert r.status_code == 403
    r = await http.post("/api/v1/teams", json={"name": "  "}, headers=admin.headers)
    assert r.status_code == 422
    r = await http.post("/api/v1/teams", json={"name": "Front desk"}, headers=admin.headers)
    assert r.status_code == 201
    team = r.json()
    assert team["name"] == "Front desk" and team["members"] == []

    path = f"/api/v1/teams/{team['id']}/members"
    for user in (nurse, desk, desk):  # PUT twice changes nothing
        r = await http.put(f"{path}/{user.user['id']}", headers=admin.headers)
        assert r.status_code == 204
    r = await http.put(f"{path}/{desk.user['id']}", headers=nurse.headers)
    assert r.status_code == 403
    r = await http.delete(f"{path}/{nurse.user['id']}", headers=admin.headers)
    assert r.status_code == 204
    r = await http.patch(f"/api/v1/teams/{team['id']}", json={"name": "Reception"},
                         headers=admin.headers)
    assert r.status_code == 200 and r.json()["name"] == "Reception"

    r = await http.get("/api/v1/teams", headers=nurse.headers)
    assert r.status_code == 200
    (seen,) = r.json()["items"]
    assert seen["name"] == "Reception"
    assert seen["members"] == [{"id": desk.user["id"], "name": "Kim Desk"}]

    # Another organisation sees none of it, and cannot touch it.
    other = await live_server.signup(org_name="Elsewhere")
    r = await http.get("/api/v1/teams", headers=other.headers)
    assert r.json()["items"] == []
    r = await http.patch(f"/api/v1/teams/{team['id']}", json={"name": "X"},
                         headers=other.headers)
    assert r.status_code == 404
    r = await http.put(f"{path}/{other.user['id']}", headers=admin.headers)
    assert r.status_code == 404  # not a member of this organisation
    r = await http.put(f"/api/v1/teams/tm_nosuchteam0000000/members/{desk.user['id']}",
                       headers=admin.headers)
    assert r.status_code == 404
