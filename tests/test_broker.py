"""The broker contract, against the in-process broker and real Redis (one server, a cluster).

Every Redis test uses its own channel prefix on the session's servers; the outage test
kills a redis-server of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from realtime.broker import Broker
from realtime.broker_memory import MemoryBroker
from realtime.broker_redis import RedisBroker
from realtime.hub import Connection, Hub
from realtime.protocol import CODECS, SUBPROTOCOL_JSON
from tests.services import RedisCluster, RedisServer, find_free_port

WAIT = 5.0  # seconds any single expected delivery may take


@dataclass
class Node:
    """A started broker and everything its handler received."""

    broker: Broker
    got: list[tuple[str, bytes]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def handle(self, topic: str, data: bytes) -> None:
        self.got.append((topic, data))
        self._arrived.set()

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[tuple[str, bytes]]:
        """Wait until `count` messages in all have arrived; return them."""
        async with asyncio.timeout(timeout):
            while len(self.got) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.got

    async def quiet(self, seconds: float = 0.1) -> None:
        """Let anything still in flight arrive (for checks that nothing more does)."""
        await asyncio.sleep(seconds)


NodeFactory = Callable[..., Awaitable[Node]]


@dataclass
class Backend:
    kind: str
    url: str = ""
    prefix: str = ""
    ports: list[int] = field(default_factory=list)

    async def numsub(self, topic: str) -> int:
        """Subscriptions Redis holds for `topic` (connections, i.e. nodes)."""
        channel = self.prefix + topic
        total = 0
        # Ask every shard: the cluster client sends PUBSUB SHARDNUMSUB to a random node.
        for port in self.ports:
            client = Redis(host="127.0.0.1", port=port)
            try:
                if self.kind == "cluster":
                    [(_, count)] = await client.pubsub_shardnumsub(channel)
                else:
                    [(_, count)] = await client.pubsub_numsub(channel)
                total += count
            finally:
                await client.aclose()
        return total

    async def shards_holding(self, topic: str) -> list[int]:
        """The ports of the cluster shards where `topic` has a subscriber."""
        found = []
        for port in self.ports:
            client = Redis(host="127.0.0.1", port=port)
            try:
                [(_, count)] = await client.pubsub_shardnumsub(self.prefix + topic)
            finally:
                await client.aclose()
            if count:
                found.append(port)
        return found


async def until_ready(broker: Broker, timeout: float = 10.0) -> float:
    """Wait until `ping` succeeds; return how long that took."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            try:
                await broker.ping()
                return time.monotonic() - start
            except Exception:
                await asyncio.sleep(0.05)


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    kind: str = request.param
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("shared_redis")
        return Backend(kind, server.url, prefix, [server.port])
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("shared_redis_cluster")
        return Backend(kind, cluster.url, prefix, cluster.ports)
    return Backend(kind)


@pytest.fixture
async def nodes(backend: Backend) -> AsyncIterator[NodeFactory]:
    """Makes started brokers ("nodes") on one backend; closes them after the test."""
    made: list[Node] = []

    async def make(**options: Any) -> Node:
        """A started broker; `options` go to RedisBroker (the memory broker has none)."""
        broker: Broker
        if backend.kind == "memory":
            assert not made, "the memory broker has no second node"
            broker = MemoryBroker()
        else:
            broker = RedisBroker(
                backend.url, node_id=f"n{len(made)}", prefix=backend.prefix, **options
            )
        node = Node(broker)
        broker.set_handler(node.handle)
        made.append(node)
        await broker.start()
        await until_ready(broker)
        return node

    yield make
    for node in made:
        await node.broker.close()


# A second node (or a reader task) needs Redis: these tests skip the memory broker.
on_redis = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)


# -- one node ---------------------------------------------------------------------


async def test_round_trip(nodes: NodeFactory) -> None:
    a = await nodes()
    await a.broker.subscribe("c:1")
    payload = bytes(range(256))  # opaque bytes, not text
    await a.broker.publish("c:2", b"nobody listens")
    await a.broker.publish("c:1", payload)
    assert await a.wait_for(1) == [("c:1", payload)]
    await a.quiet()
    assert a.got == [("c:1", payload)]


