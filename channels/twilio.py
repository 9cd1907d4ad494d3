"""Telephony through Twilio: finding and buying a clinic's number, and sending SMS.

The real `twilio` client (async, aiohttp) does the requests, auth, serialisation and
error parsing. `make_twilio_client` gives it an HTTP client that
- always applies a timeout (twilio's own async client passes none to aiohttp, so a
  request to a provider that never answers would wait for ever), and
- when `api_url` is not Twilio's, sends what would go to `*.twilio.com` to that scheme and
  host instead (a local fake in the tests, or a recording proxy).
Each request uses its own aiohttp session, closed when the request ends, so a client can
be made outside an event loop and used from any loop, and there is nothing to close.
Requests are never retried here: a repeated POST could buy a number or send an SMS twice.

Failures become `TelephonyError` (numbers) or a `SendResult` (SMS). Neither the SMS text
nor the recipient's number is ever logged or put into an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.base.version import Version
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from channels.sender import Outbound, SendResult

log = logging.getLogger("bloomtext.twilio")

TWILIO_API_URL = "https://api.twilio.com"

# Twilio error codes this module names (https://www.twilio.com/docs/api/errors).
AUTHENTICATION_FAILED = 20003
TOO_MANY_REQUESTS = 20429
INVALID_TO_NUMBER = 21211
NUMBER_NOT_AVAILABLE = 21422
INVALID_PHONE_NUMBER = 21421
TRIAL_ONE_NUMBER_ONLY = 21404
RECIPIENT_OPTED_OUT = 21610
NOT_A_MOBILE_NUMBER = 21614

_ADMIN_MESSAGES = {
    AUTHENTICATION_FAILED: "the account SID or auth token was not accepted: check the Twilio "
    "settings",
    NUMBER_NOT_AVAILABLE: "this number is no longer available: search again and pick another",
    INVALID_PHONE_NUMBER: "this is not a valid phone number",
    TRIAL_ONE_NUMBER_ONLY: "a trial account can have only one number: upgrade the Twilio "
    "account to buy another",
}

# Digits that look like a phone number, in a provider's message (21211 names the number).
_PHONE_LIKE = re.compile(r"\+?\d[\d ().-]{2,}\d")  # 4 digits or more
_COUNTRY = re.compile(r"[A-Z]{2}")


class TelephonyError(Exception):
    """A telephony request that did not succeed, told so an admin can act on it.

    `message` is a phrase about Twilio, to follow "Twilio refused: " or "Twilio is
    unavailable: " (e.g. "this number is no longer available: search again and pick
    another"); with `refused` and no better wording it is Twilio's own message.

    kind: `unavailable` (Twilio did not answer in time, could not be reached, or had a
    server error or rate limit: try again later), `refused` (Twilio answered no: its code
    says why; includes wrong credentials, code 20003), `not_configured` (no Twilio account
    is set up; raised by callers, never by this module).
    """

    def __init__(
        self,
        kind: Literal["unavailable", "refused", "not_configured"],
        message: str,
        provider_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.provider_code = provider_code

    def __repr__(self) -> str:
        return (f"TelephonyError(kind={self.kind!r}, message={self.message!r}, "
                f"provider_code={self.provider_code!r})")


@dataclass(frozen=True)
class AvailableNumber:
    number: str  # E.164, e.g. +14155550100
    locality: str | None
    region: str | None


@dataclass(frozen=True)
class OwnedNumber:
    number: str
    sid: str  # Twilio's IncomingPhoneNumber SID (PN…)


# -- the client -----------------------------------------------------------------------------


class _BoundedHttpClient(AsyncTwilioHttpClient):
    """twilio's aiohttp client with a timeout on every request and, optionally, another
    place than `*.twilio.com` to send them to."""

    def __init__(self, api_url: str, timeout: float) -> None:
        # pool_connections=False: the parent would otherwise create an aiohttp session
        # here, which needs a running loop and binds the client to it.
        super().__init__(pool_connections=False, timeout=timeout)
        # One pooled session per event loop, made on first use: a TCP (and TLS) handshake
        # per SMS would cost more than the request itself.
        self._pooled: aiohttp.ClientSession | None = None
        self._pooled_loop: asyncio.AbstractEventLoop | None = None
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the Twilio API URL must be http(s)://HOST[:PORT]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("the Twilio API URL must be only a scheme and host (and port)")
        self._target = None if api_url.rstrip("/") == TWILIO_API_URL else parts

    def _rewrite(self, url: str) -> str:
        if self._target is None:
            return url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host != "twilio.com" and not host.endswith(".twilio.com"):
            return url
        return urlunsplit((self._target.scheme, self._target.netloc, parts.path, parts.query,
                           parts.fragment))

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        seconds = timeout if timeout is not None else self.timeout
        kwargs: dict[str, Any] = {
            "method": method.upper(),
            "url": self._rewrite(url),
            "params": params,
            "data": data,
            "headers": dict(headers or {}),
            "allow_redirects": allow_redirects,
        }
        # Not twilio's log_request: it logs the query, and a lookup's query holds phone
        # numbers. The method and path name what was done; the answer's status follows.
        log.debug("twilio %s %s", kwargs["method"], urlsplit(kwargs["url"]).path)
        if auth is not None:
            kwargs["headers"]["Authorization"] = aiohttp.encode_basic_auth(auth[0], auth[1])
        kwargs["timeout"] = aiohttp.ClientTimeout(total=seconds)
        async with self._session().request(**kwargs) as answer:
            text = await answer.text()
            self.log_response(answer.status, answer)  # type: ignore[arg-type]
            return Response(answer.status, text, answer.headers)


    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._pooled is None or self._pooled.closed or self._pooled_loop is not loop:
            self._pooled = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50))
            self._pooled_loop = loop
        return self._pooled

    async def aclose(self) -> None:
        if self._pooled is not None and not self._pooled.closed:
            await self._pooled.close()
        self._pooled = None


async def close_twilio_client(client: Client) -> None:
    """Close the client's pooled connections (at shutdown)."""
    http = client.http_client
    if isinstance(http, _BoundedHttpClient):
        await http.aclose()


