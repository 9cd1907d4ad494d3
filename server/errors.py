"""The one error shape of the contract, raised by actions and rendered by HTTP and /ws."""

from __future__ import annotations

from typing import Any

STATUS_BY_CODE = {
    "invalid": 422,
    "unauthenticated": 401,
    "plan_required": 402,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "seat_limit_reached": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "unavailable": 503,
}


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.status = status or STATUS_BY_CODE[code]
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def not_found(what: str = "resource") -> ApiError:
    return ApiError("not_found", f"{what} not found")


def invalid(message: str, **fields: str) -> ApiError:
    return ApiError("invalid", message, {"fields": fields} if fields else None)
