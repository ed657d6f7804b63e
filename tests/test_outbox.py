"""The durable outbox: seq never reused, bounded classes, acknowledgements, transactions never dropped."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from edge.agents.outbox import Outbox, RecordClass, storage_error
from edge.config import OutboxConfig
from edge.contract import Event, Reading, Severity, Telemetry, Tx, now
from edge.errors import OutboxDiskFull, OutboxFull


def _telemetry(seq: int) -> Telemetry:
    return Telemetry(device="kk-aq-0007", seq=seq, sent_at=now(),
                     readings=[Reading(ts=now(), sensor="pm", quantity="pm2_5", value=seq, unit="ug/m3")])


def _tx(seq: int, tx_id: str = "tx-00000001") -> Tx:
    return Tx(device="kk-kiosk-0001", seq=seq, tx_id=tx_id, kind="fee.payment", created_at=now(), data={})


def _box(tmp_path: Path, **limits: float) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite", OutboxConfig(path=tmp_path / "outbox.sqlite", **limits))
    box.open()
    return box


def test_seq_increases_and_is_never_reused_across_restarts(tmp_path: Path) -> None:
    box = _box(tmp_path)
    seqs = [box.append(RecordClass.TELEMETRY, _telemetry).seq for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert box.ack([(1, 5)]) == [1, 2, 3, 4, 5]
    box.close()
    box = _box(tmp_path)  # everything was acknowledged and deleted: seq still continues
    assert box.append(RecordClass.TELEMETRY, _telemetry).seq == 6
    assert box.last_seq() == 6
    box.close()


def test_records_keep_their_payload_and_order_until_acknowledged(tmp_path: Path) -> None:
    box = _box(tmp_path)
    for _ in range(4):
        box.append(RecordClass.TELEMETRY, _telemetry)
    box.append(RecordClass.EVENT, lambda s: Event(device="kk-aq-0007", seq=s, ts=now(), sensor="sos",
                                                  event="sos.pressed", severity=Severity.CRITICAL, data={}))
    assert [r.seq for r in box.pending(10)] == [1, 2, 3, 4, 5]
    assert Telemetry.model_validate_json(box.pending(1)[0].payload).seq == 1
    box.ack([(2, 3)])
    assert [r.seq for r in box.pending(10)] == [1, 4, 5]
    assert box.depth() == 3
    box.close()


def test_a_full_telemetry_class_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    box = _box(tmp_path, telemetry_max_rows=10)
    for _ in range(15):
        box.append(RecordClass.TELEMETRY, _telemetry)
    assert [r.seq for r in box.pending(100)] == list(range(6, 16))
    assert box.dropped() == {"telemetry": 5}
    box.close()
    box = _box(tmp_path, telemetry_max_rows=10)
    assert box.dropped() == {"telemetry": 5}  # the count survives a restart
    box.close()


def test_transactions_are_never_dropped_and_a_full_outbox_refuses_them(tmp_path: Path) -> None:
    box = _box(tmp_path, tx_max_rows=2)
    box.append(RecordClass.TX, lambda s: _tx(s, "tx-00000001"), key="tx-00000001")
    box.append(RecordClass.TX, lambda s: _tx(s, "tx-00000002"), key="tx-00000002")
    with pytest.raises(OutboxFull, match="tx_max_rows"):
        box.append(RecordClass.TX, lambda s: _tx(s, "tx-00000003"), key="tx-00000003")
    assert box.depth() == 2 and box.dropped() == {}
    assert box.ack([(1, 2)]) == []  # a down/ack does not settle a transaction
    assert box.answer("tx-00000001") == 1  # its down/tx answer does
    assert box.append(RecordClass.TX, lambda s: _tx(s, "tx-00000003"), key="tx-00000003").seq == 3
    box.close()


def test_old_droppable_records_expire_but_transactions_stay(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    box = Outbox(tmp_path / "o.sqlite", OutboxConfig(path=tmp_path / "o.sqlite", telemetry_max_age_s=60),
                 clock=lambda: clock[0])
    box.open()
    box.append(RecordClass.TELEMETRY, _telemetry)
    box.append(RecordClass.TX, _tx, key="tx-00000001")
    clock[0] += 3600
    box.append(RecordClass.TELEMETRY, _telemetry)
    assert box.expire() == 1
    assert [r.seq for r in box.pending(10)] == [2, 3]
    assert box.dropped() == {"telemetry": 1}
    box.close()


def test_deferred_acks_are_deleted_by_the_next_records_own_transaction(tmp_path: Path) -> None:
    box = _box(tmp_path)
    for _ in range(4):
        box.append(RecordClass.TELEMETRY, _telemetry)
    box.append(RecordClass.TX, _tx, key="tx-00000001")
    box.defer_ack([(1, 2), (4, 5)])  # 5 is a transaction: only its answer settles it
    assert box.deferred() and box.depth() == 5  # nothing is deleted before a commit
    changes = box._conn.total_changes
    assert box.append(RecordClass.TELEMETRY, _telemetry).seq == 6
    assert box._conn.total_changes - changes == 4  # one transaction: three deletes and the insert
    assert not box.deferred()
    assert [r.seq for r in box.pending(10)] == [3, 5, 6] and box.depth() == 3
    box.defer_ack([(3, 3)])
    assert box.ack([]) == [3]  # with no record to ride on, the ack writer's call deletes them
    assert box.ack([]) == [] and box.depth() == 2
    box.close()
    box = _box(tmp_path)  # the counts agree with the file after a restart
    assert box.depth() == 2 and [r.seq for r in box.pending(10)] == [5, 6]
    box.close()


def test_a_full_class_counts_the_acknowledged_records_gone_before_dropping_any(tmp_path: Path) -> None:
    box = _box(tmp_path, telemetry_max_rows=10)
    for _ in range(10):
        box.append(RecordClass.TELEMETRY, _telemetry)
    box.defer_ack([(1, 1)])
    box.append(RecordClass.TELEMETRY, _telemetry)  # room made by the ack: nothing dropped
    assert box.dropped() == {} and [r.seq for r in box.pending(20)] == list(range(2, 12))
    box.append(RecordClass.TELEMETRY, _telemetry)  # full again: the oldest goes, counted
    assert box.dropped() == {"telemetry": 1} and [r.seq for r in box.pending(20)] == list(range(3, 13))
    box.close()


def test_deferred_acks_survive_a_commit_that_fails_and_go_with_the_next(tmp_path: Path) -> None:
    box = _box(tmp_path)
    for _ in range(3):
        box.append(RecordClass.TELEMETRY, _telemetry)
    box.defer_ack([(1, 2)])

    def broken(seq: int) -> Telemetry:
        raise ValueError("sensor returned garbage")

    with pytest.raises(ValueError, match="garbage"):
        box.append(RecordClass.TELEMETRY, broken)
    assert box.deferred() and box.depth() == 3  # rolled back with the failed record, still to delete
    box.append(RecordClass.TELEMETRY, _telemetry)
    assert [r.seq for r in box.pending(10)] == [3, 4] and box.depth() == 2
    box.close()


def test_a_message_that_fails_to_build_commits_nothing(tmp_path: Path) -> None:
    box = _box(tmp_path)

    def broken(seq: int) -> Telemetry:
        raise ValueError("sensor returned garbage")

    with pytest.raises(ValueError, match="garbage"):
        box.append(RecordClass.TELEMETRY, broken)
    assert box.depth() == 0 and box.pending(10) == []
    # the rolled-back seq was never committed nor sent, so the next record may take it
    assert box.append(RecordClass.TELEMETRY, _telemetry).seq == 1
    box.close()


def _padded(seq: int) -> Telemetry:
    return _telemetry(seq).model_copy(update={"pad": "x" * 4000})


def _fill(box: Outbox) -> None:
    for _ in range(1000):
        box.append(RecordClass.TELEMETRY, _padded)


def test_a_full_disk_is_reported_as_such_keeps_every_record_and_heals(tmp_path: Path) -> None:
    box = _box(tmp_path)
    for _ in range(3):
        box.append(RecordClass.TELEMETRY, _telemetry)
    db: sqlite3.Connection = box._conn  # SQLite's own size cap fails writes with SQLITE_FULL, as a full disk does
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(OutboxDiskFull, match="the disk is full"):
        _fill(box)
    full_at = box.depth()
    with pytest.raises(OutboxDiskFull):  # a transaction is refused as a whole, not half-written
        box.append(RecordClass.TX, lambda s: _tx(s).model_copy(update={"data": {"note": "x" * 8000}}),
                   key="tx-00000001")
    assert box.depth() == full_at and [r.seq for r in box.pending(2000)] == list(range(1, full_at + 1))
    db.execute("PRAGMA max_page_count = 1000000")  # space is back
    assert box.append(RecordClass.TX, _tx, key="tx-00000001").seq == full_at + 1
    box.close()


def test_a_write_failing_with_enospc_is_a_full_disk_and_other_errors_are_not() -> None:
    full = storage_error(OSError(errno.ENOSPC, "No space left on device"), "cannot commit")
    assert isinstance(full, OutboxDiskFull) and "the disk is full" in str(full)
    other = storage_error(sqlite3.OperationalError("database is locked"), "cannot commit")
    assert not isinstance(other, OutboxDiskFull) and str(other) == "cannot commit: database is locked"
