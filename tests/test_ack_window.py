"""Ack coalescing: committed seqs share one ``down/ack`` of ranges per device within ``ack_window_s``, never
before their commit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.contract import Ack, format_timestamp, now
from hub.broker import free_port
from hub.ingest.consumer import Ingest, IngestSettings
from hub.metrics import HubMetrics
from hub.router import Router
from hub.store.sqlite import SQLiteStore
from tests.conftest import wait_for

DEVICE = "kk-aq-0321"


class _Acks:
    """Records every ``down/ack`` the consumer publishes, and what the store held when it did."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.acks: list[Ack] = []
        self.early: list[int] = []
        self.lock = threading.Lock()

    def publish(self, topic_name: str, payload: bytes) -> None:
        """Stand in for the broker: check that every acked seq is committed already."""
        ack = Ack.model_validate_json(payload)
        stored = {s for d, s in self.store.stored_seqs() if d == DEVICE}
        with self.lock:
            self.acks.append(ack)
            self.early += [s for a, b in ack.acked for s in range(a, b + 1) if s not in stored]

    def seqs(self) -> set[int]:
        """Every seq acknowledged so far."""
        with self.lock:
            return {s for ack in self.acks for a, b in ack.acked for s in range(a, b + 1)}


@pytest.fixture
def consumer(tmp_path: Path) -> Iterator[Callable[[float], tuple[Ingest, _Acks]]]:
    started: list[tuple[Ingest, SQLiteStore]] = []

    def make(window_s: float) -> tuple[Ingest, _Acks]:
        store = SQLiteStore(tmp_path / f"hub-{len(started)}.sqlite")
        store.open()
        # no broker on this port: paho retries in the background, the writer works from its queue alone
        settings = IngestSettings(port=free_port(), batch_max=10, ack_window_s=window_s)
        ingest = Ingest(store, settings, HubMetrics(store), Router({}))
        acks = _Acks(store)
        ingest.publish = acks.publish  # type: ignore[method-assign]
        ingest.start()
        started.append((ingest, store))
        return ingest, acks

    yield make
    for ingest, store in started:
        ingest.stop()
        store.close()


def _feed(ingest: Ingest, seqs: range) -> None:
    for seq in seqs:
        body = {"v": 1, "device": DEVICE, "seq": seq, "sent_at": format_timestamp(now()),
                "readings": [{"ts": format_timestamp(now()), "sensor": "pm", "quantity": "pm2_5", "value": 12.5,
                              "unit": "ug/m3"}]}
        ingest._backlog.put([(f"nakhon/{DEVICE}/up/telemetry", json.dumps(body).encode(), time.time())])


def test_acks_of_many_commits_within_the_window_go_out_as_one_range(
        consumer: Callable[[float], tuple[Ingest, _Acks]]) -> None:
    ingest, acks = consumer(5.0)
    _feed(ingest, range(1, 41))  # four commits of 10 (batch_max) back to back, fewer than ack_flush_seqs
    wait_for(lambda: acks.seqs() == set(range(1, 41)), 30, "all 40 seqs acknowledged")
    assert [a.acked for a in acks.acks] == [[(1, 40)]]
    assert acks.early == []


def test_without_a_window_every_commit_is_acknowledged_at_once(
        consumer: Callable[[float], tuple[Ingest, _Acks]]) -> None:
    ingest, acks = consumer(0.0)
    _feed(ingest, range(1, 101))
    wait_for(lambda: acks.seqs() == set(range(1, 101)), 30, "all 100 seqs acknowledged")
    assert len(acks.acks) == 10
    assert acks.early == []


def test_a_lone_message_is_acknowledged_when_its_window_ends_though_nothing_else_arrives(
        consumer: Callable[[float], tuple[Ingest, _Acks]]) -> None:
    ingest, acks = consumer(0.2)
    _feed(ingest, range(1, 2))
    wait_for(lambda: acks.seqs() == {1}, 10, "seq 1 acknowledged")
    assert acks.early == []


def test_a_device_with_enough_seqs_waiting_is_acknowledged_before_the_window_ends(
        consumer: Callable[[float], tuple[Ingest, _Acks]]) -> None:
    ingest, acks = consumer(30.0)  # a window no test waits out
    flush = ingest.settings.ack_flush_seqs
    _feed(ingest, range(1, flush + 1))  # commits of 10 (batch_max): the fifth brings the device to 50 waiting
    wait_for(lambda: acks.seqs() == set(range(1, flush + 1)), 15, f"the first {flush} seqs acknowledged")
    assert [a.acked for a in acks.acks] == [[(1, flush)]]
    _feed(ingest, range(flush + 1, flush + 6))  # the drain's last five: acknowledged at their commit
    wait_for(lambda: acks.seqs() == set(range(1, flush + 6)), 15, "the drain's last seqs acknowledged")
    assert acks.early == []


def test_a_device_that_drained_waits_for_the_window_again_once_a_window_passed(
        consumer: Callable[[float], tuple[Ingest, _Acks]]) -> None:
    ingest, acks = consumer(1.0)
    flush = ingest.settings.ack_flush_seqs
    _feed(ingest, range(1, flush + 1))
    wait_for(lambda: acks.seqs() == set(range(1, flush + 1)), 15, f"the first {flush} seqs acknowledged")
    wait_for(lambda: ingest._draining.get(DEVICE, 0.0) < time.monotonic(), 15, "the drain's window over")
    sent = len(acks.acks)
    _feed(ingest, range(flush + 1, flush + 16))  # two commits of at most 10 (batch_max): one ack for both
    wait_for(lambda: acks.seqs() == set(range(1, flush + 16)), 15, "the fifteen later seqs acknowledged")
    assert [a.acked for a in acks.acks[sent:]] == [[(flush + 1, flush + 15)]]
    assert acks.early == []
