"""In-process broker: one node, no network. Delivery is synchronous and in order."""

from __future__ import annotations

from realtime.broker import Handler


class MemoryBroker:
    def __init__(self) -> None:
        self._topics: set[str] = set()
        self._handler: Handler | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._topics.clear()

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    async def publish(self, topic: str, data: bytes) -> None:
        if topic in self._topics and self._handler is not None:
            self._handler(topic, data)

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)

    async def ping(self) -> None:
        return None
