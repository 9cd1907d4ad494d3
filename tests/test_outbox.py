"""Mail through real SMTP servers (aiosmtpd: plain, STARTTLS, implicit TLS, failing on
demand) and the outbox worker: retries, failures, claims by two workers, the CLI worker."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import AuthResult

from channels.email_smtp import SmtpSender
from channels.outbox import OutboxWorker, enqueue
from channels.sender import LoggingSender, Outbound
from server.ids import utcnow
from storage import db
from storage.models import OutboxMessage
from tests.mail import Mailbox, smtp_server
from tests.services import find_free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET_LINK = "https://chat.example/join/secret-token-canary"




@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context




@pytest.fixture
def plain() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    for port in smtp_server(mailbox):
        yield mailbox, port


def only_u_at_x(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    """Accepts the login `u@x` / `p:ss` (they travel URL-quoted in SMTP_URL)."""
    ok = auth_data.login == b"u@x" and auth_data.password == b"p:ss"
    return AuthResult(success=ok)


@pytest.fixture
def starttls(server_tls: ssl.SSLContext) -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    for port in smtp_server(mailbox, tls_context=server_tls, require_starttls=True,
                            authenticator=only_u_at_x, auth_require_tls=True):
        yield mailbox, port


def invitation(to: str = "dr.lee@partner.example") -> Outbound:
    return Outbound(id="ob_test0000000001", channel="email", purpose="invitation", to=to,
                    subject="You are invited", text=f"Join: {SECRET_LINK}",
                    html=f'<p><a href="{SECRET_LINK}">Get started</a></p>')


# -- the SMTP sender -----------------------------------------------------------------


async def test_plain_smtp_sends_text_and_html(plain: tuple[Mailbox, int]) -> None:
    mailbox, port = plain
    sender = SmtpSender(f"smtp://127.0.0.1:{port}", "no-reply@clinic.example")
    result = await sender.send(invitation())
    assert result.status == "sent"
    (mail,) = mailbox.received
    assert mail["To"] == "dr.lee@partner.example" and mail["Subject"] == "You are invited"
    assert mail["Message-ID"] == "<ob_test0000000001@clinic.example>"
    kinds = [part.get_content_type() for part in mail.walk()]
    assert "text/plain" in kinds and "text/html" in kinds


async def test_starttls_is_used_and_the_certificate_verified(
    starttls: tuple[Mailbox, int], client_tls: ssl.SSLContext
) -> None:
    mailbox, port = starttls
    sender = SmtpSender(f"smtp+starttls://u%40x:p%3Ass@127.0.0.1:{port}", "a@clinic.example",
                        tls_context=client_tls)
    assert (await sender.send(invitation())).status == "sent"
    assert mailbox.tls == [True]

    # The same server, but a certificate this client does not trust: nothing is sent.
    untrusting = SmtpSender(f"smtp+starttls://u%40x:p%3Ass@127.0.0.1:{port}",
                            "a@clinic.example")
    result = await untrusting.send(invitation())
    assert result.status == "retryable" and len(mailbox.received) == 1


async def test_starttls_required_never_falls_back_to_plain_text(
    plain: tuple[Mailbox, int], client_tls: ssl.SSLContext
) -> None:
    """aiosmtplib's default would send in the clear to a server without STARTTLS."""
    mailbox, port = plain
    sender = SmtpSender(f"smtp+starttls://127.0.0.1:{port}", "a@clinic.example",
                        tls_context=client_tls)
    result = await sender.send(invitation())
    assert result.status == "retryable" and "STARTTLS" in (result.error or "").upper()
    assert mailbox.received == []


async def test_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    mailbox = Mailbox()
    for port in smtp_server(mailbox, ssl_context=server_tls):
        sender = SmtpSender(f"smtps://127.0.0.1:{port}", "a@clinic.example",
                            tls_context=client_tls)
        assert (await sender.send(invitation())).status == "sent"
    assert len(mailbox.received) == 1


async def test_refusals_are_told_apart(plain: tuple[Mailbox, int]) -> None:
    mailbox, port = plain
    sender = SmtpSender(f"smtp://127.0.0.1:{port}", "a@clinic.example")
    mailbox.fail, mailbox.code = 1, "451 4.3.0 busy"
    assert (await sender.send(invitation())).status == "retryable"
    mailbox.fail, mailbox.code = 1, "550 5.1.1 no such user"
    assert (await sender.send(invitation())).status == "permanent"
    unused = SmtpSender(f"smtp://127.0.0.1:{find_free_port()}", "a@clinic.example")
    assert (await unused.send(invitation())).status == "retryable"  # nothing listens


# -- the worker ------------------------------------------------------------------------


async def queue(n: int = 1) -> list[OutboxMessage]:
    rows = []
    for i in range(n):
        rows.append(await enqueue(
            org_id=None, channel="email", purpose="invitation", to=f"p{i}@partner.example",
            payload={"subject": f"Invitation {i}", "text": f"Join: {SECRET_LINK}",
                     "html": f"<a href='{SECRET_LINK}'>Get started</a>"},
        ))
    return rows


async def drain(worker: OutboxWorker, rounds: int = 50) -> None:
    """Run rounds until nothing is pending (retries are made due at once)."""
    for _ in range(rounds):
        await worker.run_once()
        pending = OutboxMessage.filter(status="pending")
        if not await pending.exists():
            return
        await pending.update(next_attempt_at=utcnow())
    raise AssertionError("the outbox did not drain")


