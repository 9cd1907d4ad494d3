"""The patient directory and the CSV import: the plan gate, validation and normalisation,
search, archive, upsert, the job report and its live progress."""

from __future__ import annotations

import asyncio
import codecs
import uuid
from datetime import timedelta

import pytest

from server.ids import utcnow
from storage.models import Org
from tests.conftest import LiveServer, Session, expect, send


async def trial_org(live: LiveServer, org_name: str = "Clinic") -> Session:
    admin = await live.signup(org_name=org_name)
    r = await live.http.post("/api/v1/org/trial", headers=admin.headers)
    assert r.status_code == 200, r.text
    return admin


async def add(live: LiveServer, who: Session, **fields: str) -> dict:
    r = await live.http.post("/api/v1/patients", json=fields, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def search(live: LiveServer, who: Session, q: str, **params: str) -> list[str]:
    r = await live.http.get("/api/v1/patients", params={"q": q, **params},
                            headers=who.headers)
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["items"]]


async def test_free_plan_is_402_and_a_lapsed_trial_keeps_everything(
    live_server: LiveServer,
) -> None:
    admin = await live_server.signup()
    r = await live_server.http.post("/api/v1/patients", json={"phone": "4155550100"},
                                    headers=admin.headers)
    assert r.status_code == 402
    assert r.json()["error"]["code"] == "plan_required"
    assert "trial" in r.json()["error"]["message"]
    for path in ("/api/v1/patients", "/api/v1/phone-numbers",
                 "/api/v1/conversations?kind=patient"):
        assert (await live_server.http.get(path, headers=admin.headers)).status_code == 402

    await live_server.http.post("/api/v1/org/trial", headers=admin.headers)
    patient = await add(live_server, admin, first_name="Ana", phone="4155550100")
    # The trial runs out: 402, and nothing is lost.
    await Org.filter(id=admin.user["org_id"]).update(trial_ends_at=utcnow() - timedelta(days=1))
    r = await live_server.http.get(f"/api/v1/patients/{patient['id']}", headers=admin.headers)
    assert r.status_code == 402
    await Org.filter(id=admin.user["org_id"]).update(plan="pro")
    r = await live_server.http.get(f"/api/v1/patients/{patient['id']}", headers=admin.headers)
    assert r.status_code == 200 and r.json()["first_name"] == "Ana"


