"""The writer's backlog: batches kept in order, taken in lists of at most ``most``, bounded by messages held."""

from __future__ import annotations

import threading
import time

import pytest

from hub.ingest.backlog import Backlog


def test_messages_come_out_in_order_across_and_within_the_lists_put() -> None:
    backlog: Backlog[int] = Backlog(100)
    assert backlog.put([1, 2, 3]) == 3
    backlog.put([4, 5])
    backlog.put([6])
    assert backlog.take(4) == [1, 2, 3, 4]
    assert len(backlog) == 2
    assert backlog.take(10) == [5, 6]
    assert len(backlog) == 0


def test_an_empty_backlog_gives_an_empty_list_when_the_wait_ends() -> None:
    backlog: Backlog[int] = Backlog(10)
    assert backlog.take(5, timeout=0) == []
    assert backlog.take(5, timeout=0.01) == []


def test_a_full_backlog_takes_only_what_fits_until_the_writer_takes() -> None:
    backlog: Backlog[int] = Backlog(3)
    assert backlog.put([1, 2]) == 2
    assert backlog.put([3, 4, 5], timeout=0) == 1  # only one fits: the first
    assert len(backlog) == 3
    assert backlog.put([4, 5], timeout=0.01) == 0
    assert backlog.take(2) == [1, 2]
    assert backlog.put([4, 5], timeout=0) == 2
    assert backlog.put([6], timeout=0) == 0
    assert backlog.take(10) == [3, 4, 5]
    assert backlog.put([6], timeout=0) == 1
    assert backlog.take(10) == [6]


def test_a_waiting_put_goes_in_as_soon_as_there_is_room() -> None:
    backlog: Backlog[int] = Backlog(1)
    backlog.put([1])
    done = threading.Event()

    def producer() -> None:
        backlog.put([2, 3])  # the second waits for the writer too
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not done.wait(0.05)
    assert backlog.take(1) == [1]
    assert backlog.take(1, timeout=5) == [2]
    assert done.wait(5)
    thread.join()
    assert backlog.take(1) == [3]


def test_a_closed_backlog_gives_what_it_holds_then_none() -> None:
    backlog: Backlog[int] = Backlog(10)
    backlog.put([1, 2])
    backlog.close()
    assert backlog.take(1) == [1]
    assert backlog.take(5) == [2]
    assert backlog.take(5) is None
    assert backlog.take(5, timeout=0) is None


def test_a_waiting_writer_wakes_when_the_backlog_closes() -> None:
    backlog: Backlog[int] = Backlog(10)
    got: list[list[int] | None] = []
    thread = threading.Thread(target=lambda: got.append(backlog.take(5)))
    thread.start()
    backlog.close()
    thread.join(5)
    assert got == [None]


def test_a_backlog_holds_at_least_one_message() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Backlog(0)


def test_a_writer_that_gathers_waits_for_the_fill_after_its_first_message() -> None:
    backlog: Backlog[int] = Backlog(100)
    backlog.put([1])

    def later() -> None:
        backlog.put([2, 3])
        backlog.put([4])

    thread = threading.Thread(target=later)
    thread.start()
    started = time.monotonic()
    assert backlog.take(10, gather_s=60, fill=4, quiet_s=60) == [1, 2, 3, 4]
    assert time.monotonic() - started < 30  # returned once four were there, not when the 60 s were up
    thread.join()


def test_a_writer_that_gathers_takes_what_came_when_the_gathering_time_is_up() -> None:
    backlog: Backlog[int] = Backlog(100)
    backlog.put([1, 2])
    assert backlog.take(10, gather_s=0.01, fill=5, quiet_s=60) == [1, 2]
    assert backlog.take(10, timeout=0, gather_s=1) == []  # no first message: no gathering


def test_a_closing_backlog_ends_the_gathering_at_once() -> None:
    backlog: Backlog[int] = Backlog(100)
    backlog.put([1])
    threading.Timer(0.05, backlog.close).start()
    started = time.monotonic()
    assert backlog.take(10, gather_s=60, quiet_s=60) == [1]
    assert time.monotonic() - started < 30


def test_a_writer_stops_gathering_when_nothing_came_for_the_quiet_time() -> None:
    backlog: Backlog[int] = Backlog(100)
    backlog.put([1, 2])
    started = time.monotonic()
    assert backlog.take(10, gather_s=60, fill=5, quiet_s=0.01) == [1, 2]  # a burst that ended: not 60 s
    assert time.monotonic() - started < 30


def test_messages_that_keep_coming_keep_the_writer_gathering_until_the_fill() -> None:
    backlog: Backlog[int] = Backlog(100)
    backlog.put([0])
    stop = threading.Event()

    def trickle() -> None:
        for i in range(1, 40):
            if stop.wait(0.002):
                return
            backlog.put([i])

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        got = backlog.take(100, gather_s=60, fill=20, quiet_s=5)
    finally:
        stop.set()
        thread.join()
    assert got is not None and len(got) >= 20 and got == list(range(len(got)))
