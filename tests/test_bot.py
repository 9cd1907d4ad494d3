"""client_demo/bot.py, the example bot, as a real process against a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer, expect, send

BOT = Path(__file__).resolve().parent.parent / "client_demo" / "bot.py"


async def test_the_example_bot_answers_help_and_echo(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    r = await live_server.http.post("/api/v1/bots", json={"name": "Helper"},
                                    headers=admin.headers)
    assert r.status_code == 201
    bot = r.json()
    r = await live_server.http.post("/api/v1/conversations",
                                    json={"to": [{"user_id": bot["user"]["id"]}]},
                                    headers=admin.headers)
    cid = r.json()["id"]
    ws = await live_server.socket(admin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOOMTEXT_")}
    env["BOT_TOKEN"] = bot["token"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BOT), "--url", live_server.base_url, env=env,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 15)
        assert b"ready as Helper" in line, line
        for n, (body, answer) in enumerate((("!help", "!help"), ("!echo hello there",
                                                                 "hello there"))):
            await send(ws, {"type": "send", "conversation_id": cid, "client_id": f"c{n}",
                            "body": body})
            while True:
                frame = await expect(ws, "event", timeout=10)
                event = frame["event"]
                if event["sender"]["id"] == bot["user"]["id"]:
                    break
            assert (answer in event["body"]) if body == "!help" else event["body"] == answer
        # Plain chat gets no answer.
        await send(ws, {"type": "send", "conversation_id": cid, "client_id": "c9",
                        "body": "thanks"})
        await asyncio.sleep(0.5)
        r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                       headers=admin.headers)
        bodies = [(e["sender"]["id"] == bot["user"]["id"], e["body"]) for e in r.json()["events"]]
        assert [b for mine, b in bodies if mine][1:] == ["hello there"]
        assert len(bodies) == 5
    finally:
        proc.terminate()
        await proc.wait()
