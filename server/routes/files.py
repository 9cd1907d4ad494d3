"""File routes: upload to a conversation, download. Parse, call one action, serialise."""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from server import schemas as s
from server.actions import files, portal
from server.http import JSON, actor_of, file_upload, path_id, route, services
from server.routes.portal import COOKIE

API = "/api/v1"


@route("POST", f"{API}/conversations/{{conversation_id}}/files",
       "Send a file, with an optional message body (multipart: file, body?, client_id?; "
       "the same client_id again: 200 with the first event)", response=s.Event, status=201,
       upload="file", errors=(401, 402, 404, 409, 413, 422, 503))
async def send_file(request: Request) -> Response:
    actor = await actor_of(request)
    event, created = await files.send_file(
        services(request), actor, path_id(request, "conversation_id"), file_upload(request))
    return JSON(event, status_code=201 if created else 200)


@route("GET", f"{API}/files/{{file_id}}", "A file, as an attachment, to a participant of "
       "its conversation (Bearer token, or the patient's portal session cookie)",
       content_type="application/octet-stream", errors=(401, 402, 404))
async def get_file(request: Request) -> Response:
    svc = services(request)
    file_id = path_id(request, "file_id")
    if "authorization" not in request.headers and COOKIE in request.cookies:
        session = await portal.session_for(svc, request.cookies.get(COOKIE))
        if session is None:
            raise portal.unauthenticated()
        found = await files.download_for_patient(
            svc, file_id, patient_id=session.patient_id, org_id=session.org_id,
            conversation_id=session.conversation_id)
    else:
        found = await files.download_for(svc, await actor_of(request), file_id)
    return file_response(found)


@route("GET", f"{API}/admin/files/{{file_id}}", "A file as it was sent, recalled or not "
       "(admin; `reason` required; the read is audited with it)", query=("reason",),
       content_type="application/octet-stream", errors=(401, 402, 403, 404, 422))
async def retrieve_file(request: Request) -> Response:
    actor = await actor_of(request)
    return file_response(await files.retrieve_file(
        services(request), actor, path_id(request, "file_id"),
        request.query_params.get("reason")))


def file_response(found: files.Download) -> Response:
    return StreamingResponse(found.chunks, media_type=found.content_type, headers={
        "Content-Length": str(found.size),
        # (nosniff and no-store are on every response: server/app.py SECURITY_HEADERS)
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(found.name, safe='')}",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    })
