"""Create (or reuse from a JSON cache) the organisation, users and conversations of a run.

Client `i` is user `i`; it is a member of conversation `i % rooms`. The conversation is
created by its first member, so every participant is a bench client. Admins only manage
their organisation and never connect. When an organisation reaches its plan's seat limit,
the bench starts its trial once, and then opens another organisation (and starts its
trial) for the rooms that did not fit (a conversation never spans two organisations).

With `patient_rooms` (a fraction), that share of the rooms are patient conversations: the
room's members are the team of a phone number of its own (bought through the server's
Twilio), and its first member starts a secure SMS conversation with a patient on that
number. Every staff message there is also sent to the patient by the server's outbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.api import Api, ApiError
from bench.util import OUT_DIR_NAME, BenchError, Progress, host_slug, log

STATE_VERSION = 1
# Patient rooms buy their numbers in this area code (`python -m bench fake-twilio` offers
# them there) and talk to their patient over this channel.
NUMBER_AREA_CODE = "415"
PATIENT_CHANNEL = "secure_sms"


@dataclass
class UserRec:
    id: str
    email: str
    name: str
    token: str
    org: int


@dataclass
class OrgRec:
    id: str
    name: str
    admin_id: str
    admin_email: str
    admin_token: str
    trial_tried: bool = False


@dataclass
class RoomRec:
    id: str
    members: list[int]
    patient_id: str | None = None  # set for a patient conversation
    phone_number: str | None = None  # its number, owned by a team of exactly `members`


@dataclass
class BenchState:
    base_url: str
    clients: int
    rooms: int
    suffix: str
    password: str
    created_at: float
    patient_rooms: float = 0.0  # the share of rooms that are patient conversations
    orgs: list[OrgRec] = field(default_factory=list)
    users: list[UserRec] = field(default_factory=list)
    conversations: list[RoomRec] = field(default_factory=list)
    version: int = STATE_VERSION

    def room_of(self, client: int) -> int:
        return client % self.rooms

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchState:
        state = cls(
            base_url=data["base_url"],
            clients=int(data["clients"]),
            rooms=int(data["rooms"]),
            suffix=data["suffix"],
            password=data["password"],
            created_at=float(data["created_at"]),
            patient_rooms=float(data.get("patient_rooms", 0.0)),  # older caches: none
            version=int(data["version"]),
        )
        state.orgs = [OrgRec(**org) for org in data["orgs"]]
        state.users = [UserRec(**user) for user in data["users"]]
        state.conversations = [RoomRec(**room) for room in data["conversations"]]
        return state


@dataclass
class SetupOptions:
    clients: int
    rooms: int
    state_path: Path | None = None
    concurrency: int = 8
    fresh: bool = False
    admin_email: str | None = None
    admin_password: str | None = None
    patient_rooms: float = 0.0


def default_state_path(
    base_url: str, clients: int, rooms: int, patient_rooms: float = 0.0
) -> Path:
    """Without patient rooms the name it always had, so that existing caches still count."""
    out = Path(__file__).resolve().parent / OUT_DIR_NAME
    mix = f"-p{patient_rooms:g}" if patient_rooms > 0 else ""
    return out / f"state-{host_slug(base_url)}-{clients}-{rooms}{mix}.json"


def members_of_room(room: int, clients: int, rooms: int) -> list[int]:
    return list(range(room, clients, rooms))


def patient_room_indices(rooms: int, fraction: float) -> set[int]:
    """round(fraction x rooms) rooms (at least one when fraction > 0), spread evenly."""
    if fraction <= 0:
        return set()
    count = min(rooms, max(1, round(fraction * rooms)))
    return {i * rooms // count for i in range(count)}


def patient_phone(room: int) -> str:
    """A valid US mobile number per room (a fake Twilio accepts any E.164 number)."""
    return f"+1628555{room % 10_000:04d}"


async def ensure_state(api: Api, opts: SetupOptions) -> BenchState:
    """Load the cached state when it still works on the server; create it otherwise."""
    if opts.rooms < 1 or opts.clients < 2 * opts.rooms:
        raise BenchError(
            "every conversation needs at least 2 members: use --clients >= 2 x --rooms "
            "(and --users >= 2 for idle)"
        )
    path = opts.state_path or default_state_path(
        api.base_url, opts.clients, opts.rooms, opts.patient_rooms
    )
    if not opts.fresh and path.exists():
        state = _load(path)
        if state is not None and _matches(state, opts):
            if await _refresh_tokens(api, state, opts.concurrency) and await _patients_allowed(
                api, state
            ):
                _save(path, state)
                log(
                    f"setup: reusing {path} ({len(state.users)} users, "
                    f"{len(state.conversations)} conversations)"
                )
                return state
            log(f"setup: {path} no longer matches the server; creating a new setup")
        else:
            log(f"setup: ignoring {path} (different parameters or unreadable)")
    state = await _create(api, opts)
    _save(path, state)
    log(f"setup: saved {path}")
    return state


# -- cache -----------------------------------------------------------------------------------


def _load(path: Path) -> BenchState | None:
    try:
        return BenchState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"setup: cannot read {path}: {exc}")
        return None


def _save(path: Path, state: BenchState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=1))
    os.chmod(tmp, 0o600)  # it holds bearer tokens and the bench password
    tmp.replace(path)


def _matches(state: BenchState, opts: SetupOptions) -> bool:
    return (
        state.version == STATE_VERSION
        and state.clients == opts.clients
        and state.rooms == opts.rooms
        and state.patient_rooms == opts.patient_rooms
        and len(state.users) == opts.clients
        and len(state.conversations) == opts.rooms
    )


async def _refresh_tokens(api: Api, state: BenchState, concurrency: int) -> bool:
    """Check every token with `GET /me`; log in again where it answers 401.

    False when the first user cannot log in any more (the database was reset)."""
    first = state.users[0]
    relogged = 0
    if await api.me(first.token) != 200:
        try:
            first.token = (await api.login(first.email, state.password))["token"]
        except ApiError as exc:
            if exc.status in (401, 404):
                return False
            raise
        relogged += 1
    sem = asyncio.Semaphore(max(concurrency * 4, 8))
    progress = Progress("checking cached tokens", len(state.users) - 1, every=2.0)

    async def check(user: UserRec) -> None:
        nonlocal relogged
        async with sem:
            status = await api.me(user.token)
            if status == 401:
                user.token = (await api.login(user.email, state.password))["token"]
                relogged += 1
            elif status != 200:
                raise BenchError(f"GET /api/v1/me answered {status} for a cached user")
        progress.advance()

    try:
        await asyncio.gather(*(check(user) for user in state.users[1:]))
    except ApiError as exc:
        if exc.status == 401:
            return False
        raise
    if relogged:
        log(f"setup: logged {relogged} user(s) in again (their tokens no longer worked)")
    return True


async def _patients_allowed(api: Api, state: BenchState) -> bool:
    """A cached patient conversation still answers: it is 402 once the trial has run out."""
    room = next((r for r in state.conversations if r.patient_id is not None), None)
    if room is None:
        return True
    status = await api.conversation_status(state.users[room.members[0]].token, room.id)
    if status != 200:
        log(f"setup: the cached patient conversation {room.id} answers {status}")
    return status == 200


# -- creation --------------------------------------------------------------------------------


@dataclass
class _Seats:
    """What the bench knows of one organisation's seats."""

    limit: int | None  # from `GET /api/v1/org`; None: no limit, or not reported
    used_at_open: int
    reserved: int = 0  # seats promised to rooms (created or about to be)
    created: int = 0
    closed: bool = False  # answered seat_limit_reached: no new rooms

    def free(self, learned: int | None) -> int | None:
        if self.closed:
            return 0
        if self.limit is not None:
            return self.limit - self.used_at_open - self.reserved
        return None if learned is None else learned - self.reserved


