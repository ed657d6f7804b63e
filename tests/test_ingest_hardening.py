"""No single message stops ingest: the contract's bounds, the writer's isolation, its health, and who may pay."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from edge.contract import (
    INT64_MAX,
    DeviceState,
    Reading,
    Status,
    Telemetry,
    Tx,
    TxOutcome,
    TxStatus,
    format_timestamp,
    now,
)
from hub.api.app import create_app
from hub.audit import AuditLog
from hub.errors import RecordRejected
from hub.ingest.classify import ClockWindow, Reason, TxRefused, classify
from hub.ingest.consumer import Ingest, IngestSettings
from hub.metrics import HubMetrics
from hub.records.session import Session
from hub.router import Route, Router
from hub.store.base import DeadLetter, IngestBatch, SeqMessage
from hub.store.sqlite import SQLiteStore
from tests.conftest import Broker, Hub, signed_client, wait_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
POLE = "kk-aq-0666"


def _stamp() -> str:
    return format_timestamp(now())


def _telemetry(device: str = POLE, seq: Any = 5, value: Any = 12.5, sensor: str = "pm", **top: Any) -> dict[str, Any]:
    return {"v": 1, "device": device, "seq": seq, "sent_at": _stamp(),
            "readings": [{"ts": _stamp(), "sensor": sensor, "quantity": "pm2_5", "value": value, "unit": "ug/m3"}],
            **top}


def _event(seq: Any) -> dict[str, Any]:
    return {"v": 1, "device": POLE, "seq": seq, "ts": _stamp(), "sensor": "sos", "event": "sos.pressed",
            "severity": "critical", "data": {}}


def _tx(device: str, seq: Any, tx_id: str, method: str = "cash") -> dict[str, Any]:
    return {"v": 1, "device": device, "seq": seq, "tx_id": tx_id, "kind": "fee.payment", "created_at": _stamp(),
            "data": {"office": "kkc-hq", "service": "garbage-monthly", "amount_satang": 4000, "method": method}}


def _deep(levels: int, seq: int) -> bytes:
    head = f'{{"v": 1, "device": "{POLE}", "seq": {seq}, "x": '.encode()
    return head + b"[" * levels + b"]" * levels + b"}"


def _raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


KILLERS: list[tuple[str, str, bytes, str]] = [
    ("nested-10000", "up/telemetry", _deep(10_000, 101), "too_deep"),
    ("nested-100", "up/event", _deep(100, 102), "too_deep"),
    ("telemetry-seq-2^63", "up/telemetry", _raw(_telemetry(seq=2**63)), "out_of_bounds"),
    ("event-seq-2^63", "up/event", _raw(_event(2**63)), "out_of_bounds"),
    ("tx-seq-2^63", "up/tx", _raw(_tx(POLE, 2**63, "kk-aq-0666-tx-0001")), "out_of_bounds"),
    ("value-2^63", "up/telemetry", _raw(_telemetry(seq=103, value=2**63)), "out_of_bounds"),
    ("value--2^63-1", "up/telemetry", _raw(_telemetry(seq=104, value=-(2**63) - 1)), "out_of_bounds"),
    ("value-nan", "up/telemetry", _raw(_telemetry(seq=105, value=float("nan"))), "out_of_bounds"),
    ("value-infinity", "up/telemetry", _raw(_telemetry(seq=106, value=float("-inf"))), "out_of_bounds"),
    ("event-data-nan", "up/event", _raw({**_event(107), "data": {"held_s": float("nan")}}), "out_of_bounds"),
    ("long-string", "up/telemetry", _raw(_telemetry(seq=108, value="x" * 5000)), "out_of_bounds"),
    ("year-0-in-utc", "up/telemetry", _raw(_telemetry(seq=109, sent_at="0001-01-01T00:00:00+01:00")),
     "out_of_bounds"),
    ("from-2100", "up/telemetry", _raw({**_telemetry(seq=110), "readings": [
        {"ts": "2100-01-01T00:00:00Z", "sensor": "pm", "quantity": "pm2_5", "value": 1, "unit": None}]}),
     "clock_skew"),
    ("from-1970", "up/event", _raw({**_event(111), "ts": "1970-01-01T00:00:00Z"}), "clock_skew"),
]
"""(id, topic suffix, payload, reason): each once killed the hub's writer; the seqs differ so none is a duplicate."""


