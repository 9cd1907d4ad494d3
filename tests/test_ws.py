"""The /ws protocol against a real server: both subprotocols, fan-out, limits, errors."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import LiveServer, expect, quiet, recv, send


async def _closed_with(ws, timeout: float = 5.0) -> int:  # type: ignore[no-untyped-def]
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code


@pytest.mark.parametrize("subprotocol", ["bloomtext.v1.json", "bloomtext.v1.msgpack"])
async def test_send_ack_and_fan_out_to_every_connection(
    live_server: LiveServer, subprotocol: str
) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member)
    a1 = await live_server.socket(admin, subprotocol)
    a2 = await live_server.socket(admin, subprotocol)
    m1 = await live_server.socket(member, subprotocol)
    assert a1.subprotocol == subprotocol

    await send(a1, {"type": "send", "ref": 7, "conversation_id": cid, "client_id": "k1",
                    "body": "hello"})
    first, second = await recv(a1), await recv(a1)  # the ack and the sender's own event
    frames = {first["type"]: first, second["type"]: second}
    ack = frames["ack"]
    assert ack["ref"] == 7 and ack["event"]["seq"] == 1 and ack["event"]["body"] == "hello"
    assert frames["event"]["event"] == ack["event"]
    for ws in (a2, m1):
        frame = await expect(ws, "event")
        assert frame["event"]["id"] == ack["event"]["id"]

    # Stored before the ack: the HTTP API sees it.
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   headers=member.headers)
    assert [e["id"] for e in r.json()["events"]] == [ack["event"]["id"]]

    # A retry with the same client_id returns the first event and fans out nothing new.
    await send(a1, {"type": "send", "ref": 8, "conversation_id": cid, "client_id": "k1",
                    "body": "hello"})
    again = await expect(a1, "ack")
    assert again["event"] == ack["event"] and again["ref"] == 8
    assert [f for f in await quiet(m1) if f["type"] == "event"] == []


async def test_http_send_reaches_sockets(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member)
    m1 = await live_server.socket(member)
    r = await live_server.http.post(f"/api/v1/conversations/{cid}/messages",
                                    json={"body": "from http", "client_id": "h1"},
                                    headers=admin.headers)
    assert r.status_code == 201
    frame = await expect(m1, "event")
    assert frame["event"]["body"] == "from http"


async def test_ready_lists_conversations_and_conversation_frame_on_add(
    live_server: LiveServer,
) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    m1 = await live_server.socket(member)
    cid = await live_server.conversation(admin, member, subject="New")
    frame = await expect(m1, "conversation")
    assert frame["conversation"]["id"] == cid
    # Having received the conversation frame, the socket gets its live events.
    await live_server.http.post(f"/api/v1/conversations/{cid}/messages",
                                json={"body": "first", "client_id": "f"}, headers=admin.headers)
    assert (await expect(m1, "event"))["event"]["body"] == "first"

    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": member.token})
    ready = await expect(ws, "ready")
    assert ready["conversations"] == [{"id": cid, "last_seq": 1, "read_seq": 0}]
    assert ready["org"]["id"] == admin.org["id"] and ready["policies"] == {}


async def test_read_receipt_and_typing_go_to_the_others(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin, name="Nurse Kim")
    cid = await live_server.conversation(admin, member)
    a = await live_server.socket(admin)
    m = await live_server.socket(member)
    await send(a, {"type": "send", "ref": 1, "conversation_id": cid, "client_id": "x",
                   "body": "please read"})
    await expect(a, "ack")
    await expect(m, "event")

    await send(m, {"type": "read", "conversation_id": cid, "seq": 1})
    receipt = await expect(a, "receipt")
    assert receipt["conversation_id"] == cid and receipt["seq"] == 1
    assert receipt["participant"] == {"id": member.user["id"], "kind": "member",
                                      "name": "Nurse Kim"}
    assert receipt["at"].endswith("Z")
    # The reader's own sockets hear nothing; a repeated receipt is not news.
    await send(m, {"type": "read", "conversation_id": cid, "seq": 1})
    assert [f for f in await quiet(a) if f["type"] == "receipt"] == []
    assert [f for f in await quiet(m) if f["type"] == "receipt"] == []

    await send(m, {"type": "typing", "conversation_id": cid})
    typing = await expect(a, "typing")
    assert typing == {"type": "typing", "conversation_id": cid, "user_id": member.user["id"]}
    assert [f for f in await quiet(m) if f["type"] == "typing"] == []


async def test_sync_returns_missed_events_in_pages(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member)

    async def post(i: int) -> None:
        r = await live_server.http.post(f"/api/v1/conversations/{cid}/messages",
                                        json={"body": f"m{i}", "client_id": f"s{i}"},
                                        headers=admin.headers)
        assert r.status_code == 201

    for start in range(0, 1005, 67):  # concurrent sends are stored in shared transactions
        await asyncio.gather(*(post(i) for i in range(start, min(start + 67, 1005))))

    m = await live_server.socket(member)
    await send(m, {"type": "sync", "ref": "s1", "since": {cid: 3}})
    seqs = []
    while True:
        frame = await recv(m)
        if frame["type"] == "synced":
            break
        assert frame["type"] == "event"
        seqs.append(frame["event"]["seq"])
    assert seqs == list(range(4, 1004)) and frame["more"] == [cid] and frame["ref"] == "s1"
    await send(m, {"type": "sync", "since": {cid: 1003}})
    rest = []
    while (frame := await recv(m))["type"] != "synced":
        rest.append(frame["event"]["seq"])
    assert rest == [1004, 1005] and frame["more"] == []


async def test_bad_frames_get_errors_and_the_socket_stays(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    other = await live_server.signup(org_name="Other")
    member = await live_server.add_member(other)
    foreign = await live_server.conversation(other, member)
    ws = await live_server.socket(admin)
    cases = [
        ("not json at all", None, "invalid"),
        (json.dumps([1, 2]), None, "invalid"),
        (json.dumps({"type": "warp", "ref": 3}), 3, "invalid"),
        (json.dumps({"type": "send", "ref": 4}), 4, "invalid"),
        (json.dumps({"type": "read", "ref": 11, "conversation_id": foreign}), 11, "invalid"),
        (json.dumps({"type": "send", "ref": 12, "conversation_id": foreign, "client_id": "a",
                     "body": ""}), 12, "invalid"),
        (json.dumps({"type": "send", "ref": 5, "conversation_id": "cv_x", "client_id": "a",
                     "body": 7}), 5, "invalid"),
        (json.dumps({"type": "read", "ref": 6, "conversation_id": foreign, "seq": 1}), 6,
         "not_found"),
        (json.dumps({"type": "send", "ref": 9, "conversation_id": foreign, "client_id": "q",
                     "body": "sneaky"}), 9, "not_found"),
        (json.dumps({"type": "sync", "ref": 10, "since": {foreign: 0}}), 10, "not_found"),
        (json.dumps({"type": "send", "ref": 13, "conversation_id": foreign, "client_id": "n",
                     "body": "a\u0000b"}), 13, "invalid"),
        (json.dumps({"type": "typing", "ref": 14, "conversation_id": "cv\u0000"}), 14,
         "invalid"),
    ]
    for raw, ref, code in cases:
        await ws.send(raw)
        frame = await expect(ws, "error")
        assert frame["code"] == code and frame["ref"] == ref, (raw, frame)
        assert frame["message"]
    await send(ws, {"type": "ping", "ref": "still-here"})
    assert (await expect(ws, "pong"))["ref"] == "still-here"
    # Nothing reached the other organisation's conversation.
    r = await live_server.http.get(f"/api/v1/conversations/{foreign}/events",
                                   headers=member.headers)
    assert r.json()["events"] == []


async def test_auth_must_come_first(live_server: LiveServer) -> None:
    ws = await live_server.socket()
    await send(ws, {"type": "ping"})
    assert await _closed_with(ws) == 4001
    ws = await live_server.socket()
    await send(ws, {"type": "auth", "token": "bt_forged"})
    assert await _closed_with(ws) == 4001


@pytest.fixture
def server_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return getattr(request, "param", {})


@pytest.mark.parametrize("server_env", [{"BLOOMTEXT_WS_AUTH_TIMEOUT": "0.5"}], indirect=True)
async def test_auth_timeout_closes(live_server: LiveServer) -> None:
    ws = await live_server.socket()
    assert await _closed_with(ws) == 4001


async def test_oversized_frame_closes_1009(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    ws = await live_server.socket(admin)
    await ws.send(json.dumps({"type": "ping", "pad": "x" * (65 * 1024)}))
    assert await _closed_with(ws) == 1009


async def test_flood_is_rate_limited_then_closed(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    ws = await live_server.socket(admin)
    frames = []
    try:
        for i in range(600):
            await send(ws, {"type": "ping", "ref": i})
        while True:
            frames.append(await recv(ws, 5))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 1008
    pongs = [f for f in frames if f["type"] == "pong"]
    limited = [f for f in frames if f.get("code") == "rate_limited"]
    assert len(pongs) >= 200 and limited


async def test_foreign_origin_is_refused(live_server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(live_server.ws_url, origin="http://evil.example")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403


async def test_no_compression_is_negotiated(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    ws = await live_server.socket(admin, compression="deflate")
    assert "permessage-deflate" not in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")


async def test_logout_closes_that_sessions_sockets(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    r = await live_server.http.post(
        "/api/v1/auth/login", json={"email": admin.user["email"], "password": admin.password}
    )
    from tests.conftest import Session

    second = Session(r.json()["token"], r.json()["user"])
    ws_first = await live_server.socket(admin)
    ws_second = await live_server.socket(second)
    r = await live_server.http.post("/api/v1/auth/logout", headers=second.headers)
    assert r.status_code == 204
    assert await _closed_with(ws_second) == 4001
    await send(ws_first, {"type": "ping", "ref": 1})
    assert (await expect(ws_first, "pong"))["ref"] == 1


@pytest.mark.parametrize("server_env", [{"BLOOMTEXT_WS_PING_SECONDS": "0.5"}], indirect=True)
async def test_a_peer_that_stops_answering_pings_is_dropped(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    # A raw TCP client: it completes the handshake and `auth`, then never reads again,
    # so it never answers the server's pings (a dead peer).
    host, port = live_server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    payload = json.dumps({"type": "auth", "token": admin.token}).encode()
    mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as it is
    writer.write(bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + payload)
    await writer.drain()
    # The server's other sockets see the session's socket go: count them via a second one.
    watcher = await live_server.socket(admin)
    await send(watcher, {"type": "ping", "ref": 1})
    await expect(watcher, "pong")
    data = b""
    try:
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):  # pings, `ready`, then the close
                data += chunk
    except TimeoutError:
        pytest.fail("the server kept a peer that never answered its pings")
    finally:
        writer.close()
    assert b"\x88" in data  # a close frame came before EOF
    # The live socket, which answers pings, is still served.
    await send(watcher, {"type": "ping", "ref": 2})
    assert (await expect(watcher, "pong"))["ref"] == 2
