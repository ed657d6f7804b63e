"""The hub's Prometheus metrics: ingest counters, lag, and per-device loss read from the registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hub.store.base import Store


class _RegistryCollector(Collector):
    """Reads per-device loss and link state from the store at scrape time."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lost = GaugeMetricFamily("nakhon_device_lost_messages",
                                 "messages that never reached the hub (gaps in seq), per device", labels=["device"])
        dropped = GaugeMetricFamily("nakhon_device_dropped_at_edge",
                                    "records the device dropped from a full outbox", labels=["device"])
        online = GaugeMetricFamily("nakhon_device_online", "1 when the device's link is online",
                                   labels=["device"])
        total_lost = 0
        for d in self._store.devices():
            lost.add_metric([d.device], d.lost)
            dropped.add_metric([d.device], d.dropped_at_edge)
            online.add_metric([d.device], 1.0 if d.state == "online" else 0.0)
            total_lost += d.lost
        yield lost
        yield dropped
        yield online
        yield GaugeMetricFamily("nakhon_lost_messages", "messages lost across the fleet", value=total_lost)


@dataclass(frozen=True)
class WriterState:
    """The ingest writer thread as ``/healthz`` and ``/metrics`` show it."""

    running: bool
    queue_depth: int
    oldest_unwritten_s: float
    """Age of the oldest message received but not yet committed (0 when the writer holds none)."""
    limit_s: float
    """Above this age the hub is unhealthy."""
    waiting_for: str | None = None
    """Why the writer cannot commit now (the time-series store is down...), None when it can."""

    @property
    def healthy(self) -> bool:
        """Running, not waiting on a store, and nothing waits longer than the limit."""
        return self.running and self.waiting_for is None and self.oldest_unwritten_s <= self.limit_s


class _WriterCollector(Collector):
    """Reads the writer's state at scrape time."""

    def __init__(self, state: Callable[[], WriterState]) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._state()
        yield GaugeMetricFamily("nakhon_ingest_writer_up", "1 while the ingest writer thread runs",
                                value=1.0 if s.running else 0.0)
        yield GaugeMetricFamily("nakhon_ingest_queue_depth", "messages received and waiting for the writer",
                                value=s.queue_depth)
        yield GaugeMetricFamily("nakhon_ingest_oldest_unwritten_seconds",
                                "age of the oldest message the writer holds but has not committed",
                                value=s.oldest_unwritten_s)


class HubMetrics:
    """Every metric the hub exports on ``/metrics``."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("nakhon_messages_received", "MQTT messages received by ingest", registry=r)
        self.stored = Counter("nakhon_messages_stored", "new messages committed to the store", registry=r)
        self.readings = Counter("nakhon_readings_stored", "readings committed to the store", registry=r)
        self.duplicates = Counter("nakhon_duplicates", "messages dropped as already stored", registry=r)
        self.deadletters = Counter("nakhon_deadletters", "messages sent to the dead-letter store",
                                   ["reason"], registry=r)
        self.transactions = Counter("nakhon_transactions", "service transactions answered", ["status"],
                                    registry=r)
        self.ingest_lag = Gauge("nakhon_ingest_lag_seconds",
                                "time from receipt to commit of the oldest message of the last batch", registry=r)
        self.device_lag = Gauge("nakhon_end_to_end_lag_seconds",
                                "time from the device's sent_at to commit, oldest of the last batch", registry=r)
        self.writer_errors = Counter("nakhon_ingest_writer_errors",
                                     "unexpected errors the writer isolated to one message", registry=r)
        r.register(_RegistryCollector(store))

    def watch_writer(self, state: Callable[[], WriterState]) -> None:
        """Export the ingest writer's state (called once by ingest)."""
        self.registry.register(_WriterCollector(state))
