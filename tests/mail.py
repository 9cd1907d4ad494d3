"""A real SMTP server for the tests (aiosmtpd on 127.0.0.1) and what it received."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from typing import Any

from aiosmtpd.controller import Controller

from tests.services import find_free_port


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps what it accepts; refuses the next `fail` with `code`."""

    received: list[Any] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    fail: int = 0
    code: str = "451 4.3.0 try again later"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.fail > 0:
            self.fail -= 1
            return self.code
        self.received.append(message_from_bytes(envelope.content, policy=policy.default))
        self.tls.append(session.ssl is not None)
        return "250 OK"

    def message_ids(self) -> list[str]:
        return [m["Message-ID"] for m in self.received]


def smtp_server(mailbox: Mailbox, **kwargs: Any) -> Iterator[int]:
    port = find_free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
