"""The alarm engine: evaluates rules on what ingest committed and on the clock, and keeps alarms' lifecycle.

Ingest hands every committed batch to :meth:`AlarmEngine.committed` before it acknowledges it to the devices,
so an event whose alarm did not commit (a crash in between) is sent again by its agent and evaluated then; the
feed row of an event is keyed by ``(device, seq)``, so a redelivered event raises nothing twice. Time-based
conditions (minimum durations measured on reading times; no data, offline grace, escalation and shelving on the
engine's clock) are evaluated by :meth:`AlarmEngine.tick`, which a ticker thread calls every second with an
injectable clock, so tests are exact without sleeping.

Lifecycle: ``active`` -> ``acknowledged`` (by a user) -> ``cleared`` (by itself when the condition ends, except
latched alarms, which a user clears); ``shelved`` until a time, then back to where it was. One open alarm per
(rule, device): a repeat raises its count and last-seen time. A device that is offline or lost raises no no-data
alarms. Every alarm change, with the notifications it causes, commits in one transaction with its feed row.

Several hub processes (``--share``) each run an engine on one store, and each sees only the messages the broker
gave it. The store keeps them to one alarm and one notification: an alarm is raised by an insert that the unique
open-alarm index lets through once (the others repeat it), a notification is unique per (alarm, channel, step),
and an escalation step or an unshelving is claimed by a conditional update. Each tick first reads what other
processes changed (:meth:`AlarmEngine.sync`): which alarms are open and each device's link, so a device that went
offline through another process raises no no-data alarm and an alarm raised elsewhere clears here; and before
raising a no-data alarm on what this process saw, it asks the store for the sensors' newest readings, which
another process may have stored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub import aqi
from hub.alarms import feed as feed_module
from hub.alarms import store as sql
from hub.alarms.feed import Feed, FeedItem
from hub.alarms.rules import (
    RULE,
    AlarmSeverity,
    AnyChannel,
    AnyRule,
    EventRule,
    NoDataRule,
    OfflineRule,
    RateRule,
    RulesFile,
    ThresholdRule,
    check_channels,
)
from hub.errors import AlarmError, StoreError
from hub.faults import crash_point
from hub.notify.messages import compose
from hub.records.session import Session
from hub.store.base import IngestBatch, SqlStore, epoch_ms
from hub.timeseries.base import TimeSeries

log = logging.getLogger("nakhon.hub.alarms")

Clock = Callable[[], float]
Audited = Callable[[Session, Any, Any], None]
"""Called inside the transaction of a user's change with what it was and what it is (the audit log)."""

CHANNEL_RULE = EventRule(id="notify.channel-failing", type="event", events=["notify.failing"], latched=False,
                         severity=AlarmSeverity.MAJOR, title_th="ช่องทางแจ้งเตือนส่งข้อความไม่สำเร็จ",
                         title_en="A notification channel keeps failing")
"""The engine's own rule: raised on a channel (as its device) by the notification worker."""

AQI_QUANTITY = "aqi_th"
"""The derived quantity: the Thai AQI of a device's 24-hour PM2.5 and PM10 averages."""
_AQI_INPUTS = ("pm2_5", "pm10")
_NUMBERS = frozenset({int, float})
"""The classes of a reading's value that rules judge (a reading's value is exactly one of bool, int, float, str)."""


@dataclass
class DeviceInfo:
    """What the engine knows of a device: where it is, its link, and its sensors' intervals."""

    node: str | None = None
    site: str | None = None
    state: str = "unknown"
    lat: float | None = None
    lon: float | None = None
    intervals: dict[str, float] = field(default_factory=dict)
    offline_since: float | None = None


@dataclass
class _Write:
    """What one engine transaction produced: rows to stream and whether a notification is waiting."""

    items: list[FeedItem] = field(default_factory=list)
    notified: bool = False
    raised: bool = False


_Op = Callable[[Session, _Write], None]


