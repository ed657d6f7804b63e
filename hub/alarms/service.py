"""The alarm side of a running hub: the engine, its once-a-second ticker, and the notification worker."""

from __future__ import annotations

import logging
import threading
import time

from hub.alarms.engine import AlarmEngine, Clock
from hub.alarms.feed import Feed
from hub.alarms.feed import backlog as feed_backlog
from hub.alarms.feed import newest as feed_newest
from hub.alarms.rules import RulesFile
from hub.errors import StoreError
from hub.notify.worker import NotificationWorker
from hub.store.base import SqlStore
from hub.timeseries.base import TimeSeries

log = logging.getLogger("nakhon.hub.alarms")

TICK_S = 1.0


class AlarmService:
    """Starts and stops the engine's ticker and the notification worker with the hub."""

    def __init__(self, store: SqlStore, config: RulesFile, clock: Clock = time.time,
                 *, timeseries: TimeSeries) -> None:
        self.feed = Feed()
        self.engine = AlarmEngine(store, config, self.feed, clock, timeseries=timeseries)
        self.worker = NotificationWorker(self.engine, clock)
        self.engine.on_notify = self.worker.wake
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> None:
        """Load the engine's state from the (open) store, then start ticking and sending."""
        self.engine.open()
        self.feed.follow(lambda after: self.engine.store.read(lambda db: feed_backlog(db, after)),
                         self.engine.store.read(feed_newest))
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick_loop, name="alarm-ticker", daemon=True)
        self._ticker.start()
        self.worker.start()
        log.info("alarms: %d rule(s), %d channel(s)", len(self.engine.rules), len(self.engine.channels))

    def stop(self) -> None:
        """Stop the ticker and the worker (idempotent)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=10)
            self._ticker = None
        self.worker.stop()
        self.feed.unfollow()

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_S):
            # The ticker is a supervisor: whatever one round raises (a rule bug, a locked store), it logs it
            # with its traceback and ticks again, since a dead ticker would silently stop every time-based alarm.
            try:
                self.engine.tick()
            except StoreError as err:
                log.warning("alarm tick: the store cannot be written now (%s); ticking on", err)
            except Exception:
                log.exception("alarm tick failed; ticking on")
