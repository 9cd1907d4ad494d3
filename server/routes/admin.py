"""Recall, admin retrieval and the audit trail. Parse, call one action, serialise."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from server import schemas as s
from server.actions import audit, recall
from server.errors import ApiError
from server.http import JSON, actor_of, int_param, path_id, query_id, route, services

API = "/api/v1"


@route("POST", f"{API}/messages/{{message_id}}/recall", "Recall a message and its files "
       "(its sender, or an admin of the sender's organisation): 200 with the recall event",
       response=s.Event, errors=(401, 402, 403, 404, 409, 503))
async def recall_message(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await recall.recall_message(services(request), actor,
                                            path_id(request, "message_id")))


@route("GET", f"{API}/admin/messages/{{message_id}}", "A message as it was sent, recalled "
       "or not (admin; `reason` required; the read is audited with it)", response=s.Event,
       query=("reason",), errors=(401, 403, 404, 422))
async def retrieve_message(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await recall.retrieve(services(request), actor, path_id(request, "message_id"),
                                      request.query_params.get("reason")))


def _filters(request: Request) -> audit.Filters:
    return audit.Filters(
        since=audit.parse_since(request.query_params.get("since")),
        actor_id=query_id(request, "actor"), patient_id=query_id(request, "patient_id"),
        action=(request.query_params.get("action") or None))


@route("GET", f"{API}/admin/audit", "The organisation's audit trail, newest first (admin)",
       response=s.AuditPage, query=("since", "actor", "patient_id", "action", "cursor",
                                    "limit"), errors=(401, 403, 422))
async def list_audit(request: Request) -> Response:
    actor = await actor_of(request)
    cursor = request.query_params.get("cursor")
    if cursor is not None and not cursor.isdigit():
        raise ApiError("invalid", "cursor is the `next` of the previous page",
                       {"fields": {"cursor": "malformed"}})
    items, next_seq = await audit.list_entries(
        actor, _filters(request), before_seq=int(cursor) if cursor else None,
        limit=int_param(request, "limit", 100, 1, 500))
    return JSON({"items": items, "next": str(next_seq) if next_seq else None})


@route("GET", f"{API}/admin/audit/export", "The audit trail as CSV, oldest first (admin; "
       "the same filters; the export is audited)", query=("since", "actor", "patient_id",
                                                          "action"),
       content_type="text/csv", errors=(401, 403, 422))
async def export_audit(request: Request) -> Response:
    actor = await actor_of(request)
    lines = await audit.export(services(request), actor, _filters(request))
    return StreamingResponse(lines, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="audit.csv"'})
