"""Closing the embedded store while other threads still read from it: they get a StoreError, never a crash.

A hub stops its services before it closes the store, but a thread that is late (an alarm tick, a feed following
the records) must not bring the whole process down: closing a SQLite connection in the middle of another thread's
statement makes SQLite read freed memory. The store closes each thread's connection only between its statements.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hub.errors import StoreError
from hub.store.sqlite import SQLiteStore


def test_readers_on_other_threads_get_a_store_error_when_the_store_closes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.sqlite")
    store.open()
    reading = [threading.Event() for _ in range(4)]
    outcomes: list[str] = []

    def follow(first_read: threading.Event) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # a statement that takes a while, as a feed's backlog query does
            try:
                store.read(lambda session: session.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
                    "SELECT SUM(i) FROM n").fetchone())
                first_read.set()
            except StoreError as err:
                outcomes.append(str(err))
                return

    threads = [threading.Thread(target=follow, args=(event,)) for event in reading]
    for thread in threads:
        thread.start()
    assert all(event.wait(20) for event in reading)  # every thread reading in a loop
    store.close()
    for thread in threads:
        thread.join(25)
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes == ["the store is closed"] * 4
    with pytest.raises(StoreError, match="the store is closed"):
        store.read(lambda session: session.execute("SELECT 1").fetchone())


def test_a_closed_store_opens_again_and_reads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.sqlite")
    store.open()
    assert store.read(lambda session: session.execute("SELECT 1").fetchone()) == (1,)
    store.close()
    store.close()  # twice is fine
    store.open()
    assert store.read(lambda session: session.execute("SELECT 2").fetchone()) == (2,)
    store.close()