def make_twilio_client(
    account_sid: str, auth_token: str, api_url: str = TWILIO_API_URL, timeout: float = 10.0
) -> Client:
    """The real twilio `Client`, for its `*_async` methods only (its HTTP client is async).

    `timeout` bounds each request (connect, send, answer) in seconds."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    return Client(account_sid, auth_token, http_client=_BoundedHttpClient(api_url, timeout))


# -- failures -------------------------------------------------------------------------------

_UNREACHABLE = (aiohttp.ClientError, TimeoutError, OSError, json.JSONDecodeError)


ProviderError = TwilioRestException | TwilioServiceException


def _provider_error(exc: TwilioException) -> ProviderError:
    """Twilio's error answer as an exception with its status and code. Reading a list
    raises a bare `TwilioException("Unable to fetch page", response)` on an error answer:
    that one is parsed like every other. Any other TwilioException (a misuse of the client)
    is raised again."""
    if isinstance(exc, ProviderError):
        return exc
    if len(exc.args) >= 2 and isinstance(exc.args[1], Response):
        return Version.exception("GET", "", exc.args[1], str(exc.args[0]))
    raise exc


def _provider_failure(exc: ProviderError) -> tuple[int, int | None, str]:
    """(HTTP status, Twilio code, Twilio's message without phone numbers) of an error
    answer."""
    if isinstance(exc, TwilioServiceException):
        status, code, text = exc.status, exc.code, exc.detail or exc.title
    else:
        status, code = exc.status, exc.code
        # twilio prefixes what it did: "Unable to create record: <Twilio's message>".
        text = re.sub(r"^Unable to \w+ (record|page)(: )?", "", exc.msg or "") or exc.msg
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    text = _PHONE_LIKE.sub("<number>", str(text or f"HTTP {status}"))[:200]
    return int(status), code, text


def _telephony_error(exc: Exception, doing: str) -> TelephonyError:
    if isinstance(exc, TwilioException):
        status, code, text = _provider_failure(_provider_error(exc))
        if status >= 500 or status == 429:
            coded = f", code {code}" if code is not None and code != status else ""
            return TelephonyError("unavailable", f"it answered HTTP {status}{coded} when asked "
                                  f"to {doing}; try again later", code)
        message = _ADMIN_MESSAGES.get(code) if code is not None else None
        return TelephonyError("refused", message or text, code)
    if isinstance(exc, TimeoutError):
        return TelephonyError("unavailable", f"no answer in time to {doing}; try again later")
    if isinstance(exc, json.JSONDecodeError):
        return TelephonyError("unavailable", f"its answer could not be read when asked to "
                              f"{doing}; try again later")
    return TelephonyError("unavailable", f"could not connect ({type(exc).__name__}) to "
                          f"{doing}; try again later")


# -- numbers --------------------------------------------------------------------------------


class TwilioNumbers:
    """Search for and buy the clinic's phone number."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def aclose(self) -> None:
        await close_twilio_client(self._client)

    async def search_available(
        self, area_code: str, country: str = "US", limit: int = 20
    ) -> list[AvailableNumber]:
        """SMS-capable local numbers in `area_code`, at most `limit` (one request)."""
        if not _COUNTRY.fullmatch(country):  # it goes into the URL's path unquoted
            raise ValueError("country must be an ISO 3166 alpha-2 code, e.g. US")
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        try:
            found = await self._client.available_phone_numbers(country).local.list_async(
                area_code=area_code, sms_enabled=True, limit=limit, page_size=limit
            )
        except (TwilioException, *_UNREACHABLE) as exc:
            raise _telephony_error(exc, "search for numbers") from exc
        return [AvailableNumber(n.phone_number, n.locality or None, n.region or None)
                for n in found if n.phone_number]

    async def buy(self, number: str, sms_url: str, status_callback: str) -> OwnedNumber:
        """Buy `number` (E.164) and have Twilio post its incoming SMS to `sms_url` and
        delivery status to `status_callback`.

        `unavailable` after the request was sent (a timeout) means the purchase may or may
        not have happened: the message says to check before trying again."""
        try:
            bought = await self._client.incoming_phone_numbers.create_async(
                phone_number=number,
                sms_url=sms_url,
                sms_method="POST",
                status_callback=status_callback,
                status_callback_method="POST",
            )
        except TimeoutError as exc:
            raise TelephonyError(
                "unavailable", "no answer in time: the number may or may not have been "
                "bought; check the Twilio console before trying again") from exc
        except (TwilioException, *_UNREACHABLE) as exc:
            raise _telephony_error(exc, "buy the number") from exc
        if not bought.sid or not bought.phone_number:
            raise TelephonyError("unavailable", "its answer named no number")
        return OwnedNumber(bought.phone_number, bought.sid)


# -- MMS media ------------------------------------------------------------------------------


class TwilioMedia:
    """The media of an inbound MMS: `MediaUrlN` of the webhook, fetched with the account's
    credentials. Twilio answers with a redirect to its media store, followed without them.
    Only URLs on `*.twilio.com` are fetched (the webhook names them; nothing else is asked
    for, whatever a request says)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        http = client.http_client
        assert isinstance(http, _BoundedHttpClient)
        self._http = http

    async def aclose(self) -> None:
        await close_twilio_client(self._client)

    @staticmethod
    def is_twilio_url(url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return parts.scheme == "https" and (host == "twilio.com" or host.endswith(".twilio.com"))

    async def chunks(self, url: str, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        """The media's bytes as they arrive. TelephonyError when it cannot be fetched."""
        if not self.is_twilio_url(url):
            raise TelephonyError("refused", "not a Twilio media URL")
        timeout = aiohttp.ClientTimeout(total=self._http.timeout * 3)
        auth = aiohttp.encode_basic_auth(self._client.username, self._client.password)
        target, headers = self._http._rewrite(url), {"Authorization": auth}
        try:
            for _ in range(3):  # Twilio's redirect to its media store, and no more
                async with self._http._session().get(
                        target, headers=headers, allow_redirects=False,
                        timeout=timeout) as answer:
                    if answer.status in (301, 302, 303, 307, 308):
                        target = urljoin(target, answer.headers.get("Location", ""))
                        headers = {}
                        continue
                    if answer.status != 200:
                        raise TelephonyError(
                            "unavailable" if answer.status >= 500 else "refused",
                            f"the media answered HTTP {answer.status}")
                    async for chunk in answer.content.iter_chunked(chunk_size):
                        yield chunk
                    return
            raise TelephonyError("refused", "too many redirects for the media")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TelephonyError("unavailable", f"the media could not be fetched "
                                 f"({type(exc).__name__})") from exc


# -- SMS ------------------------------------------------------------------------------------


class TwilioSmsSender:
    """The outbox's `Sender` for `sms`: one Twilio Message per Outbound.

    sent: Twilio accepted it (status `queued`; delivery comes later by status callback).
    permanent: Twilio refused it (opted out 21610, invalid 21211, not mobile 21614, any
    other 4xx), or it has no `from_number`.
    retryable: a timeout, a connection failure, 429, 5xx, and 401 (credentials refused:
    the operator can fix them and the message goes out on a later attempt).
    A timeout after the request was sent may mean Twilio did send it: a retry can then
    send a second SMS (Twilio's Messages API has no idempotency key).
    """

    channel = "sms"

    def __init__(self, client: Client) -> None:
        self._client = client

    async def aclose(self) -> None:
        await close_twilio_client(self._client)

    async def send(self, message: Outbound) -> SendResult:
        if not message.from_number:
            return SendResult("permanent", error="no from number (the clinic has no SMS number)")
        kwargs: dict[str, Any] = {"to": message.to, "from_": message.from_number,
                                  "body": message.text}
        if message.status_callback:
            kwargs["status_callback"] = message.status_callback
        try:
            sent = await self._client.messages.create_async(**kwargs)
        except TwilioException as exc:
            status, code, text = _provider_failure(_provider_error(exc))
            error = f"twilio {code if code is not None else status}: {text}"
            if status >= 500 or status == 429 or status == 401:
                if status == 401:
                    log.warning("sms %s (%s): Twilio refused the credentials", message.id,
                                message.purpose)
                return SendResult("retryable", error=error)
            return SendResult("permanent", error=error)
        except TimeoutError:
            return SendResult("retryable", error="twilio: no answer in time")
        except _UNREACHABLE as exc:
            return SendResult("retryable", error=f"twilio: {type(exc).__name__}")
        if not sent.sid:
            return SendResult("retryable", error="twilio: the answer named no message SID")
        return SendResult("sent", provider_id=sent.sid)

    async def find_sent(self, to: str, from_number: str, since: datetime
                        ) -> list[SentSms]:
        """Messages from `from_number` to `to` that Twilio took at or after `since`
        (oldest first): after a worker died mid-send, they say whether to send again.
        Raises TelephonyError when Twilio cannot tell (then nothing is sent yet)."""
        try:
            found = await self._client.messages.list_async(to=to, from_=from_number,
                                                           limit=50, page_size=50)
        except (TwilioException, *_UNREACHABLE) as exc:
            raise _telephony_error(exc, "look up a message") from exc
        floor = since - timedelta(seconds=5)  # clocks differ a little
        return sorted(
            (SentSms(m.sid, m.body or "", m.date_created) for m in found
             if m.sid and m.date_created is not None and m.date_created >= floor),
            key=lambda m: m.created)


@dataclass(frozen=True)
class SentSms:
    sid: str
    body: str
    created: datetime
