"""The patient routes: directory, imports and their jobs, phone numbers. Parse, call one
action, serialise."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response

from server import schemas as s
from server.actions import imports, patients, phone_numbers
from server.errors import ApiError
from server.http import (
    JSON,
    actor_of,
    decode_cursor,
    encode_cursor,
    int_param,
    parse,
    parse_patch,
    path_id,
    route,
    services,
)

API = "/api/v1"


@route("POST", f"{API}/patients", "Add a patient (a phone or an email is required)",
       body=s.PatientBody, response=s.Patient, status=201, errors=(401, 402, 403, 409, 422))
async def create_patient(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.PatientBody)
    values = {f: getattr(body, f) for f in patients.FIELDS if getattr(body, f) is not None}
    return JSON(await patients.create_patient(services(request), actor, values),
                status_code=201)


@route("GET", f"{API}/patients", "Search the directory (q: a substring of the name, MRN, "
       "email, phone digits or DOB)", response=s.PatientList,
       query=("q", "archived", "cursor", "limit"), errors=(401, 402, 403, 422))
async def search_patients(request: Request) -> Response:
    actor = await actor_of(request)
    q = request.query_params.get("q", "")
    if len(q) > 200:
        raise ApiError("invalid", "q is at most 200 characters", {"fields": {"q": "too long"}})
    archived = request.query_params.get("archived", "false").lower()
    if archived not in ("true", "false", "1", "0"):
        raise ApiError("invalid", "archived is true or false", {"fields": {"archived": "bool"}})
    items, next_key = await patients.search_patients(
        services(request), actor, q=q, include_archived=archived in ("true", "1"),
        after=decode_cursor(request), limit=int_param(request, "limit", 50, 1, 200),
    )
    return JSON({"items": items, "next": encode_cursor(next_key)})


@route("GET", f"{API}/patients/{{patient_id}}", "One patient", response=s.Patient,
       errors=(401, 402, 403, 404))
async def get_patient(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await patients.get_patient(services(request), actor,
                                           path_id(request, "patient_id")))


@route("PATCH", f"{API}/patients/{{patient_id}}", "Edit a patient (null clears a field); "
       "archived: true archives, false restores", body=s.PatientPatchBody, response=s.Patient,
       errors=(401, 402, 403, 404, 409, 422))
async def update_patient(request: Request) -> Response:
    actor = await actor_of(request)
    body, named = await parse_patch(request, s.PatientPatchBody)
    values = {f: getattr(body, f) for f in patients.FIELDS if f in named}
    return JSON(await patients.update_patient(
        services(request), actor, path_id(request, "patient_id"), values, body.archived))


async def _upload(request: Request) -> AsyncIterator[bytes]:
    """The file's bytes: the body itself (text/csv), or multipart field `file`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=10)
        except (MultiPartException, HTTPException) as exc:  # Starlette turns one into the other
            why = exc.message if isinstance(exc, MultiPartException) else exc.detail
            raise ApiError("invalid", f"malformed multipart body: {why}",
                           {"fields": {"file": "malformed multipart"}}) from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError("invalid", "send the CSV as multipart field `file`",
                           {"fields": {"file": "required"}})

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await upload.read(64 * 1024):
                    yield chunk
            finally:
                await form.close()

        return chunks()
    if content_type not in ("text/csv", "text/plain", "application/csv",
                            "application/vnd.ms-excel"):
        raise ApiError("invalid", "send a CSV file (Content-Type: text/csv, or multipart "
                       "field `file`)", {"fields": {"file": "not CSV"}})
    return request.stream()


@route("POST", f"{API}/patients/import", "Import patients from a CSV file (202: a job; the "
       "same Idempotency-Key again: 200 with the first job)", response=s.JobAccepted,
       status=202, upload="csv", errors=(401, 402, 403, 413, 422))
async def import_patients(request: Request) -> Response:
    actor = await actor_of(request)
    declared = request.headers.get("content-length", "")
    result, created = await imports.start_import(
        services(request), actor, lambda: _upload(request),
        declared_length=int(declared) if declared.isdigit() else None,
        idempotency_key=request.headers.get("idempotency-key"),
    )
    return JSON(result, status_code=202 if created else 200)


@route("GET", f"{API}/jobs/{{job_id}}", "A job's progress and report", response=s.Job,
       errors=(401, 404))
async def get_job(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON(await imports.get_job(services(request), actor, path_id(request, "job_id")))


@route("GET", f"{API}/phone-numbers/available", "Local numbers Twilio offers in an area "
       "code (admin)", response=s.AvailableNumberList, query=("area_code",),
       errors=(401, 402, 403, 409, 422, 503))
async def available_numbers(request: Request) -> Response:
    actor = await actor_of(request)
    items = await phone_numbers.search_available(
        services(request), actor, request.query_params.get("area_code", ""))
    return JSON({"items": items, "next": None})


@route("POST", f"{API}/phone-numbers", "Buy a number through Twilio for a team (admin)",
       body=s.PhoneNumberBody, response=s.PhoneNumber, status=201,
       errors=(401, 402, 403, 404, 409, 422, 503))
async def buy_number(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.PhoneNumberBody)
    return JSON(await phone_numbers.buy(services(request), actor, number=body.number,
                                        team_id=body.team_id), status_code=201)


@route("GET", f"{API}/phone-numbers", "The organisation's numbers (members: their teams')",
       response=s.PhoneNumberList, errors=(401, 402, 403))
async def list_numbers(request: Request) -> Response:
    actor = await actor_of(request)
    return JSON({"items": await phone_numbers.list_numbers(services(request), actor),
                 "next": None})


@route("PATCH", f"{API}/phone-numbers/{{number_id}}", "Give a number to another team "
       "(admin): access moves at once", body=s.PhoneNumberPatchBody, response=s.PhoneNumber,
       errors=(401, 402, 403, 404, 422))
async def move_number(request: Request) -> Response:
    actor = await actor_of(request)
    body = await parse(request, s.PhoneNumberPatchBody)
    return JSON(await phone_numbers.move(services(request), actor,
                                         path_id(request, "number_id"), team_id=body.team_id))