async def test_directory_validates_normalises_and_searches(live_server: LiveServer) -> None:
    admin = await trial_org(live_server)
    member = await live_server.add_member(admin)
    ana = await add(live_server, member, first_name=" Ana ", last_name="Lopez",
                    dob="1980-02-29", mrn="A-100", email="Ana@Example.COM",
                    phone="(415) 555-0123")
    assert ana["phone"] == "+14155550123" and ana["email"] == "ana@example.com"
    assert ana["first_name"] == "Ana" and ana["dob"] == "1980-02-29"
    bo = await add(live_server, admin, first_name="Bo", last_name="Chen",
                   phone="+44 20 7183 8750", dob="2001-07-04")
    assert bo["phone"] == "+442071838750"
    # A phone already on file makes another patient (a family may share one).
    kid = await add(live_server, admin, first_name="Kid", last_name="Lopez",
                    phone="415-555-0123")

    for q, expected in (("lopez", {ana["id"], kid["id"]}), ("ANA", {ana["id"]}),
                        ("a-100", {ana["id"]}), ("5550123", {ana["id"], kid["id"]}),
                        ("(415) 555-0123", {ana["id"], kid["id"]}),
                        ("example.com", {ana["id"]}), ("2001-07", {bo["id"]}),
                        ("ana lopez", {ana["id"]}), ("nobody", set())):
        assert set(await search(live_server, member, q)) == expected, q

    bad = {"first_name": "x" * 201, "dob": "2999-01-01", "email": "not-an-email",
           "phone": "12", "mrn": "has space"}
    r = await live_server.http.post("/api/v1/patients", json=bad, headers=admin.headers)
    assert r.status_code == 422
    assert set(r.json()["error"]["details"]["fields"]) == set(bad)
    r = await live_server.http.post("/api/v1/patients", json={"first_name": "No contact"},
                                    headers=admin.headers)
    assert r.status_code == 422
    r = await live_server.http.post("/api/v1/patients", json={"dob": "1990-02-30",
                                                                "phone": "4155550100"},
                                    headers=admin.headers)
    assert r.status_code == 422 and "dob" in r.json()["error"]["details"]["fields"]
    r = await live_server.http.post("/api/v1/patients", json={"mrn": "A-100",
                                                                "phone": "4155550100"},
                                    headers=admin.headers)
    assert r.status_code == 409 and r.json()["error"]["details"]["fields"] == {"mrn": "taken"}

    # Edit (null clears), archive, restore; archived ones leave the search.
    r = await live_server.http.patch(f"/api/v1/patients/{ana['id']}",
                                     json={"email": None, "last_name": "Lopez-Diaz"},
                                     headers=member.headers)
    assert r.status_code == 200, r.text
    assert r.json()["email"] is None and r.json()["last_name"] == "Lopez-Diaz"
    assert r.json()["mrn"] == "A-100"
    r = await live_server.http.patch(f"/api/v1/patients/{bo['id']}", json={"phone": None},
                                     headers=member.headers)
    assert r.status_code == 422  # it would leave neither phone nor email
    r = await live_server.http.patch(f"/api/v1/patients/{kid['id']}", json={"archived": True},
                                     headers=admin.headers)
    assert r.json()["archived"] is True
    assert set(await search(live_server, member, "lopez")) == {ana["id"]}
    assert kid["id"] in await search(live_server, member, "lopez", archived="true")
    r = await live_server.http.patch(f"/api/v1/patients/{kid['id']}",
                                     json={"archived": False}, headers=admin.headers)
    assert r.json()["archived"] is False

    other = await trial_org(live_server, "Elsewhere")
    r = await live_server.http.get(f"/api/v1/patients/{ana['id']}", headers=other.headers)
    assert r.status_code == 404
    assert await search(live_server, other, "lopez") == []


CSV = (
    "\ufeffFirst Name;Last Name;Date of Birth;MRN;E-mail;Mobile\n"
    "Ana;Lopez;02/29/1980;A-1;ana@example.com;(415) 555-0101\n"
    "Bo;Chen;2001-07-04;;bo@example.com;\n"
    "=HYPERLINK(\"http://x\");Evil;;A-3;;415-555-0103\n"
    "Bad;Date;13/45/1999;A-4;;4155550104\n"
    "No;Contact;1990-01-01;;;\n"
    "\n"
    "Ana;Lopez;02/29/1980;A-1;ana@example.com;(415) 555-0101\n"
)


async def wait_job(live: LiveServer, who: Session, job_id: str) -> dict:
    for _ in range(200):
        r = await live.http.get(f"/api/v1/jobs/{job_id}", headers=who.headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] != "running":
            return r.json()
        await asyncio.sleep(0.05)
    raise AssertionError("the import did not finish")


