"""The outbox's recent file: telemetry committed by one write each, kept across kills and power cuts, the seq counter
never going back, and SQLite holding the rest."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from edge.agents import recent
from edge.agents.outbox import RECENT_MAX_RECORDS, Outbox, RecordClass, snapshot
from edge.config import OutboxConfig
from edge.contract import Event, Reading, Severity, Telemetry, now
from edge.errors import OutboxDiskFull
from tests.conftest import ROOT


def _telemetry(seq: int) -> Telemetry:
    return Telemetry(device="kk-aq-0007", seq=seq, sent_at=now(),
                     readings=[Reading(ts=now(), sensor="pm", quantity="pm2_5", value=seq, unit="ug/m3")])


def _event(seq: int) -> Event:
    return Event(device="kk-aq-0007", seq=seq, ts=now(), sensor="sos", event="sos.pressed",
                 severity=Severity.CRITICAL, data={})


def _box(path: Path, **limits: object) -> Outbox:
    box = Outbox(path, OutboxConfig(path=path, **limits))
    box.open()
    return box


def _filled(tmp_path: Path, records: int) -> tuple[Path, Outbox]:
    """An open outbox in ``tmp_path`` with ``records`` telemetry records appended (seqs 1 to ``records``)."""
    path = tmp_path / "outbox.sqlite"
    box = _box(path)
    for _ in range(records):
        box.append(RecordClass.TELEMETRY, _telemetry)
    return path, box


def _sql_seqs(path: Path) -> list[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [s for (s,) in db.execute("SELECT seq FROM records ORDER BY seq")]


def test_telemetry_is_one_append_to_the_recent_file_and_no_sqlite_transaction(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = _box(path)
    changes = box._conn.total_changes
    for _ in range(5):
        box.append(RecordClass.TELEMETRY, _telemetry)
    assert box._conn.total_changes == changes  # SQLite did not change
    assert _sql_seqs(path) == []
    assert list(recent.read(recent.recent_path(path)).records) == [1, 2, 3, 4, 5]
    assert [r.seq for r in box.pending(10)] == [1, 2, 3, 4, 5] and box.depth() == 5
    assert Telemetry.model_validate_json(box.pending(10, after=2)[0].payload).seq == 3
    assert snapshot(path).waiting == (1, 2, 3, 4, 5) and snapshot(path).last_seq == 5
    assert oct(recent.recent_path(path).stat().st_mode & 0o777) == "0o600"
    box.close()  # a clean stop moves them into SQLite and removes the recent file
    assert _sql_seqs(path) == [1, 2, 3, 4, 5] and not recent.recent_path(path).exists()


def test_another_class_moves_the_recent_records_into_sqlite_first_keeping_the_order(tmp_path: Path) -> None:
    path, box = _filled(tmp_path, 3)
    assert box.append(RecordClass.EVENT, _event).seq == 4
    assert _sql_seqs(path) == [1, 2, 3, 4] and recent.read(recent.recent_path(path)).records == {}
    box.append(RecordClass.TELEMETRY, _telemetry)
    assert [(r.seq, r.klass) for r in box.pending(10)] == [
        (1, RecordClass.TELEMETRY), (2, RecordClass.TELEMETRY), (3, RecordClass.TELEMETRY),
        (4, RecordClass.EVENT), (5, RecordClass.TELEMETRY)]
    box.set_aside(5, "refused for good")  # a record of the recent file is moved into SQLite to be set aside
    assert [r.seq for r in box.pending(10)] == [1, 2, 3, 4] and box.set_aside_count() == 1
    box.close()


def test_acknowledged_recent_records_are_deleted_without_sqlite_and_never_come_back(tmp_path: Path) -> None:
    path, box = _filled(tmp_path, 6)
    changes = box._conn.total_changes
    assert box.ack([(1, 4)]) == [1, 2, 3, 4]
    box.defer_ack([(6, 6)])
    box.append(RecordClass.TELEMETRY, _telemetry)  # takes the deferred range with it
    assert box._conn.total_changes == changes
    assert [r.seq for r in box.pending(10)] == [5, 7] and box.depth() == 2
    assert snapshot(path).waiting == (5, 7)  # the file says what was acknowledged
    # a kill now (no close): a new outbox on the same files sees exactly what waited, and goes on from seq 8
    crashed = _box(path)
    assert [r.seq for r in crashed.pending(10)] == [5, 7] and crashed.depth() == 2
    assert crashed.append(RecordClass.TELEMETRY, _telemetry).seq == 8
    crashed.close()


def test_the_seq_never_goes_back_when_the_hub_acknowledged_everything_in_the_recent_file(tmp_path: Path) -> None:
    path, box = _filled(tmp_path, 5)
    box.ack([(1, 5)])
    assert box.depth() == 0 and _sql_seqs(path) == []
    crashed = _box(path)  # killed before any of them reached SQLite
    assert crashed.last_seq() == 5 and crashed.append(RecordClass.TELEMETRY, _telemetry).seq == 6
    crashed.ack([(6, 6)])
    crashed.close()  # a clean stop: SQLite keeps the counter in sqlite_sequence, as AUTOINCREMENT does
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone() == (6,)
    assert snapshot(path) == snapshot(path).__class__((), 6)
    again = _box(path)
    assert again.append(RecordClass.TELEMETRY, _telemetry).seq == 7
    again.close()


KILLED = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edge.agents.outbox import Outbox, RecordClass
    from edge.config import OutboxConfig
    path = Path(sys.argv[1])
    box = Outbox(path, OutboxConfig(path=path))
    box.open()
    for i in range(int(sys.argv[2])):
        box.append(RecordClass.TELEMETRY, lambda seq: ('{"seq":%d}' % seq).encode())
    box.ack([(1, 10)])
    print("committed", flush=True)
    sys.stdin.read()
""")