@pytest.mark.parametrize("suffix,payload,reason", [k[1:] for k in KILLERS], ids=[k[0] for k in KILLERS])
def test_each_killer_is_classified_as_a_dead_letter_with_its_own_reason(suffix: str, payload: bytes,
                                                                        reason: str) -> None:
    item = classify(f"nakhon/{POLE}/{suffix}", payload, time.time(), window=ClockWindow())
    if isinstance(item, TxRefused):  # a transaction that names its tx_id is also answered
        item = item.letter
    assert isinstance(item, DeadLetter)
    assert (item.reason, item.size) == (reason, len(payload))
    assert item.detail


@pytest.mark.parametrize("seq", [True, "5", 5.0, 0, -1, None])
def test_a_seq_must_be_a_strict_positive_integer(seq: Any) -> None:
    with pytest.raises(ValidationError):
        Telemetry.model_validate_json(_raw(_telemetry(seq=seq)))
    item = classify(f"nakhon/{POLE}/up/telemetry", _raw(_telemetry(seq=seq)), time.time())
    assert isinstance(item, DeadLetter) and item.reason == "schema"
    assert item.seq is None  # not a seq the hub can acknowledge


def test_the_largest_int64_is_still_a_valid_seq_and_value() -> None:
    item = classify(f"nakhon/{POLE}/up/telemetry", _raw(_telemetry(seq=INT64_MAX, value=INT64_MAX)), time.time())
    assert isinstance(item, SeqMessage) and item.seq == INT64_MAX


def test_an_out_of_bounds_message_from_its_own_device_is_acknowledged_except_a_transaction() -> None:
    nan = classify(f"nakhon/{POLE}/up/telemetry", _raw(_telemetry(seq=9, value=float("nan"))), time.time())
    assert isinstance(nan, DeadLetter) and (nan.device, nan.seq) == (POLE, 9)
    assert "readings.0.value" in nan.detail
    future = classify(f"nakhon/{POLE}/up/event", _raw({**_event(10), "ts": "2100-01-01T00:00:00Z"}), time.time(),
                      window=ClockWindow())
    assert isinstance(future, DeadLetter) and (future.device, future.seq) == (POLE, 10)
    tx = _tx(POLE, 11, "kk-aq-0666-tx-0002")
    tx["data"]["amount_satang"] = 2**64
    refused = classify(f"nakhon/{POLE}/up/tx", _raw(tx), time.time())
    assert isinstance(refused, TxRefused) and refused.tx_id == "kk-aq-0666-tx-0002"  # answered, never acked
    assert refused.letter.reason == "out_of_bounds" and refused.letter.seq is None


def test_the_clock_window_is_the_hubs_setting() -> None:
    ahead = _raw({**_event(12), "ts": format_timestamp(datetime.fromtimestamp(time.time() + 120, UTC))})
    assert isinstance(classify(f"nakhon/{POLE}/up/event", ahead, time.time(), window=ClockWindow()), SeqMessage)
    tight = classify(f"nakhon/{POLE}/up/event", ahead, time.time(), window=ClockWindow(ahead_s=60))
    assert isinstance(tight, DeadLetter) and tight.reason == "clock_skew" and "ahead of the hub's clock" in tight.detail


def test_the_edge_can_still_build_old_messages_but_never_a_nan() -> None:
    old = datetime(2020, 1, 1, tzinfo=UTC)  # an outbox record from long ago still serialises on the device
    Telemetry(device=POLE, seq=1, sent_at=old, readings=[Reading(ts=old, sensor="pm", quantity="pm2_5", value=1,
                                                                 unit=None)]).to_json()
    for bad in (float("nan"), float("inf"), 2**63):
        with pytest.raises(ValidationError, match=r"not finite|64-bit range"):
            Reading(ts=old, sensor="pm", quantity="pm2_5", value=bad, unit=None)


