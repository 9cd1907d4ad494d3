"""A local fake of Twilio's REST API (2010-04-01), for the real `twilio` client to talk to.

It serves, with Twilio's paths and JSON shapes and HTTP Basic auth:
- GET  /2010-04-01/Accounts/{Sid}/AvailablePhoneNumbers/{Country}/Local.json?AreaCode=…
- POST /2010-04-01/Accounts/{Sid}/IncomingPhoneNumbers.json   (buys an available number)
- POST /2010-04-01/Accounts/{Sid}/Messages.json               (accepts an SMS: 201 queued)
- GET  /2010-04-01/Accounts/{Sid}/Messages.json?To=…&From=…   (what it accepted, newest first)
- GET  /2010-04-01/Accounts/{Sid}/Messages/{MM}/Media/{ME}    (an inbound MMS's media,
  `add_media`: like Twilio, a redirect to a media store that needs no credentials)
and Twilio's error JSON (`{"code", "message", "more_info", "status"}`) otherwise.

Use:

    with FakeTwilio() as fake:        # uvicorn in a background thread on 127.0.0.1
        client = make_twilio_client(fake.account_sid, fake.auth_token, api_url=fake.url)
        fake.fail_next("buy", 400, 21422, "PhoneNumber requested is not available")
        fake.hang_next("messages", 5)
        ...
        fake.messages, fake.numbers_bought    # what it accepted, in order

Like Twilio it refuses an SMS whose From is not a number of the account (bought here, or
given with `add_owned`), whose To is not E.164 or has opted out (`opt_out`). Controls
and records are thread-safe: the server runs on its own thread and event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.services import find_free_port

KINDS = ("available", "buy", "messages", "list", "media")
API = "/2010-04-01"
START_SECONDS = 10.0
STOP_SECONDS = 10.0
_E164 = re.compile(r"\+[1-9]\d{6,14}")

DEFAULT_AVAILABLE: dict[str, list[tuple[str, str, str]]] = {
    "415": [("+14155550101", "San Francisco", "CA"), ("+14155550102", "San Francisco", "CA"),
            ("+14155550103", "Sausalito", "CA")],
    "212": [("+12125550101", "New York", "NY"), ("+12125550102", "New York", "NY")],
}


@dataclass(frozen=True)
class FakeNumber:
    phone_number: str
    locality: str | None = None
    region: str | None = None
    iso_country: str = "US"


@dataclass(frozen=True)
class BoughtNumber:
    sid: str
    phone_number: str
    sms_url: str | None
    sms_method: str | None
    status_callback: str | None
    status_callback_method: str | None
    form: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class ReceivedMessage:
    sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None
    form: dict[str, str] = field(repr=False)
    created: datetime = field(default_factory=lambda: datetime.now(UTC), repr=False)


@dataclass(frozen=True)
class _Failure:
    status: int
    code: int | None
    message: str


def _twilio_date(when: datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S +0000")  # RFC 2822, as Twilio writes it


def _error(status: int, code: int | None, message: str) -> Response:
    if code is None:  # not Twilio's JSON: what a proxy or a broken gateway might answer
        return PlainTextResponse(message, status_code=status)
    return JSONResponse({"code": code, "message": message,
                         "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status}, status_code=status)


def _friendly(number: str) -> str:
    if number.startswith("+1") and len(number) == 12:
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


class FakeTwilio:
    """Start with `start()` or `with FakeTwilio() as fake:`; `url` is its base URL."""

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        available: dict[str, Iterable[tuple[str, str | None, str | None]]] | None = None,
    ) -> None:
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.port = find_free_port()
        self._lock = threading.RLock()  # re-entrant: one slip must not hang the server
        self._available: dict[str, list[FakeNumber]] = {}
        for area, numbers in (DEFAULT_AVAILABLE if available is None else available).items():
            self.set_available(area, numbers)
        self._owned: set[str] = set()
        self._opted_out: set[str] = set()
        self._bought: list[BoughtNumber] = []
        self._messages: list[ReceivedMessage] = []
        self._requests: list[tuple[str, str]] = []  # (kind, answer status)
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._hangs: dict[str, deque[float]] = defaultdict(deque)
        self._closing = threading.Event()
        self._media: dict[str, tuple[bytes, str]] = {}  # media SID -> (bytes, content type)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeTwilio:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._closing.clear()
        self._thread = threading.Thread(target=self._server.run, name="fake-twilio",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the fake Twilio on port {self.port} did not start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fake Twilio on port {self.port} not ready after "
                                   f"{START_SECONDS:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._closing.set()  # ends hanging requests at once
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(STOP_SECONDS)
        if thread.is_alive():
            server.force_exit = True
            thread.join(STOP_SECONDS)
            if thread.is_alive():
                raise RuntimeError("the fake Twilio did not stop")

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------

    def set_available(
        self, area_code: str, numbers: Iterable[tuple[str, str | None, str | None]]
    ) -> None:
        """Replace the numbers offered in `area_code`: (E.164, locality, region)."""
        with self._lock:
            self._available[area_code] = [FakeNumber(n, loc, reg) for n, loc, reg in numbers]

    def add_owned(self, number: str) -> None:
        """A number the account already has (it may send SMS from it)."""
        with self._lock:
            self._owned.add(number)

    def opt_out(self, number: str) -> None:
        """The recipient texted STOP: messages to it are refused with 21610."""
        with self._lock:
            self._opted_out.add(number)

    def fail_next(self, kind: str, status: int, code: int | None, message: str) -> None:
        """The next request of `kind` answers this error (Twilio's JSON; plain text when
        `code` is None). Calls queue up: two calls fail the next two requests."""
        self._check_kind(kind)
        with self._lock:
            self._failures[kind].append(_Failure(status, code, message))

    def hang_next(self, kind: str, seconds: float) -> None:
        """The next request of `kind` waits `seconds` (or until `stop()`), then is handled
        as usual: like Twilio doing the work but answering too late."""
        self._check_kind(kind)
        with self._lock:
            self._hangs[kind].append(seconds)

    def add_media(self, message_sid: str, data: bytes, content_type: str) -> str:
        """Media of an inbound MMS; its URL as Twilio names it in the webhook
        (`https://api.twilio.com/...`: the client's api_url sends it here)."""
        media_sid = "ME" + secrets.token_hex(16)
        with self._lock:
            self._media[media_sid] = (data, content_type)
        return (f"https://api.twilio.com{API}/Accounts/{self.account_sid}/Messages/"
                f"{message_sid}/Media/{media_sid}")

    @property
    def numbers_bought(self) -> list[BoughtNumber]:
        with self._lock:
            return list(self._bought)

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The SMS accepted (answered 201), in order; refused ones are not here."""
        with self._lock:
            return list(self._messages)

    def requests(self, kind: str | None = None) -> list[tuple[str, str]]:
        """(kind, HTTP status answered) of every request answered, refused ones too."""
        with self._lock:
            return [r for r in self._requests if kind is None or r[0] == kind]

    def available(self, area_code: str) -> list[str]:
        with self._lock:
            return [n.phone_number for n in self._available.get(area_code, [])]

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")

    # -- the API -------------------------------------------------------------------------

    def _app(self) -> Starlette:
        account = API + "/Accounts/{account_sid}"
        routes = [
            Route(account + "/AvailablePhoneNumbers/{country}/Local.json", self._search,
                  methods=["GET"]),
            Route(account + "/IncomingPhoneNumbers.json", self._buy, methods=["POST"]),
            Route(account + "/Messages.json", self._send, methods=["POST"]),
            Route(account + "/Messages.json", self._list_messages, methods=["GET"]),
            Route(account + "/Messages/{message_sid}/Media/{media_sid}", self._media_redirect,
                  methods=["GET"]),
            Route("/media-store/{media_sid}", self._media_store, methods=["GET"]),
        ]

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            return _error(exc.status_code, 20000 + exc.status_code,
                          f"The requested resource {request.url.path} was not found"
                          if exc.status_code == 404 else str(exc.detail))

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    async def _guard(self, kind: str, request: Request) -> Response | None:
        """Hang, auth and injected failures, in that order; None to go on."""
        with self._lock:
            hang = self._hangs[kind].popleft() if self._hangs[kind] else None
        if hang is not None:
            deadline = time.monotonic() + hang
            while time.monotonic() < deadline and not self._closing.is_set():
                await asyncio.sleep(0.02)
        if not self._authorized(request):
            return _error(401, 20003, "Authentication Error - invalid username")
        if request.path_params["account_sid"] != self.account_sid:
            return _error(404, 20404, f"The requested resource {request.url.path} was not "
                          "found")
        with self._lock:
            failure = self._failures[kind].popleft() if self._failures[kind] else None
        if failure is not None:
            return _error(failure.status, failure.code, failure.message)
        return None

    def _authorized(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.account_sid.encode()) and \
            hmac.compare_digest(password.encode(), self.auth_token.encode())

    def _answer(self, kind: str, response: Response) -> Response:
        with self._lock:
            self._requests.append((kind, str(response.status_code)))
        return response

    async def _media_redirect(self, request: Request) -> Response:
        refused = await self._guard("media", request)
        if refused is not None:
            return self._answer("media", refused)
        media_sid = request.path_params["media_sid"]
        with self._lock:
            known = media_sid in self._media
        if not known:
            return self._answer("media", _error(404, 20404, "The requested resource was not "
                                                "found"))
        return self._answer("media", Response(status_code=302, headers={
            "Location": f"{self.url}/media-store/{media_sid}"}))

    async def _media_store(self, request: Request) -> Response:
        if "authorization" in request.headers:  # Twilio's credentials never go this far
            return PlainTextResponse("credentials sent to the media store", status_code=400)
        with self._lock:
            found = self._media.get(request.path_params["media_sid"])
        if found is None:
            return PlainTextResponse("no such media", status_code=404)
        return Response(found[0], media_type=found[1])

    async def _search(self, request: Request) -> Response:
        refused = await self._guard("available", request)
        if refused is not None:
            return self._answer("available", refused)
        country = request.path_params["country"]
        query = request.query_params
        try:
            page_size = int(query.get("PageSize", "50"))
        except ValueError:
            return self._answer("available", _error(400, 20001, "Invalid PageSize"))
        area = query.get("AreaCode")
        with self._lock:
            pool = ([n for a, ns in self._available.items() for n in ns] if area is None
                    else list(self._available.get(area, [])))
        found = [n for n in pool if n.iso_country == country][:page_size]
        uri = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        body = {
            "available_phone_numbers": [self._available_json(n, area) for n in found],
            "end": max(len(found) - 1, 0), "first_page_uri": uri, "next_page_uri": None,
            "page": 0, "page_size": page_size, "previous_page_uri": None, "start": 0,
            "uri": uri,
        }
        return self._answer("available", JSONResponse(body))

    @staticmethod
    def _available_json(n: FakeNumber, area: str | None) -> dict[str, Any]:
        return {
            "friendly_name": _friendly(n.phone_number), "phone_number": n.phone_number,
            "lata": "722", "rate_center": (n.locality or "").upper()[:10] or None,
            "latitude": "37.780000", "longitude": "-122.400000", "locality": n.locality,
            "region": n.region, "postal_code": "94105", "iso_country": n.iso_country,
            "address_requirements": "none", "beta": False,
            "capabilities": {"voice": True, "SMS": True, "MMS": True, "fax": False},
        }

    async def _buy(self, request: Request) -> Response:
        refused = await self._guard("buy", request)
        if refused is not None:
            return self._answer("buy", refused)
        form = {k: str(v) for k, v in (await request.form()).items()}
        number = form.get("PhoneNumber", "")
        if not number:
            return self._answer("buy", _error(400, 21452, "No phone number provided"))
        with self._lock:
            offered = next(((area, n) for area, ns in self._available.items() for n in ns
                            if n.phone_number == number), None)
            if offered is not None:
                area, fake_number = offered
                self._available[area].remove(fake_number)
                self._owned.add(number)
                bought = BoughtNumber(
                    sid="PN" + secrets.token_hex(16), phone_number=number,
                    sms_url=form.get("SmsUrl"), sms_method=form.get("SmsMethod", "POST"),
                    status_callback=form.get("StatusCallback"),
                    status_callback_method=form.get("StatusCallbackMethod", "POST"), form=form)
                self._bought.append(bought)
        if offered is None:
            return self._answer("buy", _error(400, 21422, "PhoneNumber requested is not available"))
        now = _twilio_date(datetime.now(UTC))
        body = {
            "account_sid": self.account_sid, "address_requirements": "none",
            "address_sid": None, "api_version": "2010-04-01", "beta": False,
            "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
            "date_created": now, "date_updated": now,
            "friendly_name": _friendly(number), "identity_sid": None, "origin": "twilio",
            "phone_number": number, "sid": bought.sid, "sms_application_sid": "",
            "sms_fallback_method": "POST", "sms_fallback_url": "",
            "sms_method": bought.sms_method, "sms_url": bought.sms_url or "",
            "status_callback": bought.status_callback or "",
            "status_callback_method": bought.status_callback_method,
            "trunk_sid": None, "voice_application_sid": "", "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST", "voice_fallback_url": None,
            "voice_method": "POST", "voice_url": None, "emergency_status": "Inactive",
            "emergency_address_sid": None, "bundle_sid": None, "status": "in-use",
            "uri": f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{bought.sid}.json",
        }
        return self._answer("buy", JSONResponse(body, status_code=201))

    async def _send(self, request: Request) -> Response:
        refused = await self._guard("messages", request)
        if refused is not None:
            return self._answer("messages", refused)
        form = {k: str(v) for k, v in (await request.form()).items()}
        to, from_, body_text = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        with self._lock:
            owned, opted_out = from_ in self._owned, to in self._opted_out
        problem = (
            (21604, "A 'To' phone number is required.") if not to
            else (21211, f"The 'To' number {to} is not a valid phone number.")
            if not _E164.fullmatch(to)
            else (21603, "A 'From' phone number is required.") if not from_
            else (21606, f"The From phone number {from_} is not a valid, SMS-capable inbound "
                  "phone number or short code for your account.") if not owned
            else (21602, "Message body is required.") if not body_text
            else (21610, "Attempt to send to unsubscribed recipient") if opted_out
            else None
        )
        if problem is not None:
            return self._answer("messages", _error(400, *problem))
        message = ReceivedMessage(sid="SM" + secrets.token_hex(16), to=to, from_=from_,
                                  body=body_text, status_callback=form.get("StatusCallback"),
                                  form=form, created=datetime.now(UTC))
        with self._lock:
            self._messages.append(message)
        return self._answer("messages", JSONResponse(self._message_json(message),
                                                     status_code=201))

    def _message_json(self, message: ReceivedMessage) -> dict[str, Any]:
        when = _twilio_date(message.created)
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01",
            "body": message.body, "date_created": when, "date_sent": None,
            "date_updated": when, "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": message.from_, "messaging_service_sid": None,
            "num_media": "0", "num_segments": "1", "price": None, "price_unit": "USD",
            "sid": message.sid, "status": "queued", "to": message.to,
            "subresource_uris": {"media": f"{API}/Accounts/{self.account_sid}/Messages/"
                                          f"{message.sid}/Media.json"},
            "uri": f"{API}/Accounts/{self.account_sid}/Messages/{message.sid}.json",
        }

    async def _list_messages(self, request: Request) -> Response:
        """Messages, newest first, filtered by `To` and `From` as Twilio does."""
        refused = await self._guard("list", request)
        if refused is not None:
            return self._answer("list", refused)
        to, from_ = request.query_params.get("To"), request.query_params.get("From")
        size = min(int(request.query_params.get("PageSize", "50")), 1000)
        with self._lock:
            found = [m for m in reversed(self._messages)
                     if (to is None or m.to == to) and (from_ is None or m.from_ == from_)]
        uri = f"{API}/Accounts/{self.account_sid}/Messages.json"
        return self._answer("list", JSONResponse({
            "messages": [self._message_json(m) for m in found[:size]],
            "page": 0, "page_size": size, "first_page_uri": uri, "next_page_uri": None,
            "previous_page_uri": None, "uri": uri, "start": 0, "end": len(found[:size]),
        }))
