"""A broker that hangs never holds back acks: storage is the truth, fan-out is a hint."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import LiveServer, expect, recv, send, start_server, stop_server
from tests.services import RedisServer


async def test_a_hanging_redis_does_not_delay_acks(database_url: str, tmp_path: Path) -> None:
    redis = RedisServer(log_dir=tmp_path)
    redis.start()
    server, base, settings = await start_server(database_url, REDIS_URL=redis.url)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            live = LiveServer(base, settings, http)
            admin = await live.signup()
            member = await live.add_member(admin)
            cid = await live.conversation(admin, member)
            sender = await live.socket(admin)
            reader = await live.socket(member)

            os.kill(redis._proc.pid, signal.SIGSTOP)  # hangs: no refusal, no answer
            try:
                acked = []
                for i in range(5):
                    started = time.monotonic()
                    await send(sender, {"type": "send", "ref": i, "conversation_id": cid,
                                        "client_id": f"h{i}", "body": f"while hung {i}"})
                    ack = await expect(sender, "ack", timeout=3)
                    assert time.monotonic() - started < 1.0, "an ack waited for the broker"
                    acked.append(ack["event"]["id"])
            finally:
                os.kill(redis._proc.pid, signal.SIGCONT)

            # Nothing acked is lost: a sync from the start returns all of it.
            await send(reader, {"type": "sync", "since": {cid: 0}})
            seen = []
            async with asyncio.timeout(10):
                while (frame := await recv(reader))["type"] != "synced":
                    if frame["type"] == "event":
                        seen.append(frame["event"]["id"])
            assert set(acked) <= set(seen)
            for ws in live.sockets:
                await ws.close()
    finally:
        await stop_server(server)
        redis.stop()
