"""Several real server nodes on one PostgreSQL and one Redis, and what they survive.

Every node is its own `python -m server serve` process on a loopback port (see
tests/nodes.py); clients are real websocket connections. The fault tests SIGKILL Redis,
SIGKILL a node, and stop PostgreSQL, and then check the contract: acks mean durable,
retries with the same client_id never duplicate, `sync` repairs whatever fan-out lost,
and per connection events arrive in seq order.

Timings and counts measured along the way are printed (`pytest -s` shows them) and kept
in `TIMINGS`. Each node's log is `node-NAME-PORT.log` in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.nodes import (
    Account,
    Client,
    Node,
    add_member,
    create_conversation,
    login,
    migrate,
    signup,
    statuses_on_one_connection,
    stored_events,
)
from tests.services import PostgresCluster, RedisServer, create_database, drop_database

pytestmark = pytest.mark.postgres

TIMINGS: dict[str, float] = {}


def _note(name: str, value: float, unit: str = "s") -> None:
    TIMINGS[name] = round(value, 3)
    print(f"[multinode] {name}: {value:.3f} {unit}" if unit == "s" else
          f"[multinode] {name}: {value:g} {unit}")


class Cluster:
    """The nodes and clients of one test; `close()` ends every one of them."""

    def __init__(self, database_url: str, redis_url: str | None, log_dir: Path) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.nodes: list[Node] = []
        self.clients: list[Client] = []

    async def start(self, *names: str, **env: str) -> list[Node]:
        nodes = [Node(n, self.database_url, self.redis_url, self.log_dir, **env) for n in names]
        self.nodes.extend(nodes)
        await asyncio.gather(*(node.start() for node in nodes))
        return nodes

    async def client(self, name: str, account: Account, node: Node) -> Client:
        client = Client(name, account)
        self.clients.append(client)
        await client.connect(node)
        return client

    def logs(self) -> str:
        return "\n".join(node.log_tail(60) for node in self.nodes)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await asyncio.gather(
            *(asyncio.to_thread(node.stop, 5.0) for node in self.nodes), return_exceptions=True
        )
        for node in self.nodes:
            node.kill()  # already gone; makes sure of it
            await node.aclose()


@pytest.fixture
async def database(postgres_server: str) -> AsyncIterator[str]:
    """A fresh database on the session's PostgreSQL, migrated by `python -m server migrate`."""
    name = f"bt_multi_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = await create_database(postgres_server, name)
    try:
        await migrate(url)
        yield url
    finally:
        await drop_database(postgres_server, name)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir=tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def cluster(
    database: str, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Cluster]:
    c = Cluster(database, redis_server.url, tmp_path)
    try:
        yield c
    finally:
        await c.close()


def _assert_in_order(client: Client, conversation_id: str) -> None:
    """Per connection, live events came in seq order (a repeat would show as equal seqs)."""
    for (generation, cid), seqs in client.live.items():
        if cid != conversation_id:
            continue
        backwards = [(a, b) for a, b in zip(seqs, seqs[1:], strict=False) if b < a]
        assert not backwards, (
            f"{client.name} (connection {generation}) got live events out of seq order: "
            f"{backwards[:10]}"
        )


def _repeats(client: Client, conversation_id: str) -> int:
    """How many live events of `conversation_id` repeated a seq already delivered live."""
    count = 0
    for (_, cid), seqs in client.live.items():
        if cid == conversation_id:
            count += len(seqs) - len(set(seqs))
    return count


async def _arrives(client: Client, conversation_id: str, event_id: str, timeout: float) -> bool:
    try:
        await client.wait_for(lambda: event_id in client.ids(conversation_id), timeout)
    except AssertionError:
        return False
    return True


def _no_server_errors(cluster: Cluster) -> None:
    for node in cluster.nodes:
        text = node.log_text()
        assert "Traceback" not in text and "unhandled error" not in text, node.log_tail(80)


# --------------------------------------------------------------------------- 1. fan-out


