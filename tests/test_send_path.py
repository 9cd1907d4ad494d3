"""The send path's write: one locking statement, seqs gap-free under concurrent writers,
and a conversation whose rows are locked holds back only its own lane."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from server.actions.messages import lane_of
from server.app import DEFAULT_POSTGRES_LANES
from server.ids import new_id, utcnow
from storage import db, queries
from storage.models import Conversation, Org, Participant, User
from tests.conftest import LiveServer, expect, quiet, send

SENDER = "us_sender0000000000"


async def make_conversations(count: int) -> list[str]:
    """Conversations with SENDER as their one participant."""
    now = utcnow()
    org = await Org.create(id=new_id("or"), name="Clinic", created_at=now)
    if not await User.exists(id=SENDER):
        await User.create(id=SENDER, org=org, kind="member", name="Sender", created_at=now)
    ids = []
    for _ in range(count):
        conversation = await Conversation.create(
            id=new_id("cv"), org=org, created_at=now, updated_at=now
        )
        await Participant.create(conversation=conversation, user_id=SENDER, kind="member",
                                 joined_at=now)
        ids.append(conversation.id)
    return ids


def event_row(conversation_id: str, n: int, client_id: str | None = None,
              sender_id: str = SENDER) -> dict[str, Any]:
    return {
        "id": new_id("ev"), "conversation_id": conversation_id, "seq": 0, "kind": "message",
        "sender_id": sender_id, "sender_name": "Sender", "sender_kind": None, "body": f"m{n}",
        "attachments": [], "client_id": client_id, "target_id": None, "recalled": False,
    }


async def test_concurrent_writers_over_shared_conversations(storage: str) -> None:
    """Many writers, each batch touching several of the same conversations in random
    order: no deadlock, every seq given once, none skipped, last_seq moved to match."""
    conversation_ids = await make_conversations(6)
    conn = db.connection()
    given: dict[str, list[int]] = {cid: [] for cid in conversation_ids}

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        for batch in range(15):
            size = rng.randint(1, 8)
            rows = [event_row(rng.choice(conversation_ids), batch) for _ in range(size)]
            result = await queries.append_messages(conn, rows, utcnow())
            assert set(result.stored) == {row["id"] for row in rows}
            for row in rows:  # within a batch, one conversation's rows keep their order
                given[row["conversation_id"]].append(result.stored[row["id"]][0])

    await asyncio.wait_for(asyncio.gather(*(writer(seed) for seed in range(8))), 60)

    for cid, seqs in given.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), cid
        conversation = await Conversation.get(id=cid)
        assert conversation.last_seq == len(seqs)
        stored = await conn.execute_query_dict(
            "SELECT seq FROM events WHERE conversation_id = "
            + ("$1" if conn.capabilities.dialect == "postgres" else "?") + " ORDER BY seq",
            [cid],
        )
        assert [r["seq"] for r in stored] == list(range(1, len(seqs) + 1))


async def test_rows_of_one_conversation_are_numbered_in_batch_order(storage: str) -> None:
    a, b = await make_conversations(2)
    rows = [event_row(cid, n) for n, cid in enumerate([a, b, a, a, b])]
    result = await queries.append_messages(db.connection(), rows, utcnow())
    assert [result.stored[row["id"]] for row in rows] == [
        (1, "member"), (1, "member"), (2, "member"), (3, "member"), (2, "member")]


async def test_retries_outsiders_and_missing_conversations_are_left_out(storage: str) -> None:
    """Checked by the write itself: no seq is taken for a row it leaves out."""
    a, b = await make_conversations(2)
    conn = db.connection()
    first = await queries.append_messages(conn, [event_row(a, 0, client_id="c1")], utcnow())
    assert list(first.stored.values()) == [(1, "member")]
    now = utcnow()
    await User.create(id="us_outsider00000000", org_id=(await Org.first()).id, kind="member",
                      name="Outsider", created_at=now)
    rows = [
        event_row(a, 1, client_id="c1"),  # a retry
        event_row(a, 2, sender_id="us_outsider00000000"),  # not a participant
        event_row("cv_doesnotexist000000", 3),
        event_row(b, 4, client_id="c2"),
        event_row(a, 5, client_id="c3"),
    ]
    result = await queries.append_messages(conn, rows, now)
    assert result.stored == {rows[3]["id"]: (1, "member"), rows[4]["id"]: (2, "member")}
    assert (await Conversation.get(id=a)).last_seq == 2
    assert (await Conversation.get(id=b)).last_seq == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_locked_conversation_holds_back_only_its_own_lane(
    live_server: LiveServer,
) -> None:
    """While another transaction holds conversation A's row, a send to A waits; a send to
    B, on another lane, is stored and acknowledged meanwhile; then A's goes through."""
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    conversations: dict[int, str] = {}
    while len(conversations) < 2:
        cid = await live_server.conversation(admin, member)
        conversations.setdefault(lane_of(cid, DEFAULT_POSTGRES_LANES), cid)
    a, b = conversations.values()
    ws = await live_server.socket(admin)
    other = await live_server.socket(member)  # a socket handles its frames one by one

    blocker = await asyncpg.connect(live_server.settings.database_url.split("?")[0])
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", a)
        await send(ws, {"type": "send", "ref": "a", "conversation_id": a,
                        "client_id": "to-a", "body": "waits"})
        await asyncio.sleep(0.3)  # A's batch is now waiting on the lock
        await send(other, {"type": "send", "ref": "b", "conversation_id": b,
                           "client_id": "to-b", "body": "goes through"})
        ack_b = await expect(other, "ack", timeout=5, ref="b")
        assert ack_b["event"]["seq"] == 1
        held_back = await quiet(ws, 0.5)
        assert not [f for f in held_back if f.get("type") == "ack"], held_back
        await blocking.rollback()
    finally:
        await blocker.close()
    ack_a = await expect(ws, "ack", timeout=5, ref="a")
    assert ack_a["event"]["conversation_id"] == a and ack_a["event"]["seq"] == 1
