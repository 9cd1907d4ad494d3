"""This node's live connections, grouped by topic, fed from the broker.

Topics: `c:<conversation_id>` (timeline events, receipts, typing, deliveries),
`u:<user_id>` (frames for one user: a conversation they were added to or removed from)
and
`s:<session_id>` (the end of one login session: its sockets close).

Per conversation, a node delivers events in `seq` order: an event that arrives
ahead of a missing one waits for it, briefly through the broker, then from storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from realtime.broker import Broker
from realtime.protocol import (
    CLOSE_RESYNC,
    Codec,
    pack,
    unpack,
)

log = logging.getLogger("bloomtext.hub")

PUBLISH_QUEUE = 10_000  # frames waiting for the broker before new ones are dropped

SendFn = Callable[[bytes | str], Awaitable[None]]
CloseFn = Callable[[int, str], Awaitable[None]]
# Reads events (after, before) exclusive of both ends from storage, in seq order.
GapReader = Callable[[str, int, int], Awaitable[list[dict[str, Any]]]]


def conversation_topic(conversation_id: str) -> str:
    return "c:" + conversation_id


def user_topic(user_id: str) -> str:
    return "u:" + user_id


def session_topic(session_id: str) -> str:
    return "s:" + session_id


class Envelope:
    """One frame on its way to this node's sockets, encoded at most once per codec."""

    __slots__ = ("frame", "skip_user", "_encoded")

    def __init__(self, frame: dict[str, Any], skip_user: str | None = None) -> None:
        self.frame = frame
        self.skip_user = skip_user
        self._encoded: dict[str, bytes | str] = {}

    def encoded(self, codec: Codec) -> bytes | str:
        data = self._encoded.get(codec.name)
        if data is None:
            data = self._encoded[codec.name] = codec.encode(self.frame)
        return data


class Connection:
    """One authenticated socket. Frames queue here; a writer task drains them.

    The writer exists only while there is something to send, so an idle socket costs
    no task. The queue is bounded: a socket that falls `max_queue` frames behind is
    closed with 4008 (reconnect and `sync`) rather than buffered without limit.
    """

    __slots__ = (
        "user_id",
        "session_id",
        "codec",
        "topics",
        "state",
        "accepts",
        "_send",
        "_close",
        "_queue",
        "_space",
        "_writer",
        "_max_queue",
        "closed",
    )

    def __init__(
        self,
        *,
        user_id: str,
        session_id: str,
        codec: Codec,
        send: SendFn,
        close: CloseFn,
        max_queue: int,
        state: Any = None,
        accepts: frozenset[str] | None = None,
    ) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.codec = codec
        self.topics: set[str] = set()
        self.state = state  # the server's own per-socket data (session expiry)
        # The frame types this socket gets from its topics (None: all). A patient's portal
        # socket gets the conversation's events, not staff's typing, receipts, deliveries.
        self.accepts = accepts
        self._send = send
        self._close = close
        self._queue: deque[bytes | str] = deque()
        self._space: asyncio.Event | None = None  # made when a reply waits for room
        self._writer: asyncio.Task[None] | None = None
        self._max_queue = max_queue
        self.closed = False

    def push(self, data: bytes | str) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._max_queue:
            self.close_soon(CLOSE_RESYNC, "too far behind: reconnect and sync")
            return
        self._queue.append(data)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def push_frame(self, frame: dict[str, Any]) -> None:
        self.push(self.codec.encode(frame))

    async def feed(self, frame: dict[str, Any]) -> None:
        """Queue a reply frame, waiting while the queue is half full.

        For long replies (sync): they are paced by the socket instead of counting
        against the bound that drops slow consumers of live events.
        """
        while len(self._queue) >= self._max_queue // 2 and not self.closed:
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            await self._space.wait()
        self.push_frame(frame)

    def _room(self) -> None:
        if self._space is not None:
            self._space.set()

    def close_soon(self, code: int, reason: str, *, flush: bool = False) -> None:
        """Stop accepting frames and close the socket from a task (safe in callbacks).

        `flush` sends what is already queued first (an error that explains the close);
        otherwise the queue is dropped (a consumer too slow to read it).
        """
        if self.closed:
            return
        self.closed = True
        if not flush:
            self._queue.clear()
        self._room()
        asyncio.get_running_loop().create_task(self._close_quietly(code, reason))

    async def _close_quietly(self, code: int, reason: str) -> None:
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
            except (TimeoutError, asyncio.CancelledError, Exception):
                pass
        try:
            await self._close(code, reason)
        except Exception:  # the peer may be gone already
            pass

    async def _drain(self) -> None:
        queue, send, half = self._queue, self._send, self._max_queue // 2
        try:
            while queue:
                await send(queue.popleft())
                if len(queue) < half:
                    self._room()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The socket is gone; the reader side notices and unregisters us.
            self.closed = True
            queue.clear()
            self._room()
        finally:
            self._writer = None

    async def stop(self) -> None:
        self.closed = True
        self._queue.clear()
        self._room()
        writer = self._writer
        if writer is not None:
            writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, Exception):
                pass