async def test_import_upserts_reports_rows_and_shows_progress(live_server: LiveServer) -> None:
    admin = await trial_org(live_server)
    existing = await add(live_server, admin, first_name="Bo", phone="4155550199",
                         email="bo@example.com")
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": admin.token})
    await expect(ws, "ready")

    r = await live_server.http.post("/api/v1/patients/import", content=CSV.encode(),
                                    headers={**admin.headers, "Content-Type": "text/csv",
                                             "Idempotency-Key": "import-1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = await wait_job(live_server, admin, job_id)
    assert job["status"] == "done", job
    # 7 rows (the blank line is none): Ana created then matched by MRN (unchanged), Bo
    # matched by email and updated, the formula row created, two rejected.
    assert (job["total"], job["done"], job["created"], job["updated"], job["rejected"]) == (
        7 - 1, 7 - 1, 2, 1, 2), job
    assert job["progress"] == 1.0
    assert [e["line"] for e in job["errors"]] == [5, 6]
    assert "dob" in job["errors"][0]["message"]
    assert "MRN, a phone or an email" in job["errors"][1]["message"]
    frame = await expect(ws, "job")
    assert frame["job"]["id"] == job_id
    await ws.close()

    ana = (await live_server.http.get("/api/v1/patients", params={"q": "A-1"},
                                      headers=admin.headers)).json()["items"]
    assert [(p["dob"], p["phone"]) for p in ana] == [("1980-02-29", "+14155550101")]
    bo = (await live_server.http.get(f"/api/v1/patients/{existing['id']}",
                                     headers=admin.headers)).json()
    assert (bo["last_name"], bo["dob"], bo["phone"]) == ("Chen", "2001-07-04", "+14155550199")
    evil = (await live_server.http.get("/api/v1/patients", params={"q": "A-3"},
                                       headers=admin.headers)).json()["items"][0]
    assert evil["first_name"] == '=HYPERLINK("http://x")'  # kept as text, never evaluated

    # The same Idempotency-Key: the first job, nothing imported twice.
    r = await live_server.http.post("/api/v1/patients/import", content=CSV.encode(),
                                    headers={**admin.headers, "Content-Type": "text/csv",
                                             "Idempotency-Key": "import-1"})
    assert r.status_code == 200 and r.json()["job_id"] == job_id


async def test_import_multipart_and_refusals(live_server: LiveServer) -> None:
    admin = await trial_org(live_server)
    rows = "first_name,last_name,phone\n" + "".join(
        f"P{i},Test,+1415555{i:04d}\n" for i in range(2100))
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": admin.token})
    await expect(ws, "ready")
    r = await live_server.http.post("/api/v1/patients/import",
                                    files={"file": ("p.csv", rows.encode(), "text/csv")},
                                    headers=admin.headers)
    assert r.status_code == 202, r.text
    job = await wait_job(live_server, admin, r.json()["job_id"])
    assert (job["status"], job["created"], job["rejected"]) == ("done", 2100, 0), job
    assert job["progress"] == 1.0
    # The first frame comes after 500 of 2,100 rows: part of the way through the file.
    # (Past 2,000 new patients the import also refreshes PostgreSQL's statistics.)
    first = (await expect(ws, "job"))["job"]
    assert first["done"] == 500 and 0.15 < first["progress"] < 0.4, first
    await ws.close()

    for body, content_type, why in (
        (b"\x89PNG\r\n\x1a\n\x00\x00", "text/csv", "not CSV"),
        (b"foo,bar\n1,2\n", "text/csv", "no usable header"),
        (b"", "text/csv", "no header"),
        (codecs.encode("phone\n\xe9", "latin-1"), "text/csv", "not UTF-8"),
        (b"phone\n1\n", "application/json", "not CSV"),
    ):
        r = await live_server.http.post("/api/v1/patients/import", content=body,
                                        headers={**admin.headers, "Content-Type": content_type})
        assert r.status_code == 422, (why, r.text)
        assert r.json()["error"]["details"]["fields"]["file"] == why


class TestImportLimit:
    @pytest.fixture
    def server_env(self) -> dict[str, str]:
        return {"BLOOMTEXT_MAX_IMPORT_BYTES": "1000"}

    async def test_too_large_is_413(self, live_server: LiveServer) -> None:
        admin = await trial_org(live_server)
        big = ("phone\n" + "+14155550100\n" * 200).encode()

        async def chunks():  # no Content-Length: refused while streaming
            for i in range(0, len(big), 100):
                yield big[i:i + 100]

        r = await live_server.http.post("/api/v1/patients/import", content=chunks(),
                                        headers={**admin.headers, "Content-Type": "text/csv"})
        assert r.status_code == 413
        r = await live_server.http.post("/api/v1/patients/import", content=big,
                                        headers={**admin.headers, "Content-Type": "text/csv"})
        assert r.status_code == 413
        assert uuid  # noqa: B018
