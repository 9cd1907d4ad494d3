"""The /ws endpoint: check the origin, authenticate, then decode frames and call actions."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket

from realtime import protocol as p
from realtime.hub import Connection, Hub, conversation_topic
from server.actions import accounts, conversations, messages, portal
from server.actions.context import Actor, Services
from server.actions.views import user_view
from server.errors import ApiError
from storage.outage import is_outage

log = logging.getLogger("bloomtext.ws")

SESSION_CHECK_EVERY = 15.0
# What a patient's portal socket hears of its conversation: its timeline, nothing of staff's
# own state (typing, receipts, delivery reports, lock alerts).
PORTAL_FRAMES = frozenset({"event"})


def session_check_every(svc: Services) -> float:
    return min(SESSION_CHECK_EVERY, svc.settings.session_idle_seconds / 2)


@dataclass(slots=True)
class SocketSession:
    """What the session watcher needs to know about one socket."""

    actor: Actor
    check_at: float  # when to look at the session again (epoch seconds)
    touched_at: float = 0.0
    # A patient through the portal (auth with a ticket): this one conversation only.
    portal_conversation: str | None = None


class TokenBucket:
    """`rate` frames/s sustained, `burst` at once. Overdrawing by another burst is a flood."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> int:
        """1: allowed; 0: over the limit (answer rate_limited); -1: a flood (close)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        if self.tokens >= 0:
            return 1
        return 0 if self.tokens > -self.burst else -1


def _origin_allowed(websocket: WebSocket, allowed: frozenset[str]) -> bool:
    origin = websocket.headers.get("origin")
    # Browsers always send Origin; bots and load tools may not, and carry no cookies.
    return origin is None or origin.lower() in allowed


def _choose_subprotocol(websocket: WebSocket) -> str | None:
    offered = websocket.scope.get("subprotocols") or []
    for name in offered:
        if name in p.SUBPROTOCOLS:
            return name
    return None


async def ws_endpoint(websocket: WebSocket) -> None:
    svc: Services = websocket.app.state.services
    if not _origin_allowed(websocket, svc.settings.allowed_origins):
        await websocket.close(code=p.CLOSE_POLICY)  # before accept: a 403 handshake answer
        return
    subprotocol = _choose_subprotocol(websocket)
    await websocket.accept(subprotocol=subprotocol)
    codec = p.CODECS[subprotocol or p.SUBPROTOCOL_JSON]

    authenticated = await _authenticate(websocket, svc, codec)
    if authenticated is None:
        return
    actor, portal_conversation = authenticated
    hub: Hub = svc.hub

    async def send(data: bytes | str) -> None:
        # The codec made str for text frames and bytes for binary ones.
        if isinstance(data, str):
            await websocket.send({"type": "websocket.send", "text": data})
        else:
            await websocket.send({"type": "websocket.send", "bytes": data})

    async def close(code: int, reason: str) -> None:
        await websocket.close(code=code, reason=reason)

    now = time.time()
    conn = Connection(
        user_id=actor.id,
        session_id=actor.session_id,
        codec=codec,
        send=send,
        close=close,
        max_queue=svc.settings.ws_send_queue,
        state=SocketSession(actor=actor, check_at=now + session_check_every(svc), touched_at=now,
                            portal_conversation=portal_conversation),
        accepts=None if portal_conversation is None else PORTAL_FRAMES,
    )
    try:
        await hub.register(conn)
        snapshot = await conversations.ready_snapshot(actor)
        if portal_conversation is not None:
            snapshot = [c for c in snapshot if c["id"] == portal_conversation]
        for item in snapshot:
            await hub.join(conn, conversation_topic(item["id"]), item["last_seq"])
        if portal_conversation is None:
            me = await accounts.me(svc, actor)
            org, policies = me["org"], me["policies"]
        else:
            org, policies = await portal.org_view(actor), {}
        conn.push_frame(
            {
                "type": "ready",
                "user": user_view(actor.user),
                "org": org,
                "policies": policies,
                "conversations": snapshot,
            }
        )
        await _serve(websocket, svc, conn, actor)
    except Exception as exc:
        if is_outage(exc):
            conn.close_soon(1013, "service unavailable; reconnect later", flush=True)
        else:
            raise
    finally:
        await hub.unregister(conn)


async def _authenticate(websocket: WebSocket, svc: Services, codec: p.Codec
                        ) -> tuple[Actor, str | None] | None:
    """The caller, and for a portal ticket the one conversation it opens."""
    try:
        message = await asyncio.wait_for(websocket.receive(), svc.settings.ws_auth_timeout)
    except TimeoutError:
        await websocket.close(code=p.CLOSE_UNAUTHENTICATED, reason="auth must come first")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    try:
        frame = codec.decode(message.get("bytes") or message.get("text") or b"")
    except p.FrameError:
        frame = None
    reason = "auth must be the first frame"
    try:
        if isinstance(frame, p.Auth) and frame.token:
            return await accounts.authenticate(svc, frame.token), None
        if isinstance(frame, p.Auth) and frame.ticket:
            found = await portal.socket_actor(svc, frame.ticket)
            if found is not None:
                return found
            reason = "unknown, used or expired ticket: ask the page for a new one"
    except ApiError as exc:
        reason = exc.message
    except Exception as exc:
        if not is_outage(exc):
            raise
        # 1013 "try again later": the client backs off and reconnects.
        await websocket.close(code=1013, reason="service unavailable; retry")
        return None
    await websocket.close(code=p.CLOSE_UNAUTHENTICATED, reason=reason)
    return None


async def _serve(websocket: WebSocket, svc: Services, conn: Connection, actor: Actor) -> None:
    codec = conn.codec
    bucket = TokenBucket(svc.settings.ws_rate, svc.settings.ws_burst)
    session: SocketSession = conn.state
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if conn.closed:
            continue  # closing: discard input until the close completes
        allowed = bucket.take()
        if allowed < 0:
            conn.push_frame(p.error_frame("rate_limited", "too many frames; closing"))
            conn.close_soon(p.CLOSE_POLICY, "rate limit exceeded", flush=True)
            continue
        data = message.get("bytes")
        if data is None:
            data = message.get("text") or ""
        try:
            frame = codec.decode(data)
        except p.FrameError as exc:
            conn.push_frame(p.error_frame(exc.code, exc.message, exc.ref))
            continue
        if allowed == 0:
            conn.push_frame(p.error_frame("rate_limited", "slow down", frame.ref))
            continue
        try:
            if not isinstance(frame, p.Ping):
                now = time.time()
                if now - session.touched_at >= accounts.touch_interval(svc).total_seconds():
                    session.touched_at = now
                    if session.portal_conversation is None:
                        await accounts.touch_session(svc, actor.session_id)
                    else:  # a patient reading live is not idle
                        await portal.touch_session(actor.session_id)
            if session.portal_conversation is not None:
                _portal_scope(frame, session.portal_conversation)
            await _dispatch(svc, conn, actor, frame)
        except ApiError as exc:
            conn.push_frame(p.error_frame(exc.code, exc.message, frame.ref))
        except Exception as exc:
            if is_outage(exc):
                conn.push_frame(
                    p.error_frame("unavailable", "the database is unavailable; retry", frame.ref)
                )
            else:
                log.exception("frame %s failed", type(frame).__name__)
                conn.push_frame(p.error_frame("internal", "internal error", frame.ref))


def _portal_scope(frame: Any, conversation_id: str) -> None:
    """A portal socket acts in its one conversation; any other is not found."""
    named = getattr(frame, "conversation_id", None)
    if named is not None and named != conversation_id:
        raise ApiError("not_found", "conversation not found")
    if isinstance(frame, p.Sync) and set(frame.since) - {conversation_id}:
        raise ApiError("not_found", "conversation not found",
                       {"conversation_ids": sorted(set(frame.since) - {conversation_id})})


async def _dispatch(svc: Services, conn: Connection, actor: Actor, frame: Any) -> None:
    if isinstance(frame, p.Send):
        event, _ = await messages.send_message(
            svc, actor, frame.conversation_id, client_id=frame.client_id, body=frame.body
        )
        conn.push_frame({"type": "ack", "ref": frame.ref, "event": event})
    elif isinstance(frame, p.Read):
        await conversations.mark_read(svc, actor, frame.conversation_id, frame.seq)
    elif isinstance(frame, p.Typing):
        await conversations.typing(svc, actor, frame.conversation_id)
    elif isinstance(frame, p.Sync):
        events, more = await conversations.sync(svc, actor, frame.since)
        for event in events:
            await conn.feed({"type": "event", "event": event})
        await conn.feed({"type": "synced", "ref": frame.ref, "more": more})
    elif isinstance(frame, p.Ping):
        conn.push_frame({"type": "pong", "ref": frame.ref})
    elif isinstance(frame, p.Auth):
        conn.push_frame(p.error_frame("invalid", "already authenticated", frame.ref))


async def watch_sessions(svc: Services) -> None:
    """Close sockets whose session has expired (idle or absolute) or was revoked elsewhere."""
    while True:
        await asyncio.sleep(session_check_every(svc) / 3)
        now = time.time()
        for conn in list(svc.hub.connections):
            session: SocketSession = conn.state
            if conn.closed or session.check_at > now:
                continue
            try:
                if session.portal_conversation is not None:
                    ends = await portal.session_alive(svc, conn.session_id)
                else:
                    ends = await accounts.session_alive(svc, conn.session_id)
            except Exception:
                session.check_at = now + session_check_every(svc)
                continue
            if ends is None:
                conn.close_soon(p.CLOSE_UNAUTHENTICATED, "session expired; log in again")
            else:
                session.check_at = min(ends, now + 60.0)  # also catches a lost logout
