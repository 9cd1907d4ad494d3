"""Redis broker: classic pub/sub on one server, sharded pub/sub on a Redis Cluster.

`redis://` and `rediss://` use PUBLISH/SUBSCRIBE; `redis+cluster://host:port` (or
`rediss+cluster://`) uses SPUBLISH/SSUBSCRIBE so that each channel lives on the shard that
owns its slot and fan-out grows with the cluster. Channel names are `prefix + topic`.

Shape: one supervisor task owns the subscriber connection(s). It connects, subscribes to
every wanted topic, then reads until something breaks; it then reconnects with capped,
jittered exponential backoff and subscribes again. `subscribe`/`unsubscribe` only change
the wanted set and, when connected, send the command; all writes to the shared PubSub go
through one lock (concurrent subscribes on one PubSub race and lose channels).

Delivery is at most once (see `realtime.broker`): messages published while this node is
reconnecting are lost, and clients repair with `sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from realtime.broker import Handler

log = logging.getLogger("bloomtext.broker")

Message = dict[str, Any]

_SCHEMES = {"redis": False, "rediss": False, "redis+cluster": True, "rediss+cluster": True}
_BATCH = 256  # channels per SUBSCRIBE when subscribing again after a reconnect
_READ_WAIT = 1.0  # seconds a reader blocks before checking its connection's health


class _Link(Protocol):
    """One generation of subscriber connections; thrown away whole when anything breaks."""

    async def open(self) -> None: ...

    async def subscribe(self, channels: list[bytes]) -> None: ...

    async def unsubscribe(self, channels: list[bytes]) -> None: ...

    def sources(self) -> dict[object, _Source]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Source:
    """A connection messages arrive on: the one PubSub, or one shard's PubSub."""

    name: str
    read: Callable[[float], Awaitable[Message | None]]
    ping: Callable[[], Awaitable[object]]
    current: Callable[[], bool]  # False once redis-py has dropped this connection


class _ClassicLink:
    def __init__(self, client: Redis) -> None:
        self._pubsub: PubSub = client.pubsub()

    async def open(self) -> None:
        await self._pubsub.connect()

    async def subscribe(self, channels: list[bytes]) -> None:
        await self._pubsub.subscribe(*channels)

    async def unsubscribe(self, channels: list[bytes]) -> None:
        await self._pubsub.unsubscribe(*channels)

    def sources(self) -> dict[object, _Source]:
        ps = self._pubsub

        async def read(timeout: float) -> Message | None:
            message: Message | None = await ps.get_message(timeout=timeout)
            return message

        return {ps: _Source("redis", read, ps.ping, lambda: True)}

    async def close(self) -> None:
        await self._pubsub.aclose()


