"""The fan-out seam between nodes.

Delivery guarantee: at most once, in publish order per topic from one publisher, and
nothing more. A subscriber may miss messages (a broker restart, a slow node); the
database is the truth and clients repair gaps with `sync`. Never use the broker for
anything that must not be lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# Called for every message on a subscribed topic, on the event loop; must not block.
Handler = Callable[[str, bytes], None]


class Broker(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Send `data` to every node subscribed to `topic` (this one included)."""

    async def subscribe(self, topic: str) -> None:
        """Start receiving `topic` on this node; idempotent."""

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` on this node; idempotent."""

    async def ping(self) -> None:
        """Raise if the broker cannot be reached."""

    def set_handler(self, handler: Handler) -> None:
        """The one function that receives every message on this node."""


def make_broker(redis_url: str | None) -> Broker:
    """The broker for a URL scheme; the Redis one is imported only when asked for."""
    if not redis_url:
        from realtime.broker_memory import MemoryBroker

        return MemoryBroker()
    from realtime.broker_redis import RedisBroker  # type: ignore[import-not-found]

    return RedisBroker(redis_url)