async def test_unsubscribe_stops_delivery(nodes: NodeFactory) -> None:
    a = await nodes()
    # One hash tag: on a cluster both channels live on one shard, so order holds.
    gone, marker = "c:{u}:gone", "c:{u}:marker"
    await a.broker.subscribe(gone)
    await a.broker.subscribe(marker)
    await a.broker.publish(gone, b"1")
    await a.wait_for(1)
    await a.broker.unsubscribe(gone)
    await a.broker.unsubscribe(gone)  # idempotent
    await a.broker.publish(gone, b"2")
    await a.broker.publish(marker, b"m")
    assert await a.wait_for(2) == [(gone, b"1"), (marker, b"m")]
    await a.quiet()
    assert len(a.got) == 2


async def test_subscribe_is_idempotent(nodes: NodeFactory, backend: Backend) -> None:
    a = await nodes()
    await a.broker.subscribe("c:1")
    await a.broker.subscribe("c:1")
    await asyncio.gather(*(a.broker.subscribe("c:1") for _ in range(5)))
    await a.broker.publish("c:1", b"once")
    await a.wait_for(1)
    await a.quiet()
    assert a.got == [("c:1", b"once")]
    if backend.kind != "memory":
        assert await backend.numsub("c:1") == 1


async def test_concurrent_subscribes_all_receive(nodes: NodeFactory) -> None:
    # Concurrent subscribe() calls on one redis-py PubSub race and orphan channels.
    a = await nodes()
    topics = [f"c:{i}" for i in range(200)]
    await asyncio.gather(*(a.broker.subscribe(t) for t in topics))
    for t in topics:
        await a.broker.publish(t, t.encode())
    got = await a.wait_for(200)
    assert sorted(got) == sorted((t, t.encode()) for t in topics)


async def test_order_is_kept_per_topic(nodes: NodeFactory) -> None:
    a = await nodes()
    await a.broker.subscribe("c:order")
    for i in range(1000):
        await a.broker.publish("c:order", i.to_bytes(2, "big"))
    got = await a.wait_for(1000, timeout=15)
    assert [int.from_bytes(d, "big") for _, d in got] == list(range(1000))


async def test_publish_burst_waits_for_connections(nodes: NodeFactory) -> None:
    # Far more concurrent publishes than connections: they queue, none fails.
    a = await nodes(max_connections=4)
    await a.broker.subscribe("c:burst")
    await asyncio.gather(*(a.broker.publish("c:burst", b"%d" % i) for i in range(2000)))
    got = await a.wait_for(2000, timeout=15)
    assert sorted(int(d) for _, d in got) == list(range(2000))


@on_redis
async def test_a_failing_handler_does_not_stop_delivery(nodes: NodeFactory) -> None:
    a = await nodes()

    def handle(topic: str, data: bytes) -> None:
        if data == b"boom":
            raise ValueError("a bug in the handler")
        a.handle(topic, data)

    a.broker.set_handler(handle)
    await a.broker.subscribe("c:1")
    await a.broker.publish("c:1", b"boom")
    await a.broker.publish("c:1", b"fine")
    assert await a.wait_for(1) == [("c:1", b"fine")]


# -- several nodes ----------------------------------------------------------------


@on_redis
async def test_two_nodes_one_subscription_each(nodes: NodeFactory, backend: Backend) -> None:
    a, b = await nodes(), await nodes()
    for _ in range(3):
        await b.broker.subscribe("c:x")
    assert await backend.numsub("c:x") == 1
    await a.broker.subscribe("c:x")
    await a.broker.subscribe("c:x")
    assert await backend.numsub("c:x") == 2  # one per node

    await a.broker.publish("c:x", b"from a")
    await b.broker.publish("c:x", b"from b")
    assert await a.wait_for(2) == [("c:x", b"from a"), ("c:x", b"from b")]
    assert await b.wait_for(2) == [("c:x", b"from a"), ("c:x", b"from b")]

    await b.broker.unsubscribe("c:x")
    assert await backend.numsub("c:x") == 1
    await a.broker.publish("c:x", b"a only")
    await a.wait_for(3)
    await b.quiet()
    assert len(b.got) == 2


