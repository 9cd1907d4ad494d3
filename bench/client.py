"""One websocket client of the bench: connect, authenticate, send, and account every frame."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bench.stats import Router, now_ns
from bench.util import Progress, origin_of, ws_url

JSON_PROTOCOL = "bloomtext.v1.json"
MSGPACK_PROTOCOL = "bloomtext.v1.msgpack"
BODY_PREFIX = "bench "


class Codec:
    def __init__(self, use_msgpack: bool) -> None:
        self.msgpack = use_msgpack
        self.subprotocol = MSGPACK_PROTOCOL if use_msgpack else JSON_PROTOCOL
        self._json_enc = msgspec.json.Encoder()
        self._json_dec = msgspec.json.Decoder()
        self._mp_enc = msgspec.msgpack.Encoder()
        self._mp_dec = msgspec.msgpack.Decoder()

    def encode(self, frame: dict[str, Any]) -> str | bytes:
        if self.msgpack:
            return self._mp_enc.encode(frame)
        return self._json_enc.encode(frame).decode()

    def decode(self, data: str | bytes) -> Any:
        if self.msgpack and isinstance(data, bytes | bytearray | memoryview):
            return self._mp_dec.decode(data)
        return self._json_dec.decode(data)


@dataclass
class ConnectOptions:
    codec: Codec
    origin: str | None = None  # None: the origin of the client's own URL
    open_timeout: float = 15.0
    auth_timeout: float = 15.0
    deflate: bool = False
    insecure: bool = False

    def ssl_context(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("wss://"):
            return None
        context = ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class ConnectFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ClientCounters:
    disconnects: int = 0
    unrouted_errors: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[str] = field(default_factory=Counter)


class BenchClient:
    """A connection of user `index`; frames are charged to step recorders via `router`."""

    def __init__(
        self,
        index: int,
        token: str,
        base_url: str,
        opts: ConnectOptions,
        router: Router,
        counters: ClientCounters,
    ) -> None:
        self.index = index
        self.token = token
        self.base_url = base_url
        self.opts = opts
        self.router = router
        self.counters = counters
        self.ws: ClientConnection | None = None
        self.ready: dict[str, Any] | None = None
        self.start_seq: dict[str, int] = {}  # conversation id -> last_seq in `ready`
        self.last_seq: dict[str, int] = {}  # highest seq received per conversation
        self.out_of_order = 0
        self.collect: list[dict[str, Any]] | None = None  # when set, every event is kept
        self.closed = False
        self._closing = False
        self._ref = 0
        self._pending: dict[int, str] = {}  # ref -> client_id of a send
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._out: asyncio.Queue[str | bytes] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        url = ws_url(self.base_url)
        origin = self.opts.origin or origin_of(self.base_url)
        try:
            self.ws = await connect(
                url,
                origin=origin,
                subprotocols=[self.opts.codec.subprotocol],
                compression="deflate" if self.opts.deflate else None,
                open_timeout=self.opts.open_timeout,
                ping_interval=None,  # the server pings; keep the client quiet
                close_timeout=2,
                proxy=None,
                max_queue=256,
                ssl=self.opts.ssl_context(url),
                user_agent_header="bloomtext-bench",
            )
        except InvalidStatus as exc:
            raise ConnectFailed(f"handshake HTTP {exc.response.status_code}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}"[:120]) from exc
        if self.ws.subprotocol != self.opts.codec.subprotocol:
            await self.ws.close()
            raise ConnectFailed(f"server chose subprotocol {self.ws.subprotocol!r}")
        self._tasks.append(asyncio.create_task(self._reader()))
        ready = self._waiter("ready")
        try:
            await self._send_now({"type": "auth", "token": self.token})
            async with asyncio.timeout(self.opts.auth_timeout):
                self.ready = await ready
        except TimeoutError as exc:
            await self.close()
            raise ConnectFailed("no ready after auth") from exc
        except ConnectionClosed as exc:
            raise ConnectFailed(f"closed during auth ({_close_code(exc)})") from exc
        for conv in self.ready.get("conversations") or []:
            if isinstance(conv, dict) and "id" in conv:
                seq = int(conv.get("last_seq") or 0)
                self.start_seq[str(conv["id"])] = seq
                self.last_seq[str(conv["id"])] = seq

    async def close(self) -> None:
        self._closing = True
        ws = self.ws
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # closing is best effort
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.closed = True

    # -- sending ---------------------------------------------------------------------------

    def send_message(self, conversation_id: str, client_id: str, sent_ns: int) -> bool:
        """Queue a `send` (open loop: never waits). False when the connection is gone."""
        if self.closed or self.ws is None:
            return False
        self._ref += 1
        ref = self._ref
        self._pending[ref] = client_id
        frame = {
            "type": "send",
            "ref": ref,
            "conversation_id": conversation_id,
            "client_id": client_id,
            "body": f"{BODY_PREFIX}{sent_ns}",
        }
        if self._out is None:
            self._out = asyncio.Queue()
            self._tasks.append(asyncio.create_task(self._writer()))
        self._out.put_nowait(self.opts.codec.encode(frame))
        return True

    async def sync(self, since: dict[str, int], timeout: float) -> dict[str, Any]:
        """Send `sync`, following `more` until everything is in; returns the last `synced`."""
        since = dict(since)
        async with asyncio.timeout(timeout):
            while True:
                waiter = self._waiter("synced")
                self._ref += 1
                await self._send_now({"type": "sync", "ref": self._ref, "since": since})
                synced = await waiter
                more = [str(c) for c in synced.get("more") or []]
                if not more:
                    return synced
                since = {conv: self.last_seq.get(conv, since.get(conv, 0)) for conv in more}

    async def ping(self, timeout: float) -> bool:
        if self.closed or self.ws is None:
            return False
        try:
            waiter = await self.ws.ping()
            async with asyncio.timeout(timeout):
                await waiter
        except (ConnectionClosed, TimeoutError):
            return False
        return True

    async def _send_now(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(self.opts.codec.encode(frame))

    async def _writer(self) -> None:
        assert self.ws is not None and self._out is not None
        ws, queue = self.ws, self._out
        try:
            while True:
                await ws.send(await queue.get())
        except ConnectionClosed:
            return

    # -- receiving -------------------------------------------------------------------------

    def _waiter(self, frame_type: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[frame_type] = future
        return future

    async def _reader(self) -> None:
        assert self.ws is not None
        ws = self.ws
        decode = self.opts.codec.decode
        try:
            while True:
                data = await ws.recv(decode=False)
                t = now_ns()
                try:
                    frame = decode(data)
                except msgspec.DecodeError:
                    self.counters.unrouted_errors["undecodable_frame"] += 1
                    continue
                if isinstance(frame, dict):
                    self._dispatch(frame, t)
        except ConnectionClosed as exc:
            if not self._closing and self.ready is not None:
                self.counters.disconnects += 1
                self.counters.close_codes[_close_code(exc)] += 1
            for future in self._waiters.values():
                if not future.done():
                    future.set_exception(exc)
        finally:
            self.closed = True

    def _dispatch(self, frame: dict[str, Any], t: int) -> None:
        kind = frame.get("type")
        if kind == "event":
            self._on_event(frame.get("event"), t)
        elif kind == "ack":
            event = frame.get("event")
            client_id = self._pending.pop(frame.get("ref"), None)
            if client_id is None and isinstance(event, dict):
                client_id = event.get("client_id")  # an ack without our ref
            if isinstance(client_id, str) and isinstance(event, dict):
                recorder = self.router.find(client_id)
                if recorder is not None:
                    recorder.on_ack(client_id, event, t)
        elif kind == "delivery":  # the SMS of a message in a patient conversation
            self.router.on_delivery(
                str(frame.get("conversation_id")),
                str(frame.get("message_id")),
                str(frame.get("status")),
                t,
            )
        elif kind == "error":
            code = str(frame.get("code") or "unknown")
            client_id = self._pending.pop(frame.get("ref"), None)
            recorder = self.router.find(client_id)
            if recorder is not None:
                recorder.on_error(client_id, code)
            else:
                self.counters.unrouted_errors[code] += 1
        elif isinstance(kind, str):
            future = self._waiters.pop(kind, None)
            if future is not None and not future.done():
                future.set_result(frame)

    def _on_event(self, event: Any, t: int) -> None:
        if not isinstance(event, dict):
            return
        conv = str(event.get("conversation_id"))
        seq = event.get("seq")
        if isinstance(seq, int):
            last = self.last_seq.get(conv)
            if last is not None and seq != last + 1 and seq > last:
                self.out_of_order += 1  # a gap: something before `seq` has not arrived
            if last is None or seq > last:
                self.last_seq[conv] = seq
        if self.collect is not None:
            self.collect.append(event)
        recorder = self.router.find(event.get("client_id"))
        if recorder is None:
            self.router.foreign_events += 1
            return
        sent_ns: int | None = None
        body = event.get("body")
        if isinstance(body, str) and body.startswith(BODY_PREFIX):
            try:
                sent_ns = int(body[len(BODY_PREFIX) :])
            except ValueError:
                sent_ns = None
        recorder.on_event(self.index, event, sent_ns, t)


def _close_code(exc: ConnectionClosed) -> str:
    if exc.rcvd is not None:
        return str(exc.rcvd.code)
    return "no close frame"


async def connect_all(
    clients: list[BenchClient], concurrency: int, label: str = "connections"
) -> Counter[str]:
    """Connect and authenticate `clients`, `concurrency` at a time; returns failure reasons."""
    sem = asyncio.Semaphore(concurrency)
    failures: Counter[str] = Counter()
    progress = Progress(label, len(clients))

    async def one(client: BenchClient) -> None:
        async with sem:
            try:
                await client.connect()
            except ConnectFailed as exc:
                failures[exc.reason] += 1
                client.closed = True
            except Exception as exc:  # count it with the others; never abort the batch
                failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                client.closed = True
        progress.advance(extra=f"failed {sum(failures.values())}" if failures else "")

    await asyncio.gather(*(one(client) for client in clients))
    return failures


async def close_all(clients: list[BenchClient], concurrency: int = 500) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(client: BenchClient) -> None:
        async with sem:
            await client.close()

    await asyncio.gather(*(one(client) for client in clients))
