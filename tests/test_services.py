"""The test-service helpers start, answer, survive a restart on the same port, and stop."""

from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tests.services import PostgresCluster, RedisCluster, RedisServer, find_free_port


def test_find_free_port_is_usable_and_unique() -> None:
    ports = {find_free_port() for _ in range(20)}
    assert len(ports) == 20
    assert all(1024 <= p < 65536 for p in ports)


@pytest.mark.postgres
async def test_postgres_cluster(tmp_path: Path) -> None:
    pg = PostgresCluster(tmp_path / "pg")
    try:
        url = pg.create_database("services_check")
        assert url == f"postgres://postgres@127.0.0.1:{pg.port}/services_check"
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

        pg.stop()
        with pytest.raises(OSError):
            await asyncpg.connect(url, timeout=5)
        pg.start()
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "services_check"
        finally:
            await conn.close()
        pg.drop_database("services_check")
    finally:
        pg.close()


async def test_redis_server_kill_and_restart() -> None:
    server = RedisServer()
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = aioredis.from_url(server.url)
        try:
            assert await client.ping()
            server.kill()
            with pytest.raises(aioredis.ConnectionError):
                await client.ping()
            server.start()
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        server.stop()


async def test_redis_cluster_set_get(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.port}"
        client = AsyncRedisCluster(host="127.0.0.1", port=cluster.port)
        try:
            keys = [f"key-{i}" for i in range(30)]  # spread over all three nodes' slots
            for key in keys:
                await client.set(key, key.upper())
            for key in keys:
                assert await client.get(key) == key.upper().encode()
            assert len(client.get_nodes()) == 3
        finally:
            await client.aclose()
    finally:
        cluster.stop()
