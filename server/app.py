"""create_app(settings): the Starlette application. The lifespan wires every service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from channels.email_smtp import SmtpSender
from channels.outbox import Every, OutboxWorker
from channels.sender import LoggingSender, Sender
from channels.twilio import TwilioMedia, TwilioNumbers, TwilioSmsSender, make_twilio_client
from realtime.broker import make_broker
from realtime.hub import Hub
from server.actions import audit, conversations, delivery, externals, retention
from server.actions.access import PatientSendGate
from server.actions.context import Services
from server.actions.messages import SendBatcher
from server.auth import LoginLimiter
from server.config import Settings, load_settings
from server.errors import ApiError
from server.http import JSON, ROUTES

# Importing the route modules registers their routes.
from server.routes import admin as _admin  # noqa: F401, I001
from server.routes import api as _api  # noqa: F401
from server.routes import files as _files  # noqa: F401
from server.routes import meta as _meta  # noqa: F401
from server.routes import patients as _patients  # noqa: F401
from server.routes import portal as _portal  # noqa: F401
from server.routes import webhooks as _webhooks  # noqa: F401
from server.routes.pages import CLIENT_DIR
from server.ws import watch_sessions, ws_endpoint
from storage import db
from storage.blobs import LocalBlobStore
from storage.outage import is_outage

log = logging.getLogger("bloomtext")
DEFAULT_POSTGRES_LANES = 2
REMINDERS_EVERY = 30.0  # seconds between looks for unread notices due a reminder
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSON(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
        exc.status_code, "invalid"
    )
    error = ApiError(code, str(exc.detail), status=exc.status_code)
    return JSON(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSON({"error": {"code": "internal", "message": "internal error"}}, status_code=500)


class OutageAnswers:
    """Turns "the database is down" into 503 `unavailable` on the same connection.

    Starlette's catch-all handler answers and then re-raises, which makes uvicorn drop
    the keep-alive connection; an outage is an expected state, not a crash.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message):  # type: ignore[no-untyped-def]
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started or not is_outage(exc):
                raise
            log.warning("answered 503: %s", type(exc).__name__)
            error = ApiError("unavailable", "a dependency is unavailable; retry later")
            response = JSON(error.body(), status_code=503, headers={"Retry-After": "2"})
            await response(scope, receive, send)


class SecurityHeaders:
    """Adds conservative headers to every HTTP response (API and pages alike)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Application:
    """The ASGI entry point: `/ws` goes straight to its endpoint, the rest to Starlette.

    Every middleware and router layer stays on the stack of each open socket for its
    whole life; skipping them for /ws saves several KiB per idle connection. The
    websocket endpoint does its own origin check and error handling.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state
        self.routes = app.routes

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] in ("http", "websocket"):  # for the audit trail's entries
            audit.ORIGIN.set(audit.origin_of_scope(scope))
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            scope["app"] = self.app
            await ws_endpoint(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


def send_lanes(settings: Settings) -> int:
    """Writers per node. SQLite has one writer per database, so more lanes would only
    queue on its lock; on PostgreSQL, lanes keep a slow batch from holding back the
    conversations of the others."""
    if settings.send_lanes is not None:
        return settings.send_lanes
    return 1 if settings.database_url.startswith("sqlite") else DEFAULT_POSTGRES_LANES


def make_outbox(settings: Settings, hub: Hub) -> OutboxWorker:
    """The outbox worker with a sender per channel, as configured."""
    sms: TwilioSmsSender | None = None
    if settings.twilio_account_sid and settings.twilio_auth_token:
        sms = TwilioSmsSender(make_twilio_client(
            settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_url,
            timeout=settings.twilio_timeout))
    senders: dict[str, Sender] = {
        "email": SmtpSender(settings.smtp_url, settings.mail_from)
        if settings.smtp_url
        else LoggingSender("email", "SMTP_URL is not set"),
        "sms": sms or LoggingSender("sms", "Twilio is not configured"),
    }
    # An external invitation's mail is held until its conversation's first message; a
    # patient message's notification is built when it is sent (delivery.PatientMessages).
    blobs = LocalBlobStore(settings.data_dir / "blobs")
    return OutboxWorker(
        senders,
        before_round=[externals.release_due,
                      Every(min(REMINDERS_EVERY, settings.reminder_after_seconds / 2),
                            lambda: delivery.queue_reminders(settings)),
                      Every(retention.PURGE_EVERY, lambda: retention.purge_round(blobs))],
        handlers=[delivery.PatientMessages(settings, hub, sms_lookup=sms),
                  delivery.PatientReminders(settings)],
        lease_seconds=settings.outbox_lease_seconds,
        # Rows of a batch are sent concurrently and the next claim waits for the slowest:
        # larger batches keep Twilio's round trips overlapping.
        batch_size=50)


def make_numbers(settings: Settings) -> tuple[TwilioNumbers | None, TwilioMedia | None]:
    """Twilio's phone-number API and its MMS media, or None when the server has no Twilio
    credentials."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return None, None
    client = make_twilio_client(settings.twilio_account_sid, settings.twilio_auth_token,
                                settings.twilio_api_url, timeout=settings.twilio_timeout)
    return TwilioNumbers(client), TwilioMedia(client)  # one pooled session for both


def create_app(settings: Settings | None = None) -> Application:
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await db.init_db(settings.database_url)
        broker = make_broker(settings.redis_url)
        await broker.start()
        hub = Hub(broker, conversations.read_gap)
        svc = Services(
            settings=settings,
            hub=hub,
            login_limiter=LoginLimiter(
                settings.login_max_failures, settings.login_window_seconds,
                max_per_address=settings.login_max_failures_per_address,
                secret_key=settings.secret_key,
            ),
            blobs=LocalBlobStore(settings.data_dir / "blobs"),
        )
        svc.numbers, svc.media = make_numbers(settings)
        svc.patient_gate = PatientSendGate()
        svc.contacts = delivery.ContactCheck()
        svc.batcher = SendBatcher(svc, send_lanes(settings))
        svc.batcher.start()
        svc.audit.start()
        svc.metrics.watch_send_queue(svc.batcher.depth)
        svc.metrics.watch_hub(hub)
        app.state.services = svc
        app.state.broker = broker
        svc.outbox = make_outbox(settings, hub)
        tasks = [asyncio.get_running_loop().create_task(watch_sessions(svc))]
        if settings.outbox_worker:
            tasks.append(asyncio.get_running_loop().create_task(svc.outbox.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await svc.outbox.close()
            if svc.numbers is not None:
                await svc.numbers.aclose()
            await hub.close()
            await svc.batcher.stop()
            await svc.audit.stop()
            await broker.close()
            await db.close_db()

    routes: list[BaseRoute] = [
        Route(spec.path, spec.handler, methods=[spec.method]) for spec in ROUTES
    ]
    routes.append(WebSocketRoute("/ws", ws_endpoint))  # reached directly: see Application
    routes.append(Mount("/", app=StaticFiles(directory=CLIENT_DIR, html=True), name="client"))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.add_middleware(OutageAnswers)
    app.add_middleware(SecurityHeaders)
    return Application(app)


def app_from_environment() -> Application:
    """For `uvicorn --factory server.app:app_from_environment`."""
    return create_app(load_settings())
