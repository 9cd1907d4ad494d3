"""HTML pages served outside the web client's own files (which `/` serves)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from server.http import route

CLIENT_DIR = Path(__file__).resolve().parent.parent.parent / "client_demo"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@route("GET", "/join/{token}", "The page behind an invitation link (HTML; its script "
       "reads the token from the path)", auth=False, tag="pages", content_type="text/html")
async def join_page(request: Request) -> Response:
    return FileResponse(CLIENT_DIR / "join.html", headers={"Content-Security-Policy": PAGE_CSP})
