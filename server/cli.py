"""Command line: `python -m server serve|migrate|seed-demo|worker|plan`, each thin."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import re
import secrets
import signal
import sys

import uvicorn

from realtime.broker_memory import MemoryBroker
from realtime.hub import Hub
from server.actions import accounts, conversations, messages, orgs
from server.actions.context import Actor, Services
from server.auth import LoginLimiter
from server.config import ConfigError, Settings, load_settings
from server.errors import ApiError
from storage import db
from storage.models import User

DEMO_ADMIN = "admin@demo.bloomtext.test"


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    from server.app import create_app

    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The contract's frame limit; larger frames close with 1009.
        ws_max_size=settings.ws_max_frame_bytes,
        # Deflate off: a small compressed frame must not inflate into memory,
        # and it costs tens of KiB per connection.
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_seconds,
        ws_ping_timeout=settings.ws_ping_seconds,
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


class RedactSecretPaths(logging.Filter):
    """uvicorn's access log prints every path; invitation and portal links carry their
    secret in the path (`/join/<token>`, `/api/v1/invites/<token>`, `/p/<token>`)."""

    SECRET_PATH = re.compile(r"(/join/|/api/v1/invites/|/p/)[^/?\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.SECRET_PATH.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def serve(settings: Settings) -> None:
    config = uvicorn_config(settings)  # configures uvicorn's loggers; then the filter
    logging.getLogger("uvicorn.access").addFilter(RedactSecretPaths())
    uvicorn.Server(config).run()


async def seed_demo(settings: Settings) -> None:
    """Create a demo organisation once, and print its logins that one time."""
    await db.init_db(settings.database_url)
    try:
        if await User.exists(email=DEMO_ADMIN):
            print(f"demo organisation already present (admin: {DEMO_ADMIN})")
            return
        svc = Services(
            settings=dataclasses.replace(settings, signup_open=True),
            hub=Hub(MemoryBroker(), conversations.read_gap),
            login_limiter=LoginLimiter(5, 60),
        )
        logins = {
            DEMO_ADMIN: ("Dr Ada Lee", secrets.token_urlsafe(9)),
            "nurse@demo.bloomtext.test": ("Nurse Sam Ortiz", secrets.token_urlsafe(9)),
            "frontdesk@demo.bloomtext.test": ("Kim Front Desk", secrets.token_urlsafe(9)),
        }
        name, password = logins[DEMO_ADMIN]
        result = await accounts.signup(
            svc, org_name="Demo Clinic", name=name, email=DEMO_ADMIN, password=password
        )
        admin = await User.get(id=result["user"]["id"])
        actor = Actor(user=admin, session_id="cli")
        others = []
        for email, (member_name, member_password) in logins.items():
            if email != DEMO_ADMIN:
                others.append(await accounts.create_member(
                    svc, actor, email=email, name=member_name, role="member",
                    password=member_password,
                ))
        conversation = await conversations.create_conversation(
            svc, actor, to=[{"user_id": u["id"]} for u in others], subject="Welcome"
        )
        batcher = messages.SendBatcher(svc)
        svc.batcher = batcher
        batcher.start()
        await messages.send_message(
            svc, actor, conversation["id"], client_id="seed-welcome",
            body="Welcome to BloomText. This is the demo organisation.",
        )
        await batcher.stop()
        print("Demo organisation created. These logins are shown once:")
        for email, (member_name, member_password) in logins.items():
            print(f"  {email:32} {member_password}   ({member_name})")
    finally:
        await db.close_db()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bloomtext", description="BloomText server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve HTTP and websockets on HOST:PORT")
    commands.add_parser("migrate", help="apply pending database migrations")
    commands.add_parser("seed-demo", help="create the demo organisation (once)")
    commands.add_parser("worker", help="send the outbox (mail, SMS) without serving HTTP")
    plan = commands.add_parser("plan", help="put an organisation on a plan (billing is elsewhere)")
    plan.add_argument("org_id", metavar="ORG", help="the organisation's id (GET /api/v1/org)")
    plan.add_argument("plan", choices=orgs.PLANS)
    commands.add_parser("purge", help="remove content past each organisation's retention "
                        "(the workers do it hourly)")
    audit_cmd = commands.add_parser("audit", help="check the audit trail's hash chains")
    audit_cmd.add_argument("action", choices=["verify"])
    audit_cmd.add_argument("--org", help="one organisation's chain (default: every one)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"bloomtext: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    # tortoise logs every query with its values at DEBUG: message bodies, emails, links.
    # Never, whatever BLOOMTEXT_LOG_LEVEL says.
    logging.getLogger("tortoise").setLevel(max(logging.INFO, logging.root.level))
    if args.command == "serve":
        serve(settings)
    elif args.command == "migrate":
        asyncio.run(db.migrate(settings.database_url))
        print("migrations applied")
    elif args.command == "seed-demo":
        asyncio.run(seed_demo(settings))
    elif args.command == "worker":
        asyncio.run(run_worker(settings))
    elif args.command == "plan":
        return asyncio.run(set_plan(settings, args.org_id, args.plan))
    elif args.command == "audit":
        return asyncio.run(verify_audit(settings, args.org))
    elif args.command == "purge":
        asyncio.run(purge(settings))
    return 0


async def purge(settings: Settings) -> None:
    from server.actions.retention import purge_expired
    from storage.blobs import LocalBlobStore

    await db.init_db(settings.database_url)
    try:
        done = await purge_expired(LocalBlobStore(settings.data_dir / "blobs"))
    finally:
        await db.close_db()
    for org_id, count in done.items():
        print(f"{org_id}: {count} message(s) emptied")
    print(f"retention: {sum(done.values())} message(s) emptied in {len(done)} organisation(s)")


async def verify_audit(settings: Settings, org_id: str | None) -> int:
    """Walk the chains; exit 1 and name each broken one (and where) if any is."""
    from server.actions import audit

    await db.init_db(settings.database_url)
    try:
        checked, broken = await audit.verify(org_id)
    finally:
        await db.close_db()
    for b in broken:
        where = f" at entry {b.seq}" if b.seq is not None else ""
        print(f"BROKEN: organisation {b.org_id}{where}: {b.why}")
    print(f"{checked} audit entries checked, {len(broken)} broken chain(s)")
    return 1 if broken else 0


async def run_worker(settings: Settings) -> None:
    """The outbox worker alone, until SIGTERM or Ctrl-C (the Procfile's `worker:`)."""
    from realtime.broker import make_broker
    from realtime.hub import Hub
    from server.actions import conversations
    from server.app import make_outbox

    await db.init_db(settings.database_url)
    # Delivery states reach staff through the broker (Redis when there are several nodes;
    # with the in-process broker a separate worker's frames reach no one: sync repairs).
    broker = make_broker(settings.redis_url)
    await broker.start()
    hub = Hub(broker, conversations.read_gap)
    worker = make_outbox(settings, hub)
    loop = asyncio.get_running_loop()
    task = loop.create_task(worker.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    print("outbox worker running")
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()
        await hub.close()
        await broker.close()
        await db.close_db()


async def set_plan(settings: Settings, org_id: str, plan: str) -> int:
    await db.init_db(settings.database_url)
    try:
        org = await orgs.set_plan(org_id, plan)
    except ApiError:
        print(f"bloomtext: no organisation with id {org_id!r}", file=sys.stderr)
        return 1
    finally:
        await db.close_db()
    ends = f" until {org.trial_ends_at:%Y-%m-%d %H:%M} UTC" if plan == "trial" else ""
    print(f"{org.name} ({org.id}) is on the {plan} plan{ends}")
    return 0
