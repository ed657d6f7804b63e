"""Several hub processes on one broker (``--share``) and one records store: commands, the queue, the live stream,
alarms, notifications, sign-in throttling, payments and a killed process, whichever process a message or a
browser reaches.

The two-process tests run on one SQLite file (WAL, busy timeouts) and on PostgreSQL with VictoriaMetrics; the
in-process tests put two engines or throttles on two store handles of one file, which is what two processes do.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import DeviceState
from hub.alarms import feed as feed_module
from hub.auth.throttle import StoredSignInThrottle, ThrottleRule
from hub.notify.worker import NotificationWorker
from hub.records.postgresql import PostgresRecords, records_store
from hub.records.session import Session
from hub.store.base import SqlStore
from hub.store.sqlite import SQLiteStore
from tests.conftest import Agent, Broker, Hub, fast_air, wait_for
from tests.fixtures.victoria import Victoria
from tests.test_alarms import T0, Rig, rule
from tests.test_delivery import drain
from tests.test_gis import Kiosk
from tests.test_notify import HttpSink, _line, _sos
from tests.test_stream import BUTTON, SseReader
from tests.test_transactions import pay_five_rounds

SHARE = "ingest"


BACKENDS = ("sqlite", "postgresql+victoriametrics")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> list[str]:
    """The ``hub serve`` flags of a backend: the embedded SQLite file, or PostgreSQL and VictoriaMetrics."""
    if request.param == "sqlite":
        return []
    url: str = request.getfixturevalue("postgres_url")
    vm: Victoria = request.getfixturevalue("victoria")
    return ["--records", url, "--timeseries", vm.timeseries_url]


@pytest.fixture
def two_hubs(broker: Broker, procs: dict[str, Any], tmp_path: Path, backend: list[str]) -> list[Hub]:
    """Two ``nakhon hub serve`` processes in one share group on one broker and one records store."""
    data = tmp_path / "shared-hub"
    return [procs["hub"](broker.port, *backend, "--share", SHARE, "--client-id", f"hub-{name}", data=data)
            for name in ("a", "b")]


@pytest.fixture
def records(two_hubs: list[Hub], backend: list[str]) -> Iterator[SqlStore]:
    """The hubs' records store, opened by the test to read what they stored."""
    store = records_store(backend[1]) if backend else SQLiteStore(two_hubs[0].data / "hub.sqlite")
    store.open()
    yield store
    store.close()


def _rows(store: SqlStore, sql: str) -> list[tuple[Any, ...]]:
    return store.read(lambda db: [tuple(r) for r in db.execute(sql).fetchall()])


def _command(hub: Hub, device: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{hub.url}/api/devices/{device}/commands", json=body, headers=hub.auth, timeout=60)


def _online(hub: Hub, device: str) -> bool:
    return any(d["device"] == device and d["state"] == "online" for d in hub.get("/api/devices"))


def _received(hub: Hub) -> float:
    for line in httpx.get(f"{hub.url}/metrics", headers=hub.auth, timeout=10).text.splitlines():
        if line.startswith("nakhon_messages_received_total "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.broker
def test_a_command_through_either_hub_gets_its_reply_whichever_hub_received_it(
        two_hubs: list[Hub], broker: Broker, procs: dict[str, Any]) -> None:
    procs["agent"]("kk-aq-1101", broker.port, drivers=[fast_air(interval_s=0.05)])
    wait_for(lambda: _online(two_hubs[0], "kk-aq-1101"), 30, "the agent online")
    answers = [_command(two_hubs[i % 2], "kk-aq-1101", {"name": "ping", "timeout_s": 10}) for i in range(8)]
    assert [(r.status_code, r.json()["outcome"]) for r in answers] == [(200, "ok")] * 8
    # each answer as soon as the reply is stored, not when the caller's wait runs out on the other process
    assert max(r.elapsed.total_seconds() for r in answers) < 5, [r.elapsed for r in answers]
    # the broker split the replies: some reached the process that was not waiting for them
    assert all(_received(h) > 0 for h in two_hubs)


class DownlinkCounter:
    """Counts the commands the broker delivers to a device (a plain subscriber on its ``down/cmd``)."""

    def __init__(self, port: int, device: str) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"counter-{device}")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"nakhon/{device}/down/cmd", qos=1)
        self.client.loop_start()

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.ids.append(json.loads(message.payload)["cmd_id"])

    def count(self, cmd_id: str) -> int:
        with self._lock:
            return self.ids.count(cmd_id)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.broker
