"""`python -m bench.statement_time`: how long PostgreSQL itself holds a batch's rows.

The nodes' `bloomtext_send_lock_hold_seconds` is measured from the node, so it also
counts the way to the database and back and the node's own wake-up. This times, inside
PostgreSQL, the send path's statement (`storage.queries.append_messages`: checks, locks,
write) for batches of 1-30 sends, and the WAL flush of a commit, against a database that
the bench has set up (it appends bench messages to the bench's own conversations).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from datetime import UTC, datetime

import asyncpg

from bench.cluster import plain_postgres_url
from storage.queries import _APPEND_POSTGRES

TIMED = _APPEND_POSTGRES.replace(
    "RETURNING id, seq, sender_kind",
    "RETURNING id, seq, sender_kind,"
    " extract(epoch from clock_timestamp() - statement_timestamp()) AS took",
)


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.3f} ms"


async def measure(url: str, runs: int) -> None:
    conn = await asyncpg.connect(plain_postgres_url(url), timeout=10)
    try:
        pairs = await conn.fetch(
            "SELECT p.conversation_id, p.user_id FROM participants AS p"
            " JOIN users AS u ON u.id = p.user_id WHERE u.name LIKE 'Bench user %' LIMIT 60"
        )
        if not pairs:
            raise SystemExit("no bench conversations here: run `python -m bench setup` first")
        for size in (1, 3, 10, 30):
            took, trip = [], []
            for k in range(runs):
                rows = [pairs[(k + i) % len(pairs)] for i in range(size)]
                args = [
                    [f"ev_{secrets.token_hex(8)}" for _ in rows], [r[0] for r in rows],
                    ["message"] * size, [r[1] for r in rows], ["bench"] * size,
                    ["statement_time"] * size, [None] * size, [None] * size, ["[]"] * size,
                    ["f"] * size, datetime.now(UTC),
                ]
                started = time.perf_counter()
                out = await conn.fetch(TIMED, *args)
                trip.append(time.perf_counter() - started)
                took.append(float(out[0]["took"]))
            print(f"batch of {size:2}: inside PostgreSQL {ms(took)}, round trip {ms(trip)}")
        one, commit = [], []
        cid = pairs[0][0]
        for _ in range(runs):
            started = time.perf_counter()
            await conn.fetchval("SELECT 1")
            one.append(time.perf_counter() - started)
            await conn.execute("BEGIN")
            await conn.execute("UPDATE conversations SET updated_at = now() WHERE id = $1", cid)
            started = time.perf_counter()
            await conn.execute("COMMIT")
            commit.append(time.perf_counter() - started)
        print(f"SELECT 1 round trip {ms(one)}; COMMIT of a one-row update {ms(commit)}")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.statement_time", description=__doc__)
    parser.add_argument("--database-url",
                        default="postgres://postgres@127.0.0.1:5432/bloomtext_bench")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(measure(args.database_url, min(args.runs, 10_000)))


if __name__ == "__main__":
    main()
