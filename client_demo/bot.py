"""An example BloomText bot on the msgpack subprotocol: answers `!help` and `!echo TEXT`.

    BOT_TOKEN=bb_... python client_demo/bot.py --url http://127.0.0.1:8000

An admin creates the bot (`POST /api/v1/bots`, which returns its key once) and adds it to
conversations like anyone else. The bot keeps one socket, reconnects with backoff, and
after a reconnect `sync`s from the last seq it saw in each conversation, so a command
sent while it was away is still answered. Each answer's `client_id` is derived from the
command's event id: answering twice (a repeat after a reconnect) stores one message.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "bloomtext.v1.msgpack"
HELP = "I answer: !help (this text) and !echo TEXT (I say TEXT back)."


class Bot:
    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_url = urlunsplit((scheme, parts.netloc, "/ws", "", ""))
        self.token = token
        self.user_id: str | None = None
        self.seen: dict[str, int] = {}  # conversation id -> last seq handled
        self._refs = itertools.count(1)

    async def run(self) -> None:
        delay = 1.0
        while True:
            try:
                async with connect(self.ws_url, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                   open_timeout=10) as ws:
                    delay = 1.0
                    await self._session(ws)
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                if isinstance(exc, ConnectionClosed) and exc.rcvd and exc.rcvd.code == 4001:
                    raise SystemExit("the bot's key was refused (4001): check the token") from None
                print(f"bot: disconnected ({exc!r}); again in {delay:.0f} s", file=sys.stderr)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 60.0)

    async def _session(self, ws: ClientConnection) -> None:
        await self._send(ws, {"type": "auth", "token": self.token})
        async for data in ws:
            frame = msgpack.unpackb(data) if isinstance(data, bytes) else {}
            kind = frame.get("type")
            if kind == "ready":
                self.user_id = frame["user"]["id"]
                since = {}
                for conversation in frame.get("conversations", []):
                    cid = conversation["id"]
                    # First run: start at the end (no answers to old history).
                    since[cid] = self.seen.setdefault(cid, conversation["last_seq"])
                if since:
                    await self._send(ws, {"type": "sync", "since": since})
                print(f"bot: ready as {frame['user']['name']}", file=sys.stderr, flush=True)
            elif kind == "conversation":
                self.seen.setdefault(frame["conversation"]["id"],
                                     frame["conversation"]["last_seq"])
            elif kind == "event":
                await self._on_event(ws, frame["event"])
            elif kind == "synced" and frame.get("more"):
                await self._send(ws, {"type": "sync", "since": {
                    cid: self.seen.get(cid, 0) for cid in frame["more"]}})

    async def _on_event(self, ws: ClientConnection, event: dict[str, Any]) -> None:
        cid = event["conversation_id"]
        if event["seq"] <= self.seen.get(cid, 0):
            return
        self.seen[cid] = event["seq"]
        sender = event.get("sender") or {}
        if event.get("kind") != "message" or sender.get("id") == self.user_id:
            return
        answer = reply_to(event.get("body") or "")
        if answer is not None:
            await self._send(ws, {"type": "send", "conversation_id": cid,
                                  "client_id": f"bot-{event['id']}"[:64], "body": answer})

    async def _send(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        frame.setdefault("ref", next(self._refs))
        await ws.send(msgpack.packb(frame))


def reply_to(body: str) -> str | None:
    text = body.strip()
    if text == "!help":
        return HELP
    if text.startswith("!echo ") and text[6:].strip():
        return text[6:].strip()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    args = parser.parse_args()
    token = os.environ.get("BOT_TOKEN")
    if not token:
        parser.error("set BOT_TOKEN to the bot's key (POST /api/v1/bots)")
    try:
        asyncio.run(Bot(args.url, token).run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