async def test_two_nodes_share_messages_receipts_typing_and_conversations(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start("A", "B")
    admin = await signup(a)
    member = await add_member(b, admin, b, "Sam Member")  # created and logged in through B
    ca = await cluster.client("admin@A", admin, a)
    cb = await cluster.client("member@B", member, b)

    # A conversation created over HTTP on A reaches the socket on B as a `conversation`
    # frame, and from then on that socket gets the conversation's live events. Several
    # times, each with a send right after the frame: the subscription must already hold.
    cids = []
    for i in range(5):
        conversation = await create_conversation(a, admin, member)
        cid = conversation["id"]
        cids.append(cid)

        def conversation_frame(cid: str = cid) -> list[dict[str, Any]]:
            return [f for f in cb.frames_of("conversation") if f["conversation"]["id"] == cid]

        frame = (await cb.wait_for(conversation_frame, 5, f"conversation frame for {cid}"))[0]
        ids = {p["id"] for p in frame["conversation"]["participants"]}
        assert ids == {admin.id, member.id}
        reply = await ca.send_and_ack(cid, f"first-{i}", f"hello {i}")
        assert reply["type"] == "ack", reply
        event = reply["event"]
        assert event["seq"] == 1 and event["body"] == f"hello {i}"
        await cb.wait_for(lambda e=event, c=cid: e["id"] in cb.ids(c), 5,
                          f"the first event of {cid} on B")
        await ca.wait_for(lambda e=event, c=cid: e["id"] in ca.ids(c), 5,
                          f"the sender's own event of {cid} on A")

    cid = cids[-1]
    # Messages both ways: the sender gets its ack and its own event, the other side the event.
    reply = await cb.send_and_ack(cid, "from-b-1", "reply from B")
    assert reply["type"] == "ack", reply
    from_b = reply["event"]
    assert from_b["seq"] == 2 and from_b["sender"]["id"] == member.id
    reply = await ca.send_and_ack(cid, "from-a-2", "and again from A")
    assert reply["type"] == "ack", reply
    from_a = reply["event"]
    assert from_a["seq"] == 3 and from_a["sender"]["id"] == admin.id
    for client in (ca, cb):
        await client.wait_for(
            lambda c=client: {from_a["id"], from_b["id"]} <= c.ids(cid), 5, "both messages"
        )
        held = client.events[cid]
        assert held[from_b["id"]] == from_b and held[from_a["id"]] == from_a
        assert client.live[(1, cid)] == [1, 2, 3]

    # Receipts: `read` on B becomes a `receipt` on A (and not back on B).
    await cb.send_frame({"type": "read", "conversation_id": cid, "seq": 3})
    receipt = await ca.expect("receipt", 5, conversation_id=cid)
    assert receipt["participant"]["id"] == member.id and receipt["seq"] == 3
    assert receipt["participant"]["name"] == "Sam Member"
    # Typing, both ways across nodes.
    await ca.send_frame({"type": "typing", "conversation_id": cid})
    typing = await cb.expect("typing", 5, conversation_id=cid)
    assert typing["user_id"] == admin.id
    await cb.send_frame({"type": "typing", "conversation_id": cid})
    typing = await ca.expect("typing", 5, conversation_id=cid, user_id=member.id)
    # Neither side hears its own receipt or typing.
    await asyncio.sleep(0.3)
    assert not cb.frames_of("receipt") and not cb.frames_of("typing", user_id=member.id)
    assert not ca.frames_of("typing", user_id=admin.id)

    # The read position is stored: B's HTTP view of it, and A's timeline read through B.
    r = await b.http.get(f"/api/v1/conversations/{cid}", headers=member.headers)
    assert r.status_code == 200 and r.json()["read_seq"] == 3 and r.json()["last_seq"] == 3
    stored = await stored_events(b, admin, cid)
    assert [e["id"] for e in stored] == [
        next(e for e in ca.events[cid].values() if e["seq"] == 1)["id"], from_b["id"],
        from_a["id"],
    ]
    assert not ca.frames_of("error") and not cb.frames_of("error")
    _no_server_errors(cluster)


async def test_deactivating_a_member_closes_their_sockets_on_every_node(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start("A", "B")
    admin = await signup(a)
    member = await add_member(a, admin, a, "Sam Member")
    second = await login(b, member)  # another session of theirs, through B
    on_a = await cluster.client("member@A", member, a)
    on_b = await cluster.client("member@B", second, b)
    r = await a.http.patch(f"/api/v1/members/{member.id}", json={"active": False},
                           headers=admin.headers)
    assert r.status_code == 200, r.text
    await on_a.wait_for(lambda: on_a.closed_code is not None, 5)
    await on_b.wait_for(lambda: on_b.closed_code is not None, 5)
    assert (on_a.closed_code, on_b.closed_code) == (4001, 4001)
    for node, account in ((a, member), (b, second)):
        assert (await node.http.get("/api/v1/me", headers=account.headers)).status_code == 401


async def test_failed_logins_are_counted_across_nodes(cluster: Cluster) -> None:
    """With N nodes an attacker gets no more tries than with one."""
    a, b = await cluster.start("A", "B")
    admin = await signup(a)
    for node in (a, b, a, b, a):  # BLOOMTEXT_LOGIN_MAX_FAILURES is 5
        r = await node.http.post("/api/v1/auth/login",
                                 json={"email": admin.email, "password": "wrong-guess"})
        assert r.status_code == 401, r.text
    for node in (a, b):
        r = await node.http.post("/api/v1/auth/login",
                                 json={"email": admin.email, "password": admin.password})
        assert r.status_code == 429, (node, r.text)


async def test_three_nodes_every_socket_gets_every_message_in_order(cluster: Cluster) -> None:
    nodes = await cluster.start("A", "B", "C")
    a, b, c = nodes
    admin = await signup(a)
    users = [admin, await add_member(a, admin, b, "Bo"), await add_member(c, admin, c, "Cy")]
    cid = (await create_conversation(b, admin, users[1], users[2]))["id"]
    # Every user has a socket on every node (each with its own login session);
    # user i sends from node i.
    sockets: list[list[Client]] = []
    for i, user in enumerate(users):
        row = []
        for node in nodes:
            session = await login(node, user)
            row.append(await cluster.client(f"u{i}@{node.name}", session, node))
        sockets.append(row)

    per_sender, rate = 40, 20.0  # messages per sender, per second per sender

    async def stream(i: int) -> list[dict[str, Any]]:
        sender = sockets[i][i]
        futures = []
        start = time.monotonic()
        for k in range(per_sender):
            await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
            futures.append(await sender.send_message(cid, f"u{i}-{k:03d}", f"u{i} says {k}"))
        return list(await asyncio.wait_for(asyncio.gather(*futures), 20))

    started = time.monotonic()
    replies = [r for rs in await asyncio.gather(*(stream(i) for i in range(3))) for r in rs]
    assert all(r["type"] == "ack" for r in replies), [r for r in replies if r["type"] != "ack"]
    acked = {r["event"]["id"] for r in replies}
    total = 3 * per_sender
    assert len(acked) == total
    assert sorted(r["event"]["seq"] for r in replies) == list(range(1, total + 1))

    everyone = [s for row in sockets for s in row]
    for client in everyone:
        await client.wait_for(lambda cl=client: cl.ids(cid) >= acked, 15,
                              f"all {total} messages delivered live")
    _note("three nodes: 120 messages on 9 sockets, all delivered", time.monotonic() - started)
    for client in everyone:
        # Live, in seq order, no gaps, no duplicates, nothing that was not acked.
        assert client.live[(1, cid)] == list(range(1, total + 1)), client.name
        assert client.ids(cid) == acked
        assert all(client.deliveries[i] == 1 for i in acked), client.name
    _no_server_errors(cluster)


# --------------------------------------------------------------------------- 2. idempotency


async def test_same_client_id_on_two_nodes_stores_one_event(cluster: Cluster) -> None:
    a, b = await cluster.start("A", "B")
    admin = await signup(a)
    member = await add_member(a, admin, b, "Sam Member")
    cid = (await create_conversation(a, admin, member))["id"]
    on_a = await cluster.client("admin@A", admin, a)
    on_b = await cluster.client("admin@B", await login(b, admin), b)
    watcher = await cluster.client("member@B", member, b)

    first = await on_a.send_and_ack(cid, "dup-1", "only once")
    assert first["type"] == "ack", first
    again = await on_b.send_and_ack(cid, "dup-1", "only once")
    assert again["type"] == "ack", again
    assert again["event"] == first["event"]
    # Over HTTP on B as well: 200 with the original.
    r = await b.http.post(f"/api/v1/conversations/{cid}/messages",
                          json={"body": "only once", "client_id": "dup-1"},
                          headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == first["event"]["id"]

    # The same client_ids sent to both nodes at the same moment: one event each.
    futures = []
    for k in range(20):
        futures.append(await on_a.send_message(cid, f"race-{k}", f"race {k}"))
        futures.append(await on_b.send_message(cid, f"race-{k}", f"race {k}"))
    replies = await asyncio.wait_for(asyncio.gather(*futures), 15)
    assert all(r["type"] == "ack" for r in replies), [r for r in replies if r["type"] != "ack"]
    for k in range(20):
        from_a, from_b = replies[2 * k]["event"], replies[2 * k + 1]["event"]
        assert from_a["id"] == from_b["id"] and from_a["client_id"] == f"race-{k}"

    stored = await stored_events(a, admin, cid)
    assert [e["seq"] for e in stored] == list(range(1, 22))
    client_ids = [e["client_id"] for e in stored]
    assert sorted(client_ids) == sorted(["dup-1", *(f"race-{k}" for k in range(20))])
    # The other participant saw each event once.
    await watcher.wait_for(lambda: len(watcher.ids(cid)) == 21, 10, "21 events")
    assert watcher.live[(1, cid)] == list(range(1, 22))
    assert {e["id"] for e in stored} == watcher.ids(cid)
    _no_server_errors(cluster)


# --------------------------------------------------------------------------- 3. Redis dies


async def test_redis_killed_and_restarted_during_a_stream(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    a, b = await cluster.start("A", "B")
    admin = await signup(a)
    reader_a_user = await add_member(a, admin, a, "Reader A")
    reader_b_user = await add_member(a, admin, b, "Reader B")
    cid = (await create_conversation(a, admin, reader_a_user, reader_b_user))["id"]
    send_a = await cluster.client("sender@A", admin, a)
    send_b = await cluster.client("sender@B", await login(b, admin), b)
    read_a = await cluster.client("reader@A", reader_a_user, a)
    read_b = await cluster.client("reader@B", reader_b_user, b)
    clients = [send_a, send_b, read_a, read_b]
    # A second conversation that no socket on B follows yet: its member connects to B
    # while Redis is down, so B must subscribe to it once Redis is back.
    third = await add_member(a, admin, a, "Third")
    fourth = await add_member(a, admin, b, "Fourth")
    cid2 = (await create_conversation(a, third, fourth))["id"]
    late: list[Client] = []

    total, rate = 300, 50.0  # alternating nodes: 25 frames/s per socket
    sent_at: dict[str, float] = {}
    acked_at: dict[str, float] = {}
    replies: dict[str, dict[str, Any]] = {}
    marks: dict[str, float] = {}
    readyz_down: list[tuple[str, int, dict[str, Any]]] = []

    def on_reply(client_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        acked_at[client_id] = time.monotonic()
        if future.exception() is None:
            replies[client_id] = future.result()

    async def stream() -> list[asyncio.Future[dict[str, Any]]]:
        futures = []
        start = time.monotonic()
        for k in range(total):
            await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
            sender = send_a if k % 2 == 0 else send_b
            client_id = f"s-{k:04d}"
            future = await sender.send_message(cid, client_id, f"stream {k}")
            sent_at[client_id] = time.monotonic()
            future.add_done_callback(lambda f, c=client_id: on_reply(c, f))
            futures.append(future)
        return futures

    async def chaos() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_server.kill)
        marks["killed"] = time.monotonic()
        await asyncio.sleep(0.5)
        for node in (a, b):
            status, body = await node.readyz()
            readyz_down.append((node.name, status, body))
        late.append(await cluster.client("fourth@B (joined in the outage)", fourth, b))
        await asyncio.sleep(max(0.0, marks["killed"] + 2.0 - time.monotonic()))
        await asyncio.to_thread(redis_server.start)
        marks["restarted"] = time.monotonic()

    futures, _ = await asyncio.gather(stream(), chaos())
    marks["stream_sent"] = time.monotonic()
    done, pending = await asyncio.wait(futures, timeout=20)
    assert not pending, f"{len(pending)} of {total} sends never answered\n{cluster.logs()}"
    failed = [f.exception() for f in done if f.exception() is not None]
    assert not failed, f"sockets failed during the Redis outage: {failed[:3]}\n{cluster.logs()}"
    not_acked = {c: r for c, r in replies.items() if r["type"] != "ack"}
    assert not not_acked, f"storage was up, yet sends were refused: {list(not_acked.items())[:5]}"
    assert len(replies) == total

    # While Redis was down: every send was still acknowledged (storage is fine) ...
    during = [c for c, t in sent_at.items() if marks["killed"] <= t < marks["restarted"]]
    assert len(during) >= 50, f"only {len(during)} sends fell in the outage"
    latency = [acked_at[c] - sent_at[c] for c in during]
    _note("Redis down: sends acked during the outage", len(during), "sends")
    _note("Redis down: worst ack latency of those sends", max(latency))
    # ... and /readyz said so.
    for name, status, body in readyz_down:
        assert status == 503, (name, status, body)
        assert body["checks"]["database"] == "ok", (name, body)
        assert body["checks"]["broker"].startswith("down"), (name, body)

    # After the restart /readyz is 200 again, within a bounded time.
    waiting_from = time.monotonic()
    waits = await asyncio.gather(*(node.wait_ready(20) for node in (a, b)))
    _note("Redis restarted: /readyz 200 on both nodes after",
          waiting_from - marks["restarted"] + max(waits))

    # Live fan-out between nodes resumes (the nodes subscribed again): a message sent on
    # each node reaches the reader on the other one live, without a sync.
    probes: dict[str, dict[str, Any]] = {}
    for k in range(40):
        for sender, reader, tag in ((send_a, read_b, "a"), (send_b, read_a, "b")):
            if tag in probes and probes[tag]["id"] in reader.ids(cid):
                continue
            reply = await sender.send_and_ack(cid, f"probe-{tag}-{k}", "after the restart")
            assert reply["type"] == "ack", reply
            probes[tag] = reply["event"]
            replies[f"probe-{tag}-{k}"] = reply
        if all(probes[t]["id"] in r.ids(cid) for t, r in (("a", read_b), ("b", read_a))):
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError(
            "live fan-out across nodes did not resume within 10 s of /readyz 200\n"
            + cluster.logs()
        )
    _note("Redis restarted: live fan-out across nodes resumed after",
          time.monotonic() - marks["restarted"])

    # The socket that connected to B during the outage gets live events once Redis is
    # back: B subscribed again to everything its sockets follow, new topics included.
    (joined_late,) = late
    assert {c["id"] for c in joined_late.ready["conversations"]} == {cid2}  # type: ignore[index]
    third_on_a = await cluster.client("third@A", third, a)
    for k in range(40):
        reply = await third_on_a.send_and_ack(cid2, f"late-{k}", "for the late joiner")
        assert reply["type"] == "ack", reply
        if await _arrives(joined_late, cid2, reply["event"]["id"], 0.25):
            break
    else:
        raise AssertionError("a socket that connected during the outage never got live events")
    _note("Redis restarted: a socket that joined during the outage got live events after",
          time.monotonic() - marks["restarted"])

    acked = {r["event"]["id"] for r in replies.values()}
    # Not required (fan-out is at most once), but the hub fills gaps from storage: after
    # the restart the first live event should bring each socket every event it missed.
    # Measured here, bounded; `sync` below is what the contract promises.
    with contextlib.suppress(AssertionError):
        for client in clients:
            await client.wait_for(lambda c=client: acked <= set(c.live_at), 3, "live")
    for client in clients:
        if acked <= set(client.live_at):
            _note(f"Redis restart: {client.name} held every event live, without sync, "
                  "after the last send", max(client.live_at[i] for i in acked)
                  - marks["stream_sent"])
        else:
            print(f"[multinode] {client.name}: {len(acked - set(client.live_at))} events "
                  "not delivered live; sync must bring them")
    # Catch-up: each client syncs from the last seq it holds without a gap.
    caught_up: dict[str, float] = {}
    before_sync: dict[str, int] = {}
    for client in clients:
        before_sync[client.name] = len(client.ids(cid) & acked)
        await client.sync({cid: client.contiguous_seq(cid)})
        caught_up[client.name] = time.monotonic() - marks["stream_sent"]
    for client in clients:
        assert client.connected, f"{client.name} was disconnected ({client.closed_code})"
        missing = acked - client.ids(cid)
        extra = client.ids(cid) - acked
        assert not missing and not extra, (
            f"{client.name}: {len(missing)} acked events missing, {len(extra)} unknown"
        )
        _assert_in_order(client, cid)
    stored = await stored_events(b, admin, cid)
    assert {e["id"] for e in stored} == acked
    assert [e["seq"] for e in stored] == list(range(1, len(acked) + 1))
    for client in clients:
        print(f"[multinode] {client.name}: held {before_sync[client.name]}/{len(acked)} "
              f"before sync, live repeats {_repeats(client, cid)}")
    _note("Redis restart: all clients caught up (after sync) since the last send",
          max(caught_up.values()))


async def test_conversation_created_while_redis_is_down(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """Fan-out is at most once, storage is the truth: a create that is stored says so.

    Either 201 (the `conversation` frames may be lost; the inbox and `ready` have it) or
    a refusal with nothing stored. A 503 for a stored conversation makes the client's
    retry create a second one.
    """
    a, b = await cluster.start("A", "B")
    admin = await signup(a)
    member = await add_member(a, admin, b, "Sam Member")
    on_b = await cluster.client("member@B", member, b)
    await asyncio.to_thread(redis_server.kill)
    for _ in range(50):  # bounded: until node A notices
        status, body = await a.readyz()
        if status == 503:
            break
        await asyncio.sleep(0.1)
    assert status == 503 and body["checks"]["broker"].startswith("down"), body

    # A new connection for this request: see test_postgres_outage_503_keeps_connection.
    async with httpx.AsyncClient(base_url=a.base_url, timeout=15) as http:
        created = await http.post(
            "/api/v1/conversations", headers=admin.headers,
            json={"to": [{"user_id": member.id}], "subject": "redis-outage"},
        )
    r = await a.http.get("/api/v1/conversations", headers=admin.headers)
    assert r.status_code == 200, r.text
    stored = [c for c in r.json()["items"] if c["subject"] == "redis-outage"]
    assert (created.status_code, len(stored)) in ((201, 1), (503, 0)), (
        f"POST /api/v1/conversations while Redis was down answered {created.status_code} "
        f"{created.text}, yet {len(stored)} such conversation(s) were stored"
    )
    assert on_b.connected



# --------------------------------------------------------------------------- 4. a node dies


async def test_node_killed_mid_stream_client_fails_over(cluster: Cluster) -> None:
    a, b = await cluster.start("A", "B")
    admin = await signup(b)
    observer_user = await add_member(b, admin, b, "Observer")
    cid = (await create_conversation(b, admin, observer_user))["id"]
    sender = await cluster.client("sender", admin, a)
    observer = await cluster.client("observer@B", observer_user, b)

    total, rate, kill_after = 120, 40.0, 40
    bodies = {f"k-{k:04d}": f"failover {k}" for k in range(total)}
    order = list(bodies)
    replies: dict[str, dict[str, Any]] = {}
    futures: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def collect() -> None:
        for client_id, future in list(futures.items()):
            if future.done():
                del futures[client_id]
                if future.exception() is None and future.result()["type"] == "ack":
                    replies[client_id] = future.result()

    db = await asyncpg.connect(cluster.database_url, timeout=10)
    count_events = "SELECT count(*) FROM events WHERE conversation_id = $1"
    burst = 30
    killed_at = failed_over_at = 0.0
    resent: list[str] = []
    synced: dict[str, dict[str, Any]] = {}
    try:
        start = time.monotonic()
        k = 0
        for _ in range(total * 3):  # bounded: each pass sends one message or fails over once
            if k >= total:
                break
            await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
            if k == kill_after and not killed_at:
                # A burst, and SIGKILL as soon as PostgreSQL holds the first of it: between
                # a batch's commit and its acks (publishing takes that long), so that some
                # sends are stored and never acked, and some never stored.
                stored_before = await db.fetchval(count_events, cid)
                for client_id in order[k : k + burst]:
                    futures[client_id] = await sender.send_message(
                        cid, client_id, bodies[client_id]
                    )
                k += burst
                deadline = time.monotonic() + 3
                for _ in range(10_000):  # bounded in count and in time
                    if await db.fetchval(count_events, cid) > stored_before:
                        break
                    if time.monotonic() > deadline:
                        break
                a.kill()
                killed_at = time.monotonic()
                await sender.wait_for(lambda: not sender.connected, 5, "noticing A is gone")
            collect()
            if not sender.connected:
                assert killed_at, f"the sender lost node A before it was killed\n{cluster.logs()}"
                # Fail over: reconnect to B, sync from the last seq held, re-send the unacked.
                await asyncio.sleep(0.05)
                collect()
                await sender.connect(b)
                await sender.sync({cid: sender.contiguous_seq(cid)})
                synced = {e["client_id"]: e for e in sender.events.get(cid, {}).values()}
                failed_over_at = time.monotonic()
                unacked = [c for c in order[:k] if c not in replies]
                for client_id in unacked:
                    futures.pop(client_id, None)
                    futures[client_id] = await sender.send_message(
                        cid, client_id, bodies[client_id]
                    )
                    resent.append(client_id)
                    await asyncio.sleep(1 / rate)
                continue
            client_id = order[k]
            futures[client_id] = await sender.send_message(cid, client_id, bodies[client_id])
            k += 1
    finally:
        await db.close()
    assert k == total and killed_at and failed_over_at, (k, killed_at, failed_over_at)
    await asyncio.wait(list(futures.values()), timeout=15)
    collect()
    assert not futures, f"{len(futures)} sends unanswered on node B"
    assert a.proc is not None and a.proc.returncode == -9
    _note("node killed: unacked sends re-sent after failover", len(resent), "sends")
    _note("node killed: of those, already stored by A (found by sync)",
          len([c for c in resent if c in synced]), "sends")
    _note("node killed: failover (SIGKILL to reconnected and synced on B)",
          failed_over_at - killed_at)
    assert resent, "no send was in flight when the node died; the test proved nothing"

    # Every client_id is acked now, once; re-sends of events stored before the kill
    # returned those events.
    assert set(replies) == set(order), sorted(set(order) - set(replies))[:10]
    for client_id in resent:
        if client_id in synced:
            assert replies[client_id]["event"]["id"] == synced[client_id]["id"], client_id
    stored = await stored_events(b, admin, cid)
    assert [e["seq"] for e in stored] == list(range(1, total + 1))
    assert sorted(e["client_id"] for e in stored) == sorted(order)
    by_client_id = {e["client_id"]: e for e in stored}
    for client_id, reply in replies.items():
        assert reply["event"]["id"] == by_client_id[client_id]["id"], client_id
        assert reply["event"]["body"] == bodies[client_id]

    # The observer on B: everything once, in order, after one sync.
    acked = {e["id"] for e in stored}
    await observer.sync({cid: observer.contiguous_seq(cid)})
    assert observer.ids(cid) == acked
    _assert_in_order(observer, cid)
    await sender.sync({cid: sender.contiguous_seq(cid)})
    assert sender.ids(cid) == acked
    _assert_in_order(sender, cid)


# --------------------------------------------------------------------------- 5. PostgreSQL stops


@pytest.fixture(scope="module")
def outage_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this module's own, so that its tests may stop it."""
    pg = PostgresCluster(tmp_path_factory.mktemp("outage-pg"))
    try:
        yield pg
    finally:
        pg.close()


class Outage:
    """Stops the cluster and makes sure it runs again, whatever the test did."""

    def __init__(self, pg: PostgresCluster, cluster: Cluster) -> None:
        self.pg = pg
        self.cluster = cluster
        self.down = False

    async def stop(self) -> float:
        # The test cluster runs with synchronous_commit=off: an immediate stop loses the
        # last few hundred ms of commits. A checkpoint first, so that the outage is an
        # outage and not also a loss of data the server had been told was stored.
        await asyncio.to_thread(self.pg.psql, "CHECKPOINT")
        await asyncio.to_thread(self.pg.stop)
        self.down = True
        return time.monotonic()

    async def start(self) -> float:
        if self.down:
            await asyncio.to_thread(self.pg.start)
            self.down = False
        return time.monotonic()


@pytest.fixture
async def outage(
    outage_pg: PostgresCluster, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Outage]:
    name = f"bt_outage_{uuid.uuid4().hex[:8]}"
    url = await asyncio.to_thread(outage_pg.create_database, name)
    cluster = Cluster(url, redis_server.url, tmp_path)
    result = Outage(outage_pg, cluster)
    try:
        await migrate(url)
        yield result
    finally:
        await result.start()
        await cluster.close()
        await asyncio.to_thread(outage_pg.drop_database, name)


async def _fresh_get(node: Node, path: str, account: Account) -> httpx.Response:
    """One request on a new connection (see test_postgres_outage_503_keeps_connection)."""
    async with httpx.AsyncClient(base_url=node.base_url, timeout=15) as http:
        return await http.get(path, headers=account.headers)


async def _retry_until_acked(
    client: Client, conversation_id: str, client_id: str, body: str
) -> dict[str, Any]:
    for _ in range(20):  # bounded: 10 s
        reply = await client.send_and_ack(conversation_id, client_id, body, 15)
        if reply["type"] == "ack":
            return reply["event"]
        assert reply["code"] == "unavailable", reply
        await asyncio.sleep(0.5)
    raise AssertionError(f"{client_id} still refused 10 s after /readyz 200")


async def test_postgres_outage_answers_unavailable_then_recovers(outage: Outage) -> None:
    cluster = outage.cluster
    a, b = await cluster.start("A", "B")
    admin = await signup(a)
    member = await add_member(a, admin, b, "Sam Member")
    cid = (await create_conversation(a, admin, member))["id"]
    on_a = await cluster.client("admin@A", admin, a)
    on_b = await cluster.client("member@B", member, b)
    before = await on_a.send_and_ack(cid, "before", "before the outage")
    assert before["type"] == "ack", before

    stopped = await outage.stop()
    # Websocket sends on both nodes: an `unavailable` error, no ack, the socket open.
    for client, client_id in ((on_a, "during-a"), (on_b, "during-b")):
        reply = await client.send_and_ack(cid, client_id, f"sent as {client_id}", 15)
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
    # HTTP reads: 503 `unavailable`, never a 500.
    for node, who in ((a, admin), (b, member)):
        for path in (f"/api/v1/conversations/{cid}/events", f"/api/v1/conversations/{cid}",
                     "/api/v1/conversations", "/api/v1/me"):
            r = await _fresh_get(node, path, who)
            assert r.status_code == 503, (node.name, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unavailable", (node.name, path, r.text)
    async with httpx.AsyncClient(base_url=a.base_url, timeout=15) as http:
        r = await http.post(f"/api/v1/conversations/{cid}/messages",
                            json={"body": "over http", "client_id": "during-http"},
                            headers=admin.headers)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    for node in (a, b):
        status, body = await node.readyz()
        assert status == 503 and body["checks"]["database"].startswith("down"), body
        assert body["checks"]["broker"] == "ok", body
    _note("PostgreSQL down: every check answered within", time.monotonic() - stopped)
    assert not [f for f in on_a.frames + on_b.frames if f["type"] == "ack"
                and f["event"]["client_id"].startswith("during")]
    await asyncio.sleep(max(0.0, stopped + 3.0 - time.monotonic()))

    restarted = await outage.start()
    for node in (a, b):
        await node.fresh_http()  # nothing pooled from before the outage
    waits = await asyncio.gather(a.wait_ready(20), b.wait_ready(20))
    _note("PostgreSQL restarted: /readyz 200 on both nodes after", max(waits))

    # The same sends, retried with the same client_ids on the same sockets, now succeed.
    events = {
        "during-a": await _retry_until_acked(on_a, cid, "during-a", "sent as during-a"),
        "during-b": await _retry_until_acked(on_b, cid, "during-b", "sent as during-b"),
    }
    for _ in range(20):  # bounded: 10 s
        r = await a.http.post(f"/api/v1/conversations/{cid}/messages",
                              json={"body": "over http", "client_id": "during-http"},
                              headers=admin.headers, timeout=15)
        if r.status_code in (200, 201):
            events["during-http"] = r.json()
            break
        assert r.status_code == 503, r.text
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the HTTP send still refused 10 s after /readyz 200")
    _note("PostgreSQL restarted: retried sends stored after", time.monotonic() - restarted)
    # Once more: the same events, nothing new.
    for client, client_id in ((on_a, "during-a"), (on_b, "during-b")):
        reply = await client.send_and_ack(cid, client_id, f"sent as {client_id}")
        assert reply["type"] == "ack" and reply["event"] == events[client_id], reply
    r = await b.http.post(f"/api/v1/conversations/{cid}/messages",
                          json={"body": "over http", "client_id": "during-http"},
                          headers=admin.headers)
    assert r.status_code == 200 and r.json()["id"] == events["during-http"]["id"], r.text

    stored = await stored_events(b, member, cid)
    assert [e["seq"] for e in stored] == [1, 2, 3, 4]
    assert sorted(e["client_id"] for e in stored) == sorted(
        ["before", "during-a", "during-b", "during-http"]
    )
    for client in (on_a, on_b):
        assert client.connected, f"{client.name} was closed ({client.closed_code})"
        await client.sync({cid: client.contiguous_seq(cid)})
        assert client.ids(cid) == {e["id"] for e in stored}
        _assert_in_order(client, cid)
    for node in (a, b):
        assert "unhandled error" not in node.log_text(), node.log_tail(80)
        status, _ = await node.readyz()
        assert status == 200


async def test_postgres_outage_503_keeps_connection(outage: Outage) -> None:
    """A 503 is an ordinary answer: the client's kept-alive connection stays usable,
    and the node logs no 'Exception in ASGI application' traceback for it."""
    (a,) = await outage.cluster.start("A")
    admin = await signup(a)
    await outage.stop()
    statuses = await statuses_on_one_connection(a, "/api/v1/me", admin.headers)
    logged = a.log_text().count("Exception in ASGI application")
    await outage.start()
    assert statuses == [503, 503] and not logged, (
        f"two GET /api/v1/me on one kept-alive connection during the outage answered "
        f"{statuses} (expected [503, 503]); the node logged 'ERROR: Exception in ASGI "
        f"application' {logged} time(s) (log: {a.log})"
    )


async def test_postgres_outage_older_socket_gets_unavailable_not_closed(
    outage: Outage,
) -> None:
    """A socket whose session is due to be touched (its next frame writes the session's
    use down first) is still answered `unavailable`, and stays open."""
    # Sessions idle out after 20 s here, so a socket writes its use down every 5 s
    # (min(60, idle/4)) instead of every 60 s.
    (a,) = await outage.cluster.start("A", BLOOMTEXT_SESSION_IDLE_SECONDS="20")
    admin = await signup(a)
    member = await add_member(a, admin, a, "Sam Member")
    cid = (await create_conversation(a, admin, member))["id"]
    client = await outage.cluster.client("admin@A", admin, a)
    connected = time.monotonic()
    await asyncio.sleep(max(0.0, connected + 5.5 - time.monotonic()))
    await outage.stop()
    try:
        reply = await client.send_and_ack(cid, "old-socket", "from an older socket", 15)
    except ConnectionError:
        await client.wait_for(lambda: not client.connected, 5, "the close")
        raise AssertionError(
            f"the node closed the socket (code {client.closed_code}) on a `send` during the "
            f"outage instead of answering `error` `unavailable` (log: {a.log})"
        ) from None
    finally:
        await outage.start()
    assert reply["type"] == "error" and reply["code"] == "unavailable", reply
    await a.wait_ready(20)
    event = await _retry_until_acked(client, cid, "old-socket", "from an older socket")
    assert event["seq"] == 1
