"""The hub delivers each conversation's events in seq order, filling gaps from storage."""

from __future__ import annotations

import asyncio
from typing import Any

from realtime.broker_memory import MemoryBroker
from realtime.hub import Connection, Hub, conversation_topic
from realtime.protocol import CODECS, SUBPROTOCOL_JSON, pack


def _event(seq: int) -> dict[str, Any]:
    return {"id": f"ev_{seq}", "conversation_id": "cv_1", "seq": seq, "kind": "message"}


async def _collector(hub: Hub, max_queue: int = 100) -> tuple[Connection, list[bytes], list[int]]:
    received: list[bytes] = []
    closed: list[int] = []

    async def send(data: bytes | str) -> None:
        received.append(data if isinstance(data, bytes) else data.encode())

    async def close(code: int, reason: str) -> None:
        closed.append(code)

    conn = Connection(user_id="us_1", session_id="se_1", codec=CODECS[SUBPROTOCOL_JSON],
                      send=send, close=close, max_queue=max_queue)
    await hub.register(conn)
    return conn, received, closed


async def test_a_gap_is_filled_from_storage_before_later_events() -> None:
    stored = {seq: _event(seq) for seq in range(1, 6)}
    reads: list[tuple[int, int]] = []

    async def read_gap(conversation_id: str, after: int, before: int) -> list[dict[str, Any]]:
        reads.append((after, before))
        await asyncio.sleep(0.05)  # storage is slow; more events arrive meanwhile
        return [stored[s] for s in range(after + 1, before)]

    broker = MemoryBroker()
    hub = Hub(broker, read_gap)
    conn, received, _ = await _collector(hub)
    topic = conversation_topic("cv_1")
    await hub.join(conn, topic, last_seq=1)
    # seq 2 and 3 were lost on the way; 4 arrives, then 5 while the gap is read, then 3 late.
    for seq in (4, 5, 3):
        await broker.publish(topic, pack((None, {"type": "event", "event": stored[seq]})))
    await asyncio.sleep(0.2)
    seqs = [CODECS[SUBPROTOCOL_JSON].decode_raw(d)["event"]["seq"] for d in received]
    assert seqs == [2, 3, 4, 5]
    assert len(reads) == 1 and reads[0][0] == 1  # one read for the whole gap
    assert hub.gap_reads == 1
    await hub.unregister(conn)


async def test_events_a_moment_out_of_order_need_no_read_of_storage() -> None:
    """Two nodes commit seqs 2 and 3 together and publish independently: 3 may arrive
    first. The hub waits briefly for 2 through the broker instead of reading storage."""
    reads: list[tuple[int, int]] = []

    async def read_gap(conversation_id: str, after: int, before: int) -> list[dict[str, Any]]:
        reads.append((after, before))
        return []

    broker = MemoryBroker()
    hub = Hub(broker, read_gap, gap_grace=1.0)
    conn, received, _ = await _collector(hub)
    topic = conversation_topic("cv_1")
    await hub.join(conn, topic, last_seq=1)
    await broker.publish(topic, pack((None, {"type": "event", "event": _event(3)})))
    await asyncio.sleep(0.05)
    assert received == []  # 3 waits for 2
    await broker.publish(topic, pack((None, {"type": "event", "event": _event(2)})))
    await asyncio.sleep(0.05)
    seqs = [CODECS[SUBPROTOCOL_JSON].decode_raw(d)["event"]["seq"] for d in received]
    assert seqs == [2, 3]
    assert reads == [] and hub.gaps_seen == 1 and hub.gap_reads == 0
    await hub.unregister(conn)


async def test_a_consumer_too_far_behind_is_closed_to_resync() -> None:
    async def read_gap(conversation_id: str, after: int, before: int) -> list[dict[str, Any]]:
        return []

    broker = MemoryBroker()
    hub = Hub(broker, read_gap)
    gate = asyncio.Event()
    closed: list[int] = []

    async def stuck_send(data: bytes | str) -> None:
        await gate.wait()  # a socket whose peer stopped reading

    async def close(code: int, reason: str) -> None:
        closed.append(code)

    conn = Connection(user_id="us_1", session_id="se_1", codec=CODECS[SUBPROTOCOL_JSON],
                      send=stuck_send, close=close, max_queue=10)
    await hub.register(conn)
    topic = conversation_topic("cv_1")
    await hub.join(conn, topic, last_seq=0)
    for seq in range(1, 30):
        await broker.publish(topic, pack((None, {"type": "event", "event": _event(seq)})))
    await asyncio.sleep(2.5)
    assert closed == [4008] and conn.closed
    await hub.unregister(conn)
    assert hub.topic_count() == 0
