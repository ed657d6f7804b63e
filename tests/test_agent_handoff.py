"""A polled stream's thread and the loop: the eventfd hand-over of each sample (Handoff) and the wake-up call that
cuts a stream's wait short (Wake)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from edge.agents.agent import Wake
from edge.agents.handoff import Handoff


def test_calls_from_threads_run_on_the_loop_in_order() -> None:
    async def scenario() -> tuple[list[tuple[int, int]], set[int]]:
        loop = asyncio.get_running_loop()
        handoff = Handoff(loop)
        ran: list[tuple[int, int]] = []
        threads_seen: set[int] = set()
        done = asyncio.Event()

        def record(worker: int, n: int) -> None:
            threads_seen.add(threading.get_ident())
            ran.append((worker, n))
            if len(ran) == 3 * 500:
                done.set()

        def work(worker: int) -> None:
            for n in range(500):
                handoff.call(record, worker, n)

        workers = [threading.Thread(target=work, args=(w,)) for w in range(3)]
        for w in workers:
            w.start()
        await asyncio.wait_for(done.wait(), 30)
        for w in workers:
            w.join()
        handoff.close()
        return ran, threads_seen

    ran, threads_seen = asyncio.run(scenario())
    assert threads_seen == {threading.get_ident()}  # all on the loop's thread
    for worker in range(3):
        assert [n for w, n in ran if w == worker] == list(range(500))  # each thread's calls in its order


def test_a_failing_call_is_reported_and_the_next_still_runs() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[str]]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        handoff = Handoff(loop)
        ran: list[str] = []
        done = asyncio.Event()

        def fail() -> None:
            raise ValueError("a driver's value the loop could not take")

        def after() -> None:
            ran.append("after")
            done.set()

        def work() -> None:
            handoff.call(fail)
            handoff.call(after)

        threading.Thread(target=work).start()
        await asyncio.wait_for(done.wait(), 10)
        handoff.close()
        return reported, ran

    reported, ran = asyncio.run(scenario())
    assert ran == ["after"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)


def test_close_runs_what_is_queued_and_later_calls_are_dropped() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        handoff = Handoff(loop)
        fd = handoff._fd
        assert fd is not None
        ran: list[int] = []
        def queue_three() -> None:
            for n in range(3):
                handoff.call(ran.append, n)

        queued = threading.Thread(target=queue_three)
        queued.start()
        queued.join()  # queued, and the loop has not run since
        assert ran == []
        handoff.close()
        assert ran == [0, 1, 2]
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # the eventfd is released
        late = threading.Thread(target=handoff.call, args=(ran.append, 99))
        late.start()
        late.join()
        await asyncio.sleep(0.05)
        return ran

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_a_wait_times_out_without_a_call() -> None:
    wake = Wake()
    started = time.monotonic()
    assert wake.wait(0.2) is False
    assert time.monotonic() - started >= 0.19
    assert wake.wait(0) is False


def test_calls_made_before_the_wait_answer_it_once() -> None:
    wake = Wake()
    wake.set()
    wake.set()
    wake.set()
    assert wake.wait(5) is True
    assert wake.wait(0.05) is False  # the three calls were one wake-up


def test_a_call_from_another_thread_cuts_a_wait_short() -> None:
    wake = Wake()
    timer = threading.Timer(0.1, wake.set)
    started = time.monotonic()
    timer.start()
    try:
        assert wake.wait(30) is True
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