def test_every_dead_letter_reason_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### 6.1 Dead letters"):text.index("### 6.2")]
    documented = set(re.findall(r"^\| \d+ \| `([a-z_]+)` \|", section, flags=re.M))
    assert documented == {r.value for r in Reason}


# -- through a real broker -----------------------------------------------------------------------------------------

class Device:
    """A bare MQTT client speaking the contract for one device; collects what the hub sends it."""

    def __init__(self, port: int, device: str, node: str | None = None) -> None:
        self.device = device
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-test", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"nakhon/{device}/down/#", qos=1)
        if node is not None:
            status = Status(device=device, state=DeviceState.ONLINE, at=now(), node=node)
            self.publish("up/status", status.to_json())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic.rsplit("/", 2)[-2] + "/" + message.topic.rsplit("/", 1)[-1],
                                  json.loads(message.payload)))

    def publish(self, suffix: str, payload: bytes) -> None:
        self.client.publish(f"nakhon/{self.device}/{suffix}", payload, qos=1).wait_for_publish(10)

    def acked(self) -> set[int]:
        with self._lock:
            return {s for suffix, body in self.received if suffix == "down/ack"
                    for first, last in body["acked"] for s in range(first, last + 1)}

    def answer(self, tx_id: str, n: int = 1) -> TxOutcome:
        def nth() -> TxOutcome | None:
            with self._lock:
                found = [TxOutcome.model_validate(b) for s, b in self.received
                         if s == "down/tx" and b["tx_id"] == tx_id]
            return found[n - 1] if len(found) >= n else None
        answer: TxOutcome = wait_for(nth, 30, f"answer {n} to {tx_id}")
        return answer

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _acked(device: Device, seq: int) -> Callable[[], bool]:
    return lambda: seq in device.acked()


def _seq_of(suffix: str, payload: bytes) -> int | None:
    letter = classify(f"nakhon/{POLE}/{suffix}", payload, time.time(), window=ClockWindow())
    return letter.seq if isinstance(letter, DeadLetter) else None


def _letters(hub: Hub) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = hub.get("/api/deadletters", limit=1000)
    return letters


@pytest.mark.broker
def test_every_killer_through_a_real_broker_and_hub_leaves_the_fleet_running(broker: Broker,
                                                                             procs: dict[str, Any]) -> None:
    hub: Hub = procs["hub"](broker.port)
    killer = Device(broker.port, POLE, node="air-quality-pole")
    honest = Device(broker.port, "kk-aq-0001", node="air-quality-pole")
    try:
        for round_ in (1, 2):  # a device resends what it was not acknowledged: the second round must not kill it
            for _, suffix, payload, _ in KILLERS:
                killer.publish(suffix, payload)
            honest.publish("up/telemetry", Telemetry.model_validate(_telemetry("kk-aq-0001", round_)).to_json())
            wait_for(_acked(honest, round_), 30, f"the honest device's seq {round_} acknowledged")
        assert {s for d, s in hub.stored() if d == "kk-aq-0001"} == {1, 2}
        # those that name their device and a storable seq are acknowledged (the device stops resending them);
        # the others come back as a new dead letter each time
        trusted = {seq for _, suffix, payload, _ in KILLERS if (seq := _seq_of(suffix, payload)) is not None}
        assert trusted == set(range(102, 112))
        assert killer.acked() == trusted
        expected = sorted([r for *_, r in KILLERS] + [r for _, suffix, p, r in KILLERS if _seq_of(suffix, p) is None])
        wait_for(lambda: len(_letters(hub)) >= len(expected), 30, "every killer in the dead letters")
        assert sorted(d["reason"] for d in _letters(hub)) == expected
        health = hub.get("/healthz")
        assert health["status"] == "ok" and health["writer"] is True and hub.alive()
    finally:
        killer.close()
        honest.close()