def test_a_queued_command_is_sent_once_by_one_of_the_hubs(two_hubs: list[Hub], broker: Broker,
                                                          procs: dict[str, Any]) -> None:
    agent: Agent = procs["agent"]("kk-aq-1102", broker.port, drivers=[fast_air(interval_s=1.0)])
    wait_for(lambda: _online(two_hubs[0], "kk-aq-1102"), 30, "the agent online")
    assert agent.stop() == 0
    wait_for(lambda: not _online(two_hubs[1], "kk-aq-1102"), 30, "the agent offline")
    counter = DownlinkCounter(broker.port, "kk-aq-1102")
    try:
        queued = [_command(two_hubs[i % 2], "kk-aq-1102", {"name": "ping", "queue": True}).json()["cmd_id"]
                  for i in range(6)]
        agent.start()

        def answered() -> bool:
            commands: list[dict[str, Any]] = two_hubs[1].get("/api/devices/kk-aq-1102/commands")
            return sum(bool(c["outcome"] == "ok") for c in commands if c["cmd_id"] in queued) >= len(queued)

        wait_for(answered, 60, "every queued command answered")
        wait_for(lambda: all(counter.count(c) >= 1 for c in queued), 10, "the counter to see every command")
        assert [counter.count(c) for c in queued] == [1] * len(queued)
        assert all(c["replays"] == 0 for c in two_hubs[0].get("/api/devices/kk-aq-1102/commands"))
    finally:
        counter.close()


@pytest.mark.broker
def test_the_stream_of_either_hub_carries_every_change_once_in_order_without_gaps(
        two_hubs: list[Hub], records: SqlStore, broker: Broker, procs: dict[str, Any]) -> None:
    readers = [SseReader(lambda h=h: h.url, h.auth).start() for h in two_hubs]  # type: ignore[misc]
    try:
        wait_for(lambda: all(r.connections for r in readers), 10, "both streams open")
        agent = procs["agent"]("kk-pole-1103", broker.port, drivers=[BUTTON])
        wait_for(lambda: len(readers[0].of("event")) >= 30, 60, "thirty events on the stream")
        assert agent.stop() == 0
        [(stored,)] = _rows(records, "SELECT count(*) FROM events WHERE device = 'kk-pole-1103'")
        # an event's feed row commits just after the event itself (the alarm engine's transaction)
        wait_for(lambda: _rows(records, "SELECT count(*) FROM feed WHERE type = 'event'") == [(stored,)], 10,
                 "every stored event in the feed")
        [(last,)] = _rows(records, "SELECT max(id) FROM feed")
        wait_for(lambda: all(r.messages and r.messages[-1][0] == last for r in readers), 10, "both streams caught up")
        assert all(_received(h) > 0 for h in two_hubs)
        for r in readers:
            ids = [i for i, _, _ in r.messages]
            assert ids == list(range(ids[0], ids[0] + len(ids)))  # every row, once, in order
            # a stream starts live when its request is served, which a loaded machine may do after the first press
            [(since_start,)] = _rows(records, f"SELECT count(*) FROM feed WHERE type = 'event' AND id >= {int(ids[0])}")  # noqa: S608 (an int)
            assert len(r.of("event")) == since_start
        first, second = (r.messages for r in readers)
        both = min(len(first), len(second))
        assert first[-both:] == second[-both:]  # the same rows from where both were open
    finally:
        for r in readers:
            r.stop()


@pytest.mark.broker
def test_a_hub_killed_mid_stream_loses_nothing_the_other_carries_on(two_hubs: list[Hub], records: SqlStore,
                                                                    broker: Broker, procs: dict[str, Any]) -> None:
    agents = [procs["agent"](f"kk-aq-11{i:02d}", broker.port, drivers=[fast_air(interval_s=0.01)])
              for i in range(10, 13)]
    wait_for(lambda: all(_received(h) > 100 for h in two_hubs), 30, "both hubs taking a share")
    two_hubs[0].kill()
    before = _received(two_hubs[1])
    wait_for(lambda: _received(two_hubs[1]) > before + 300, 30, "the other hub carrying on")
    produced = drain(agents, procs, broker.port, two_hubs[1])
    assert set(_rows(records, "SELECT device, seq FROM received")) == produced
    rows = _rows(records, "SELECT device, received, min_seq, max_seq FROM devices WHERE received > 0")
    assert all(received == last - first + 1 for _, received, first, last in rows), rows