class AlarmEngine:
    """Rules, the alarms they raise, and the operator's actions on them."""

    def __init__(self, store: SqlStore, config: RulesFile, feed: Feed, clock: Clock = time.time,
                 *, timeseries: TimeSeries) -> None:
        self.store = store
        self.timeseries = timeseries
        self.config = config
        self.feed = feed
        self.clock = clock
        self.channels: dict[str, AnyChannel] = {c.id: c for c in config.channels}
        self.file_rules: dict[str, AnyRule] = {r.id: r for r in config.rules}
        self.rules: dict[str, AnyRule] = {}
        self.devices: dict[str, DeviceInfo] = {}
        self.on_notify: Callable[[], None] = lambda: None
        """Called after a commit that queued notifications (the worker wakes up)."""
        self._lock = threading.RLock()
        self._on: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], float] = {}
        self._windows: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._last_reading: dict[tuple[str, str], float] = {}
        self._hours: dict[tuple[str, str], dict[int, list[float]]] = {}
        self._last_report = 0
        self._last_prune = 0.0
        self._newest: dict[tuple[str, str], int] = {}
        """The newest reading time (ms since the epoch) per (device, sensor) this engine knows was stored, by it
        or another process."""
        self._by_quantity: dict[tuple[str, str], list[ThresholdRule | RateRule]] = {}
        """The threshold and rate rules of a (quantity, device) whose device pattern matches, in rule order;
        built on first use and emptied whenever the rules change (node and site are checked per reading)."""

    # -- start ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Load API rules, open alarms and the registry from the store (after the store is open)."""
        now = self.clock()

        def load(db: Session) -> None:
            self.rules = dict(self.file_rules)
            for rule_id, body in db.execute("SELECT id, body FROM alarm_rules"):
                if rule_id not in self.file_rules:
                    self.rules[rule_id] = RULE.validate_json(body)
            self._by_quantity.clear()
            self._on = {(r, d) for r, d in db.execute("SELECT rule, device FROM alarms WHERE state != 'cleared'")}
            self._last_report = int(db.execute("SELECT coalesce(max(id), 0) FROM reports").fetchone()[0])

        self.store.read(load)
        for d in self.store.devices():
            info = self._info(d.device)
            info.node, info.site, info.state = d.node, d.site, d.state
            self._heartbeat(info, d.heartbeat or {})
            if d.state in ("offline", "lost"):
                info.offline_since = now
            for (sensor, _q), ts in self.timeseries.latest(d.device).items():
                self._last_reading[(d.device, sensor)] = now
                self._stored(d.device, sensor, ts)

    def _info(self, device: str) -> DeviceInfo:
        info = self.devices.get(device)
        if info is None:
            info = self.devices[device] = DeviceInfo()
        return info

    @staticmethod
    def _heartbeat(info: DeviceInfo, heartbeat: dict[str, Any]) -> None:
        location = heartbeat.get("location") or {}
        if "lat" in location and "lon" in location:
            info.lat, info.lon = float(location["lat"]), float(location["lon"])
        for sensor, stream in (heartbeat.get("streams") or {}).items():
            interval = stream.get("interval_s") if isinstance(stream, dict) else None
            if isinstance(interval, int | float) and interval > 0:
                info.intervals[sensor] = float(interval)

    def _scoped(self, rule: AnyRule, device: str) -> bool:
        info = self._info(device)
        return rule.applies_to(device, info.node, info.site)

    # -- the ingest observer -------------------------------------------------------------------
    def committed(self, batch: IngestBatch) -> None:
        """Evaluate what ingest just committed; retried until it commits, since the batch is not acked before.

        Readings are judged in memory and open a write only when an alarm changes, so telemetry costs ingest no
        extra transaction; statuses and events always write (the stream carries them).
        """
        try:
            self._committed(batch)
        except Exception:
            # This runs on ingest's writer thread: a bug in a rule must not stop the hub storing data, so it is
            # caught here once, logged with its traceback, and that batch's alarms are lost (and logged as such).
            log.exception("alarm evaluation of a batch failed; ingest carries on")

    def _committed(self, batch: IngestBatch) -> None:
        ops: list[_Op] = []
        with self._lock:  # the ticker and the API change the same in-memory state
            now = self.clock()
            if batch.statuses or any(m.event is not None for m in batch.messages):
                ops.append(lambda db, out: self._evaluate(db, out, batch))
            last_reading, newest = self._last_reading, self._newest
            watched: dict[tuple[str, str], bool] = {}  # per (quantity, device), asked once a batch
            for m in batch.messages:
                device = m.device
                for r in m.readings or ():
                    key = (device, r.sensor)
                    last_reading[key] = now
                    ts = r.ts_ms
                    known = newest.get(key)
                    if known is None or ts > known:
                        newest[key] = ts
                    quantity = r.quantity
                    judged = watched.get((quantity, device))
                    if judged is None:
                        judged = watched[(quantity, device)] = self._watched(quantity, device)
                    if judged and r.value.__class__ in _NUMBERS:
                        self._reading(ops, device, r.sensor, quantity, float(r.value), ts / 1000)
        if not ops:
            return

        def run(db: Session, out: _Write) -> None:
            for op in ops:
                op(db, out)

        delay = 0.2
        while True:
            try:
                self._transact(run)
                return
            except StoreError as err:
                log.error("alarm evaluation did not commit (%s); retrying in %.1f s", err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _transact(self, work: Callable[[Session, _Write], None]) -> _Write:
        with self._lock:
            out = _Write()
            self.store.write(lambda db: work(db, out))
            if out.raised and out.notified:
                crash_point("alarm-committed")
            self.feed.committed(out.items)
        if out.notified:
            self.on_notify()
        return out

    def _evaluate(self, db: Session, out: _Write, batch: IngestBatch) -> None:
        now = self.clock()
        for s in batch.statuses:
            st = s.status
            info = self._info(st.device)
            info.node = st.node or info.node
            info.site = st.site or info.site
            self._heartbeat(info, st.model_dump(mode="json", exclude_none=True))
            state = st.state.value
            changed = state != info.state
            if changed:
                self._feed(db, out, now, "device", {"device": st.device, "state": state, "was": info.state,
                                                    "at": now})
                info.state = state
            if state == "online":
                info.offline_since = None
                for rule in self._of(OfflineRule):
                    # back online: another hub process may have raised its offline alarm since this one's tick
                    self._auto_clear(db, out, rule, st.device, now, "online again", look=changed)
            elif info.offline_since is None:
                info.offline_since = now
        for m in batch.messages:
            if m.event is not None:
                e = m.event
                data = {"device": m.device, "seq": m.seq, "ts": e.ts.timestamp(), "sensor": e.sensor,
                        "event": e.event, "severity": e.severity.value, "data": e.data}
                if self._feed(db, out, now, "event", data, key=f"event:{m.device}:{m.seq}") is None:
                    continue  # redelivered: evaluated when it first came
                for rule in self._of(EventRule):
                    if not self._scoped(rule, m.device):
                        continue
                    if rule.matches(e.event):
                        self._raise(db, out, rule, m.device, e.sensor, None, {"event": e.event, "seq": m.seq}, now)
                    elif rule.ends(e.event):
                        self._auto_clear(db, out, rule, m.device, now, e.event)

    def _reading(self, ops: list[_Op], device: str, sensor: str, quantity: str, value: float, ts: float) -> None:
        self._quantity(ops, device, sensor, quantity, value, ts)
        if quantity in _AQI_INPUTS:
            hours = self._hours.setdefault((device, quantity), {})
            acc = hours.setdefault(int(ts // 3600), [0.0, 0.0])
            acc[0] += value
            acc[1] += 1
            for old in [h for h in hours if h < ts // 3600 - 25]:
                del hours[old]
            value_th = self.aqi_of(device, ts)
            if value_th is not None:
                self._quantity(ops, device, sensor, AQI_QUANTITY, float(value_th.aqi), ts)

    def aqi_of(self, device: str, at: float) -> aqi.AqiValue | None:
        """The device's Thai AQI from the 24-hour averages the engine has seen (None below 12 hours of data)."""
        averages: dict[str, float] = {}
        for pollutant in _AQI_INPUTS:
            hours = self._hours.get((device, pollutant), {})
            samples = [(h * 3600.0, s / n) for h, (s, n) in hours.items()]
            avg = aqi.daily_average(samples, at)
            if avg is not None:
                averages[pollutant] = avg
        return aqi.thai_aqi(averages) if averages else None

    def _quantity(self, ops: list[_Op], device: str, sensor: str, quantity: str, value: float, ts: float) -> None:
        """Judge one value in memory; an alarm change is queued in ``ops`` (the condition is marked at once, so
        the next value of the same batch sees it)."""
        rules = self._rules_on(quantity, device)
        if not rules:
            return
        info = self._info(device)
        for rule in rules:
            if (rule.kind is not None and info.node != rule.kind) or (rule.site is not None and
                                                                      info.site != rule.site):
                continue
            key = (rule.id, device)
            detail: dict[str, Any] = {"quantity": quantity, "reading_ts": ts}
            if isinstance(rule, ThresholdRule):
                if key in self._on:
                    if rule.clears(value):
                        self._queue_clear(ops, rule, device, f"{quantity} = {value:g}")
                elif rule.trips(value):
                    since = self._pending.setdefault(key, ts)
                    if ts - since >= rule.for_s:
                        self._pending.pop(key, None)
                        self._queue_raise(ops, rule, device, sensor, value, {**detail, "since": since})
                else:
                    self._pending.pop(key, None)
                continue
            window = self._windows.setdefault(key, deque())
            window.append((ts, value))
            while window and window[0][0] < ts - rule.within_s:
                window.popleft()
            base = min(v for _, v in window) if rule.change > 0 else max(v for _, v in window)
            change = value - base
            tripped = change >= rule.change if rule.change > 0 else change <= rule.change
            if tripped and key not in self._on:
                self._queue_raise(ops, rule, device, sensor, value, {**detail, "change": change})
            elif not tripped and key in self._on:
                self._queue_clear(ops, rule, device, f"{quantity} change {change:g}")

    def _rules_on(self, quantity: str, device: str) -> list[ThresholdRule | RateRule]:
        """The threshold and rate rules that judge ``quantity`` from ``device`` (from the index, built on first use)."""
        rules = self._by_quantity.get((quantity, device))
        if rules is None:
            rules = self._by_quantity[(quantity, device)] = self._quantity_rules(quantity, device)
        return rules

    def _watched(self, quantity: str, device: str) -> bool:
        """Whether a reading of ``quantity`` from ``device`` can change an alarm: a rule judges it, or it is an AQI
        input (the AQI has rules of its own); the others cost a batch only their newest times."""
        return quantity in _AQI_INPUTS or bool(self._rules_on(quantity, device))

    def _quantity_rules(self, quantity: str, device: str) -> list[ThresholdRule | RateRule]:
        """The threshold and rate rules on ``quantity`` whose device pattern takes ``device``, in rule order."""
        return [r for r in self.rules.values() if isinstance(r, ThresholdRule | RateRule) and r.quantity == quantity
                and r.applies_to(device, r.kind, r.site)]

    def _queue_raise(self, ops: list[_Op], rule: AnyRule, device: str, sensor: str, value: float,
                     detail: dict[str, Any]) -> None:
        self._on.add((rule.id, device))
        ops.append(lambda db, out: self._raise(db, out, rule, device, sensor, value, detail, self.clock()))

    def _queue_clear(self, ops: list[_Op], rule: AnyRule, device: str, why: str) -> None:
        self._on.discard((rule.id, device))
        ops.append(lambda db, out: self._clear_open(db, out, rule, device, self.clock(), why))

    def _of(self, kind: type[Any]) -> list[Any]:
        return [r for r in self.rules.values() if isinstance(r, kind)]

    # -- the ticker ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Evaluate the time-based conditions at the engine clock's now (after :meth:`sync`)."""
        self.store.read(self.sync)
        self._confirm_silence()
        self._transact(self._tick)

    def _stored(self, device: str, sensor: str, ts: datetime) -> None:
        key = (device, sensor)
        at, known = epoch_ms(ts), self._newest.get(key)
        if known is None or at > known:
            self._newest[key] = at

    def _confirm_silence(self) -> None:
        """Before a no-data alarm is raised on what this process saw, ask the store whether another process
        stored newer readings of those sensors (their arrival is then dated now, by this engine's clock)."""
        with self._lock:
            now = self.clock()
            suspects = {device for device, info in self.devices.items() for rule in self._of(NoDataRule)
                        if (rule.id, device) not in self._on and self._scoped(rule, device)
                        and self._silent(rule, device, info, now)}
        for device in sorted(suspects):
            stored = self.timeseries.latest(device)
            with self._lock:
                for (sensor, _q), ts in stored.items():
                    before = self._newest.get((device, sensor))
                    self._stored(device, sensor, ts)
                    if before is None or epoch_ms(ts) > before:
                        self._last_reading[(device, sensor)] = now

    def sync(self, db: Session) -> None:
        """Learn what other hub processes changed: which alarms are open and the devices' links."""
        opened = {(str(r), str(d)) for r, d in db.execute("SELECT rule, device FROM alarms WHERE state != 'cleared'")}
        timed = bool(self._of(OfflineRule) or self._of(NoDataRule))
        links = db.execute("SELECT device, state FROM devices").fetchall() if timed else []
        with self._lock:
            now = self.clock()
            self._on = opened
            for device, state in links:
                info = self._info(device)
                if state == info.state:
                    continue
                info.state = state
                if state == "online":
                    info.offline_since = None
                elif state in ("offline", "lost") and info.offline_since is None:
                    info.offline_since = now

    def _tick(self, db: Session, out: _Write) -> None:
        now = self.clock()
        for device, info in list(self.devices.items()):
            for rule in self._of(OfflineRule):
                if not self._scoped(rule, device):
                    continue
                since = info.offline_since
                if since is not None and now - since >= rule.grace_s and (rule.id, device) not in self._on:
                    self._raise(db, out, rule, device, None, None, {"link": info.state, "since": since}, now)
            for rule in self._of(NoDataRule):
                if not self._scoped(rule, device):
                    continue
                silent = self._silent(rule, device, info, now)
                if silent and (rule.id, device) not in self._on:
                    self._raise(db, out, rule, device, silent[0], None, {"silent": silent}, now)
                elif not silent and info.offline_since is None:
                    self._auto_clear(db, out, rule, device, now, "data again")
        self._escalate(db, out, now)
        self._unshelve(db, out, now)
        self._reports(db, out, now)
        if now - self._last_prune > 60:
            self._last_prune = now
            feed_module.prune(db, now)

    def _silent(self, rule: NoDataRule, device: str, info: DeviceInfo, now: float) -> list[str]:
        if info.offline_since is not None or info.state != "online":
            return []  # an offline device inhibits its no-data alarms
        sensors = [rule.sensor] if rule.sensor else sorted(info.intervals)
        silent = []
        for sensor in sensors:
            interval = rule.interval_s or info.intervals.get(sensor)
            if interval is None:
                continue
            last = self._last_reading.setdefault((device, sensor), now)
            if now - last > rule.intervals * interval:
                silent.append(sensor)
        return silent

    def _escalate(self, db: Session, out: _Write, now: float) -> None:
        rows = db.execute(f"SELECT {sql.ALARM_COLUMNS} FROM alarms "  # noqa: S608 (constant)
                          "WHERE state = 'active' AND next_step >= 0").fetchall()
        for row in rows:
            alarm = sql.alarm_dict(row)
            rule = self._rule(alarm["rule"])
            step = alarm["next_step"]
            if rule is None or step >= len(rule.escalation):
                db.execute("UPDATE alarms SET next_step = -1 WHERE id = ?", (alarm["id"],))
                continue
            if now < alarm["first_seen"] + rule.escalation[step].after_s:
                continue
            if not db.execute("UPDATE alarms SET next_step = ? WHERE id = ? AND next_step = ?",
                              (step + 1 if step + 1 < len(rule.escalation) else -1, alarm["id"], step)).rowcount:
                continue  # another hub process took this step
            self._notify(db, out, alarm, rule, step, now)
            sql.add_history(db, alarm["id"], now, "escalated", None, f"step {step + 1}", alarm["state"])

    def _unshelve(self, db: Session, out: _Write, now: float) -> None:
        rows = db.execute("SELECT id FROM alarms WHERE state = 'shelved' AND shelved_until <= ?", (now,)).fetchall()
        for (alarm_id,) in rows:
            if db.execute("UPDATE alarms SET state = shelved_from, shelved_until = NULL, shelved_from = NULL "
                          "WHERE id = ? AND state = 'shelved'", (alarm_id,)).rowcount:
                self._changed(db, out, alarm_id, "unshelved", None, None, now)

    def _reports(self, db: Session, out: _Write, now: float) -> None:
        rows = db.execute("SELECT id, device, category, lat, lon, zone, status, created_at FROM reports "
                          "WHERE id > ? ORDER BY id LIMIT 100", (self._last_report,)).fetchall()
        for rid, device, category, lat, lon, zone, status, created_at in rows:
            self._feed(db, out, now, "report", {"id": rid, "device": device, "category": category, "lat": lat,
                                                "lon": lon, "zone": zone, "status": status,
                                                "created_at": created_at}, key=f"report:{rid}")
            self._last_report = rid

    # -- alarm changes (inside a write) --------------------------------------------------------
    def _feed(self, db: Session, out: _Write, now: float, kind: str, data: dict[str, Any],
              key: str | None = None) -> FeedItem | None:
        item = feed_module.append(db, now, kind, data, key)
        if item is not None:
            out.items.append(item)
        return item

    def _rule(self, rule_id: str) -> AnyRule | None:
        return CHANNEL_RULE if rule_id == CHANNEL_RULE.id else self.rules.get(rule_id)

    def _raise(self, db: Session, out: _Write, rule: AnyRule, device: str, sensor: str | None,
               value: float | None, detail: dict[str, Any], now: float) -> None:
        self._on.add((rule.id, device))
        latched = isinstance(rule, EventRule) and rule.latched
        first_later = next((i for i, s in enumerate(rule.escalation) if s.after_s > 0), -1)
        # the unique open-alarm index decides, also against another hub process raising it at the same time
        row = db.execute(
            "INSERT INTO alarms (rule, device, sensor, severity, state, latched, title_th, title_en, value, detail, "
            "first_seen, last_seen, next_step) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (rule, device) WHERE state != 'cleared' DO NOTHING RETURNING id",
            (rule.id, device, sensor, rule.severity.value, int(latched), rule.title_th, rule.title_en, value,
             json.dumps(detail), now, now, first_later)).fetchone()
        if row is None:
            existing = sql.open_alarm(db, rule.id, device)
            if existing is None:
                raise AlarmError(f"the open alarm of {rule.id} on {device} vanished")
            db.execute("UPDATE alarms SET count = count + 1, last_seen = ?, value = coalesce(?, value), detail = ? "
                       "WHERE id = ?", (now, value, json.dumps(detail), existing["id"]))
            self._changed(db, out, existing["id"], "repeated", None, None, now)
            return
        alarm_id = int(row[0])
        alarm = self._changed(db, out, alarm_id, "raised", None, None, now)
        out.raised = True
        for step, esc in enumerate(rule.escalation):
            if esc.after_s <= 0:
                self._notify(db, out, alarm, rule, step, now)
        log.warning("alarm %d raised: %s on %s (%s)", alarm_id, rule.id, device, rule.severity.value)

    def _auto_clear(self, db: Session, out: _Write, rule: AnyRule, device: str, now: float,
                    why: str, look: bool = False) -> None:
        """Clear the rule's open alarm on the device: one this engine knows of, or (``look``) any in the store."""
        self._pending.pop((rule.id, device), None)
        if (rule.id, device) not in self._on and not look:
            return
        self._on.discard((rule.id, device))
        self._clear_open(db, out, rule, device, now, why)

    def _clear_open(self, db: Session, out: _Write, rule: AnyRule, device: str, now: float,
                    why: str) -> None:
        existing = sql.open_alarm(db, rule.id, device)
        if existing is None or existing["latched"]:
            return
        db.execute("UPDATE alarms SET state = 'cleared', cleared_at = ?, next_step = -1 WHERE id = ?",
                   (now, existing["id"]))
        self._changed(db, out, existing["id"], "cleared", None, f"condition ended: {why}", now)

    def _changed(self, db: Session, out: _Write, alarm_id: int, action: str, user: str | None,
                 comment: str | None, now: float) -> dict[str, Any]:
        alarm = sql.alarm(db, alarm_id)
        if alarm is None:
            raise AlarmError(f"no alarm {alarm_id}")
        sql.add_history(db, alarm_id, now, action, user, comment, alarm["state"])
        self._feed(db, out, now, "alarm", {"change": action, "user": user, "comment": comment, "alarm": alarm})
        return alarm

    def _notify(self, db: Session, out: _Write, alarm: dict[str, Any], rule: AnyRule, step: int,
                now: float) -> None:
        info = self._info(alarm["device"])
        where = {"site": info.site, "lat": info.lat, "lon": info.lon}
        for channel_id in rule.escalation[step].channels:
            channel = self.channels.get(channel_id)
            if channel is None:
                log.error("rule %s names channel %s, which is not configured", rule.id, channel_id)
                continue
            language = rule.language if rule.language != "th" else channel.language
            subject, body = compose(alarm, where, language, self.config.public_url, step)
            payload = {"alarm": alarm, "where": where, "step": step, "subject": subject, "text": body,
                       "language": language}
            db.execute(
                "INSERT INTO notifications (alarm_id, channel, step, retry_key, language, subject, body, "
                "payload, state, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) "
                "ON CONFLICT (alarm_id, channel, step) DO NOTHING",
                (alarm["id"], channel_id, step, str(uuid.uuid4()), language, subject, body,
                 json.dumps(payload, ensure_ascii=False), now, now))
            out.notified = True

    # -- operator actions ----------------------------------------------------------------------
    def act(self, alarm_id: int, action: str, user: str, comment: str | None = None,
            until: float | None = None, audited: Audited | None = None) -> dict[str, Any]:
        """Acknowledge, clear, shelve (until a time) or comment an alarm as ``user``; returns it after.

        ``audited`` is called inside the same transaction with the alarm before and after."""
        done: dict[str, Any] = {}

        def work(db: Session, out: _Write) -> None:
            alarm = sql.alarm(db, alarm_id)
            if alarm is None:
                raise LookupError(f"no alarm {alarm_id}")
            now = self.clock()
            _ACTIONS[action](self, db, alarm, user, now, until)
            self._changed(db, out, alarm_id, _PAST[action], user, comment, now)
            after = sql.alarm(db, alarm_id)
            assert after is not None
            if audited is not None:
                audited(db, alarm, after)
            done.update(after)

        self._transact(work)
        return done

    def _ack(self, db: Session, alarm: dict[str, Any], user: str, now: float, _: float | None) -> None:
        if alarm["state"] != "active":
            raise AlarmError(f"alarm {alarm['id']} is {alarm['state']}; only an active alarm is acknowledged")
        db.execute("UPDATE alarms SET state = 'acknowledged', acked_by = ?, acked_at = ? WHERE id = ?",
                   (user, now, alarm["id"]))

    def _clear(self, db: Session, alarm: dict[str, Any], user: str, now: float, _: float | None) -> None:
        if alarm["state"] == "cleared":
            raise AlarmError(f"alarm {alarm['id']} is already cleared")
        db.execute("UPDATE alarms SET state = 'cleared', cleared_by = ?, cleared_at = ?, next_step = -1 "
                   "WHERE id = ?", (user, now, alarm["id"]))
        key = (alarm["rule"], alarm["device"])
        self._on.discard(key)
        self._pending.pop(key, None)

    def _shelve(self, db: Session, alarm: dict[str, Any], user: str, now: float,
                until: float | None) -> None:
        if alarm["state"] == "cleared":
            raise AlarmError(f"alarm {alarm['id']} is cleared; there is nothing to shelve")
        if until is None or until <= now:
            raise AlarmError("shelving needs a time in the future")
        db.execute("UPDATE alarms SET state = 'shelved', shelved_until = ?, shelved_by = ?, "
                   "shelved_from = CASE WHEN state = 'shelved' THEN shelved_from ELSE state END WHERE id = ?",
                   (until, user, alarm["id"]))

    def _comment(self, db: Session, alarm: dict[str, Any], user: str, now: float,
                 _: float | None) -> None:
        """A comment changes nothing but the history."""

    # -- rules through the API -----------------------------------------------------------------
    def put_rule(self, rule: AnyRule, user: str, audited: Audited | None = None) -> None:
        """Add or replace a rule kept in the store (a rule from the rules file cannot be replaced);
        ``audited`` is called inside the same transaction with the rule before (or None) and after."""
        if rule.id in self.file_rules or rule.id == CHANNEL_RULE.id:
            raise AlarmError(f"rule {rule.id} comes from the rules file; change it there")
        check_channels(rule, set(self.channels))

        def work(db: Session) -> None:
            before = db.execute("SELECT body FROM alarm_rules WHERE id = ?", (rule.id,)).fetchone()
            db.execute("INSERT INTO alarm_rules (id, body, updated_at, updated_by) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at, "
                       "updated_by = excluded.updated_by", (rule.id, rule.model_dump_json(), self.clock(), user))
            if audited is not None:
                audited(db, json.loads(before[0]) if before else None, rule.model_dump(mode="json"))

        with self._lock:
            self.store.write(work)
            self.rules[rule.id] = rule
            self._by_quantity.clear()

    def delete_rule(self, rule_id: str, audited: Audited | None = None) -> bool:
        """Remove a rule kept in the store; its open alarms stay until cleared. ``audited`` is called inside
        the same transaction with the rule removed and None."""
        if rule_id in self.file_rules:
            raise AlarmError(f"rule {rule_id} comes from the rules file; change it there")

        def work(db: Session) -> bool:
            before = db.execute("DELETE FROM alarm_rules WHERE id = ? RETURNING body", (rule_id,)).fetchone()
            if before is not None and audited is not None:
                audited(db, json.loads(before[0]), None)
            return before is not None

        with self._lock:
            deleted = self.store.write(work)
            self.rules.pop(rule_id, None)
            self._by_quantity.clear()
        return deleted

    # -- channel health (from the notification worker) -----------------------------------------
    def channel_failing(self, channel: str, error: str) -> None:
        """Raise (or repeat) the channel's own alarm."""
        self._transact(lambda db, out: self._raise(db, out, CHANNEL_RULE, channel, None, None, {"error": error},
                                                   self.clock()))

    def channel_recovered(self, channel: str) -> None:
        """Clear the channel's alarm after a success."""
        if (CHANNEL_RULE.id, channel) in self._on:
            self._transact(lambda db, out: self._auto_clear(db, out, CHANNEL_RULE, channel, self.clock(),
                                                            "delivered again"))


_ACTIONS: dict[str, Callable[[AlarmEngine, Session, dict[str, Any], str, float, float | None], None]] = {
    "ack": AlarmEngine._ack,
    "clear": AlarmEngine._clear,
    "shelve": AlarmEngine._shelve,
    "comment": AlarmEngine._comment,
}
_PAST = {"ack": "acknowledged", "clear": "cleared", "shelve": "shelved", "comment": "commented"}
