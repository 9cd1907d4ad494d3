"""The few HTTP API calls the bench needs, with retries on 429/503 and readable errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from bench.util import BenchError

RETRY_STATUSES = (429, 503)


class ApiError(BenchError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        self.code = _error_code(body)
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")


def _error_code(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        code = data["error"].get("code")
        return code if isinstance(code, str) else None
    return None


class Api:
    """An httpx client bound to one deployment's base URL."""

    def __init__(
        self, base_url: str, *, timeout: float = 30.0, verify: bool = True, retries: int = 5
    ) -> None:
        self.base_url = base_url
        self.retries = retries
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, verify=verify, limits=limits
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise BenchError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                await asyncio.sleep(_retry_after(response, delay))
                delay = min(delay * 2, 8.0)
                continue
            if response.status_code not in expect:
                raise ApiError(method, path, response.status_code, response.text)
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError as exc:
                raise ApiError(method, path, response.status_code, response.text) from exc
        raise AssertionError("unreachable")

    # -- the calls -------------------------------------------------------------------------

    async def preflight(self) -> None:
        """`GET /healthz` once, without retries: fail fast on a wrong URL."""
        try:
            response = await self._http.get("/healthz")
        except httpx.TransportError as exc:
            raise BenchError(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise BenchError(
                f"{self.base_url}/healthz answered {response.status_code}: {response.text[:200]}"
            )

    async def signup(self, org_name: str, name: str, email: str, password: str) -> dict[str, Any]:
        body = {"org_name": org_name, "name": name, "email": email, "password": password}
        data = await self.request("POST", "/api/v1/signup", body=body, expect=(201, 200))
        _require(data, ("token", "user", "org"), "POST /api/v1/signup")
        return data

    async def login(self, email: str, password: str) -> dict[str, Any]:
        body = {"email": email, "password": password}
        data = await self.request("POST", "/api/v1/auth/login", body=body, expect=(200,))
        _require(data, ("token", "user"), "POST /api/v1/auth/login")
        return data

    async def me(self, token: str) -> int:
        """The status of `GET /api/v1/me` (200 when the token is good, 401 when it is not)."""
        try:
            await self.request("GET", "/api/v1/me", token=token, expect=(200,))
        except ApiError as exc:
            return exc.status
        return 200

    async def add_member(
        self, admin_token: str, email: str, name: str, password: str
    ) -> dict[str, Any]:
        body = {"email": email, "name": name, "role": "member", "password": password}
        data = await self.request(
            "POST", "/api/v1/members", token=admin_token, body=body, expect=(201, 200)
        )
        user = data.get("user", data) if isinstance(data, dict) else None
        if not isinstance(user, dict) or "id" not in user:
            raise BenchError(f"POST /api/v1/members: unexpected answer {str(data)[:300]}")
        return user

    async def seats(self, admin_token: str) -> tuple[int | None, int]:
        """(limit, used) from `GET /api/v1/org`; the limit is None when there is none."""
        try:
            data = await self.request("GET", "/api/v1/org", token=admin_token, expect=(200,))
        except ApiError:
            return None, 0
        seats = data.get("seats") if isinstance(data, dict) else None
        if not isinstance(seats, dict):
            return None, 0
        limit, used = seats.get("limit"), seats.get("used")
        return (limit if isinstance(limit, int) else None), (used if isinstance(used, int) else 0)

    async def start_trial(self, admin_token: str) -> bool:
        try:
            await self.request("POST", "/api/v1/org/trial", token=admin_token, expect=(200,))
        except ApiError:
            return False
        return True

    async def create_conversation(
        self, token: str, member_ids: list[str], subject: str
    ) -> dict[str, Any]:
        body = {"to": [{"user_id": uid} for uid in member_ids], "subject": subject}
        data = await self.request(
            "POST", "/api/v1/conversations", token=token, body=body, expect=(201, 200)
        )
        _require(data, ("id",), "POST /api/v1/conversations")
        return data

    async def conversation_status(self, token: str, conversation_id: str) -> int:
        """The status of `GET /api/v1/conversations/<id>` (402 once the plan no longer
        allows a patient conversation, 404 when it is gone)."""
        path = f"/api/v1/conversations/{conversation_id}"
        try:
            await self.request("GET", path, token=token, expect=(200,))
        except ApiError as exc:
            return exc.status
        return 200

    # -- patient conversations (trial or paid plan; phone numbers need a Twilio) -----------

    async def create_team(self, admin_token: str, name: str) -> str:
        data = await self.request(
            "POST", "/api/v1/teams", token=admin_token, body={"name": name}, expect=(201,)
        )
        _require(data, ("id",), "POST /api/v1/teams")
        return str(data["id"])

    async def add_to_team(self, admin_token: str, team_id: str, user_id: str) -> None:
        path = f"/api/v1/teams/{team_id}/members/{user_id}"
        await self.request("PUT", path, token=admin_token, expect=(204, 200))

    async def available_numbers(self, admin_token: str, area_code: str) -> list[str]:
        """The numbers the server's Twilio offers in `area_code` (one page)."""
        data = await self.request(
            "GET", f"/api/v1/phone-numbers/available?area_code={area_code}",
            token=admin_token, expect=(200,),
        )
        _require(data, ("items",), "GET /api/v1/phone-numbers/available")
        return [str(item["number"]) for item in data["items"]]

    async def buy_number(self, admin_token: str, number: str, team_id: str) -> dict[str, Any]:
        """Buys `number` through the server's Twilio for `team_id`: `{id, number, team_id}`."""
        data = await self.request(
            "POST", "/api/v1/phone-numbers", token=admin_token,
            body={"number": number, "team_id": team_id}, expect=(201,),
        )
        _require(data, ("id", "number"), "POST /api/v1/phone-numbers")
        return data

    async def create_patient(self, token: str, fields: dict[str, str]) -> str:
        data = await self.request(
            "POST", "/api/v1/patients", token=token, body=fields, expect=(201, 200)
        )
        _require(data, ("id",), "POST /api/v1/patients")
        return str(data["id"])

    async def create_patient_conversation(
        self, token: str, patient_id: str, phone_number_id: str, channel: str,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """The server makes the number's team (and the caller) its staff participants."""
        body: dict[str, Any] = {
            "to": [{"patient_id": patient_id}], "phone_number_id": phone_number_id,
            "channel": channel,
        }
        if subject:
            body["subject"] = subject
        data = await self.request(
            "POST", "/api/v1/conversations", token=token, body=body, expect=(201, 200)
        )
        _require(data, ("id", "participants"), "POST /api/v1/conversations")
        return data


def _require(data: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(data, dict) or any(key not in data for key in keys):
        raise BenchError(f"{what}: expected keys {list(keys)}, got {str(data)[:300]}")


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After")
    try:
        return min(max(float(value), 0.1), 30.0) if value else default
    except ValueError:
        return default
