"""Email through SMTP (aiosmtplib), as `SMTP_URL` says.

- `smtp://user:pass@host:port` (25): plain, for a relay on a trusted network.
- `smtp+starttls://…` (587): STARTTLS is required. aiosmtplib's default would go on in
  plain text when the server does not offer it; here the send fails instead.
- `smtps://…` (465): TLS from the first byte.
Certificates are always verified (the system's CAs, or the context given).
"""

from __future__ import annotations

import logging
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

import aiosmtplib

from channels.sender import Outbound, SendResult

log = logging.getLogger("bloomtext.mail")

DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


class SmtpSender:
    channel = "email"

    def __init__(
        self,
        url: str,
        mail_from: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 20.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError("SMTP_URL must be smtp://, smtp+starttls:// or smtps://HOST[:PORT]")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or DEFAULT_PORTS[parts.scheme]
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._from = mail_from
        self._tls = tls_context or ssl.create_default_context()
        self._timeout = timeout

    def describe(self) -> str:
        """For logs: where mail goes, without the credentials."""
        return f"{self._scheme}://{self._host}:{self._port}"

    async def send(self, message: Outbound) -> SendResult:
        mail = EmailMessage()
        mail["From"] = self._from
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        domain = self._from.rsplit("@", 1)[-1] or "localhost"
        mail["Message-ID"] = f"<{message.id}@{domain}>"
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        try:
            await aiosmtplib.send(
                mail,
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                use_tls=self._scheme == "smtps",
                start_tls=self._scheme == "smtp+starttls",  # False: never upgrade halfway
                tls_context=self._tls,
                validate_certs=True,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            permanent = all(500 <= code < 600 for code in codes)
            return SendResult("permanent" if permanent else "retryable",
                              error=f"recipient refused ({', '.join(map(str, codes))})")
        except aiosmtplib.SMTPResponseException as exc:
            kind = "permanent" if 500 <= exc.code < 600 else "retryable"
            return SendResult(kind, error=f"SMTP {exc.code}: {exc.message[:200]}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused, timeouts, TLS failures (STARTTLS missing, a certificate
            # that does not verify): the server or its set-up may be fixed; retry.
            return SendResult("retryable", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return SendResult("sent", provider_id=mail["Message-ID"])
