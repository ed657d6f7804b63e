"""Calls from a thread to the event loop through an eventfd: what a polled stream's thread hands over per sample.

``loop.call_soon_threadsafe`` costs, for each call, a handle with a copy of the thread's context, a write to the
loop's self-pipe and, on the loop, two reads of that pipe (the second ending in ``BlockingIOError``) before the
handle runs. A :class:`Handoff` queues the call and writes the eventfd (writes add up in its counter, so any number
of them is one wake-up), and the loop runs every queued call after one read. At 10 samples a second that was about
a tenth of the agent's CPU. Linux only (``os.eventfd``), as the agent is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Handoff:
    """Run calls made on any thread on ``loop``, in the order they were made; made and closed on the loop.

    :meth:`close` runs what is still queued; a call made after it is dropped (the thread that made it has ended)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        """Held by a thread writing the eventfd and by :meth:`close`: no write to the fd number once it is closed."""
        self._fd: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self._fd, self._run)

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """From any thread: have ``fn(*args)`` run on the loop soon."""
        self._calls.append((fn, args))
        with self._lock:
            if self._fd is not None:
                os.eventfd_write(self._fd, 1)

    def _run(self) -> None:
        if self._fd is None:  # closed (on the loop, as this runs)
            return
        with contextlib.suppress(BlockingIOError):  # nothing written since: a wake-up already answered
            os.eventfd_read(self._fd)
        self._drain()

    def _drain(self) -> None:
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception as err:  # noqa: BLE001 (as the loop treats a failing handle: reported, the next call still runs)
                self._loop.call_exception_handler({"message": f"exception in {fn!r} handed over to the loop",
                                                   "exception": err})

    def close(self) -> None:
        """Stop listening, release the eventfd and run the calls still queued (as the loop would have soon)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)
        self._drain()
