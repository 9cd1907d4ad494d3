"""Server nodes as real subprocesses, and a websocket client that keeps what it hears.

Used by the multi-node tests: every node is `python -m server serve` on its own
loopback port, sharing one PostgreSQL database and one Redis. Every wait is bounded;
every process started here is killed by `Node.kill()`/`Node.stop()` and, should a test
be interrupted, by an atexit hook.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.services import find_free_port

ROOT = Path(__file__).resolve().parent.parent
SUBPROTOCOL = "bloomtext.v1.json"
START_TIMEOUT = 30.0
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(timeout=5)


def _clean_environ() -> dict[str, str]:
    """The parent's environment without anything that configures a BloomText server."""
    drop = {
        "DATABASE_URL", "REDIS_URL", "HOST", "PORT", "PUBLIC_URL", "SECRET_KEY", "SMTP_URL",
        "MAIL_FROM", "ALLOWED_ORIGINS", "DEFAULT_REGION", "SIGNUP_OPEN", "MAX_UPLOAD_BYTES",
        "PORTAL_LINK_TTL_SECONDS", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_URL",
    }
    return {
        k: v for k, v in os.environ.items() if k not in drop and not k.startswith("BLOOMTEXT_")
    }


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join(text) or "(empty log)"


async def migrate(database_url: str, timeout: float = 60.0) -> None:
    """`python -m server migrate`, as an operator runs it before starting nodes."""
    env = {**_clean_environ(), "DATABASE_URL": database_url, "BLOOMTEXT_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "migrate", cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"migrate did not finish in {timeout:.0f} s") from None
    assert proc.returncode == 0, f"migrate exited {proc.returncode}:\n{out.decode()}"


class Node:
    """One `python -m server serve` process on 127.0.0.1:PORT."""

    def __init__(
        self, name: str, database_url: str, redis_url: str | None, log_dir: Path,
        **env: str,
    ) -> None:
        self.name = name
        self.port = find_free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.log = Path(log_dir) / f"node-{name}-{self.port}.log"
        self.env = {
            **_clean_environ(),
            "DATABASE_URL": database_url,
            "PORT": str(self.port),
            "SIGNUP_OPEN": "true",
            "BLOOMTEXT_LOG_LEVEL": "warning",
            "ALLOWED_ORIGINS": f"http://127.0.0.1,{self.base_url}",
            **env,
        }
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = self._http_client()

    def _http_client(self) -> httpx.AsyncClient:
        # Idle connections are not reused after 2 s: uvicorn closes them after 5 s, and a
        # request sent just as it does would fail for reasons that are not the test's.
        return httpx.AsyncClient(
            base_url=self.base_url, timeout=10, limits=httpx.Limits(keepalive_expiry=2.0)
        )

    def __repr__(self) -> str:
        return f"Node({self.name}, {self.base_url})"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return f"--- log of node {self.name} ({self.log}) ---\n" + _tail(self.log, lines)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the process and wait for `/readyz` 200; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        _live.add(self.proc)
        deadline = started + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.name} exited with {self.proc.returncode}\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                r = await self.http.get("/readyz", timeout=2)
                if r.status_code == 200:
                    return time.monotonic() - started
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"node {self.name}: /readyz not 200 within {timeout:.0f} s\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the node vanishes mid-whatever."""
        self._signal(signal.SIGKILL, 5.0)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        self._signal(signal.SIGTERM, timeout)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        _live.discard(proc)

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        r = await self.http.get("/readyz", timeout=5)
        return r.status_code, r.json()

    async def wait_ready(self, timeout: float) -> float:
        """Seconds until `/readyz` answers 200 (AssertionError after `timeout`)."""
        started = time.monotonic()
        last: Any = None
        while time.monotonic() - started < timeout:
            try:
                status, body = await self.readyz()
                if status == 200:
                    return time.monotonic() - started
                last = (status, body)
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"node {self.name}: /readyz not 200 within {timeout:.0f} s (last: {last})\n"
            + self.log_tail()
        )

    async def fresh_http(self) -> httpx.AsyncClient:
        """Replace `http` with a client that holds no pooled (possibly dropped) connection."""
        await self.http.aclose()
        self.http = self._http_client()
        return self.http

    async def aclose(self) -> None:
        await self.http.aclose()


