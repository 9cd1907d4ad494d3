"""The patient portal's pages: server-rendered, small, working without JavaScript (a
script only adds live updates). Every page sends a strict Content-Security-Policy, no
referrer (the URL holds the link's secret) and no-store. Parse, call the portal service,
render."""

from __future__ import annotations

import secrets
from html import escape
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from server import schemas as s
from server.actions import portal
from server.errors import ApiError
from server.http import JSON, file_upload, route, services

COOKIE = "bt_portal"
MAX_FORM_FIELDS = 10
NOT_FOUND_TEXT = ("This link does not work. It may have expired, or a newer message may "
                  "have replaced it. Please use the most recent link your care team sent, "
                  "or contact them.")


def _csp(request: Request) -> str:
    public = urlsplit(services(request).settings.public_url)
    socket = ("wss" if public.scheme == "https" else "ws") + "://" + public.netloc
    return ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
            f"connect-src 'self' {socket}; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'")


def _page(request: Request, title: str, body: str, status: int = 200,
          script: bool = False) -> Response:
    tag = '<script type="module" src="/portal/live.js"></script>' if script else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)}</title><link rel="stylesheet" href="/portal/portal.css">'
        f'{tag}</head><body><main id="main">{body}</main></body></html>')
    # no-referrer, no-store and nosniff come with every response (server/app.py).
    headers = {"Content-Security-Policy": _csp(request)}
    if services(request).settings.public_url.startswith("https://"):
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return Response(html, status_code=status, media_type="text/html", headers=headers)


def _not_found(request: Request) -> Response:
    return _page(request, "Link not valid",
                 f'<h1>Link not valid</h1><p>{escape(NOT_FOUND_TEXT)}</p>', status=404)


def _locked(request: Request) -> Response:
    return _page(request, "Link locked", "<h1>Link locked</h1><p>Too many wrong answers. "
                 "For your safety this link is locked for 30 minutes. Your care team has "
                 "been told; you may also call them.</p>", status=429)


def _dob_form(request: Request, token: str, wrong: bool) -> Response:
    error = ('<p class="error" role="alert" id="dob-error">That date of birth does not match '
             "our records. Please try again.</p>") if wrong else ""
    described = ' aria-describedby="dob-error"' if wrong else ""
    body = (
        "<h1>Secure message</h1><p>To open your message, please confirm your date of "
        "birth.</p>"
        f'<form method="post" action="/p/{escape(token)}">{error}'
        '<label for="dob">Date of birth</label>'
        f'<input id="dob" name="dob" type="date" required autocomplete="bday"{described}>'
        '<button type="submit">Continue</button></form>')
    return _page(request, "Confirm your date of birth", body, status=200)


def _size(size: int) -> str:
    return f"{size / 1048576:.1f} MB" if size >= 1048576 else f"{max(1, size // 1024)} KB"


def _conversation(request: Request, token: str, shown: portal.PortalView) -> Response:
    items = []
    for e in shown.events:
        who = "You" if e["from_patient"] else e["sender"]
        text = ("<em>This message was recalled by its sender.</em>" if e["recalled"]
                else escape(e["body"] or ""))
        mine = " mine" if e["from_patient"] else ""
        files = "".join(
            f'<li><a href="/api/v1/files/{escape(a["id"])}" download>{escape(a["name"])}</a>'
            f' <span class="size">({_size(a["size"])})</span></li>'
            for a in e["attachments"] if a.get("id"))
        files = f'<ul class="files" aria-label="Files">{files}</ul>' if files else ""
        items.append(
            f'<li class="message{mine}" data-seq="{e["seq"]}"><p class="meta">'
            f'<span class="who">{escape(who)}</span> '
            f'<time datetime="{e["at"].isoformat()}">{e["at"]:%b %d, %H:%M} UTC</time></p>'
            f'<p class="body">{text}</p>{files}</li>')
    subject = f"<p class=\"subject\">{escape(shown.subject)}</p>" if shown.subject else ""
    body = (
        f'<header><h1>{escape(shown.org_name)}</h1>{subject}</header>'
        f'<ol id="messages" class="messages" aria-live="polite" data-conversation='
        f'"{escape(shown.conversation_id)}" data-last-seq="{shown.last_seq}">'
        f'{"".join(items) or "<li class=empty>No messages yet.</li>"}</ol>'
        f'<form method="post" action="/p/{escape(token)}" class="reply">'
        '<label for="reply">Your reply</label>'
        '<textarea id="reply" name="body" rows="3" maxlength="4000" required></textarea>'
        f'<input type="hidden" name="client_id" value="{secrets.token_hex(12)}">'
        '<button type="submit">Send</button></form>'
        f'<form method="post" action="/p/{escape(token)}/files" class="upload" '
        'enctype="multipart/form-data">'
        '<label for="file">Send a file (PDF, photo, or text)</label>'
        '<input id="file" name="file" type="file" required '
        'accept=".pdf,.png,.jpg,.jpeg,.gif,.txt,.csv">'
        f'<input type="hidden" name="client_id" value="{secrets.token_hex(12)}">'
        '<button type="submit">Send file</button></form>'
        '<p class="note">Do not share this link. It works only for you.</p>')
    return _page(request, f"Messages from {shown.org_name}", body, script=True)


