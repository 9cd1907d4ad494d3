"""Counting sends, acks and deliveries of one measured step, and summarising them.

Every send of a step carries a `client_id` of the form `<run>.<step>.<client>.<n>`, so late
frames are charged to the step that caused them, never to the next one.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

NS_PER_MS = 1_000_000
# `delivery` frame statuses: the SMS reached Twilio, or will never be sent.
SMS_HANDED_OVER = frozenset({"sent", "delivered"})
SMS_FAILED = frozenset({"failed", "undelivered", "opted_out"})


def now_ns() -> int:
    return time.perf_counter_ns()


def percentile(sorted_values: Any, q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * n))
    return float(sorted_values[min(rank, n) - 1])


@dataclass
class Latency:
    """Milliseconds."""

    count: int = 0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    # Counts per log-spaced bucket (see `hist_bucket`), so that the results of several
    # load processes can be merged (`merged_percentile`) without their raw samples.
    hist: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_ns(cls, values: array) -> Latency:
        if not values:
            return cls()
        ordered = sorted(values)
        ms = NS_PER_MS
        hist: dict[int, int] = {}
        for value in ordered:
            bucket = hist_bucket(value / ms)
            hist[bucket] = hist.get(bucket, 0) + 1
        return cls(
            count=len(ordered),
            p50=round(percentile(ordered, 50) / ms, 3),
            p95=round(percentile(ordered, 95) / ms, 3),
            p99=round(percentile(ordered, 99) / ms, 3),
            max=round(ordered[-1] / ms, 3),
            mean=round(sum(ordered) / len(ordered) / ms, 3),
            hist=hist,
        )


HIST_BASE_MS, HIST_RATIO = 0.01, 1.05


def hist_bucket(ms: float) -> int:
    """Bucket i holds latencies up to HIST_BASE_MS * HIST_RATIO**i (5% wide)."""
    if ms <= HIST_BASE_MS:
        return 0
    return math.ceil(math.log(ms / HIST_BASE_MS, HIST_RATIO))


def merged_percentile(hists: list[dict[int, int]], q: float) -> float:
    """Nearest-rank percentile (ms, the bucket's upper bound: at most 5% high) of the
    union of several histograms; JSON round trips turn their keys into strings."""
    total: dict[int, int] = {}
    for hist in hists:
        for bucket, count in hist.items():
            total[int(bucket)] = total.get(int(bucket), 0) + count
    n = sum(total.values())
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * n))
    seen = 0
    for bucket in sorted(total):
        seen += total[bucket]
        if seen >= rank:
            return round(HIST_BASE_MS * HIST_RATIO**bucket, 3)
    return 0.0


@dataclass
class ServerFigures:
    pids: list[int] = field(default_factory=list)
    cpu_percent: float | None = None  # average over the step; 100 = one core
    peak_rss_mib: float | None = None
    processes: int | None = None


@dataclass
class Second:
    """Deliveries received during one second of a step, and the slowest of them."""

    second: int
    deliveries: int
    max_latency_ms: float


@dataclass
class StepResult:
    step: int
    target_deliveries_per_s: float
    target_sends_per_s: float
    sends_per_client_per_s: float
    duration_s: float
    sends: int = 0
    acked: int = 0
    unacked: int = 0
    rejected: int = 0
    acked_sends_per_s: float = 0.0
    deliveries: int = 0
    deliveries_per_s: float = 0.0
    expected_deliveries: int = 0
    losses: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    latency_ms: Latency = field(default_factory=Latency)
    ack_latency_ms: Latency = field(default_factory=Latency)
    errors: dict[str, int] = field(default_factory=dict)
    disconnects: int = 0
    scheduler_max_lag_ms: float = 0.0
    tool_max_stall_ms: float = 0.0
    drain_s: float = 0.0
    server: ServerFigures = field(default_factory=ServerFigures)
    tool_cpu_percent: float | None = None
    held: bool | None = None
    verdict: str = ""
    timeline: list[Second] = field(default_factory=list)
    # Patient conversations: acked sends there, and the SMS the server's outbox handed to
    # Twilio for them (a `delivery` frame `sent` reached a member before the drain ended).
    patient_sends: int = 0
    patient_sms_sent: int = 0
    patient_sms_failed: int = 0
    patient_sms_latency_ms: Latency = field(default_factory=Latency)  # send -> `sent` frame


class StepRecorder:
    """Everything observed about the sends of one step."""

    def __init__(
        self,
        key: str,
        members: dict[str, list[int]],
        patient_convs: frozenset[str] = frozenset(),
    ) -> None:
        self.key = key
        self.members = members  # conversation id -> client indices
        self.patient_convs = patient_convs
        self.patient_acked: dict[str, str] = {}  # event id -> client_id, patient rooms only
        self.sms_sent_at: dict[str, int] = {}  # event id -> first `sent` frame, ns
        self.sms_failed: set[str] = set()  # event ids
        self.sms_settled = 0  # acked patient sends whose SMS was sent or failed
        self.send_conv: dict[str, str] = {}  # client_id -> conversation id
        self.send_time: dict[str, int] = {}  # client_id -> ns
        self.acked: dict[str, str] = {}  # client_id -> event id
        self.rejected: set[str] = set()
        self.seen: set[tuple[int, str]] = set()  # (receiver, event id)
        self.latencies: array = array("q")
        self.ack_latencies: array = array("q")
        self.duplicates = 0
        self.expected = 0
        self.errors: Counter[str] = Counter()
        self.t_start = now_ns()
        self.t_last_send = self.t_start
        self.t_last_ack = self.t_start
        self.t_last_delivery = self.t_start
        self.max_lag_ns = 0
        self.per_second_count: list[int] = []  # deliveries by second since t_start
        self.per_second_max: list[int] = []  # their highest latency, ns

    # -- observations ----------------------------------------------------------------------

    def on_send(self, client_id: str, conversation_id: str, t: int) -> None:
        self.send_conv[client_id] = conversation_id
        self.send_time[client_id] = t
        self.t_last_send = t

    def on_ack(self, client_id: str, event: dict[str, Any], t: int) -> None:
        if client_id in self.acked or client_id not in self.send_conv:
            return
        event_id = event.get("id")
        if not isinstance(event_id, str):
            self.errors["ack_without_event_id"] += 1
            return
        self.acked[client_id] = event_id
        self.expected += len(self.members.get(self.send_conv[client_id], ()))
        if self.send_conv[client_id] in self.patient_convs:
            self.patient_acked[event_id] = client_id
            if event_id in self.sms_sent_at or event_id in self.sms_failed:
                self.sms_settled += 1  # its `delivery` frame beat the ack
        self.ack_latencies.append(t - self.send_time[client_id])
        self.t_last_ack = t

    def on_error(self, client_id: str | None, code: str) -> None:
        self.errors[code] += 1
        if client_id is not None and client_id not in self.acked:
            self.rejected.add(client_id)

    def on_event(self, receiver: int, event: dict[str, Any], sent_ns: int | None, t: int) -> None:
        key = (receiver, str(event.get("id")))
        if key in self.seen:
            self.duplicates += 1
            return
        self.seen.add(key)
        if sent_ns is None:
            sent_ns = self.send_time.get(str(event.get("client_id")))
        if sent_ns is not None:
            latency = t - sent_ns
            self.latencies.append(latency)
            second = max(0, (t - self.t_start) // 1_000_000_000)
            while len(self.per_second_count) <= second:
                self.per_second_count.append(0)
                self.per_second_max.append(0)
            self.per_second_count[second] += 1
            if latency > self.per_second_max[second]:
                self.per_second_max[second] = latency
        self.t_last_delivery = t

    def on_delivery(self, conversation_id: str, message_id: str, status: str, t: int) -> None:
        """A `delivery` frame: every staff member gets one per status of the patient's SMS;
        the first `sent` (or final failure) of a message counts."""
        if conversation_id not in self.patient_convs:
            return
        if message_id in self.sms_sent_at or message_id in self.sms_failed:
            return
        if status in SMS_HANDED_OVER:
            self.sms_sent_at[message_id] = t
        elif status in SMS_FAILED:
            self.sms_failed.add(message_id)
        else:
            return
        if message_id in self.patient_acked:
            self.sms_settled += 1

    # -- progress --------------------------------------------------------------------------

    @property
    def resolved(self) -> bool:
        """Every send acked or rejected, every expected delivery received, and every
        patient's SMS sent or failed."""
        return (
            len(self.acked) + len(self.rejected - self.acked.keys()) >= len(self.send_conv)
            and len(self.seen) >= self.expected
            and self.sms_settled >= len(self.patient_acked)
        )

    # -- summary ---------------------------------------------------------------------------

    def result(self, base: StepResult, window_s: float) -> StepResult:
        """Fill `base` with the counts; `window_s` is the send window's length."""
        r = base
        r.sends = len(self.send_conv)
        r.acked = len(self.acked)
        r.rejected = len(self.rejected - self.acked.keys())
        r.unacked = r.sends - r.acked - r.rejected
        r.deliveries = len(self.seen)
        r.duplicates = self.duplicates
        r.expected_deliveries = self.expected
        r.losses = self._losses()
        span_ack = max(window_s, (self.t_last_ack - self.t_start) / 1e9)
        span_delivery = max(window_s, (self.t_last_delivery - self.t_start) / 1e9)
        r.acked_sends_per_s = round(r.acked / span_ack, 1) if span_ack > 0 else 0.0
        r.deliveries_per_s = round(r.deliveries / span_delivery, 1) if span_delivery > 0 else 0.0
        r.latency_ms = Latency.from_ns(self.latencies)
        r.ack_latency_ms = Latency.from_ns(self.ack_latencies)
        r.errors = dict(self.errors)
        r.scheduler_max_lag_ms = round(self.max_lag_ns / NS_PER_MS, 3)
        self._patient_result(r)
        r.timeline = [
            Second(second, count, round(peak / NS_PER_MS, 3))
            for second, (count, peak) in enumerate(
                zip(self.per_second_count, self.per_second_max, strict=True)
            )
        ]
        return r

    def _patient_result(self, r: StepResult) -> None:
        sms_latencies = array("q")
        for event_id, client_id in self.patient_acked.items():
            sent_at = self.sms_sent_at.get(event_id)
            if sent_at is not None:
                sms_latencies.append(sent_at - self.send_time[client_id])
        r.patient_sends = len(self.patient_acked)
        r.patient_sms_sent = len(sms_latencies)
        r.patient_sms_failed = len(self.sms_failed & self.patient_acked.keys())
        r.patient_sms_latency_ms = Latency.from_ns(sms_latencies)

    def _losses(self) -> int:
        lost = 0
        seen = self.seen
        for client_id, event_id in self.acked.items():
            for receiver in self.members.get(self.send_conv[client_id], ()):
                if (receiver, event_id) not in seen:
                    lost += 1
        return lost

    def acked_by_conversation(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for client_id, event_id in self.acked.items():
            out.setdefault(self.send_conv[client_id], set()).add(event_id)
        return out


class Router:
    """Finds the step recorder a frame belongs to from its `client_id`."""

    def __init__(self) -> None:
        self.recorders: dict[str, StepRecorder] = {}
        self.foreign_events = 0

    def add(self, recorder: StepRecorder) -> None:
        self.recorders[recorder.key] = recorder

    def remove(self, recorder: StepRecorder) -> None:
        self.recorders.pop(recorder.key, None)

    def on_delivery(self, conversation_id: str, message_id: str, status: str, t: int) -> None:
        """`delivery` frames carry no client_id: the step that sent the message knows it."""
        for recorder in self.recorders.values():
            recorder.on_delivery(conversation_id, message_id, status, t)

    def find(self, client_id: object) -> StepRecorder | None:
        if not isinstance(client_id, str):
            return None
        return self.recorders.get(client_id.rsplit(".", 2)[0])
