"""The node's metrics, served at `GET /metrics` in Prometheus' text format.

One registry per application (no module globals: tests run several apps in a process).
Each node has its own figures; a scraper sums or compares them across nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Lock holds and batch times run from ~0.1 ms (one local statement) to seconds (a
# database under stress); fine buckets at the low end keep p50/p99 readable.
SECONDS_BUCKETS = (
    0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.002,
    0.0025, 0.003, 0.004, 0.005, 0.006, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """What a node measures about itself. Names follow Prometheus' conventions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.send_batches = Counter(
            "bloomtext_send_batches", "Batches of sends stored by this node's writers",
            registry=r,
        )
        self.messages_stored = Counter(
            "bloomtext_messages_stored", "Message events stored (retries excluded)", registry=r
        )
        self.send_batch_size = Histogram(
            "bloomtext_send_batch_size", "Sends per stored batch",
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.send_batch_seconds = Histogram(
            "bloomtext_send_batch_seconds",
            "Time to store one batch: checks, then the locked write and its commit",
            buckets=SECONDS_BUCKETS, registry=r,
        )
        self.send_lock_hold_seconds = Histogram(
            "bloomtext_send_lock_hold_seconds",
            "From sending the statement that locks the batch's conversation rows to the "
            "commit's answer (an upper bound of the time the locks are held)",
            buckets=SECONDS_BUCKETS, registry=r,
        )
        self.send_lock_round_trips = Counter(
            "bloomtext_send_lock_round_trips",
            "Database round trips made while holding conversation locks (commit included)",
            registry=r,
        )
        self.send_queue_depth = Gauge(
            "bloomtext_send_queue_depth", "Sends waiting for a writer", registry=r
        )
        self.webhook_rejections = Counter(
            "bloomtext_webhook_rejections",
            "Webhook requests refused because their signature did not validate", registry=r,
        )

    def watch_send_queue(self, depth: Callable[[], int]) -> None:
        self.send_queue_depth.set_function(depth)

    def watch_hub(self, hub: HubCounts) -> None:
        self.registry.register(_HubCollector(hub))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HubCounts(Protocol):
    gaps_seen: int
    gap_reads: int


class _HubCollector(Collector):
    """The hub's plain counters, read when scraped (realtime/ knows nothing of metrics)."""

    def __init__(self, hub: HubCounts) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "bloomtext_hub_gaps", "Events that reached this node ahead of a missing one",
            value=self._hub.gaps_seen,
        )
        yield CounterMetricFamily(
            "bloomtext_hub_gap_reads",
            "Gaps read from storage (the missing event did not come through the broker "
            "within the grace)",
            value=self._hub.gap_reads,
        )