@pytest.mark.parametrize("backend", ["cluster"], indirect=True)
async def test_cluster_spreads_topics_over_shards(nodes: NodeFactory, backend: Backend) -> None:
    a, b = await nodes(), await nodes()
    topics = [f"c:{i}" for i in range(24)]
    for t in topics:
        await b.broker.subscribe(t)
    shards = {t: await backend.shards_holding(t) for t in topics}
    assert all(len(held) == 1 for held in shards.values()), shards
    assert {held[0] for held in shards.values()} == set(backend.ports)

    for t in topics:
        await a.broker.publish(t, t.encode())
    got = await b.wait_for(len(topics))
    assert sorted(got) == sorted((t, t.encode()) for t in topics)
    assert a.got == []  # a subscribed to nothing


# -- outages ----------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir=tmp_path)
    yield server
    server.stop()


async def test_redis_killed_and_restarted(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bloomtext.broker")
    node = Node(RedisBroker(own_redis.url, prefix="fault:"))
    node.broker.set_handler(node.handle)
    await node.broker.start()
    try:
        await until_ready(node.broker)
        await node.broker.subscribe("c:before")
        await node.broker.publish("c:before", b"1")
        await node.wait_for(1)

        own_redis.kill()
        with pytest.raises(Exception):  # noqa: B017 - which one depends on timing
            await node.broker.ping()
        start = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017
            await node.broker.publish("c:before", b"lost")
        assert time.monotonic() - start < 3
        # Wanted while down: subscribed once Redis is back.
        async with asyncio.timeout(1):
            await node.broker.subscribe("c:during")
        await asyncio.sleep(1)
        with pytest.raises(Exception):  # noqa: B017
            await node.broker.ping()

        await asyncio.to_thread(own_redis.start)  # same port, empty server
        took = await until_ready(node.broker, timeout=10)
        await node.broker.publish("c:before", b"2")
        await node.broker.publish("c:during", b"3")
        got = await node.wait_for(3)
        assert got[1:] == [("c:before", b"2"), ("c:during", b"3")], took
        client = Redis.from_url(own_redis.url)
        try:
            counts = await client.pubsub_numsub("fault:c:before", "fault:c:during")
        finally:
            await client.aclose()
        assert [n for _, n in counts] == [1, 1]
    finally:
        await node.broker.close()

    # State changes are logged once each, not once per retry.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "lost Redis" in warnings[0], warnings


async def test_start_while_redis_is_down(tmp_path: Path) -> None:
    port = find_free_port()
    node = Node(RedisBroker(f"redis://127.0.0.1:{port}/0", prefix="late:"))
    node.broker.set_handler(node.handle)
    await node.broker.start()  # does not raise: it keeps trying in the background
    server: RedisServer | None = None
    try:
        with pytest.raises(Exception):  # noqa: B017
            await node.broker.ping()
        await node.broker.subscribe("c:1")
        server = await asyncio.to_thread(RedisServer, port, log_dir=tmp_path)
        await until_ready(node.broker)
        await node.broker.publish("c:1", b"hello")
        assert await node.wait_for(1) == [("c:1", b"hello")]
    finally:
        await node.broker.close()
        if server is not None:
            server.stop()


# -- hubs -------------------------------------------------------------------------


async def _no_gap(conversation_id: str, after: int, before: int) -> list[dict[str, Any]]:
    return []


@on_redis
async def test_frame_published_on_one_hub_reaches_a_socket_on_another(
    nodes: NodeFactory,
) -> None:
    a, b = await nodes(), await nodes()
    hub_a, hub_b = Hub(a.broker, _no_gap), Hub(b.broker, _no_gap)
    sent: list[bytes | str] = []
    arrived = asyncio.Event()

    async def send(data: bytes | str) -> None:
        sent.append(data)
        arrived.set()

    async def close(code: int, reason: str) -> None:
        return None

    conn = Connection(
        user_id="u1", session_id="s1", codec=CODECS[SUBPROTOCOL_JSON],
        send=send, close=close, max_queue=16,
    )
    try:
        await hub_b.register(conn)
        await hub_b.join(conn, "c:conv1", last_seq=0)
        frame = {"type": "typing", "conversation_id": "conv1", "user_id": "u2"}
        hub_a.publish("c:conv1", frame)
        async with asyncio.timeout(WAIT):
            await arrived.wait()
        assert CODECS[SUBPROTOCOL_JSON].decode_raw(sent[0]) == frame
    finally:
        await hub_b.unregister(conn)
        await hub_a.close()
        await hub_b.close()