async def statuses_on_one_connection(
    node: Node, path: str, headers: dict[str, str], count: int = 2, pause: float = 0.3
) -> list[int | str]:
    """GET `path` `count` times on one kept-alive HTTP/1.1 connection, `pause` s apart.

    Each item is the status, or "dropped" when the server closed the connection instead
    of answering (a client that reuses kept-alive connections then sees an error).
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", node.port), 5
    )
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n{lines}\r\n".encode()
    statuses: list[int | str] = []
    try:
        for i in range(count):
            if i:
                await asyncio.sleep(pause)
            try:
                writer.write(request)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            except (ConnectionError, asyncio.IncompleteReadError):
                statuses.append("dropped")
                break
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 15)
            statuses.append(status)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return statuses


@dataclass
class Account:
    token: str
    user: dict[str, Any]
    email: str
    password: str

    @property
    def id(self) -> str:
        return self.user["id"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def signup(node: Node, name: str = "Ada Admin") -> Account:
    email = f"admin-{uuid.uuid4().hex[:10]}@example.test"
    password = "correct-horse-1"
    r = await node.http.post(
        "/api/v1/signup",
        json={"org_name": "Clinic", "name": name, "email": email, "password": password},
    )
    assert r.status_code == 201, r.text
    return Account(r.json()["token"], r.json()["user"], email, password)


async def add_member(admin_node: Node, admin: Account, login_node: Node, name: str) -> Account:
    """Create a member through one node and log in through another."""
    email = f"member-{uuid.uuid4().hex[:10]}@example.test"
    password = "correct-horse-2"
    r = await admin_node.http.post(
        "/api/v1/members",
        json={"email": email, "name": name, "role": "member", "password": password},
        headers=admin.headers,
    )
    assert r.status_code == 201, r.text
    r = await login_node.http.post(
        "/api/v1/auth/login", json={"email": email, "password": password}
    )
    assert r.status_code == 200, r.text
    return Account(r.json()["token"], r.json()["user"], email, password)


async def login(node: Node, account: Account) -> Account:
    """A second session of the same user, through `node`."""
    r = await node.http.post(
        "/api/v1/auth/login", json={"email": account.email, "password": account.password}
    )
    assert r.status_code == 200, r.text
    return Account(r.json()["token"], r.json()["user"], account.email, account.password)


async def create_conversation(node: Node, creator: Account, *others: Account) -> dict[str, Any]:
    r = await node.http.post(
        "/api/v1/conversations",
        json={"to": [{"user_id": o.id} for o in others], "subject": "multi-node"},
        headers=creator.headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def stored_events(node: Node, account: Account, conversation_id: str) -> list[dict]:
    """Every stored event of a conversation, read page by page over HTTP (bounded)."""
    events: list[dict[str, Any]] = []
    after = 0
    for _ in range(100):
        r = await node.http.get(
            f"/api/v1/conversations/{conversation_id}/events",
            params={"after": after, "limit": 1000}, headers=account.headers,
        )
        assert r.status_code == 200, r.text
        page = r.json()["events"]
        events.extend(page)
        if not page:
            return events
        after = page[-1]["seq"]
    raise AssertionError("more than 100 pages of events")


class Client:
    """One user's websocket to one node at a time, with a reader that records every frame.

    `live[(generation, conversation_id)]` lists the seqs of events that arrived outside a
    `sync`, per connection (the generation counts reconnects). `events[conversation_id]`
    maps every event id received (live or synced) to the event; `deliveries` counts them.
    """

    def __init__(self, name: str, account: Account) -> None:
        self.name = name
        self.account = account
        self.ws: ClientConnection | None = None
        self.node: Node | None = None
        self.generation = 0
        self.frames: list[dict[str, Any]] = []
        self.events: dict[str, dict[str, dict[str, Any]]] = {}
        self.deliveries: dict[str, int] = {}
        self.live: dict[tuple[int, str], list[int]] = {}
        self.live_at: dict[str, float] = {}  # event id -> when it first arrived live
        self.ready: dict[str, Any] | None = None
        self.closed_code: int | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._refs = itertools.count(1)
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._syncing = 0

    def __repr__(self) -> str:
        return f"Client({self.name} on {self.node})"

    # -- connection ---------------------------------------------------------------

    async def connect(self, node: Node, timeout: float = 10.0) -> dict[str, Any]:
        await self.close()
        self.generation += 1
        self.closed_code = None
        self.node = node
        ws = await asyncio.wait_for(
            connect(node.ws_url, subprotocols=[SUBPROTOCOL], open_timeout=timeout,  # type: ignore[list-item]
                    ping_interval=None, max_queue=None),
            timeout,
        )
        self.ws = ws
        await ws.send(json.dumps({"type": "auth", "token": self.account.token}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self}: no ready within {timeout} s")
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
            if frame.get("type") == "ready":
                break
            self._record(frame)
        self.ready = frame
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        return frame

    async def close(self) -> None:
        ws, reader = self.ws, self._reader
        self.ws, self._reader = None, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        self._fail_pending(ConnectionError(f"{self.name}: connection closed"))

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                self._record(json.loads(data))
        except ConnectionClosed:
            pass
        finally:
            self.closed_code = ws.close_code if ws.close_code is not None else -1
            self._fail_pending(ConnectionError(f"{self.name}: closed ({ws.close_code})"))
            self._changed.set()

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    def _record(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        kind = frame.get("type")
        if kind == "event":
            event = frame["event"]
            cid = event["conversation_id"]
            self.events.setdefault(cid, {})[event["id"]] = event
            self.deliveries[event["id"]] = self.deliveries.get(event["id"], 0) + 1
            if not self._syncing:
                self.live.setdefault((self.generation, cid), []).append(event["seq"])
                self.live_at.setdefault(event["id"], time.monotonic())
        ref = frame.get("ref")
        if kind in ("ack", "error", "synced", "pong") and isinstance(ref, int):
            future = self._pending.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(frame)
        self._changed.set()

    # -- sending ------------------------------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None, f"{self.name} is not connected"
        await self.ws.send(json.dumps(frame))

    async def request(self, frame: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a frame with a fresh ref; the future resolves with its reply (or fails)."""
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.send_frame({**frame, "ref": ref})
        except Exception as exc:
            self._pending.pop(ref, None)
            future.set_exception(ConnectionError(f"{self.name}: send failed: {exc!r}"))
        return future

    async def send_message(
        self, conversation_id: str, client_id: str, body: str
    ) -> asyncio.Future[dict[str, Any]]:
        return await self.request(
            {"type": "send", "conversation_id": conversation_id, "client_id": client_id,
             "body": body}
        )

    async def send_and_ack(
        self, conversation_id: str, client_id: str, body: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The reply to one send (an `ack` or an `error` frame)."""
        future = await self.send_message(conversation_id, client_id, body)
        return await asyncio.wait_for(future, timeout)

    async def sync(self, since: dict[str, int], timeout: float = 15.0) -> int:
        """`sync` (again while `more` names conversations); returns the number of rounds."""
        since = dict(since)
        for rounds in range(1, 51):
            self._syncing += 1
            try:
                future = await self.request({"type": "sync", "since": since})
                reply = await asyncio.wait_for(future, timeout)
            finally:
                self._syncing -= 1
            assert reply["type"] == "synced", f"{self.name}: sync answered {reply}"
            if not reply.get("more"):
                return rounds
            since = {cid: self.contiguous_seq(cid) for cid in reply["more"]}
        raise AssertionError(f"{self.name}: sync still had more after 50 rounds")

    # -- what it holds ------------------------------------------------------------

    def contiguous_seq(self, conversation_id: str) -> int:
        """The last seq held without a gap before it (0 when none)."""
        seqs = {e["seq"] for e in self.events.get(conversation_id, {}).values()}
        n = 0
        while n + 1 in seqs:
            n += 1
        return n

    def ids(self, conversation_id: str) -> set[str]:
        return set(self.events.get(conversation_id, {}))

    def frames_of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            f for f in self.frames
            if f.get("type") == kind and all(f.get(k) == v for k, v in match.items())
        ]

    async def wait_for(
        self, check: Callable[[], Any], timeout: float, what: str = "condition"
    ) -> Any:
        """Wait (bounded) until `check()` returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: {what} not met within {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def expect(self, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The first recorded frame of `kind` matching `match` (waiting for it)."""
        frames = await self.wait_for(
            lambda: self.frames_of(kind, **match), timeout, f"a {kind!r} frame {match}"
        )
        return frames[0]