@pytest.mark.broker
def test_an_air_quality_pole_cannot_take_a_cash_payment(broker: Broker, procs: dict[str, Any]) -> None:
    hub: Hub = procs["hub"](broker.port)
    pole = Device(broker.port, POLE, node="air-quality-pole")
    stranger = Device(broker.port, "kk-aq-0667")  # never declared a node kind
    kiosk = Device(broker.port, "kk-kiosk-0042", node="service-kiosk")
    try:
        pole.publish("up/tx", _raw(_tx(POLE, 1, "kk-aq-0666-pay-0001")))
        refused = pole.answer("kk-aq-0666-pay-0001")
        assert refused.status is TxStatus.REJECTED and refused.result == {}
        assert refused.reason is not None and refused.reason.startswith("kind_not_allowed")
        assert "'air-quality-pole'" in refused.reason and "service-kiosk" in refused.reason
        pole.publish("up/tx", _raw(_tx(POLE, 1, "kk-aq-0666-pay-0001")))  # resent: the same refusal
        again = pole.answer("kk-aq-0666-pay-0001", n=2)
        assert again.duplicate and again.reason == refused.reason
        # the pole's credentials cannot re-register it as a kiosk: the first node kind declared stays
        claim = Status(device=POLE, state=DeviceState.ONLINE, at=now(), node="service-kiosk")
        pole.publish("up/status", claim.to_json())
        pole.publish("up/tx", _raw(_tx(POLE, 2, "kk-aq-0666-pay-0002")))
        assert pole.answer("kk-aq-0666-pay-0002").status is TxStatus.REJECTED
        assert hub.get(f"/api/devices/{POLE}")["node"] == "air-quality-pole"
        stranger.publish("up/tx", _raw(_tx("kk-aq-0667", 1, "kk-aq-0667-pay-0001")))
        assert stranger.answer("kk-aq-0667-pay-0001").status is TxStatus.REJECTED
        kiosk.publish("up/tx", _raw(_tx("kk-kiosk-0042", 1, "kk-kiosk-0042-pay-0001")))
        paid = kiosk.answer("kk-kiosk-0042-pay-0001")
        assert paid.status is TxStatus.ACCEPTED and paid.result["receipt_no"]
        with hub.db() as db:
            ledger = db.execute("SELECT DISTINCT tx_id FROM ledger").fetchall()
        assert ledger == [("kk-kiosk-0042-pay-0001",)]
        letters = hub.get("/api/deadletters", reason="kind_not_allowed")
        assert sorted(d["topic"] for d in letters) == [f"nakhon/{POLE}/up/tx"] * 2 + ["nakhon/kk-aq-0667/up/tx"]
    finally:
        pole.close()
        stranger.close()
        kiosk.close()


def test_a_transaction_that_breaks_the_contract_is_answered_rejected_and_a_kiosk_clock_never_refuses_one(
        broker: Broker, procs: dict[str, Any]) -> None:
    procs["hub"](broker.port)
    kiosk = Device(broker.port, "kk-kiosk-0043", node="service-kiosk")
    try:
        huge = _tx("kk-kiosk-0043", 1, "kk-kiosk-0043-pay-0001")
        huge["data"]["amount_satang"] = 2**64
        kiosk.publish("up/tx", _raw(huge))
        refused = kiosk.answer("kk-kiosk-0043-pay-0001")
        assert refused.status is TxStatus.REJECTED and refused.reason is not None
        assert refused.reason.startswith("out_of_bounds") and refused.result == {}
        future = {**_tx("kk-kiosk-0043", 2, "kk-kiosk-0043-pay-0002"), "created_at": "2100-01-01T00:00:00Z"}
        kiosk.publish("up/tx", _raw(future))
        paid = kiosk.answer("kk-kiosk-0043-pay-0002")
        assert paid.status is TxStatus.ACCEPTED and paid.result["receipt_no"]
        broken_copy = {**future, "data": {**future["data"], "amount_satang": -1}}
        kiosk.publish("up/tx", _raw(broken_copy))  # a broken copy of an applied one: its outcome stands
        again = kiosk.answer("kk-kiosk-0043-pay-0002", n=2)
        assert again.duplicate and again.status is TxStatus.ACCEPTED
        assert again.result["receipt_no"] == paid.result["receipt_no"]
    finally:
        kiosk.close()