class _ShardedLink:
    """Sharded pub/sub: redis-py keeps one PubSub per shard that holds our channels."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._pubsub: ClusterPubSub = client.pubsub()

    async def open(self) -> None:
        await self._client.initialize()
        await self._client.ping(target_nodes=RedisCluster.PRIMARIES)

    async def subscribe(self, channels: list[bytes]) -> None:
        await self._pubsub.ssubscribe(*channels)

    async def unsubscribe(self, channels: list[bytes]) -> None:
        await self._pubsub.sunsubscribe(*channels)

    def sources(self) -> dict[object, _Source]:
        found: dict[object, _Source] = {}
        mapping = self._pubsub.node_pubsub_mapping
        for name, node_ps in list(mapping.items()):
            node = self._client.get_node(node_name=name)
            if node is None:
                continue
            found[node_ps] = _Source(
                name,
                self._reader(node),
                node_ps.ping,
                # redis-py closes and forgets a shard's PubSub once it holds no channel.
                partial(_is_current, mapping, name, node_ps),
            )
        return found

    def _reader(self, node: ClusterNode) -> Callable[[float], Awaitable[Message | None]]:
        async def read(timeout: float) -> Message | None:
            # target_node: one reader per shard, instead of get_sharded_message's
            # round robin that waits `timeout` on each idle shard in turn.
            message: Message | None = await self._pubsub.get_sharded_message(
                target_node=node, timeout=timeout
            )
            return message

        return read

    async def close(self) -> None:
        await self._pubsub.aclose()


def _is_current(mapping: dict[str, PubSub], name: str, pubsub: PubSub) -> bool:
    return mapping.get(name) is pubsub


@dataclass(eq=False)
class _Session:
    link: _Link
    tg: asyncio.TaskGroup | None = None
    reading: set[object] = field(default_factory=set)
    # SUBSCRIBEs sent on this link and not yet confirmed, in send order per channel.
    acks: dict[bytes, deque[asyncio.Future[None]]] = field(default_factory=dict)
    broken: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.broken.set()

    def expect_ack(self, channel: bytes) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.setdefault(channel, deque()).append(ack)
        return ack

    def on_ack(self, channel: bytes) -> None:
        pending = self.acks.get(channel)
        if not pending:
            return  # redis-py subscribed again by itself after a reconnect
        ack = pending.popleft()
        if not pending:
            del self.acks[channel]
        if not ack.done():
            ack.set_result(None)

    def release_acks(self) -> None:
        """Wake every waiter: this link is gone, the next one subscribes again."""
        for pending in self.acks.values():
            for ack in pending:
                if not ack.done():
                    ack.set_result(None)
        self.acks.clear()


def _describe(exc: BaseException) -> str:
    """The first real error inside task groups, for a log line.

    (redis-py 8's exception repr is only "network:ConnectionError", without the message.)
    """
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisBroker:
    """The broker for several nodes, over one Redis server or a Redis Cluster.

    `socket_timeout` bounds every network wait of a command (connect, write, reply), so
    `publish` and `ping` fail within a few seconds when Redis is unreachable.
    `max_connections` bounds this node's publishing connections (per shard on a cluster);
    a publish waits up to `pool_timeout` for one rather than failing at once.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        prefix: str = "bt:",
        socket_timeout: float = 1.0,
        max_connections: int = 64,
        pool_timeout: float = 1.0,
        health_interval: float = 5.0,
        ack_timeout: float = 2.0,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported broker URL scheme {parts.scheme!r}: "
                "use redis://, rediss:// or redis+cluster://"
            )
        self.cluster = _SCHEMES[scheme]
        self.node_id = node_id or _default_node_id()
        self.prefix = prefix
        # Never log the URL itself: it may carry a password.
        self.where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self._socket_timeout = socket_timeout
        self._health_interval = health_interval
        self._ack_timeout = ack_timeout
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        # A last resort for what the socket timeouts do not cover (retries, redirects).
        self._deadline = pool_timeout + socket_timeout

        common: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "client_name": "bloomtext:" + "".join(c for c in self.node_id if c > " "),
        }
        # One quick retry for a pooled connection that went stale (Redis restarted);
        # ConnectionError only: retrying a timed-out PUBLISH could deliver it twice.
        publish_retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._client: Redis | RedisCluster
        self._sub_client: Redis | None = None
        self._publish_slots: asyncio.Semaphore | None = None
        if self.cluster:
            plain = parts._replace(scheme=scheme.removesuffix("+cluster")).geturl()
            # The cluster client has no blocking pool and raises MaxConnectionsError
            # past max_connections per shard: a semaphore makes publishers wait instead.
            # The headroom is for the subscriber connections, taken from the same pools.
            self._client = RedisCluster.from_url(
                plain,
                max_connections=max_connections + 4,
                retry=Retry(NoBackoff(), 2, supported_errors=(RedisConnectionError,)),
                **common,
            )
            self._publish_slots = asyncio.Semaphore(max_connections)
        else:
            # Blocking: past max_connections a publish waits for a free connection
            # (the default pool raises MaxConnectionsError).
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=pool_timeout,
                retry=publish_retry,
                **common,
            )
            self._client = Redis.from_pool(pool)
            # The subscriber never retries inside redis-py: a failure must reach our
            # reader loop, which reconnects and subscribes again from the wanted set.
            self._sub_client = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)

        self._handler: Handler | None = None
        self._wanted: dict[bytes, str] = {}  # channel -> topic
        self._lock = asyncio.Lock()  # every write to the subscriber connection(s)
        self._session: _Session | None = None
        self._ready = False  # connected and subscribed: what ping() reports
        self._was_ready = False  # ...at the start of the current connection attempt
        self._lost = False  # a connection was lost and not yet re-established
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- the Broker protocol ------------------------------------------------------

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    async def start(self) -> None:
        """Start connecting in the background; `ping` says when the broker is ready."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"redis-broker {self.where}"
            )

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()
        if self._sub_client is not None:
            await self._sub_client.aclose()

    async def publish(self, topic: str, data: bytes) -> None:
        channel = self._channel(topic)
        async with asyncio.timeout(self._deadline):
            if self._publish_slots is None:
                await self._client.publish(channel, data)
                return
            async with self._publish_slots:
                await self._client.spublish(channel, data)

    async def subscribe(self, topic: str) -> None:
        """Receive `topic`; returns once Redis confirms it, or at once while disconnected."""
        channel = self._channel(topic)
        ack: asyncio.Future[None] | None = None
        async with self._lock:
            if channel in self._wanted:
                # Already wanted; a concurrent first subscribe may still await its reply.
                pending = self._session.acks.get(channel) if self._session else None
                ack = pending[-1] if pending else None
            else:
                self._wanted[channel] = topic
                acks = await self._send_subscribe([channel])
                ack = acks[0] if acks else None
        if ack is not None and not ack.done():
            # A slow reply is not an error: the subscription stays wanted either way.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ack), self._ack_timeout)

    async def unsubscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        async with self._lock:
            if self._wanted.pop(channel, None) is None:
                return
            session = self._session
            if session is None:
                return
            try:
                await session.link.unsubscribe([channel])
            except (RedisError, OSError) as exc:
                session.fail(exc)

    async def ping(self) -> None:
        if not self._ready:
            raise RedisConnectionError(f"broker not connected to Redis at {self.where}")
        async with asyncio.timeout(self._deadline):
            if isinstance(self._client, RedisCluster):
                await self._client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self._client.ping()

    # -- subscriptions ------------------------------------------------------------

    def _channel(self, topic: str) -> bytes:
        return (self.prefix + topic).encode()

    async def _send_subscribe(self, channels: list[bytes]) -> list[asyncio.Future[None]]:
        """With the lock held: send SUBSCRIBE; the futures resolve on Redis's replies."""
        session = self._session
        if session is None:
            return []  # the next connection subscribes to everything wanted
        acks = [session.expect_ack(channel) for channel in channels]
        try:
            await session.link.subscribe(channels)
        except (RedisError, OSError) as exc:
            session.fail(exc)
            return []
        # On a cluster the first channel on a shard opens a connection to read.
        self._spawn_readers(session)
        return acks

    # -- the connection loop ------------------------------------------------------

    def _new_link(self) -> _Link:
        if isinstance(self._client, RedisCluster):
            return _ShardedLink(self._client)
        assert self._sub_client is not None
        return _ClassicLink(self._sub_client)

    async def _supervise(self) -> None:
        failures = 0
        while not self._closed:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: reconnect (never let the task die)
                err = _describe(exc)
                if self._was_ready:
                    log.warning("lost Redis at %s (%s); reconnecting", self.where, err)
                    self._lost = True
                    failures = 0
                elif failures == 0:
                    log.warning("cannot reach Redis at %s (%s); retrying", self.where, err)
                else:
                    log.debug("Redis at %s still unreachable: %s", self.where, err)
                self._was_ready = False
            delay = min(self._backoff_max, self._backoff_min * 2**failures)
            failures += 1
            # Jitter spreads the reconnects of many nodes after a Redis restart.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _serve(self) -> None:
        """One connection's life: subscribe to everything wanted, then read until it breaks."""
        session = _Session(self._new_link())
        try:
            await session.link.open()
            async with asyncio.TaskGroup() as tg:
                session.tg = tg
                tg.create_task(self._watch(session))
                async with self._lock:
                    self._session = session
                    self._spawn_readers(session)
                    acks: list[asyncio.Future[None]] = []
                    wanted = list(self._wanted)
                    for i in range(0, len(wanted), _BATCH):
                        acks += await self._send_subscribe(wanted[i : i + _BATCH])
                # Ready once Redis has confirmed the subscriptions, so that a publish
                # after a successful ping() reaches this node. (wait() cancels nothing:
                # subscribe() callers may be waiting on the same futures.)
                if acks:
                    await asyncio.wait(acks, timeout=self._ack_timeout)
                if session.broken.is_set():
                    return  # the watcher is about to end this session
                self._ready = self._was_ready = True
                log.info(
                    "%s Redis at %s; subscribed to %d topics",
                    "reconnected to" if self._lost else "connected to",
                    self.where,
                    len(self._wanted),
                )
                self._lost = False
        finally:
            self._ready = False
            if self._session is session:
                self._session = None
            session.release_acks()
            with contextlib.suppress(Exception):
                await session.link.close()

    def _spawn_readers(self, session: _Session) -> None:
        if session.tg is None:
            return
        for key, source in session.link.sources().items():
            if key not in session.reading:
                session.reading.add(key)
                session.tg.create_task(self._read(session, key, source))

    async def _watch(self, session: _Session) -> None:
        """Ends the session when a writer saw it break; on a cluster, pings every shard."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._health_interval):
                    await session.broken.wait()
            if session.broken.is_set():
                raise RedisConnectionError("subscriber connection broke") from session.error
            if isinstance(self._client, RedisCluster):
                # A shard holding none of our channels has no reader watching it.
                async with asyncio.timeout(self._deadline):
                    await self._client.ping(target_nodes=RedisCluster.PRIMARIES)

    async def _read(self, session: _Session, key: object, source: _Source) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        try:
            while source.current():
                message = await source.read(_READ_WAIT)
                now = loop.time()
                if message is not None:
                    heard, pinged = now, None
                    self._dispatch(session, message)
                elif pinged is None:
                    if now - heard >= self._health_interval:
                        # A silent connection may be dead without a FIN (a lost peer).
                        async with self._lock:
                            await source.ping()
                        pinged = now
                elif now - pinged > self._socket_timeout + _READ_WAIT:
                    raise RedisConnectionError(f"no PING reply from Redis ({source.name})")
        finally:
            session.reading.discard(key)

    def _dispatch(self, session: _Session, message: Message) -> None:
        kind = message["type"]
        if kind == "message" or kind == "smessage":
            topic = self._wanted.get(message["channel"])
            if topic is None or self._handler is None:
                return  # unsubscribed while the message was in flight
            try:
                self._handler(topic, message["data"])
            except Exception:
                log.exception("broker handler failed on topic %s", topic)
        elif kind == "subscribe" or kind == "ssubscribe":
            session.on_ack(message["channel"])