@pytest.mark.broker
@pytest.mark.parametrize("backend", ["postgresql+victoriametrics"], indirect=True)
def test_twenty_kiosks_paying_through_two_hubs_on_postgresql_get_gapless_unique_receipts(
        two_hubs: list[Hub], records: SqlStore, broker: Broker) -> None:
    kiosks = [Kiosk(broker.port, f"kk-kiosk-{i:04d}") for i in range(20)]
    try:
        pay_five_rounds(kiosks)
    finally:
        for k in kiosks:
            k.close()
    rows = _rows(records, "SELECT office, fiscal_year, receipt_no, tx_id FROM ledger")
    assert len(rows) == 100 and len({r[3] for r in rows}) == 100 and len({r[2] for r in rows}) == 100
    for office in ("kkc-hq", "kkc-north"):
        numbers = sorted(int(r[2].rsplit("-", 1)[1]) for r in rows if r[0] == office)
        assert numbers == list(range(1, len(numbers) + 1))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Callable[..., tuple[Rig, Rig]]]:
    """Two alarm engines, each on its own handle of one store file: two hub processes as far as the store sees."""
    made: list[Rig] = []

    def make(rules: list[dict[str, Any]], channels: list[dict[str, Any]] | None = None) -> tuple[Rig, Rig]:
        a, b = Rig(tmp_path, rules, channels), Rig(tmp_path, rules, channels)
        b.seq = 1_000_000  # the two processes never take the same message
        made.extend((a, b))
        return a, b

    yield make
    for r in made:
        r.close()


def _tick(rigs: tuple[Rig, Rig], at: float) -> None:
    for r in rigs:
        r.tick(at)


def test_two_engines_learn_each_others_links_and_readings_and_raise_one_alarm(
        pair: Callable[..., tuple[Rig, Rig]]) -> None:
    a, b = pair([rule("quiet", "no_data", intervals=3), rule("down", "offline", grace_s=60, severity="major")])
    for r in (a, b):
        r.status("d1-x", DeviceState.ONLINE, pm=10.0)
    for t in range(0, 100, 10):  # every reading reaches process A only
        a.reading("d1-x", "pm2_5", 10, T0 + t, sensor="pm")
        _tick((a, b), T0 + t + 1)
    assert a.states() == []  # B saw no reading for 100 s, yet raises no no-data alarm
    a.now = T0 + 101
    a.status("d1-x", DeviceState.LOST)  # the last will reaches A
    _tick((a, b), T0 + 150)
    assert a.states() == []
    _tick((b, a), T0 + 200)
    assert a.states() == [("down", "d1-x", "active")]
    assert a.alarms()[0]["count"] == 1
    b.now = T0 + 210
    b.status("d1-x", DeviceState.ONLINE)  # it comes back through B, which never saw it go
    assert a.states() == [("down", "d1-x", "cleared")]


def test_an_event_taken_by_both_processes_raises_one_alarm_one_notification_and_one_feed_row(
        pair: Callable[..., tuple[Rig, Rig]], tmp_path: Path, sink: HttpSink) -> None:
    a, b = pair([_sos("line-duty")], [_line(tmp_path, sink)])
    a.status("pole-0001", DeviceState.ONLINE)
    a.event("pole-0001", "sos.pressed", seq=7)
    b.event("pole-0001", "sos.pressed", seq=7)  # redelivered to the other process after a lost ack
    b.event("pole-0001", "sos.pressed", seq=8)  # the same alarm repeats, raised by B
    assert a.states() == [("sos", "pole-0001", "active")]
    assert a.alarms()[0]["count"] == 2
    assert a.notifications() == [(1, "line-duty", 0)]
    ids = a.store.read(lambda db: [i for (i,) in db.execute("SELECT id FROM feed ORDER BY id")])
    assert ids == list(range(1, len(ids) + 1))
    events = a.store.read(lambda db: db.execute("SELECT count(*) FROM feed WHERE type = 'event'").fetchone()[0])
    assert events == 2


class SlowSink(HttpSink):
    """A channel that takes a while to answer, so two workers try at the same time."""

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        time.sleep(0.5)
        return super().answer(path, headers, body)


