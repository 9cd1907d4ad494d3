"""HTTP plumbing shared by the routes: parsing, auth, responses, cursors, the route table."""

from __future__ import annotations

import base64
import functools
import json
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from realtime.protocol import ID_PATTERN
from server.actions import accounts
from server.actions.context import Actor, Services
from server.errors import ApiError
from server.uploads import Upload, receive

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]+)`")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


def services(request: Request) -> Services:
    return request.app.state.services


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError("too_large", f"request body is larger than {limit} bytes")
        except ValueError:
            raise ApiError("invalid", "malformed Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError("too_large", f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def file_upload(request: Request) -> Callable[[], Awaitable[Upload]]:
    """The request's multipart file, staged as it streams (413 past MAX_UPLOAD_BYTES),
    read only when the action calls it: after it has checked who is asking."""
    svc = services(request)
    declared = request.headers.get("content-length", "")

    async def receive_it() -> Upload:
        assert svc.blobs is not None
        return await receive(
            request.headers.get("content-type", ""),
            int(declared) if declared.isdigit() else None, request.stream(), svc.blobs,
            limit=svc.settings.max_upload_bytes)

    return receive_it


async def parse_patch(request: Request, schema: type[T]) -> tuple[T, set[str]]:
    """A PATCH body: the validated struct and the keys it named (null included), so an
    absent field stays as it is and a null one is cleared."""
    body = await parse(request, schema)
    raw = msgspec.json.decode(request.state.raw_body)
    return body, set(raw) if isinstance(raw, dict) else set()


async def parse(request: Request, schema: type[T]) -> T:
    """Decode and validate a JSON body into `schema`; errors name the fields."""
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.split(";")[0]:
        raise ApiError("invalid", "send a JSON body (Content-Type: application/json)")
    raw = await read_body(request, services(request).settings.max_json_bytes)
    request.state.raw_body = raw
    if not raw.strip():
        raise ApiError("invalid", "request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as exc:
        raise every_field_error(raw, schema, validation_error(str(exc))) from None
    except msgspec.DecodeError:
        raise ApiError("invalid", "request body is not valid JSON") from None


def every_field_error(raw: bytes, schema: type, first: ApiError) -> ApiError:
    """msgspec stops at the first problem; a client fixing a form wants all of them.
    Check each field of the body on its own and name every one that is wrong."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return first
    known = _body_fields(schema)
    if not isinstance(body, dict) or not known:
        return first
    fields: dict[str, str] = {}
    for name in body:
        if name not in known:
            fields[str(name)] = "unknown field"
    for name, (required, field_type) in known.items():
        if name not in body:
            if required:
                fields[name] = "required"
            continue
        try:
            msgspec.convert(body[name], type=field_type)
        except msgspec.ValidationError as exc:
            fields[name] = str(exc).split(" - at ")[0]
    if not fields:
        return first
    message = first.message if len(fields) == 1 else f"{len(fields)} fields are invalid"
    return ApiError("invalid", message, {"fields": fields})


@functools.cache
def _body_fields(schema: type) -> dict[str, tuple[bool, Any]]:
    """A body Struct's fields by JSON name: (required, type with its constraints)."""
    info = msgspec.inspect.type_info(schema)
    if not isinstance(info, msgspec.inspect.StructType):
        return {}
    hints = typing.get_type_hints(schema, include_extras=True)
    return {f.encode_name: (f.required, hints[f.name]) for f in info.fields}


def validation_error(text: str) -> ApiError:
    field = None
    for pattern in (_MISSING_RE, _UNKNOWN_RE):
        match = pattern.search(text)
        if match:
            field = match.group(1)
    if field is None:
        match = _FIELD_RE.search(text)
        if match:
            field = match.group(1) or "body"
    message = text.split(" - at ")[0]
    return ApiError("invalid", message, {"fields": {field or "body": message}})


async def actor_of(request: Request) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError("unauthenticated", "send Authorization: Bearer <token>")
    return await accounts.authenticate(services(request), secret.strip())


_ID_RE = re.compile(ID_PATTERN)


def path_id(request: Request, name: str) -> str:
    """An id from the path. One that no id could match is simply not found."""
    value = request.path_params[name]
    if len(value) > 32 or not _ID_RE.match(value):
        raise ApiError("not_found", f"{name.removesuffix('_id')} not found")
    return value


def query_id(request: Request, name: str) -> str | None:
    """An id filter from the query string; 422 when it cannot be an id."""
    value = request.query_params.get(name) or None
    if value is not None and (len(value) > 32 or not _ID_RE.match(value)):
        raise ApiError("invalid", f"{name} is not an id", {"fields": {name: "not an id"}})
    return value


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            "invalid", f"{name} must be an integer", {"fields": {name: "integer"}}
        ) from None
    if not low <= value <= high:
        raise ApiError(
            "invalid", f"{name} must be between {low} and {high}", {"fields": {name: "range"}}
        )
    return value


def encode_cursor(key: tuple[str, str] | None) -> str | None:
    if key is None:
        return None
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(request: Request) -> tuple[str, str] | None:
    raw = request.query_params.get("cursor")
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, str) and len(v) <= 64 and "\x00" not in v for v in value)
        ):
            return value[0], value[1]
    except (ValueError, UnicodeDecodeError):
        pass
    raise ApiError("invalid", "malformed cursor", {"fields": {"cursor": "malformed"}})


@dataclass(frozen=True)
class RouteSpec:
    """One HTTP operation: what it takes and answers, for routing and for /openapi.json."""

    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    summary: str
    body: type | None = None
    response: type | tuple[type, ...] | None = None  # a tuple: one of these shapes
    status: int = 200
    auth: bool = True
    query: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()
    tag: str = "api"
    content_type: str = "application/json"
    # The body is a file: "csv" (text/csv, or multipart field `file`), or "file"
    # (multipart field `file`, with optional text fields `body` and `client_id`).
    upload: str = ""
    form: type | None = None  # the body is application/x-www-form-urlencoded (webhooks)


ROUTES: list[RouteSpec] = []


def route(
    method: str,
    path: str,
    summary: str,
    *,
    body: type | None = None,
    response: type | tuple[type, ...] | None = None,
    status: int = 200,
    auth: bool = True,
    query: tuple[str, ...] = (),
    errors: tuple[int, ...] = (),
    tag: str = "api",
    content_type: str = "application/json",
    upload: str = "",
    form: type | None = None,
) -> Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    def register(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        ROUTES.append(
            RouteSpec(method, path, handler, summary, body, response, status, auth, query,
                      errors, tag, content_type, upload, form)
        )
        return handler

    return register