class _Creator:
    """Creates users room by room; a room reserves its seats in an organisation first.

    Reserving keeps concurrent rooms from each taking part of the last seats and none
    finishing. When the server does not report its seat limit, the first
    `seat_limit_reached` teaches the bench how many members an organisation takes."""

    MAX_ATTEMPTS_PER_ROOM = 3

    def __init__(self, api: Api, opts: SetupOptions) -> None:
        self.api = api
        self.opts = opts
        self.state = BenchState(
            base_url=api.base_url,
            clients=opts.clients,
            rooms=opts.rooms,
            suffix=secrets.token_hex(4),
            password="Bench-" + secrets.token_urlsafe(15) + "-9a",
            created_at=time.time(),
        )
        self.users: list[UserRec | None] = [None] * opts.clients
        self.rooms: list[RoomRec | None] = [None] * opts.rooms
        self.seats: list[_Seats] = []  # per organisation
        self.learned: int | None = None  # members an organisation took before a 409
        self.sem = asyncio.Semaphore(opts.concurrency)
        self.lock = asyncio.Lock()
        self.user_progress = Progress("users", opts.clients)
        self.room_progress = Progress("conversations", opts.rooms, every=5.0)
        self.patient_rooms = patient_room_indices(opts.rooms, opts.patient_rooms)
        self.state.patient_rooms = opts.patient_rooms
        self.numbers = _NumberPool(api)

    async def run(self) -> BenchState:
        log(
            f"setup: creating {self.opts.clients} users and {self.opts.rooms} conversations "
            f"({len(self.patient_rooms)} with a patient) on {self.api.base_url} (concurrency "
            f"{self.opts.concurrency}; each user costs a password hash and a login)"
        )
        async with self.lock:
            await self._new_org()
        await asyncio.gather(*(self._room(r) for r in range(self.opts.rooms)))
        self.state.users = [user for user in self.users if user is not None]
        self.state.conversations = [room for room in self.rooms if room is not None]
        return self.state

    # -- organisations and seats -------------------------------------------------------------

    async def _new_org(self) -> None:
        k = len(self.state.orgs)
        s = self.state.suffix
        if k == 0 and self.opts.admin_email:
            data = await self.api.login(self.opts.admin_email, self.opts.admin_password or "")
            user = data["user"]
            org_id = str(user.get("org_id", ""))
            name = "(existing organisation)"
        elif k > 0 and self.opts.admin_email:
            raise BenchError(
                "the organisation has no seats left and --admin-email was given, so the bench "
                "cannot open another one; use fewer --clients or a larger plan"
            )
        else:
            name = f"BloomText bench {s} #{k}"
            email = f"bench-{s}-o{k}-admin@example.com"
            data = await self.api.signup(name, f"Bench admin {k}", email, self.state.password)
            user, org_id = data["user"], str(data["org"].get("id", ""))
        org = OrgRec(
            id=org_id,
            name=name,
            admin_id=str(user["id"]),
            admin_email=str(user.get("email", self.opts.admin_email or "")),
            admin_token=str(data["token"]),
        )
        self.state.orgs.append(org)
        limit, used = await self.api.seats(org.admin_token)
        self.seats.append(_Seats(limit=limit, used_at_open=used))
        if k > 0:
            log(f"setup: opened organisation #{k} (free seats: {self._free_text(k)})")
        if self.patient_rooms:  # patient features need the trial (or a paid plan)
            await self._try_trial(k)

    def _free_text(self, k: int) -> str:
        free = self.seats[k].free(self.learned)
        return "no limit known" if free is None else str(free)

    def _fits(self, k: int, seats: int) -> bool:
        free = self.seats[k].free(self.learned)
        return free is None or free >= seats

    async def _reserve(self, seats: int) -> int:
        """An organisation with `seats` free seats, reserved; opens one when needed."""
        async with self.lock:
            k = len(self.state.orgs) - 1
            if not self._fits(k, seats):
                await self._try_trial(k)
                if not self._fits(k, seats):
                    await self._new_org()
                    k = len(self.state.orgs) - 1
                    if not self._fits(k, seats):
                        await self._try_trial(k)  # a new organisation has its own trial
                    if not self._fits(k, seats):
                        raise BenchError(
                            f"a new organisation has {self._free_text(k)} free seats, fewer "
                            f"than the {seats} members of one conversation; use fewer "
                            "members per conversation (more --rooms)"
                        )
            self.seats[k].reserved += seats
            return k

    async def _try_trial(self, k: int) -> None:
        """Start organisation k's trial, once, for its larger seat limit."""
        org = self.state.orgs[k]
        if org.trial_tried or self.seats[k].closed:
            return
        org.trial_tried = True
        if await self.api.start_trial(org.admin_token):
            self.seats[k].limit, _ = await self.api.seats(org.admin_token)
            log(f"setup: started organisation #{k}'s trial "
                f"(free seats now: {self._free_text(k)})")

    async def _seat_limit_hit(self, k: int) -> None:
        async with self.lock:
            seats = self.seats[k]
            if not seats.closed and seats.limit is None and self.learned is None:
                self.learned = seats.created
                log(f"setup: an organisation takes {seats.created} bench members here")
            seats.closed = True

    # -- rooms -----------------------------------------------------------------------------

    async def _room(self, room: int) -> None:
        members = members_of_room(room, self.opts.clients, self.opts.rooms)
        for _ in range(self.MAX_ATTEMPTS_PER_ROOM):
            k = await self._reserve(len(members))
            try:
                await self._fill_room(room, members, k)
                return
            except ApiError as exc:
                if exc.status != 409 or exc.code != "seat_limit_reached":
                    raise
            log(f"setup: organisation #{k} answered seat_limit_reached; moving room {room}")
            await self._seat_limit_hit(k)
        raise BenchError(
            f"room {room}: seat limit reached in {self.MAX_ATTEMPTS_PER_ROOM} "
            "organisations in a row"
        )

    async def _fill_room(self, room: int, members: list[int], org_index: int) -> None:
        org = self.state.orgs[org_index]
        s = self.state.suffix
        for i in members:
            user = self.users[i]
            if user is not None and user.org == org_index:
                continue
            email = f"bench-{s}-o{org_index}-u{i}@example.com"
            name = f"Bench user {i}"
            async with self.sem:
                created = await self.api.add_member(
                    org.admin_token, email, name, self.state.password
                )
                token = (await self.api.login(email, self.state.password))["token"]
            self.seats[org_index].created += 1
            fresh = self.users[i] is None
            self.users[i] = UserRec(str(created["id"]), email, name, str(token), org_index)
            if fresh:
                self.user_progress.advance(extra=f"conversations {self.room_progress.done}")
        staff = [user for i in members if (user := self.users[i]) is not None]
        if room in self.patient_rooms:
            self.rooms[room] = await self._patient_room(room, members, staff, org)
        else:
            async with self.sem:
                conv = await self.api.create_conversation(
                    staff[0].token, [u.id for u in staff[1:]], f"bench {s} room {room}"
                )
            self.rooms[room] = RoomRec(id=str(conv["id"]), members=members)
        self.room_progress.advance()

    async def _patient_room(
        self, room: int, members: list[int], staff: list[UserRec], org: OrgRec
    ) -> RoomRec:
        """A team of exactly the room's members owns a number of its own (a team's members
        take part in every patient conversation on its numbers); the first member starts a
        conversation with a new patient on it, and the server adds the team."""
        s = self.state.suffix
        async with self.sem:
            team_id = await self.api.create_team(org.admin_token, f"bench {s} room {room}")
            for user in staff:
                await self.api.add_to_team(org.admin_token, team_id, user.id)
        number = await self.numbers.buy(org.admin_token, team_id)
        async with self.sem:
            patient_id = await self.api.create_patient(
                org.admin_token,
                {"first_name": f"Room{room}", "last_name": "Bench", "phone": patient_phone(room)},
            )
            conv = await self.api.create_patient_conversation(
                staff[0].token, patient_id, str(number["id"]), PATIENT_CHANNEL,
                f"bench {s} patient room {room}",
            )
        got = {str(p["id"]) for p in conv["participants"] if p.get("kind") != "patient"}
        if got != {user.id for user in staff}:
            raise BenchError(
                f"patient room {room}: the server made {len(got)} staff participants instead "
                f"of the room's {len(staff)} members"
            )
        return RoomRec(
            id=str(conv["id"]), members=members, patient_id=patient_id,
            phone_number=str(number["number"]),
        )


class _NumberPool:
    """Buys the patient rooms' numbers, one at a time, among those the server's Twilio
    offers in NUMBER_AREA_CODE. A number this server already has (a fake Twilio restarted
    against an old database offers it again) is refused with 409 and skipped."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.offered: list[str] = []
        self.refused: set[str] = set()
        self.lock = asyncio.Lock()  # two rooms must not race for the same number

    async def buy(self, admin_token: str, team_id: str) -> dict[str, Any]:
        async with self.lock:
            while True:
                if not self.offered:
                    found = await self.api.available_numbers(admin_token, NUMBER_AREA_CODE)
                    self.offered = [n for n in found if n not in self.refused]
                if not self.offered:
                    raise BenchError(
                        f"the server's Twilio offers no number in area code {NUMBER_AREA_CODE} "
                        "that this server does not have already; patient rooms need one each "
                        "(`python -m bench fake-twilio` offers them: restart it, or start the "
                        "server on a fresh database)"
                    )
                number = self.offered.pop(0)
                try:
                    return await self.api.buy_number(admin_token, number, team_id)
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    self.refused.add(number)


async def _create(api: Api, opts: SetupOptions) -> BenchState:
    return await _Creator(api, opts).run()
