"""Fixtures: a real server (uvicorn, real sockets) on a fresh database, SQLite and PostgreSQL.

Every test that takes `live_server` runs twice, once per database backend. PostgreSQL
is a private cluster started once per session with Debian's initdb/pg_ctl (or the
server named by TEST_POSTGRES_URL); each test gets its own database, migrated from
storage/migrations exactly as `python -m server migrate` does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from server.cli import uvicorn_config
from server.config import load_settings
from storage import db
from tests.services import PostgresCluster, create_database, drop_database, find_free_port

FRAME_TIMEOUT = 5.0
_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a PostgreSQL server the tests may create databases on."""
    given = os.environ.get("TEST_POSTGRES_URL")
    if given:
        yield given.rstrip("/")
        return
    try:
        cluster = PostgresCluster(tmp_path_factory.mktemp("pg"))  # started on creation
    except Exception as exc:  # never skip silently: say how to get it
        pytest.fail(
            f"PostgreSQL is needed for the postgres half of the suite: {exc}\n"
            "Install Debian's postgresql package (scripts/test does it when run as root), "
            "or set TEST_POSTGRES_URL=postgres://USER@HOST:PORT to use a running server.",
            pytrace=False,
        )
    yield f"postgres://postgres@127.0.0.1:{cluster.port}"
    cluster.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'bloomtext.sqlite3'}"
        await db.migrate(url)
        yield url
        return
    base = request.getfixturevalue("postgres_server")
    name = f"bt_test_{os.getpid()}_{next(_counter)}"
    url = await create_database(base, name)
    await db.migrate(url)
    yield url
    await drop_database(base, name)


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[str]:
    """The ORM connected in this process to a fresh database, for storage-level tests."""
    await db.init_db(database_url)
    try:
        yield database_url
    finally:
        await db.close_db()