async def _open(request: Request, token: str) -> portal.Opened | Response:
    """The link's state, or the page that says it cannot be opened (locked, or the same
    404 page for every link that does not work)."""
    try:
        opened = await portal.open_link(services(request), token, request.cookies.get(COOKIE))
    except portal.LinkLocked:
        return _locked(request)
    return opened if opened is not None else _not_found(request)


def _with_session(response: Response, request: Request, token: str | None) -> Response:
    if token:
        response.set_cookie(
            COOKIE, token, max_age=int(portal.ABSOLUTE.total_seconds()), path="/",
            httponly=True, samesite="strict",
            secure=services(request).settings.public_url.startswith("https://"))
    return response


@route("GET", "/p/{token}", "The patient portal behind a secure link (HTML): the DOB "
       "question, or the conversation", auth=False, tag="portal", content_type="text/html",
       errors=(404, 429))
async def portal_page(request: Request) -> Response:
    svc = services(request)
    token = request.path_params["token"]
    opened = await _open(request, token)
    if isinstance(opened, Response):
        return opened
    if opened.needs_dob:
        return _dob_form(request, token, wrong=False)
    session = await portal.session_for(svc, opened.session_token or
                                       request.cookies.get(COOKIE), link=opened.link)
    if session is None:
        return _not_found(request)
    page = _conversation(request, token, await portal.view(svc, session))
    return _with_session(page, request, opened.session_token)


@route("POST", "/p/{token}", "The portal's forms: `dob` answers the DOB question; `body` "
       "(with `client_id`) sends a reply. 303 back to the page", auth=False, tag="portal",
       form=s.PortalForm, status=303, content_type="text/html",
       errors=(402, 404, 409, 422, 429, 503))
async def portal_post(request: Request) -> Response:
    svc = services(request)
    token = request.path_params["token"]
    try:
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    except (MultiPartException, HTTPException):  # Starlette turns one into the other
        return _not_sent(request, token, "The form could not be read. Please try again.")
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    back = RedirectResponse(f"/p/{token}", status_code=303)
    try:
        if "dob" in fields:
            opened = await portal.check_dob(svc, token, fields["dob"])
            if opened is None:
                return _not_found(request)
            if opened.needs_dob:
                return _dob_form(request, token, wrong=True)
            return _with_session(back, request, opened.session_token)
        opened = await portal.open_link(svc, token, request.cookies.get(COOKIE))
    except portal.LinkLocked:
        return _locked(request)
    if opened is None:
        return _not_found(request)
    session = await portal.session_for(svc, request.cookies.get(COOKIE), link=opened.link)
    if session is None:  # the session ended: the link asks again
        return back
    body = (fields.get("body") or "").strip()
    client_id = (fields.get("client_id") or secrets.token_hex(12))[:64]
    if body:
        try:
            await portal.reply(svc, session, body[:4000], client_id)
        except ApiError as exc:
            return _not_sent(request, token, exc.message, exc.status)
    return back


@route("POST", "/p/{token}/files", "The portal's file form: multipart `file` (and "
       "`client_id`) sent to the conversation as the patient. 303 back to the page",
       auth=False, tag="portal", upload="file", status=303, content_type="text/html",
       errors=(402, 404, 409, 413, 422, 429, 503))
async def portal_file(request: Request) -> Response:
    svc = services(request)
    token = request.path_params["token"]
    opened = await _open(request, token)
    if isinstance(opened, Response):
        return opened
    back = RedirectResponse(f"/p/{token}", status_code=303)
    session = await portal.session_for(svc, request.cookies.get(COOKIE), link=opened.link)
    if session is None:  # the session ended: the link asks again, nothing is read
        return back
    try:
        await portal.send_file(svc, session, file_upload(request))
    except ApiError as exc:
        return _not_sent(request, token, exc.message, exc.status)
    return back


def _not_sent(request: Request, token: str, why: str, status: int = 422) -> Response:
    return _page(request, "Not sent", f"<h1>Not sent</h1><p>{escape(why)}</p>"
                 f'<p><a href="/p/{escape(token)}">Back</a></p>', status=status)


@route("POST", "/portal/ws-ticket", "A one-time ticket (60 s) for the portal page's "
       "websocket (`auth {ticket}`); needs the portal session cookie", auth=False,
       tag="portal", response=s.PortalTicket, errors=(401,))
async def portal_ticket(request: Request) -> Response:
    svc = services(request)
    session = await portal.session_for(svc, request.cookies.get(COOKIE))
    if session is None:
        raise portal.unauthenticated()
    return JSON({"ticket": await portal.new_ticket(svc, session),
                 "conversation_id": session.conversation_id})
