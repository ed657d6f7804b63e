"""The notification worker: sends the committed notifications, retries with backoff, records every attempt.

Notifications are rows committed with the alarm change that caused them, so a hub killed before sending sends
them after its restart. Each try is recorded with its outcome; a failed one is tried again after 5 s, 10 s,
20 s ... up to 10 minutes, and given up after :data:`MAX_ATTEMPTS`. A channel that fails
:data:`FAILING_AFTER` tries in a row raises its own alarm, cleared by its next success.

Several hub processes run a worker each on one store: a try is claimed first by moving the notification's
``next_at`` :data:`CLAIM_S` ahead with a conditional update, so one process sends it; if that process dies
during the try, another tries it again once the claim has run out (the ``retry_key`` lets a receiver see it is
the same message).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Any

from hub.alarms import store as sql
from hub.alarms.engine import AlarmEngine, Clock
from hub.errors import NotifyError, StoreError
from hub.notify.channels import Outgoing, send
from hub.records.session import Session

log = logging.getLogger("nakhon.hub.notify")

MAX_ATTEMPTS = 30
FAILING_AFTER = 3
BACKOFF_MIN_S = 5.0
BACKOFF_MAX_S = 600.0
CLAIM_S = 120.0
"""How long a try, once claimed by one hub process, is left to it (longer than any channel's timeout)."""


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed try."""
    return float(min(BACKOFF_MIN_S * 2.0 ** (attempts - 1), BACKOFF_MAX_S))


class NotificationWorker:
    """Drains due notifications in a thread; :meth:`wake` makes it look now."""

    def __init__(self, engine: AlarmEngine, clock: Clock = time.time) -> None:
        self.engine = engine
        self.store = engine.store
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: dict[str, int] = {}

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the try in progress (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def wake(self) -> None:
        """A notification was committed: look now (thread-safe)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            due = None
            try:
                self.drain()
                due = self.store.read(sql.next_due)
            except StoreError as err:
                log.error("notification worker: %s; trying again shortly", err)
            except Exception:
                # The worker is a supervisor: a dead worker would silently stop every notification, so whatever
                # one round raises is logged once with its traceback and the next round runs.
                log.exception("notification worker round failed; carrying on")
            wait = 1.0 if due is None else min(1.0, max(0.0, due - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()

    def drain(self) -> int:
        """Try every due notification once; returns how many were tried."""
        due = self.store.read(lambda db: sql.due_notifications(db, self.clock()))
        tried = 0
        for n in due:
            if self._stop.is_set():
                break
            if self.store.write(partial(_claim, n=n, now=self.clock())):
                self._try(n)
                tried += 1
        return tried

    def _try(self, n: dict[str, Any]) -> None:
        channel = self.engine.channels.get(n["channel"])
        started = time.monotonic()
        ok = False
        if channel is None:
            detail = f"channel {n['channel']} is no longer configured"
        else:
            try:
                detail = send(channel, Outgoing(n["id"], n["retry_key"], n["subject"], n["body"], n["payload"]))
                ok = True
            except NotifyError as err:
                detail = str(err)
        elapsed_ms = (time.monotonic() - started) * 1000
        now = self.clock()
        attempts = n["attempts"] + 1

        def record(db: Session) -> None:
            db.execute("INSERT INTO notification_attempts (notification_id, at, ok, detail, elapsed_ms) "
                       "VALUES (?, ?, ?, ?, ?)", (n["id"], now, ok, detail[:500], elapsed_ms))
            if ok:
                db.execute("UPDATE notifications SET state = 'sent', attempts = ?, sent_at = ?, last_error = NULL "
                           "WHERE id = ?", (attempts, now, n["id"]))
            else:
                state = "failed" if attempts >= MAX_ATTEMPTS else "pending"
                db.execute("UPDATE notifications SET state = ?, attempts = ?, next_at = ?, last_error = ? "
                           "WHERE id = ?", (state, attempts, now + backoff(attempts), detail[:500], n["id"]))

        self.store.write(record)
        name = n["channel"]
        if ok:
            log.info("notification %d (alarm %d) sent via %s: %s", n["id"], n["alarm_id"], name, detail)
            self._failures.pop(name, None)
            self.engine.channel_recovered(name)
            return
        log.warning("notification %d via %s failed (try %d): %s", n["id"], name, attempts, detail)
        self._failures[name] = self._failures.get(name, 0) + 1
        if self._failures[name] >= FAILING_AFTER:
            self.engine.channel_failing(name, detail)


def _claim(db: Session, *, n: dict[str, Any], now: float) -> bool:
    """Inside a write: take a due notification's try for this process; False when another one took it."""
    return bool(db.execute("UPDATE notifications SET next_at = ? WHERE id = ? AND state = 'pending' AND next_at = ?",
                           (now + CLAIM_S, n["id"], n["next_at"])).rowcount)