async def test_worker_retries_then_sends(storage: str, plain: tuple[Mailbox, int]) -> None:
    mailbox, port = plain
    mailbox.fail = 2
    (row,) = await queue()
    worker = OutboxWorker({"email": SmtpSender(f"smtp://127.0.0.1:{port}", "a@b.example")})
    await worker.run_once()
    row = await OutboxMessage.get(id=row.id)
    assert row.status == "pending" and row.attempts == 1 and row.claimed_until is None
    assert row.next_attempt_at > utcnow() + timedelta(seconds=5)  # backed off
    await drain(worker)
    row = await OutboxMessage.get(id=row.id)
    assert row.status == "sent" and row.attempts == 3 and row.sent_at is not None
    assert row.payload is None  # the secret link is not kept once sent
    assert len(mailbox.received) == 1


async def test_retry_delays_grow_and_are_bounded() -> None:
    worker = OutboxWorker({}, base_delay=10, max_delay=300)
    delays = [worker.retry_delay(n) for n in range(1, 8)]
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24 and 32 <= delays[2] <= 48
    assert max(delays) <= 360


async def test_failures_are_final_and_reported(
    storage: str, plain: tuple[Mailbox, int]
) -> None:
    mailbox, port = plain
    reported: list[str] = []

    async def report(row: OutboxMessage) -> None:
        reported.append(row.id)

    worker = OutboxWorker({"email": SmtpSender(f"smtp://127.0.0.1:{port}", "a@b.example")},
                          max_attempts=3, on_failed=report, batch_size=1)
    refused, busy = await queue(2)
    mailbox.fail, mailbox.code = 1, "550 5.1.1 no such user"
    await worker.run_once()  # the first row is refused for good
    mailbox.fail, mailbox.code = 100, "451 4.3.0 busy"
    await drain(worker)
    rows = {r.id: r for r in await OutboxMessage.all()}
    statuses = sorted((r.status, r.attempts) for r in rows.values())
    assert statuses == [("failed", 1), ("failed", 3)]
    assert sorted(reported) == sorted([refused.id, busy.id])
    assert all(r.payload is None and r.last_error for r in rows.values())
    assert mailbox.received == []


async def test_two_workers_never_send_one_message_twice(
    storage: str, plain: tuple[Mailbox, int]
) -> None:
    mailbox, port = plain
    await queue(40)

    def worker() -> OutboxWorker:
        return OutboxWorker({"email": SmtpSender(f"smtp://127.0.0.1:{port}", "a@b.example")},
                            batch_size=5)

    first, second = worker(), worker()

    async def work(w: OutboxWorker) -> None:
        while await w.run_once():
            pass

    await asyncio.wait_for(asyncio.gather(work(first), work(second)), 60)
    ids = mailbox.message_ids()
    assert len(ids) == 40 and len(set(ids)) == 40
    assert await OutboxMessage.filter(status="sent").count() == 40


async def test_a_dead_workers_claim_is_taken_over(
    storage: str, plain: tuple[Mailbox, int]
) -> None:
    mailbox, port = plain
    (row,) = await queue()
    # A worker claimed it and died: its lease is still running, nobody else takes it.
    await OutboxMessage.filter(id=row.id).update(claimed_until=utcnow() + timedelta(minutes=1))
    worker = OutboxWorker({"email": SmtpSender(f"smtp://127.0.0.1:{port}", "a@b.example")})
    assert await worker.run_once() == 0
    await OutboxMessage.filter(id=row.id).update(claimed_until=utcnow() - timedelta(seconds=1))
    assert await worker.run_once() == 1
    assert (await OutboxMessage.get(id=row.id)).status == "sent"


async def test_without_smtp_mail_is_logged_never_its_content(
    storage: str, caplog: pytest.LogCaptureFixture
) -> None:
    (row,) = await queue()
    worker = OutboxWorker({"email": LoggingSender("email", "SMTP_URL is not set")})
    with caplog.at_level(logging.INFO):  # what an operator's log would show
        await worker.run_once()
    row = await OutboxMessage.get(id=row.id)
    assert row.status == "logged" and row.payload is None
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bloomtext"))
    assert row.id in ours and "SMTP_URL is not set" in ours, caplog.text
    assert "secret-token-canary" not in caplog.text and "partner.example" not in caplog.text


async def test_the_worker_command_sends_the_outbox(
    tmp_path: Path, plain: tuple[Mailbox, int]
) -> None:
    """`python -m server worker` (the Procfile's worker:) as a real process."""
    mailbox, port = plain
    url = f"sqlite://{tmp_path / 'worker.sqlite3'}"
    await db.migrate(url)
    await db.init_db(url)
    try:
        await queue(3)
    finally:
        await db.close_db()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOOMTEXT_")}
    env.update(DATABASE_URL=url, SMTP_URL=f"smtp://127.0.0.1:{port}",
               MAIL_FROM="no-reply@clinic.example")
    proc = subprocess.Popen([sys.executable, "-m", "server", "worker"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if len(mailbox.received) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert len(mailbox.received) == 3, output
    assert proc.returncode == 0, output
