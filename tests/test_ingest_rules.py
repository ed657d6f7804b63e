"""Hub rules without a broker: classification into dead letters, dedup, loss counting, exactly-once transactions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.contract import Reading, Status, Telemetry, Tx, TxOutcome, TxStatus, now
from hub.ingest.classify import TxRequest, classify
from hub.router import Router
from hub.store.base import DeadLetter, IngestBatch, SeqMessage, StatusUpdate
from hub.store.sqlite import SQLiteStore


def _telemetry(device: str, seq: int) -> bytes:
    return Telemetry(device=device, seq=seq, sent_at=now(), readings=[
        Reading(ts=now(), sensor="pm", quantity="pm2_5", value=10.0 + seq, unit="ug/m3"),
        Reading(ts=now(), sensor="pm", quantity="pm10", value=20.0 + seq, unit="ug/m3")]).to_json()


@pytest.mark.parametrize("topic,payload,reason", [
    ("nakhon/kk-aq-0007/up/telemetry", b"{nope", "invalid_json"),
    ("nakhon/kk-aq-0007/up/telemetry", b"\xff\xfe\x00", "invalid_json"),
    ("nakhon/kk-aq-0007/up/telemetry", b'"a string"', "invalid_json"),
    ("nakhon/kk-aq-0007/up/telemetry", b'{"v":1,"device":"kk-aq-0007"}', "schema"),
    ("nakhon/kk-aq-0007/up/telemetry", _telemetry("kk-aq-0008", 1), "device_mismatch"),
    ("nakhon/kk-aq-0007/up/firmware", _telemetry("kk-aq-0007", 1), "bad_topic"),
    ("nakhon/KK/up/telemetry", _telemetry("kk-aq-0007", 1), "bad_topic"),
    ("nakhon/kk-aq-0007/up/telemetry", b"{" + b" " * 1100 + b"}", "oversize"),
], ids=["broken-json", "not-utf8", "a-string", "schema", "device-mismatch", "bad-kind", "bad-device-id", "oversize"])
# fixed ids: the payloads hold the time they were built, and pytest-xdist's workers must collect the same names
def test_each_kind_of_bad_message_becomes_a_dead_letter_with_its_reason(topic: str, payload: bytes,
                                                                         reason: str) -> None:
    item = classify(topic, payload, 1.0, max_payload=1000)
    assert isinstance(item, DeadLetter)
    assert item.reason == reason
    assert item.topic == topic and item.size == len(payload) and item.detail


def test_a_schema_failure_from_the_topics_own_device_is_acknowledgeable() -> None:
    payload = json.dumps({"v": 1, "device": "kk-aq-0007", "seq": 12, "sent_at": "2026-11-20T03:15:00Z",
                          "readings": []}).encode()
    item = classify("nakhon/kk-aq-0007/up/telemetry", payload, 1.0)
    assert isinstance(item, DeadLetter) and item.reason == "schema"
    assert (item.device, item.seq) == ("kk-aq-0007", 12)
    assert "readings" in item.detail


def test_valid_messages_are_classified_by_topic() -> None:
    assert isinstance(classify("nakhon/kk-aq-0007/up/telemetry", _telemetry("kk-aq-0007", 1), 1.0), SeqMessage)
    status = Status(device="kk-aq-0007", state="online", at=now()).to_json()
    assert isinstance(classify("nakhon/kk-aq-0007/up/status", status, 1.0), StatusUpdate)
    tx = Tx(device="kk-kiosk-0001", seq=3, tx_id="tx-00000001", kind="fee.payment", created_at=now(),
            data={}).to_json()
    assert isinstance(classify("nakhon/kk-kiosk-0001/up/tx", tx, 1.0), TxRequest)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "hub.sqlite")
    s.open()
    yield s
    s.close()


def _batch(*items: object) -> IngestBatch:
    batch = IngestBatch()
    for item in items:
        if isinstance(item, SeqMessage):
            batch.messages.append(item)
        elif isinstance(item, DeadLetter):
            batch.deadletters.append(item)
    return batch


def _msg(device: str, seq: int) -> SeqMessage:
    item = classify(f"nakhon/{device}/up/telemetry", _telemetry(device, seq), 1.0)
    assert isinstance(item, SeqMessage)
    return item


def test_duplicates_are_stored_once_and_acknowledged_again(store: SQLiteStore) -> None:
    first = store.ingest(_batch(_msg("kk-aq-0007", 1), _msg("kk-aq-0007", 2)))
    assert first.new_messages == 2 and first.readings_stored == 4 and first.acks == {"kk-aq-0007": [1, 2]}
    again = store.ingest(_batch(_msg("kk-aq-0007", 2), _msg("kk-aq-0007", 2), _msg("kk-aq-0007", 3)))
    assert again.new_messages == 1 and again.duplicates == 2
    assert sorted(again.acks["kk-aq-0007"]) == [2, 2, 3]
    assert len(store.readings("kk-aq-0007", None, None, None, 100)) == 6
    assert store.device("kk-aq-0007").duplicates == 2  # type: ignore[union-attr]


def test_gaps_count_as_lost_until_the_missing_message_arrives(store: SQLiteStore) -> None:
    store.ingest(_batch(_msg("kk-aq-0007", 1), _msg("kk-aq-0007", 2), _msg("kk-aq-0007", 6)))
    assert store.device("kk-aq-0007").lost == 3  # type: ignore[union-attr]
    store.ingest(_batch(_msg("kk-aq-0007", 4)))
    assert store.device("kk-aq-0007").lost == 2  # type: ignore[union-attr]
    assert store.device("kk-aq-0007").last_seq == 6  # type: ignore[union-attr]


def test_readings_are_queried_by_quantity_and_time_window(store: SQLiteStore) -> None:
    store.ingest(_batch(*[_msg("kk-aq-0007", s) for s in range(1, 6)]))
    pm25 = store.readings("kk-aq-0007", "pm2_5", None, None, 100)
    assert [r.value for r in pm25] == [11.0, 12.0, 13.0, 14.0, 15.0]
    assert all(r.unit == "ug/m3" for r in pm25)
    since = pm25[2].ts
    assert len(store.readings("kk-aq-0007", "pm2_5", since, None, 100)) >= 1
    assert store.readings("kk-aq-0007", "pm2_5", None, pm25[0].ts, 100) == []


def test_a_transaction_is_applied_once_whatever_the_number_of_deliveries(store: SQLiteStore) -> None:
    applied = []

    class Counting:
        def apply(self, tx: Tx, db: object) -> TxOutcome:
            applied.append(tx.tx_id)
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                             result={"receipt": "KK-2570-000001"})

    router = Router({"fee.payment": Counting()})
    tx = Tx(device="kk-kiosk-0001", seq=3, tx_id="tx-00000001", kind="fee.payment", created_at=now(), data={})
    answers = [store.apply_tx(tx, 1.0, router.decide) for _ in range(5)]
    assert applied == ["tx-00000001"]
    assert [dup for _, dup in answers] == [False, True, True, True, True]
    assert len({a.model_dump_json() for a, _ in answers}) == 1
    unknown = Tx(device="kk-kiosk-0001", seq=4, tx_id="tx-00000002", kind="parking.fine", created_at=now(),
                 data={})
    outcome, _ = store.apply_tx(unknown, 1.0, router.decide)
    assert outcome.status is TxStatus.REJECTED and "unknown transaction kind 'parking.fine'" in (outcome.reason or "")
    stolen = Tx(device="kk-kiosk-0002", seq=9, tx_id="tx-00000001", kind="fee.payment", created_at=now(), data={})
    outcome, duplicate = store.apply_tx(stolen, 1.0, router.decide)
    assert outcome.status is TxStatus.REJECTED and not duplicate and "another device" in (outcome.reason or "")
    assert applied == ["tx-00000001"]