# -- the writer in process, against a real broker ------------------------------------------------------------------

def _poison(db: Session) -> None:
    """A store that refuses one row the way SQLite refuses a constraint (an IntegrityError)."""
    db.execute("CREATE TRIGGER IF NOT EXISTS refuse_poison BEFORE INSERT ON readings WHEN NEW.sensor = 'poison' "
               "BEGIN SELECT RAISE(ABORT, 'poisoned reading'); END")


class _Exploding:
    """A route with a bug: every transaction it gets raises a KeyError."""

    def apply(self, tx: Tx, db: Any) -> TxOutcome:
        raise KeyError("office")


@pytest.fixture
def ingest(broker: Broker, tmp_path: Path) -> Iterator[Ingest]:
    store = SQLiteStore(tmp_path / "hub.sqlite", schemas=(_poison,))
    store.open()
    routes: dict[str, Route] = {"fee.payment": _Exploding()}
    settings = IngestSettings(port=broker.port, client_id="hub-under-test", max_unwritten_s=0.5, batch_max=50)
    consumer = Ingest(store, settings, HubMetrics(store), Router(routes))
    consumer.start()
    wait_for(consumer.connected.is_set, 10, "ingest connected")
    yield consumer
    consumer.stop()
    store.close()


def _client(ingest: Ingest) -> TestClient:
    store = ingest.store
    assert isinstance(store, SQLiteStore)
    return signed_client(create_app(store, ingest.metrics, ingest.commands, broker_connected=ingest.connected.is_set,
                                    writer_state=ingest.writer_state, audit=AuditLog(store),
                                    timeseries=store.timeseries), store)


