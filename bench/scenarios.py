"""The scenarios: `rooms` (a fixed delivery rate), `knee` (rising rates) and `idle`."""

from __future__ import annotations

import asyncio
import gc
import random
import secrets
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.client import BenchClient, ClientCounters, ConnectOptions, close_all, connect_all
from bench.server_probe import SelfMeter, ServerProbe
from bench.setup import BenchState
from bench.stats import Router, StepRecorder, StepResult, now_ns
from bench.util import BenchError, log


@dataclass
class RunConfig:
    urls: list[str]
    connect: ConnectOptions
    connect_concurrency: int = 100
    connect_phase_s: float = 300.0  # bound on opening every connection
    max_client_rate: float = 40.0  # sends/s per connection (the server allows 50 sustained)
    drain_s: float = 2.0
    settle_s: float = 1.0
    p99_limit_ms: float = 200.0
    min_achieved: float = 0.9
    probe: ServerProbe | None = None
    sync_after: bool = False
    sync_timeout_s: float = 60.0
    seed: int = 1
    start_at: float | None = None  # wall-clock time (epoch s) to start sending at


def node_of(client: int, rooms: int, nodes: int) -> int:
    """Round-robin within each conversation, so that every conversation spans the nodes."""
    return (client % rooms + client // rooms) % nodes


# -- the connected clients -------------------------------------------------------------------


class Fleet:
    """One connection per bench user, each in the conversation of its room."""

    def __init__(self, state: BenchState, cfg: RunConfig) -> None:
        self.state = state
        self.cfg = cfg
        self.run_id = secrets.token_hex(4)
        self.router = Router()
        self.counters = ClientCounters()
        self.clients = [self.new_client(i) for i in range(state.clients)]
        self.conv_of = {i: state.conversations[state.room_of(i)].id for i in range(state.clients)}
        self.patient_convs = frozenset(
            room.id for room in state.conversations if room.patient_id is not None
        )
        self.members: dict[str, list[int]] = {}  # conversation -> connected clients
        for i in range(state.clients):  # until `open`: as if every client will connect
            self.members.setdefault(self.conv_of[i], []).append(i)
        self.connect_failures: Counter[str] = Counter()

    def new_client(self, i: int) -> BenchClient:
        url = self.cfg.urls[node_of(i, self.state.rooms, len(self.cfg.urls))]
        user = self.state.users[i]
        return BenchClient(i, user.token, url, self.cfg.connect, self.router, self.counters)

    @property
    def connected(self) -> list[BenchClient]:
        return [c for c in self.clients if not c.closed]

    async def open(self) -> None:
        log(
            f"connecting {len(self.clients)} clients to {', '.join(self.cfg.urls)} "
            f"({self.cfg.connect.codec.subprotocol})"
        )
        async with asyncio.timeout(self.cfg.connect_phase_s):
            self.connect_failures = await connect_all(self.clients, self.cfg.connect_concurrency)
        if self.connect_failures:
            reasons = ", ".join(f"{r} x{n}" for r, n in self.connect_failures.most_common(5))
            log(
                f"warning: {sum(self.connect_failures.values())} clients did not connect: {reasons}"
            )
        if not self.connected:
            raise BenchError("no client could connect; see the reasons above")
        self.members = {}
        for client in self.connected:
            self.members.setdefault(self.conv_of[client.index], []).append(client.index)

    def deliveries_per_send(self, senders: list[BenchClient]) -> float:
        """Mean deliveries per send when every sender sends equally often."""
        if not senders:
            return 0.0
        total = sum(len(self.members[self.conv_of[c.index]]) for c in senders)
        return total / len(senders)

    async def close(self) -> None:
        await close_all(self.clients)


# -- one measured step -----------------------------------------------------------------------


class RateTooHigh(BenchError):
    pass


def plan_rate(
    fleet: Fleet, rate: float, max_client_rate: float, before_connecting: bool = False
) -> tuple[float, float]:
    """(sends/s, sends/s per client) for a target of `rate` deliveries/s."""
    senders = fleet.clients if before_connecting else fleet.connected
    per_send = fleet.deliveries_per_send(senders)
    sends_per_s = rate / per_send if per_send else 0.0
    per_client = sends_per_s / len(senders) if senders else 0.0
    if per_client > max_client_rate:
        raise RateTooHigh(
            f"{rate:g} deliveries/s needs {sends_per_s:.0f} sends/s, i.e. {per_client:.1f} sends/s "
            f"per client, above --max-client-rate {max_client_rate:g} (the server allows 50 "
            f"frames/s per connection); use more --clients or fewer members per room"
        )
    return sends_per_s, per_client


async def run_step(
    fleet: Fleet,
    step: int,
    rate: float,
    duration: float,
    acked: dict[str, set[str]] | None = None,
) -> StepResult:
    """Send at `rate` deliveries/s for `duration` s, drain, and count.

    With `acked`, the ids of the step's acked events are added to it (for `--sync-after`)."""
    cfg = fleet.cfg
    sends_per_s, per_client = plan_rate(fleet, rate, cfg.max_client_rate)
    base = StepResult(
        step=step,
        target_deliveries_per_s=rate,
        target_sends_per_s=round(sends_per_s, 2),
        sends_per_client_per_s=round(per_client, 3),
        duration_s=duration,
    )
    recorder = StepRecorder(f"{fleet.run_id}.{step}", fleet.members, fleet.patient_convs)
    fleet.router.add(recorder)
    # No garbage collection pauses inside the measurement (they stall every client at
    # once); the long-lived objects are frozen out of the collector's sight meanwhile.
    gc.collect()
    gc.freeze()
    gc.disable()
    stalls = LoopStallMonitor().start()
    disconnects0 = fleet.counters.disconnects
    gaps0 = sum(c.out_of_order for c in fleet.clients)
    meter = SelfMeter()
    t0 = time.monotonic()
    recorder.t_start = now_ns()
    try:
        async with asyncio.timeout(duration + 30):
            await _schedule(fleet, recorder, sends_per_s, duration)
        t_sent = time.monotonic()
        deadline = t_sent + cfg.drain_s
        while not recorder.resolved and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        t1 = time.monotonic()
    finally:
        stalls.stop()
        gc.enable()
        gc.unfreeze()
        fleet.router.remove(recorder)
    result = recorder.result(base, duration)
    result.tool_max_stall_ms = stalls.max_ms
    result.drain_s = round(t1 - t_sent, 3)
    result.disconnects = fleet.counters.disconnects - disconnects0
    result.out_of_order = sum(c.out_of_order for c in fleet.clients) - gaps0
    result.tool_cpu_percent = meter.percent()
    if cfg.probe is not None:
        result.server = cfg.probe.window(t0, t_sent)
        peak = cfg.probe.window(t0, t1).peak_rss_mib
        if peak is not None:
            result.server.peak_rss_mib = peak
    if acked is not None:
        for conv, ids in recorder.acked_by_conversation().items():
            acked.setdefault(conv, set()).update(ids)
    _judge(result, cfg)
    return result


async def _schedule(
    fleet: Fleet, recorder: StepRecorder, sends_per_s: float, duration: float
) -> None:
    """Open loop: send k is due at t0 + k/rate whether or not earlier sends were acked."""
    senders = fleet.connected
    random.Random(fleet.cfg.seed).shuffle(senders)
    total = int(round(sends_per_s * duration))
    if total == 0 or not senders:
        return
    interval = 1e9 / sends_per_s
    key = recorder.key
    conv_of = fleet.conv_of
    t0 = now_ns()
    k = 0
    while k < total:
        now = now_ns()
        due = min(total, int((now - t0) / interval) + 1)
        while k < due:
            lag = now - (t0 + int(k * interval))
            if lag > recorder.max_lag_ns:
                recorder.max_lag_ns = lag
            client = senders[k % len(senders)]
            client_id = f"{key}.{client.index}.{k}"
            conv = conv_of[client.index]
            t = now_ns()
            recorder.on_send(client_id, conv, t)
            if not client.send_message(conv, client_id, t):
                recorder.on_error(client_id, "client_disconnected")
            k += 1
        wait = (t0 + k * interval - now_ns()) / 1e9
        await asyncio.sleep(wait if wait > 0 else 0)


class LoopStallMonitor:
    """The longest time the bench's event loop was unable to run a 5 ms timer on time."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LoopStallMonitor:
        self._task = asyncio.create_task(self._run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            late_ms = (time.perf_counter() - t - self.period) * 1000
            if late_ms > self.max_ms:
                self.max_ms = round(late_ms, 3)


def _judge(result: StepResult, cfg: RunConfig) -> None:
    reasons = []
    if result.latency_ms.p99 > cfg.p99_limit_ms:
        reasons.append(f"p99 {result.latency_ms.p99:g} ms > {cfg.p99_limit_ms:g} ms")
    if result.losses:
        reasons.append(f"{result.losses} lost")
    if result.unacked or result.rejected:
        reasons.append(f"{result.unacked} unacked, {result.rejected} rejected")
    if result.target_deliveries_per_s:
        achieved = result.deliveries_per_s / result.target_deliveries_per_s
        if achieved < cfg.min_achieved:
            reasons.append(f"achieved {achieved:.0%} of the target rate")
    if result.disconnects:
        reasons.append(f"{result.disconnects} disconnects")
    result.held = not reasons
    result.verdict = "held" if not reasons else "; ".join(reasons)


# -- sync after the run ----------------------------------------------------------------------


@dataclass
class SyncResult:
    clients: int = 0
    connected: int = 0
    expected_events: int = 0  # acked sends x members
    lost_after_sync: int = 0
    duplicates_in_sync: int = 0
    seq_gaps: int = 0
    caught_up_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


async def sync_check(fleet: Fleet, acked: dict[str, set[str]]) -> SyncResult:
    """Reconnect every client, `sync` from its seq at the start, and look for what is missing."""
    cfg = fleet.cfg
    old = fleet.clients
    start_seq = {c.index: c.start_seq.get(fleet.conv_of[c.index], 0) for c in old}
    await close_all(old)
    fresh = [fleet.new_client(c.index) for c in old if c.index in start_seq]
    result = SyncResult(clients=len(fresh))
    async with asyncio.timeout(cfg.connect_phase_s):
        failures = await connect_all(fresh, cfg.connect_concurrency, "reconnections")
    result.failures = dict(failures)
    live = [c for c in fresh if not c.closed]
    result.connected = len(live)
    fleet.clients = fresh
    t0 = time.monotonic()
    done_at: list[float] = []

    async def one(client: BenchClient) -> None:
        conv = fleet.conv_of[client.index]
        client.collect = []
        try:
            await client.sync({conv: start_seq[client.index]}, cfg.sync_timeout_s)
        except Exception as exc:  # report it, do not abort the run
            reason = f"sync: {type(exc).__name__}"
            result.failures[reason] = result.failures.get(reason, 0) + 1
            return
        done_at.append(time.monotonic())

    await asyncio.gather(*(one(c) for c in live))
    result.caught_up_s = round(max(done_at) - t0, 3) if done_at else 0.0
    for client in live:
        conv = fleet.conv_of[client.index]
        events = [e for e in client.collect or [] if str(e.get("conversation_id")) == conv]
        ids = {str(e.get("id")) for e in events}
        want = acked.get(conv, set())
        result.expected_events += len(want)
        result.lost_after_sync += len(want - ids)
        result.duplicates_in_sync += len(events) - len(ids)
        seqs = sorted({e["seq"] for e in events if isinstance(e.get("seq"), int)})
        expected_next = start_seq[client.index] + 1
        for seq in seqs:
            if seq != expected_next:
                result.seq_gaps += 1
            expected_next = seq + 1
    return result


# -- scenarios -------------------------------------------------------------------------------


@dataclass
class RoomsOutcome:
    steps: list[StepResult]
    clients_connected: int
    connect_failures: dict[str, int]
    last_held_rate: float | None = None
    stop_reason: str = ""
    sync: SyncResult | None = None
    foreign_events: int = 0
    unrouted_errors: dict[str, int] = field(default_factory=dict)
    close_codes: dict[str, int] = field(default_factory=dict)


async def run_rates(
    state: BenchState, cfg: RunConfig, rates: list[float], duration: float, stop_on_fail: bool
) -> RoomsOutcome:
    """`rooms` is one rate; `knee` is rising rates until a step does not hold."""
    fleet = Fleet(state, cfg)
    plan_rate(fleet, rates[0], cfg.max_client_rate, before_connecting=True)
    try:
        await fleet.open()
        plan_rate(fleet, rates[0], cfg.max_client_rate)  # refuse before sending anything
        outcome = RoomsOutcome([], len(fleet.connected), dict(fleet.connect_failures))
        acked: dict[str, set[str]] = {}
        if cfg.start_at is not None:  # several load processes start their sends together
            wait = cfg.start_at - time.time()
            if wait < 0:
                log(f"connected {-wait:.1f} s after --start-at: starting now")
            await asyncio.sleep(max(0.0, wait))
        for step, rate in enumerate(rates, start=1):
            try:
                _, per_client = plan_rate(fleet, rate, cfg.max_client_rate)
            except RateTooHigh as exc:
                outcome.stop_reason = str(exc)
                break
            log(
                f"step {step}: {rate:g} deliveries/s for {duration:g} s "
                f"({per_client:.2f} sends/s per client)"
            )
            result = await run_step(fleet, step, rate, duration, acked if cfg.sync_after else None)
            outcome.steps.append(result)
            log(
                f"  -> {result.deliveries_per_s:g} deliveries/s, p99 "
                f"{result.latency_ms.p99:g} ms, lost {result.losses}: {result.verdict}"
            )
            if result.held:
                outcome.last_held_rate = rate
            elif stop_on_fail:
                outcome.stop_reason = result.verdict
                break
            if step < len(rates):
                await asyncio.sleep(cfg.settle_s)
            elif stop_on_fail:
                outcome.stop_reason = f"reached the last rate ({rate:g}) without failing"
        outcome.foreign_events = fleet.router.foreign_events
        if cfg.sync_after:
            log("sync-after: reconnecting every client and syncing from its starting seq")
            outcome.sync = await sync_check(fleet, acked)
        outcome.unrouted_errors = dict(fleet.counters.unrouted_errors)
        outcome.close_codes = dict(fleet.counters.close_codes)
        return outcome
    finally:
        await fleet.close()


@dataclass
class IdleResult:
    connections: int
    users: int
    opened: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    open_s: float = 0.0
    alive_after_hold: int | None = None
    server_pids: list[int] = field(default_factory=list)
    warm_connections: int = 0
    rss_before_mib: float | None = None
    rss_warm_mib: float | None = None  # with the first tenth of the connections open
    rss_after_mib: float | None = None
    rss_after_close_mib: float | None = None
    kib_per_connection: float | None = None  # marginal: (after - warm) / (opened - warm)
    kib_per_connection_gross: float | None = None  # (after - before) / opened
    close_codes: dict[str, int] = field(default_factory=dict)


async def run_idle(
    state: BenchState, cfg: RunConfig, connections: int, settle_s: float, hold_s: float
) -> IdleResult:
    probe = cfg.probe
    result = IdleResult(connections=connections, users=len(state.users))
    router, counters = Router(), ClientCounters()
    clients = [
        BenchClient(
            j,
            state.users[j % len(state.users)].token,
            cfg.urls[j % len(cfg.urls)],
            cfg.connect,
            router,
            counters,
        )
        for j in range(connections)
    ]
    if probe is not None:
        result.server_pids = list(probe.pids)
        result.rss_before_mib = await _steady_rss(probe, settle_s)
    # Two stages: the first tenth warms the server up (caches, buffers, first-use imports),
    # so that the marginal cost of the other nine tenths is the per-connection figure.
    warm = clients[: max(1, connections // 10)] if connections >= 20 else []
    rest = clients[len(warm) :]
    failures: Counter[str] = Counter()
    try:
        t0 = time.monotonic()
        async with asyncio.timeout(cfg.connect_phase_s):
            if warm:
                failures += await connect_all(warm, cfg.connect_concurrency, "first tenth")
                result.warm_connections = sum(1 for c in warm if not c.closed)
                if probe is not None:
                    opened_s = time.monotonic() - t0
                    result.rss_warm_mib = await _steady_rss(probe, settle_s)
                    t0 = time.monotonic() - opened_s
            failures += await connect_all(rest, cfg.connect_concurrency)
        result.failures = dict(failures)
        result.open_s = round(time.monotonic() - t0, 2)
        result.opened = sum(1 for c in clients if not c.closed)
        log(
            f"opened {result.opened}/{connections} connections in {result.open_s} s; "
            f"settling {settle_s:g} s"
        )
        if probe is not None:
            result.rss_after_mib = await _steady_rss(probe, settle_s)
        if hold_s > 0:
            log(f"holding the connections for {hold_s:g} s")
            await asyncio.sleep(hold_s)
            result.alive_after_hold = sum(1 for c in clients if not c.closed)
    finally:
        await close_all(clients)
    result.close_codes = dict(counters.close_codes)
    if probe is not None:
        result.rss_after_close_mib = await _steady_rss(probe, settle_s)
        after, before, warm_rss = result.rss_after_mib, result.rss_before_mib, result.rss_warm_mib
        if result.opened and before is not None and after is not None:
            result.kib_per_connection_gross = round((after - before) * 1024 / result.opened, 2)
        added = result.opened - result.warm_connections
        if added > 0 and warm_rss is not None and after is not None:
            result.kib_per_connection = round((after - warm_rss) * 1024 / added, 2)
        else:
            result.kib_per_connection = result.kib_per_connection_gross
    return result


async def _steady_rss(probe: ServerProbe, settle_s: float) -> float | None:
    """Median server RSS (MiB) over a few samples taken after `settle_s`."""
    await asyncio.sleep(settle_s)
    samples: list[int] = []
    for _ in range(5):
        rss = await asyncio.to_thread(probe.rss_now)
        if rss is not None:
            samples.append(rss)
        await asyncio.sleep(0.2)
    if not samples:
        return None
    return round(statistics.median(samples) / (1024 * 1024), 3)