class _Topic:
    __slots__ = ("conns", "last_seq", "pending", "filling", "arrived")

    def __init__(self, last_seq: int | None) -> None:
        self.conns: set[Connection] = set()
        self.last_seq = last_seq
        self.pending: list[Envelope] = []
        self.filling = False
        self.arrived: asyncio.Event | None = None  # set when an event joins `pending`


# How long a node waits for a missing event to come through the broker before reading
# it from storage. Nodes commit concurrently and publish independently, so events of one
# conversation from two nodes often reach a third out of order by a fraction of a
# millisecond; reading storage for each of those would cost every node a query per
# event. A lost event (broker outage, a node that died between commit and publish) is
# read from storage after this grace.
GAP_GRACE_SECONDS = 0.02


class Hub:
    def __init__(
        self, broker: Broker, read_gap: GapReader, gap_grace: float = GAP_GRACE_SECONDS
    ) -> None:
        self._broker = broker
        self._read_gap = read_gap
        self._gap_grace = gap_grace
        # Events that arrived ahead of a missing one, and reads of storage that followed.
        self.gaps_seen = 0
        self.gap_reads = 0
        self._topics: dict[str, _Topic] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.connections: set[Connection] = set()
        self._publish_failing = False
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_full = False
        self._publisher: asyncio.Task[None] | None = None
        broker.set_handler(self._on_message)

    # -- membership -------------------------------------------------------------

    async def register(self, conn: Connection) -> None:
        self.connections.add(conn)
        await self.join(conn, user_topic(conn.user_id))
        await self.join(conn, session_topic(conn.session_id))

    async def unregister(self, conn: Connection) -> None:
        self.connections.discard(conn)
        for topic in list(conn.topics):
            await self.leave(conn, topic)
        await conn.stop()

    async def join(self, conn: Connection, topic: str, last_seq: int | None = None) -> None:
        """Add `conn` to `topic`. `last_seq` is the newest seq the caller knows is stored."""
        state = self._topics.get(topic)
        if state is None:
            # Subscribing may wait on the network; one subscribe per topic per node.
            lock = self._locks.setdefault(topic, asyncio.Lock())
            async with lock:
                state = self._topics.get(topic)
                if state is None:
                    await self._broker.subscribe(topic)
                    state = self._topics[topic] = _Topic(last_seq)
        elif last_seq is not None and state.last_seq is None:
            state.last_seq = last_seq
        state.conns.add(conn)
        conn.topics.add(topic)

    async def leave(self, conn: Connection, topic: str) -> None:
        conn.topics.discard(topic)
        state = self._topics.get(topic)
        if state is None:
            return
        state.conns.discard(conn)
        if not state.conns:
            lock = self._locks.setdefault(topic, asyncio.Lock())
            async with lock:
                if not state.conns and self._topics.get(topic) is state:
                    del self._topics[topic]
                    self._locks.pop(topic, None)
                    try:
                        await self._broker.unsubscribe(topic)
                    except Exception:
                        log.warning("unsubscribe from %s failed", topic)

    def topic_count(self) -> int:
        return len(self._topics)

    # -- publishing -------------------------------------------------------------

    def publish(
        self, topic: str, frame: dict[str, Any], *, skip_user: str | None = None
    ) -> None:
        """Send a frame to every socket on `topic`, on every node: queued, best effort.

        Called after the change is stored, so the broker's health must neither turn a
        stored change into an error nor hold back acks, answers or the next batch of
        writes: one task publishes in queue order, and a failure is logged once per
        outage. When `PUBLISH_QUEUE` frames are waiting, new ones are dropped (logged):
        hubs fill event gaps from storage when the next event of a conversation arrives,
        and clients `sync`.
        """
        if len(self._outbox) >= PUBLISH_QUEUE:
            if not self._outbox_full:
                self._outbox_full = True
                log.warning("publish queue full (%d); dropping fan-out", PUBLISH_QUEUE)
            return
        self._outbox_full = False
        self._outbox.append((topic, pack((skip_user, frame))))
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(self._drain_outbox())

    async def _drain_outbox(self) -> None:
        try:
            while self._outbox:
                topic, data = self._outbox.popleft()
                await self._publish_packed(topic, data)
        finally:
            self._publisher = None

    async def _publish_packed(self, topic: str, data: bytes) -> None:
        try:
            await self._broker.publish(topic, data)
        except Exception as exc:
            if not self._publish_failing:
                self._publish_failing = True
                log.warning("fan-out is failing (%s); clients will repair with sync",
                            type(exc).__name__)
            return
        if self._publish_failing:
            self._publish_failing = False
            log.info("fan-out works again")

    # -- receiving --------------------------------------------------------------

    def _on_message(self, topic: str, data: bytes) -> None:
        state = self._topics.get(topic)
        if state is None:
            return
        try:
            skip_user, frame = unpack(data)
        except Exception:
            log.warning("dropped an undecodable broker message on %s", topic)
            return
        env = Envelope(frame, skip_user)
        kind = frame.get("type")
        if kind == "event":
            self._on_event(topic, state, env)
        elif kind == "conversation":
            asyncio.get_running_loop().create_task(self._add_to_conversation(state, env))
        elif kind == "conversation_removed":
            asyncio.get_running_loop().create_task(self._remove_from_conversations(state, env))
        elif kind == "close":
            for conn in list(state.conns):
                conn.close_soon(frame.get("code", 4001), frame.get("reason", ""))
        else:
            self._deliver(state, env)

    def _deliver(self, state: _Topic, env: Envelope) -> None:
        skip = env.skip_user
        for conn in state.conns:
            if conn.user_id != skip and (
                    conn.accepts is None or env.frame["type"] in conn.accepts):
                conn.push(env.encoded(conn.codec))

    def _on_event(self, topic: str, state: _Topic, env: Envelope) -> None:
        seq = env.frame["event"]["seq"]
        if state.filling:
            state.pending.append(env)
            if state.arrived is not None:
                state.arrived.set()
        elif state.last_seq is None or seq == state.last_seq + 1:
            state.last_seq = seq
            self._deliver(state, env)
        elif seq > state.last_seq:
            state.filling = True
            state.pending.append(env)
            self.gaps_seen += 1
            asyncio.get_running_loop().create_task(self._fill(topic, state))
        # else: already delivered (a repeat, or read from storage while filling a gap)

    async def _fill(self, topic: str, state: _Topic) -> None:
        conversation_id = topic[2:]
        try:
            while state.pending:
                state.pending.sort(key=lambda e: e.frame["event"]["seq"])
                env = state.pending.pop(0)
                seq = env.frame["event"]["seq"]
                last = state.last_seq or 0
                if seq <= last:
                    continue
                if seq > last + 1:
                    if await self._arrives(state, last + 1):
                        state.pending.append(env)
                        continue
                    self.gap_reads += 1
                    try:
                        missing = await self._read_gap(conversation_id, last, seq)
                    except Exception:
                        log.warning("could not read a gap in %s; clients will sync", topic)
                        missing = []
                    for event in missing:
                        if event["seq"] == (state.last_seq or 0) + 1:
                            state.last_seq = event["seq"]
                            self._deliver(state, Envelope({"type": "event", "event": event}))
                state.last_seq = seq
                self._deliver(state, env)
        finally:
            state.filling = False

    async def _arrives(self, state: _Topic, wanted: int) -> bool:
        """Wait up to the grace for event `wanted` to come through the broker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._gap_grace
        state.arrived = asyncio.Event()
        try:
            while True:
                if any(e.frame["event"]["seq"] == wanted for e in state.pending):
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                state.arrived.clear()
                try:
                    await asyncio.wait_for(state.arrived.wait(), left)
                except TimeoutError:
                    return any(e.frame["event"]["seq"] == wanted for e in state.pending)
        finally:
            state.arrived = None

    async def _add_to_conversation(self, state: _Topic, env: Envelope) -> None:
        """A user was added to a conversation: their sockets join its topic, then hear of it."""
        conversation = env.frame["conversation"]
        topic = conversation_topic(conversation["id"])
        for conn in list(state.conns):
            if conn.closed:
                continue
            await self.join(conn, topic, conversation.get("last_seq", 0))
            conn.push(env.encoded(conn.codec))

    async def _remove_from_conversations(self, state: _Topic, env: Envelope) -> None:
        """A user lost access (left a team): their sockets leave the topics, then hear it."""
        topics = [conversation_topic(cid) for cid in env.frame.get("conversation_ids", [])]
        for conn in list(state.conns):
            for topic in topics:
                if topic in conn.topics:
                    await self.leave(conn, topic)
            if not conn.closed:
                conn.push(env.encoded(conn.codec))

    async def close(self) -> None:
        publisher = self._publisher
        if publisher is not None:
            publisher.cancel()
            try:
                await publisher
            except (asyncio.CancelledError, Exception):
                pass
        for conn in list(self.connections):
            conn.close_soon(1001, "server shutting down")
        self.connections.clear()