@pytest.fixture
def slow_sink() -> Iterator[SlowSink]:
    sink = SlowSink()
    yield sink
    sink.close()


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    made = HttpSink()
    yield made
    made.close()


def test_two_notification_workers_send_a_notification_once(pair: Callable[..., tuple[Rig, Rig]], tmp_path: Path,
                                                          slow_sink: SlowSink) -> None:
    a, b = pair([_sos("line-duty")], [_line(tmp_path, slow_sink)])
    a.status("pole-0001", DeviceState.ONLINE)
    a.event("pole-0001", "sos.pressed", seq=1)
    workers = [NotificationWorker(r.engine, clock=lambda r=r: r.now) for r in (a, b)]  # type: ignore[misc]
    start = threading.Barrier(2)

    def drain(worker: NotificationWorker) -> int:
        start.wait()
        return worker.drain()

    with ThreadPoolExecutor(2) as pool:
        tried = sorted(pool.map(drain, workers))
    assert tried == [0, 1]
    assert len(slow_sink.requests) == 1
    [n] = a.store.read(lambda db: db.execute("SELECT state, attempts FROM notifications").fetchall())
    assert n == ("sent", 1)


def test_failed_sign_ins_count_on_every_hub_process(tmp_path: Path) -> None:
    stores = [SQLiteStore(tmp_path / "hub.sqlite") for _ in range(2)]
    for s in stores:
        s.open()
    try:
        clock = [T0]
        rule_ = ThrottleRule(free=2, base_s=1, max_s=8, window_s=60)
        a, b = (StoredSignInThrottle(s, by_name=rule_, by_address=rule_, clock=lambda: clock[0]) for s in stores)
        delays = []
        for i in range(6):  # a load balancer spreads the guesses over both processes
            delays.append((a, b)[i % 2].delay("somchai", "10.0.0.1"))
            (a, b)[i % 2].failed("somchai", "10.0.0.1")
        assert delays == [0, 0, 1, 2, 4, 8]
        b.succeeded("somchai")
        assert a.delay("somchai", "10.0.0.9") == 0
        assert a.delay("malee", "10.0.0.1") == 8  # the address keeps its count
        clock[0] = T0 + 61
        assert b.delay("malee", "10.0.0.1") == 0
        assert a.failed("malee", "10.0.0.1") == 1
        rows = stores[0].read(lambda db: db.execute("SELECT count(*) FROM signin_failures").fetchone()[0])
        assert rows == 2  # older than the window: gone
    finally:
        for s in stores:
            s.close()


def test_on_postgresql_concurrent_writers_give_gapless_feed_ids_a_follower_never_skips(postgres_url: str) -> None:
    stores = [PostgresRecords(postgres_url, max_connections=4) for _ in range(2)]
    for s in stores:
        s.open()
    try:
        seen: list[int] = []
        done = threading.Event()

        def follow() -> None:
            after = 0
            while not done.is_set() or after < 160:
                items = stores[1].read(partial(feed_module.backlog, after=after))
                seen.extend(i.id for i in items)
                after = items[-1].id if items else after

        def write(worker: int) -> None:
            for n in range(20):
                def work(db: Session, n: int = n) -> None:
                    feed_module.append(db, T0, "event", {"worker": worker, "n": n})
                    time.sleep(0.002 * ((worker + n) % 3))  # commits land out of the order ids were taken
                stores[worker % 2].write(work)

        follower = threading.Thread(target=follow)
        follower.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(8)))
        done.set()
        follower.join(timeout=30)
        assert seen == list(range(1, 161))
    finally:
        for s in stores:
            s.close()


def test_on_postgresql_failed_sign_ins_count_on_every_hub_process(postgres_url: str) -> None:
    stores = [records_store(postgres_url) for _ in range(2)]
    for s in stores:
        s.open()
    try:
        rule_ = ThrottleRule(free=1, base_s=1, max_s=8, window_s=60)
        a, b = (StoredSignInThrottle(s, by_name=rule_, by_address=rule_) for s in stores)
        for i in range(4):
            (a, b)[i % 2].failed("somchai", "10.0.0.1")
        assert b.delay("somchai", "10.0.0.2") == 8
        a.succeeded("somchai")
        assert b.delay("somchai", "10.0.0.2") == 0
    finally:
        for s in stores:
            s.close()
