"""The websocket frame catalogue and its two codecs (JSON text, msgpack binary).

Client frames are typed msgspec Structs, validated at the edge; server frames are
plain maps built once per event and encoded once per codec, however many sockets
receive them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

SUBPROTOCOL_JSON = "bloomtext.v1.json"
SUBPROTOCOL_MSGPACK = "bloomtext.v1.msgpack"
SUBPROTOCOLS = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)

# Close codes (4000-4999 are the application's own).
CLOSE_UNAUTHENTICATED = 4001
CLOSE_RESYNC = 4008  # the socket fell too far behind: reconnect and `sync`
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_GOING_AWAY = 1001

# Integers stay within what JSON clients (doubles) and msgpack (64 bits) both carry.
MAX_INT = 2**53 - 1
Ref = (
    Annotated[str, msgspec.Meta(max_length=128)]
    | Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]
    | None
)
# Text may hold anything but NUL, which PostgreSQL cannot store in a text column.
NO_NUL = r"^[^\x00]*$"
ID_PATTERN = r"^[A-Za-z0-9_-]+$"  # what the server's ids are made of (at most 32 long)
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=ID_PATTERN)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000, pattern=NO_NUL)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]


class Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=False):
    ref: Ref = None


class Auth(Frame, tag="auth"):
    token: str | None = None
    ticket: str | None = None


# Required fields default to UNSET so that a missing one is told apart from an empty
# one and answered with `invalid` naming it, with the socket kept open.
class Send(Frame, tag="send"):
    conversation_id: Id | UnsetType = UNSET
    client_id: ClientId | UnsetType = UNSET
    body: Body | UnsetType = UNSET


class Read(Frame, tag="read"):
    conversation_id: Id | UnsetType = UNSET
    seq: Seq | UnsetType = UNSET


class Typing(Frame, tag="typing"):
    conversation_id: Id | UnsetType = UNSET


class Sync(Frame, tag="sync"):
    since: dict[Id, Seq] | UnsetType = UNSET


class Ping(Frame, tag="ping"):
    pass


ClientFrame = Auth | Send | Read | Typing | Sync | Ping
CLIENT_FRAME_TYPES = {"auth", "send", "read", "typing", "sync", "ping"}
# Fields a frame must carry.
REQUIRED_FIELDS: dict[type, tuple[str, ...]] = {
    Send: ("conversation_id", "client_id", "body"),
    Read: ("conversation_id", "seq"),
    Typing: ("conversation_id",),
    Sync: ("since",),
}


class FrameError(Exception):
    """A frame that cannot be understood; answered with an `error` frame, socket kept."""

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


class Codec:
    """Encode and decode one subprotocol's frames."""

    name: str
    binary: bool

    def __init__(self, name: str) -> None:
        self.name = name
        self.binary = name == SUBPROTOCOL_MSGPACK
        if self.binary:
            self._decoder = msgspec.msgpack.Decoder(ClientFrame)
            self._raw = msgspec.msgpack.Decoder()
            self.encode = msgspec.msgpack.Encoder().encode
        else:
            self._decoder = msgspec.json.Decoder(ClientFrame)
            self._raw = msgspec.json.Decoder()
            json_encode = msgspec.json.Encoder().encode
            # Text frames carry str: decode once here, where the hub caches the result
            # for every socket, rather than once per socket on the way out.
            self.encode = lambda frame: json_encode(frame).decode()

    def decode(self, data: bytes | str) -> ClientFrame:
        try:
            frame = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise self._explain(data, exc) from None
        except msgspec.DecodeError:
            raise FrameError("invalid", "frame is not valid " + self.kind) from None
        for field in REQUIRED_FIELDS.get(type(frame), ()):
            if getattr(frame, field) is UNSET:
                raise FrameError("invalid", f"missing field `{field}`", frame.ref)
        return frame

    def decode_raw(self, data: bytes | str) -> Any:
        """Any map, without frame validation (for tests and tools)."""
        return self._raw.decode(data)

    @property
    def kind(self) -> str:
        return "msgpack" if self.binary else "JSON"

    def _explain(self, data: bytes | str, exc: msgspec.ValidationError) -> FrameError:
        ref = None
        try:
            raw = self._raw.decode(data)
        except msgspec.DecodeError:
            return FrameError("invalid", "frame is not valid " + self.kind)
        if not isinstance(raw, dict):
            return FrameError("invalid", "a frame is an object with a `type`")
        ref = raw.get("ref")
        if not _is_ref(ref):
            ref = None
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_FRAME_TYPES:
            shown = repr(kind)[:40]
            return FrameError("invalid", f"unknown frame type {shown}", ref)
        return FrameError("invalid", str(exc), ref)


def _is_ref(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_INT <= value <= MAX_INT
    return isinstance(value, str) and len(value) <= 128


CODECS = {name: Codec(name) for name in SUBPROTOCOLS}


def error_frame(code: str, message: str, ref: Any = None) -> dict[str, Any]:
    return {"type": "error", "ref": ref, "code": code, "message": message}


# Payloads travel between nodes msgpack-encoded, whatever the clients speak.
pack = msgspec.msgpack.Encoder().encode
unpack = msgspec.msgpack.Decoder().decode
LiteralFrameType = Literal[
    "ready", "ack", "event", "receipt", "typing", "delivery", "conversation", "synced", "pong"
]
