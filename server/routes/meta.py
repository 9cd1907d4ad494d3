"""Health, readiness and the OpenAPI document."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server import schemas as s
from server.errors import STATUS_BY_CODE, ApiError
from server.http import JSON, ROUTES, route, services
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from storage import db

CHECK_TIMEOUT = 2.0
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "after": {"type": "integer", "minimum": 0},
    "limit": {"type": "integer", "minimum": 1, "description": "bounded per route"},
    "cursor": {"type": "string", "description": "the `next` of the previous page"},
    "kind": {"type": "string", "enum": ["internal", "patient"]},
    "q": {"type": "string", "description": "a substring of the name, MRN, email, phone "
                                            "(digits) or DOB"},
    "archived": {"type": "boolean", "description": "include archived patients"},
    "area_code": {"type": "string", "pattern": "^[2-9][0-9]{2}$"},
    "team_id": {"type": "string", "description": "patient conversations on this team's numbers"},
    "phone_number_id": {"type": "string", "description": "patient conversations on this number"},
    "reason": {"type": "string", "minLength": 1, "maxLength": 500,
               "description": "why an admin reads this (kept in the audit trail)"},
    "since": {"type": "string", "format": "date-time", "description": "entries at or after"},
    "actor": {"type": "string", "description": "entries by this user (or patient) id"},
    "patient_id": {"type": "string", "description": "entries about this patient"},
    "action": {"type": "string", "description": "entries of this action, e.g. message.recall"},
}


@route("GET", "/healthz", "The process is up", response=s.Health, auth=False, tag="ops")
async def healthz(request: Request) -> Response:
    return JSON({"status": "ok", "checks": {}})


@route("GET", "/readyz", "The database and the broker answer (503 if not)", response=s.Health,
       auth=False, errors=(503,), tag="ops")
async def readyz(request: Request) -> Response:
    state = request.app.state
    database_url = services(request).settings.database_url
    checks: dict[str, str] = {}
    probes = (("database", lambda: db.ping(database_url)), ("broker", state.broker.ping))
    for name, probe in probes:
        try:
            await asyncio.wait_for(probe(), CHECK_TIMEOUT)
            checks[name] = "ok"
        except Exception as exc:  # report, never raise: this is the health answer
            checks[name] = f"down: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSON({"status": "ok" if ok else "unavailable", "checks": checks},
                status_code=200 if ok else 503)


@route("GET", "/metrics", "This node's metrics, Prometheus text format "
       "(Authorization: Bearer METRICS_TOKEN; 404 when METRICS_TOKEN is unset)",
       auth=False, errors=(401, 404), tag="ops")
async def metrics(request: Request) -> Response:
    svc = services(request)
    token = svc.settings.metrics_token
    if token is None:
        raise ApiError("not_found", "metrics are off: set METRICS_TOKEN")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
        raise ApiError("unauthenticated", "send Authorization: Bearer <METRICS_TOKEN>")
    return Response(svc.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@route("GET", "/openapi.json", "This document", auth=False, tag="ops")
async def openapi(request: Request) -> Response:
    return JSON(openapi_document(services(request).settings.public_url))


def openapi_document(server_url: str) -> dict[str, Any]:
    types: list[type] = [s.Error]
    for spec in ROUTES:
        for t in (spec.body, spec.response, spec.form):
            if isinstance(t, tuple):  # one of several shapes
                types.extend(t)
            elif t is not None:
                types.append(t)
    _, components = s.json_schema_components(list(dict.fromkeys(types)))
    error_ref = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        op: dict[str, Any] = {
            "summary": spec.summary,
            "operationId": spec.handler.__name__,
            "tags": [spec.tag],
            "responses": {},
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(spec.path)
        ] + [
            {"name": name, "in": "query", "required": False, "schema": QUERY_SCHEMAS[name]}
            for name in spec.query
        ]
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{spec.body.__name__}"}}},
            }
        if spec.upload:
            fields: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
            if spec.upload == "file":
                fields |= {"body": {"type": "string", "maxLength": 10000},
                           "client_id": {"type": "string", "maxLength": 64}}
            content: dict[str, Any] = {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file"], "properties": fields}}}
            if spec.upload == "csv":
                content = {"text/csv": {"schema": {"type": "string"}}} | content
            op["requestBody"] = {"required": True, "content": content}
        if spec.form is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"$ref": f"#/components/schemas/{spec.form.__name__}"}}}}
        success: dict[str, Any] = {"description": "success"}
        if isinstance(spec.response, tuple):
            success["content"] = {spec.content_type: {"schema": {"anyOf": [
                {"$ref": f"#/components/schemas/{t.__name__}"} for t in spec.response]}}}
        elif spec.response is not None:
            success["content"] = {spec.content_type: {
                "schema": {"$ref": f"#/components/schemas/{spec.response.__name__}"}}}
        op["responses"][str(spec.status)] = success
        if spec.path.endswith(("/messages", "/files")):
            op["responses"]["200"] = {"description": "a repeat of an earlier client_id",
                                      **{k: v for k, v in success.items() if k == "content"}}
        statuses = set(spec.errors)
        if spec.body is not None or spec.upload:
            statuses |= {413, 422}
        if spec.query:
            statuses.add(422)
        if spec.auth:
            statuses.add(401)
        for status in sorted(statuses):
            codes = [c for c, st in STATUS_BY_CODE.items() if st == status]
            # An HTML page answers its errors with a page; its API errors stay JSON.
            page = spec.content_type == "text/html" and status != 401
            op["responses"][str(status)] = {
                "description": ", ".join(codes) or "error",
                "content": {"text/html": {"schema": {"type": "string"}}} if page
                else {"application/json": {"schema": error_ref}},
            }
        if spec.auth:
            op["security"] = [{"bearer": []}]
        paths.setdefault(spec.path, {})[spec.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "BloomText", "version": "1",
                 "description": "HTTP API of BloomText. The websocket protocol at /ws is "
                                "described in docs/protocol.md."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