def _metric(api: TestClient, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", api.get("/metrics").text, flags=re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.mark.broker
def test_a_row_the_store_refuses_is_dead_lettered_alone_and_the_rest_committed(broker: Broker,
                                                                               ingest: Ingest) -> None:
    device = Device(broker.port, "kk-aq-0100", node="air-quality-pole")
    try:
        for seq in range(1, 41):
            body = _telemetry("kk-aq-0100", seq, sensor="poison" if seq == 17 else "pm")
            device.client.publish("nakhon/kk-aq-0100/up/telemetry", _raw(body), qos=1)
        wait_for(lambda: device.acked() >= set(range(1, 41)), 30, "all 40 seqs acknowledged")
    finally:
        device.close()
    store = ingest.store
    assert isinstance(store, SQLiteStore)
    stored = {s for d, s in store.stored_seqs() if d == "kk-aq-0100"}
    assert stored == set(range(1, 41))  # 17 as a dead letter: settled, so the device stops resending it
    assert {r.seq for r in store.readings("kk-aq-0100", None, None, None, 100)} == set(range(1, 41)) - {17}
    (letter,) = store.deadletters(10, "store_rejected")
    assert "IntegrityError" in letter.detail and "poisoned reading" in letter.detail
    api = _client(ingest)
    assert _metric(api, "nakhon_ingest_writer_errors_total") == 1
    assert _metric(api, "nakhon_ingest_writer_up") == 1
    assert api.get("/healthz").status_code == 200


@pytest.mark.broker
def test_a_bug_in_a_route_is_isolated_to_its_transaction(broker: Broker, ingest: Ingest) -> None:
    kiosk = Device(broker.port, "kk-kiosk-0100", node="service-kiosk")
    try:
        kiosk.publish("up/tx", _raw(_tx("kk-kiosk-0100", 1, "kk-kiosk-0100-pay-0001")))
        answer = kiosk.answer("kk-kiosk-0100-pay-0001")
        assert answer.status is TxStatus.REJECTED and answer.reason is not None
        assert answer.reason.startswith("store_rejected") and "office" not in answer.reason
        (letter,) = ingest.store.deadletters(10, "store_rejected")
        assert letter.topic == "nakhon/kk-kiosk-0100/up/tx" and "KeyError" in letter.detail
        kiosk.publish("up/telemetry", _raw(_telemetry("kk-kiosk-0100", 2)))
        wait_for(lambda: 2 in kiosk.acked(), 30, "the next message stored and acknowledged")
    finally:
        kiosk.close()
    assert _client(ingest).get("/healthz").json()["writer"] is True


@pytest.mark.broker
def test_healthz_answers_503_while_the_writer_is_stuck_or_stopped(broker: Broker, ingest: Ingest,
                                                                   tmp_path: Path) -> None:
    api = _client(ingest)
    assert api.get("/healthz").status_code == 200
    device = Device(broker.port, "kk-aq-0101")
    blocker = sqlite3.connect(tmp_path / "hub.sqlite", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database: ingest waits with the batch in hand
        device.publish("up/telemetry", _raw(_telemetry("kk-aq-0101", 1)))
        stuck = wait_for(lambda: (r := api.get("/healthz")).status_code == 503 and r.json(), 20, "a 503")
        assert stuck["writer"] is False and stuck["writer_running"] is True and stuck["oldest_unwritten_s"] > 0.5
        assert _metric(api, "nakhon_ingest_oldest_unwritten_seconds") > 0.5
        blocker.execute("ROLLBACK")
        wait_for(lambda: 1 in device.acked(), 60, "the message stored once the database is free")
        assert api.get("/healthz").status_code == 200
    finally:
        blocker.close()
        device.close()
    ingest.stop()
    stopped = api.get("/healthz")
    assert stopped.status_code == 503 and stopped.json()["writer_running"] is False
    assert _metric(api, "nakhon_ingest_writer_up") == 0


@pytest.mark.broker
def test_a_message_that_breaks_classification_is_set_aside_alone(broker: Broker, ingest: Ingest,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(topic_name: str, payload: bytes, received_at: float, **kwargs: Any) -> Any:
        if b'"seq": 3,' in payload:
            raise RuntimeError("a bug in classification")
        return classify(topic_name, payload, received_at, **kwargs)

    monkeypatch.setattr("hub.ingest.consumer.classify", buggy)
    device = Device(broker.port, "kk-aq-0102")
    try:
        for seq in range(1, 6):
            device.client.publish("nakhon/kk-aq-0102/up/telemetry", _raw(_telemetry("kk-aq-0102", seq)), qos=1)
        wait_for(lambda: device.acked() >= {1, 2, 4, 5}, 30, "the other four acknowledged")
        (letter,) = wait_for(lambda: ingest.store.deadletters(10, "store_rejected"), 10, "the dead letter")
    finally:
        device.close()
    assert "RuntimeError: a bug in classification" in letter.detail and b'"seq": 3,' in letter.payload
    assert 3 not in device.acked()  # unread, so not settled: the device sends it again after the fix


def test_a_value_the_store_cannot_hold_is_a_refused_record_not_a_retryable_failure(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.sqlite", schemas=(_poison,))
    store.open()
    try:
        # built past the contract, as a bug elsewhere could: the store still answers with its own error
        too_big = SeqMessage(device=POLE, seq=2**63, received_at=time.time(), telemetry=[
            Reading(ts=now(), sensor="pm", quantity="pm2_5", value=1, unit=None)])
        poisoned = SeqMessage(device=POLE, seq=1, received_at=time.time(), telemetry=[
            Reading(ts=now(), sensor="poison", quantity="pm2_5", value=1, unit=None)])
        for message in (too_big, poisoned):
            with pytest.raises(RecordRejected):
                store.ingest(IngestBatch(messages=[message]))
        assert store.stored_seqs() == set()  # rolled back whole
        store.ingest(IngestBatch(messages=[SeqMessage(device=POLE, seq=2, received_at=time.time(), telemetry=[
            Reading(ts=now(), sensor="pm", quantity="pm2_5", value=1, unit=None)])]))
        assert store.stored_seqs() == {(POLE, 2)}
    finally:
        store.close()
