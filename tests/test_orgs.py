"""Plans and seats, the trial, PATCH /org, and the `plan` command."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from server.ids import utcnow
from storage.models import Org
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"SEATS_FREE": "2", "SEATS_TRIAL": "3", "SEATS_PRO": "none"}


async def add(live: LiveServer, admin, n: int) -> int:  # type: ignore[no-untyped-def]
    r = await live.http.post(
        "/api/v1/members",
        json={"email": f"m{n}-{admin.user['id'][-6:]}@example.test", "name": f"M{n}",
              "password": "correct-horse-9"},
        headers=admin.headers,
    )
    return r.status_code if r.status_code != 409 else (409, r.json()["error"]["code"])  # type: ignore[return-value]


async def test_seats_follow_the_plan(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    r = await live_server.http.get("/api/v1/org", headers=admin.headers)
    assert r.json()["plan"] == "free" and r.json()["seats"] == {"used": 1, "limit": 2}
    assert r.json()["trial_ends_at"] is None

    assert await add(live_server, admin, 1) == 201
    assert await add(live_server, admin, 2) == (409, "seat_limit_reached")
    # Bots never hold a seat.
    r = await live_server.http.post("/api/v1/bots", json={"name": "Helper"},
                                    headers=admin.headers)
    assert r.status_code == 201

    r = await live_server.http.post("/api/v1/org/trial", headers=admin.headers)
    assert r.status_code == 200
    org = r.json()
    assert org["plan"] == "trial" and org["seats"] == {"used": 2, "limit": 3}
    assert org["trial_ends_at"] is not None
    assert await add(live_server, admin, 3) == 201
    assert await add(live_server, admin, 4) == (409, "seat_limit_reached")

    r = await live_server.http.post("/api/v1/org/trial", headers=admin.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"

    # A trial that ran out is the free plan again; nobody is removed.
    await Org.filter(id=org["id"]).update(trial_ends_at=utcnow() - timedelta(minutes=1))
    r = await live_server.http.get("/api/v1/org", headers=admin.headers)
    assert r.json()["plan"] == "free" and r.json()["seats"] == {"used": 3, "limit": 2}
    r = await live_server.http.get("/api/v1/members", headers=admin.headers)
    assert len([u for u in r.json()["items"] if u["kind"] == "member"]) == 3
    assert await add(live_server, admin, 5) == (409, "seat_limit_reached")

    await Org.filter(id=org["id"]).update(plan="pro")
    r = await live_server.http.get("/api/v1/me", headers=admin.headers)
    assert r.json()["org"]["plan"] == "pro" and r.json()["org"]["seats"]["limit"] is None
    assert await add(live_server, admin, 6) == 201


async def test_only_admins_start_the_trial_or_change_the_org(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    r = await live_server.http.post("/api/v1/org/trial", headers=member.headers)
    assert r.status_code == 403
    # The role check comes before validation.
    r = await live_server.http.patch("/api/v1/org", json={"name": ""}, headers=member.headers)
    assert r.status_code == 403
    r = await live_server.http.patch("/api/v1/org", json={"name": "X"})
    assert r.status_code == 401


async def test_patch_org_merges_policies(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    patch = live_server.http.patch
    r = await patch("/api/v1/org", json={"policies": {"no_screenshots": True, "x": 1}},
                    headers=admin.headers)
    assert r.status_code == 200 and r.json()["policies"] == {"no_screenshots": True, "x": 1}
    r = await patch("/api/v1/org", json={"name": "  Lakeside Clinic ", "policies": {"x": None}},
                    headers=admin.headers)
    assert r.status_code == 200
    assert r.json()["name"] == "Lakeside Clinic"
    assert r.json()["policies"] == {"no_screenshots": True}
    r = await live_server.http.get("/api/v1/me", headers=admin.headers)
    assert r.json()["policies"] == {"no_screenshots": True}

    for body, field in (({"name": ""}, "name"), ({"name": "   "}, "name"),
                        ({"policies": {"Bad Key": True}}, "policies"),
                        ({"policies": {"x": [1]}}, "policies"),
                        ({"plan": "pro"}, "plan")):
        r = await patch("/api/v1/org", json=body, headers=admin.headers)
        assert r.status_code == 422, body
        fields = r.json()["error"]["details"]["fields"]
        assert any(name.startswith(field) for name in fields), r.json()


def test_plan_command(tmp_path: Path) -> None:
    db_url = f"sqlite://{tmp_path / 'plan.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOOMTEXT_", "DATABASE_"))}
    env["DATABASE_URL"] = db_url

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    assert run("migrate").returncode == 0
    assert run("seed-demo").returncode == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "plan.sqlite3") as conn:
        (org_id,) = conn.execute("SELECT id FROM orgs").fetchone()
    done = run("plan", org_id, "pro")
    assert done.returncode == 0, done.stderr
    assert "pro plan" in done.stdout
    with sqlite3.connect(tmp_path / "plan.sqlite3") as conn:
        assert conn.execute("SELECT plan FROM orgs").fetchone() == ("pro",)
    missing = run("plan", "or_nosuchorg", "pro")
    assert missing.returncode == 1 and "no organisation" in missing.stderr
    assert run("plan", org_id, "gold").returncode == 2
