"""The hub's Prometheus metrics: ingest counters, lag, and per-device loss read from the registry."""

from __future__ import annotations

from collections.abc import Iterator

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
        r.register(_RegistryCollector(store))
