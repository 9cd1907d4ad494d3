"""Random frames, valid and not: the socket stays open and every answer is in the contract."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer, recv, send

TYPES = ["auth", "send", "read", "typing", "sync", "ping", "pong", "ack", "", "SEND", None, 7]
FIELDS = ["type", "ref", "conversation_id", "client_id", "body", "seq", "since", "token", "x"]
ERROR_CODES = {"invalid", "not_found", "forbidden", "conflict", "rate_limited", "unavailable"}


def _value(rng: random.Random, conversation_id: str, depth: int = 0) -> Any:
    choices: list[Any] = [
        None, True, False, 0, -1, 2**63, 1.5, "", "x" * rng.randint(1, 300),
        conversation_id, "cv_unknown", "héllo ☃", "\x00", [], {}, [1, "a"],
    ]
    if depth < 2:
        choices.append({conversation_id: rng.choice([0, -5, "1", None, 2**64 - 1])})
        choices.append({"k": _value(rng, conversation_id, depth + 1)})
    return rng.choice(choices)


def _frame(rng: random.Random, conversation_id: str) -> Any:
    if rng.random() < 0.05:
        return rng.choice([[], "text", 3, None])  # not an object at all
    frame: dict[str, Any] = {"type": rng.choice(TYPES)}
    for field in rng.sample(FIELDS, rng.randint(0, len(FIELDS))):
        frame[field] = _value(rng, conversation_id)
    if frame.get("type") == "auth":
        frame["type"] = "ping"  # a second auth is fine, but keep tokens out of the mix
    return frame


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"BLOOMTEXT_WS_RATE": "100000", "BLOOMTEXT_WS_BURST": "100000"}


@pytest.mark.parametrize("subprotocol", ["bloomtext.v1.json", "bloomtext.v1.msgpack"])
async def test_random_frames_never_break_the_socket(
    live_server: LiveServer, subprotocol: str
) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member)
    ws = await live_server.socket(admin, subprotocol)
    rng = random.Random(20261125)
    for _ in range(400):
        frame = _frame(rng, cid)
        if subprotocol.endswith("json"):
            await ws.send(json.dumps(frame))
        else:
            await send(ws, frame if isinstance(frame, dict) else {"type": frame})
    await send(ws, {"type": "ping", "ref": "final"})
    frames = []
    try:
        while True:
            frame = await recv(ws, 10)
            frames.append(frame)
            if frame.get("type") == "pong" and frame.get("ref") == "final":
                break
    except ConnectionClosed as exc:
        pytest.fail(f"the socket was closed: {exc}")
    for frame in frames:
        assert frame["type"] in {"error", "ack", "event", "synced", "pong", "receipt",
                                 "typing", "conversation"}, frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES and frame["message"], frame
    # The server still works normally afterwards.
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   headers=admin.headers)
    assert r.status_code == 200