def test_a_killed_process_loses_no_committed_record_and_its_acks_hold(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(path), "40"], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "committed\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert snapshot(path).waiting == tuple(range(11, 41))
    box = _box(path)
    assert [r.seq for r in box.pending(100)] == list(range(11, 41))
    assert box.pending(1)[0].payload == b'{"seq":11}'
    assert _sql_seqs(path) == list(range(11, 41)) and recent.recent_path(path).stat().st_size == 0
    assert box.append(RecordClass.TELEMETRY, _telemetry).seq == 41
    box.close()


def test_a_record_cut_short_by_a_power_cut_is_ignored_and_the_rest_kept(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path, box = _filled(tmp_path, 2)
    two = box._recent_file.size
    box.append(RecordClass.TELEMETRY, _telemetry)
    file = recent.recent_path(path)
    whole = file.read_bytes()
    box._recent_file.close()  # the process is gone; what the disk kept is the file
    box._conn.close()
    box._db = None
    file.write_bytes(whole[:two + 40])  # the power went during the third write
    with caplog.at_level(logging.WARNING, logger="nakhon.outbox"):
        again = _box(path)
    assert "cut short" in caplog.text
    assert [r.seq for r in again.pending(10)] == [1, 2]
    assert again.append(RecordClass.TELEMETRY, _telemetry).seq == 3  # the cut record was never committed
    again.close()


def test_a_full_disk_under_the_recent_file_is_reported_and_nothing_half_written_stays(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = _box(path)
    box.append(RecordClass.TELEMETRY, _telemetry)
    fd = box._recent_file._fd
    assert fd is not None
    kept = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, fd)  # the kernel's own "no space left on device" for every write
        with pytest.raises(OutboxDiskFull, match="disk is full"):
            box.append(RecordClass.TELEMETRY, _telemetry)
        assert box.depth() == 1
    finally:
        os.dup2(kept, fd)
        os.close(kept)
        os.close(full)
    assert box.append(RecordClass.TELEMETRY, _telemetry).seq == 2  # space is back: the seq was not used
    assert list(recent.read(recent.recent_path(path)).records) == [1, 2]
    box.close()


def test_a_growing_recent_file_is_moved_into_sqlite_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = _box(path)
    for _ in range(RECENT_MAX_RECORDS + 5):
        box.append(RecordClass.TELEMETRY, _telemetry)
    assert len(_sql_seqs(path)) == RECENT_MAX_RECORDS + 1  # the full file and the record that found it full
    assert list(recent.read(recent.recent_path(path)).records) == list(range(RECENT_MAX_RECORDS + 2,
                                                                             RECENT_MAX_RECORDS + 6))
    assert [r.seq for r in box.pending(RECENT_MAX_RECORDS + 10)] == list(range(1, RECENT_MAX_RECORDS + 6))
    assert box.ack([(1, RECENT_MAX_RECORDS + 3)]) == list(range(1, RECENT_MAX_RECORDS + 4))  # both files
    assert [r.seq for r in box.pending(10)] == [RECENT_MAX_RECORDS + 4, RECENT_MAX_RECORDS + 5]
    box.close()


def test_old_recent_records_expire_like_the_others(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, OutboxConfig(path=path, telemetry_max_age_s=60), clock=lambda: clock[0])
    box.open()
    box.append(RecordClass.TELEMETRY, _telemetry)
    clock[0] += 120
    box.append(RecordClass.TELEMETRY, _telemetry)
    assert box.expire() == 1 and [r.seq for r in box.pending(10)] == [2]
    assert box.dropped() == {"telemetry": 1}
    box.close()


def test_synchronous_full_commits_every_telemetry_record_to_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = _box(path, synchronous="full")
    for _ in range(3):
        box.append(RecordClass.TELEMETRY, _telemetry)
    assert _sql_seqs(path) == [1, 2, 3] and recent.read(recent.recent_path(path)).records == {}
    box.close()


def test_frames_that_do_not_check_out_end_the_replay() -> None:
    good = recent.parse(b"")
    assert good.records == {} and good.torn_bytes == 0
    path_frames = bytearray()
    for seq in (1, 2):
        body = recent._RECORD.pack(b"R", seq, 1.5) + b"x"
        path_frames += recent._FRAME.pack(len(body), zlib.crc32(body)) + body
    assert list(recent.parse(bytes(path_frames)).records) == [1, 2]
    flipped = bytearray(path_frames)
    flipped[-1] ^= 0xFF  # a bit of the second record's payload changed: its CRC no longer matches
    replay = recent.parse(bytes(flipped))
    assert list(replay.records) == [1] and replay.torn_bytes == len(path_frames) // 2 and replay.last_seq == 1
