"""Property-based requests from /openapi.json (schemathesis): never a 5xx, always as documented."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture
def server_env() -> dict[str, str]:
    # The fuzzer tries many logins; the limiter would answer 429 to the rest.
    return {"BLOOMTEXT_LOGIN_MAX_FAILURES": "1000000"}


@pytest.mark.timeout(240)
async def test_the_api_holds_to_its_own_document(
    live_server: LiveServer, tmp_path: Path
) -> None:
    admin = await live_server.signup()
    member = await live_server.add_member(admin)
    await live_server.conversation(admin, member)
    # Run as a subprocess without blocking the event loop the server runs on.
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "--no-color", "run", f"{live_server.base_url}/openapi.json",
        "-H", f"Authorization: Bearer {admin.token}",
        "--exclude-path", "/api/v1/auth/logout",  # it would end the fuzzer's own session
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples", "25", "--request-timeout", "10", "--seed", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # it keeps a cache folder where it runs
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 200)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