@dataclass
class Session:
    token: str
    user: dict[str, Any]
    org: dict[str, Any] | None = None
    password: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class LiveServer:
    base_url: str
    settings: Any
    http: httpx.AsyncClient
    sockets: list[ClientConnection] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"

    async def signup(self, name: str = "Ada Admin", org_name: str = "Clinic") -> Session:
        email = f"admin-{uuid.uuid4().hex[:10]}@example.test"
        password = "correct-horse-1"
        r = await self.http.post(
            "/api/v1/signup",
            json={"org_name": org_name, "name": name, "email": email, "password": password},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return Session(body["token"], body["user"], body["org"], password)

    async def add_member(self, admin: Session, name: str = "Sam Member") -> Session:
        email = f"member-{uuid.uuid4().hex[:10]}@example.test"
        password = "correct-horse-2"
        r = await self.http.post(
            "/api/v1/members",
            json={"email": email, "name": name, "role": "member", "password": password},
            headers=admin.headers,
        )
        assert r.status_code == 201, r.text
        r = await self.http.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        )
        assert r.status_code == 200, r.text
        return Session(r.json()["token"], r.json()["user"], None, password)

    async def conversation(self, creator: Session, *others: Session, subject: str = "") -> str:
        r = await self.http.post(
            "/api/v1/conversations",
            json={"to": [{"user_id": o.user["id"]} for o in others], "subject": subject or None},
            headers=creator.headers,
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    async def socket(
        self, session: Session | None = None, subprotocol: str = "bloomtext.v1.json", **kw: Any
    ) -> ClientConnection:
        """An open /ws connection; authenticated (and past `ready`) when given a session."""
        ws = await connect(
            self.ws_url, subprotocols=[subprotocol], origin=self.base_url, **kw  # type: ignore[arg-type]
        )
        self.sockets.append(ws)
        if session is not None:
            await send(ws, {"type": "auth", "token": session.token})
            ready = await expect(ws, "ready")
            assert ready["user"]["id"] == session.user["id"]
        return ws


def _encode(ws: ClientConnection, frame: dict[str, Any]) -> str | bytes:
    if ws.subprotocol == "bloomtext.v1.msgpack":
        import msgpack

        return msgpack.packb(frame)
    return json.dumps(frame)


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(_encode(ws, frame))


async def recv(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    data = await asyncio.wait_for(ws.recv(), timeout)
    if isinstance(data, bytes):
        import msgpack

        return msgpack.unpackb(data)
    return json.loads(data)


async def expect(
    ws: ClientConnection, kind: str, timeout: float = FRAME_TIMEOUT, **match: Any
) -> dict[str, Any]:
    """The next frame of type `kind` (and matching fields), skipping others."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"no {kind!r} frame within {timeout}s")
        frame = await recv(ws, left)
        if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def quiet(ws: ClientConnection, seconds: float = 0.3) -> list[dict[str, Any]]:
    """Every frame that arrives within `seconds`."""
    frames = []
    try:
        while True:
            frames.append(await recv(ws, seconds))
    except TimeoutError:
        return frames


async def start_server(database_url: str, **env: str) -> tuple[uvicorn.Server, str, Any]:
    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    if "BLOOMTEXT_DATA_DIR" not in env:  # files of a test never land in the checkout
        env["BLOOMTEXT_DATA_DIR"] = tempfile.mkdtemp(prefix="bt-data-")
    settings = load_settings(
        {"DATABASE_URL": database_url, "PORT": str(port), "SIGNUP_OPEN": "true",
         "BLOOMTEXT_LOG_LEVEL": "warning", **env}
    )
    config = uvicorn_config(settings)
    server = uvicorn.Server(config)
    server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("server did not start in 4 s")
    server._bt_task = task  # type: ignore[attr-defined]
    return server, base, settings


async def stop_server(server: uvicorn.Server) -> None:
    server.should_exit = True
    await asyncio.wait_for(server._bt_task, 15)  # type: ignore[attr-defined]


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra environment for `live_server`; tests override this fixture to change settings."""
    return {}


@pytest.fixture
async def live_server(database_url: str, server_env: dict[str, str], tmp_path: Path
                      ) -> AsyncIterator[LiveServer]:
    server, base, settings = await start_server(
        database_url, **{"BLOOMTEXT_DATA_DIR": str(tmp_path / "data"), **server_env})
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        live = LiveServer(base, settings, client)
        try:
            yield live
        finally:
            for ws in live.sockets:
                await ws.close()
            await stop_server(server)


# Appended below the fixtures above (hence the late import): real Redis for broker tests.
from tests.services import RedisCluster, RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session: use a unique prefix, never kill it."""
    server = RedisServer(log_dir=tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-master Redis Cluster for the whole session (sharded pub/sub)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


# Services at the boundaries we do not own: a real SMTP server and a fake of Twilio's API.
from tests.fake_twilio import FakeTwilio  # noqa: E402
from tests.mail import Mailbox, smtp_server  # noqa: E402


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server for the module's tests, and what it received."""
    box = Mailbox()
    for port in smtp_server(box):
        yield box, port


def smtp_env(mailbox: tuple[Mailbox, int]) -> dict[str, str]:
    """Settings that send the server's mail to `mailbox` (for a `server_env` fixture)."""
    return {"SMTP_URL": f"smtp://127.0.0.1:{mailbox[1]}", "MAIL_FROM": "no-reply@clinic.test"}


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    """A local fake of Twilio's REST API for the module's tests."""
    with FakeTwilio() as fake:
        yield fake


def twilio_env(fake: FakeTwilio) -> dict[str, str]:
    """Settings that point the server's real twilio client at `fake`."""
    return {"TWILIO_ACCOUNT_SID": fake.account_sid, "TWILIO_AUTH_TOKEN": fake.auth_token,
            "TWILIO_API_URL": fake.url, "BLOOMTEXT_TWILIO_TIMEOUT": "1"}
