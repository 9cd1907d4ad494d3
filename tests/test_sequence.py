"""Seqs rise by exactly one, without gaps or duplicates, under concurrent sends."""

from __future__ import annotations

import asyncio

from tests.conftest import LiveServer, recv, send


async def test_100_concurrent_sends_from_several_connections(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    members = [await live_server.add_member(admin, name=f"M{i}") for i in range(3)]
    cid = await live_server.conversation(admin, *members)
    people = [admin, *members]
    sockets = [await live_server.socket(people[i % 4]) for i in range(8)]

    async def sender(index: int) -> list[dict]:
        ws = sockets[index]
        for n in range(10):
            await send(ws, {"type": "send", "ref": n, "conversation_id": cid,
                            "client_id": f"w{index}-{n}", "body": f"{index}/{n}"})
        acks = []
        while len(acks) < 10:
            frame = await recv(ws, 10)
            if frame["type"] == "ack":
                acks.append(frame["event"])
        return acks

    async def http_sender(index: int) -> list[dict]:
        person = people[index % 4]

        async def one(n: int) -> dict:
            r = await live_server.http.post(
                f"/api/v1/conversations/{cid}/messages",
                json={"body": f"h{index}/{n}", "client_id": f"h{index}-{n}"},
                headers=person.headers,
            )
            assert r.status_code == 201, r.text
            return r.json()

        return list(await asyncio.gather(*(one(n) for n in range(10))))

    results = await asyncio.gather(
        *(sender(i) for i in range(8)), *(http_sender(i) for i in range(2))
    )
    acked = [event for batch in results for event in batch]
    assert len(acked) == 100
    assert sorted(e["seq"] for e in acked) == list(range(1, 101))
    assert len({e["id"] for e in acked}) == 100

    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events",
                                   params={"limit": 1000}, headers=admin.headers)
    stored = r.json()["events"]
    assert [e["seq"] for e in stored] == list(range(1, 101)) and r.json()["last_seq"] == 100
    assert {e["id"] for e in stored} == {e["id"] for e in acked}

    # Each socket saw every event, in seq order, exactly once.
    for ws in sockets:
        seen = []
        try:
            while True:
                frame = await recv(ws, 1.0)
                if frame["type"] == "event":
                    seen.append(frame["event"]["seq"])
        except TimeoutError:
            pass
        # Events that arrived before the acks were consumed while waiting for acks.
        assert seen == sorted(seen) and len(seen) == len(set(seen))


async def test_concurrent_retries_store_once(live_server: LiveServer) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    cid = await live_server.conversation(admin, member)

    async def post() -> tuple[int, str]:
        r = await live_server.http.post(
            f"/api/v1/conversations/{cid}/messages",
            json={"body": "once", "client_id": "same-id"}, headers=admin.headers,
        )
        return r.status_code, r.json()["id"]

    outcomes = await asyncio.gather(*(post() for _ in range(20)))
    assert len({event_id for _, event_id in outcomes}) == 1
    assert sorted(status for status, _ in outcomes) == [200] * 19 + [201]
    r = await live_server.http.get(f"/api/v1/conversations/{cid}/events", headers=admin.headers)
    assert len(r.json()["events"]) == 1
