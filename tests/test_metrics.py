"""GET /metrics: off without METRICS_TOKEN, bearer-protected, and it counts the send path."""

from __future__ import annotations

import re

import pytest

from tests.conftest import LiveServer

TOKEN = "metrics-token-for-tests-0123456789"


def sample(text: str, name: str) -> float:
    """The value of one unlabelled sample in Prometheus' text format."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics:\n{text[:2000]}"
    return float(match.group(1))


async def test_metrics_are_off_without_a_token(live_server: LiveServer) -> None:
    r = await live_server.http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


class TestWithToken:
    @pytest.fixture
    def server_env(self) -> dict[str, str]:
        return {"METRICS_TOKEN": TOKEN}

    async def test_token_is_required(self, live_server: LiveServer) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": TOKEN}):
            r = await live_server.http.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthenticated"

    async def test_send_path_figures(self, live_server: LiveServer) -> None:
        admin = await live_server.signup()
        member = await live_server.add_member(admin)
        cid = await live_server.conversation(admin, member)
        for n in range(3):
            r = await live_server.http.post(
                f"/api/v1/conversations/{cid}/messages",
                json={"body": f"m{n}", "client_id": f"c{n}"}, headers=admin.headers,
            )
            assert r.status_code == 201
        r = await live_server.http.post(  # a retry stores nothing
            f"/api/v1/conversations/{cid}/messages",
            json={"body": "m0", "client_id": "c0"}, headers=admin.headers,
        )
        assert r.status_code == 200

        r = await live_server.http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert sample(text, "bloomtext_messages_stored_total") == 3
        batches = sample(text, "bloomtext_send_batches_total")
        assert batches == 4
        # The retry's batch wrote nothing, so it took no lock.
        assert sample(text, "bloomtext_send_lock_hold_seconds_count") == 3
        hold = sample(text, "bloomtext_send_lock_hold_seconds_sum")
        assert 0 < hold < sample(text, "bloomtext_send_batch_seconds_sum")
        # PostgreSQL: one statement that locks, writes and commits. SQLite: its write
        # transaction (update, insert, commit) on the process's own connection.
        per_hold = 3 if live_server.settings.database_url.startswith("sqlite") else 1
        assert sample(text, "bloomtext_send_lock_round_trips_total") == 3 * per_hold
        assert sample(text, "bloomtext_send_queue_depth") == 0
