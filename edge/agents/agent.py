"""The edge agent: runs a device's drivers, commits what they measure to the outbox, and delivers it to the hub.

Sampling never waits for the network: drivers run on their own schedules and every reading is committed
to the outbox first. A separate publisher sends outbox records in seq order, keeps up to ``max_inflight``
of them unacknowledged, sends again what the hub has not acknowledged after ``resend_after_s``, and resends
everything unacknowledged after a reconnect. The connection loop reconnects with jittered exponential
backoff, announces the device (retained ``online``, last will ``lost``) and answers commands.

Every task (each driver stream, the connection, publisher, heartbeat, downlink, the kiosk screen) runs under
:meth:`Agent.supervise`: an unexpected error is logged once with its traceback, shown in the heartbeat as
``unavailable`` with the reason, and the task starts again with backoff. A full disk under the outbox is
reported (``outbox_error``) and heals by itself; a driver value that is NaN or infinite is refused and counted;
a message the broker refuses for good is set aside in the outbox file instead of being sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, Literal

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from edge import config as config_module
from edge.agents import memory, notify, telemetry
from edge.agents.clock import AgentClock
from edge.agents.handoff import Handoff
from edge.agents.mqtt import CheckedClient
from edge.agents.outbox import Outbox, OutboxRecord, RecordClass, SendWindow
from edge.contract import (
    BOUNDS_CHECKED,
    QOS,
    REPLY_EXPIRED,
    Ack,
    CitizenRef,
    Command,
    DesiredConfig,
    DeviceState,
    Event,
    Location,
    Message,
    Reading,
    Reply,
    Status,
    StreamHealth,
    TaskHealth,
    Telemetry,
    Tx,
    TxOutcome,
    TxStatus,
    format_timestamp,
    now,
    topic,
    within_bounds,
)
from edge.drivers import (
    ClockSource,
    DriverConfig,
    DriverEvent,
    DriverKind,
    EventDriver,
    HealthReporting,
    PolledDriver,
)
from edge.errors import ConfigError, DriverError, NakhonError, OutboxError, OutboxFull, PublishRefused

if TYPE_CHECKING:
    from edge.agents.kiosk import Kiosk

log = logging.getLogger("nakhon.agent")


class Wake:
    """A polled stream's wake-up call (a new interval, a stop), set on the loop and waited for by the stream's
    sampling thread inside one C call (a lock's ``acquire`` with a timeout): no Python-level condition, and no
    exception when the wait times out, as ``threading.Event.wait`` and ``queue.SimpleQueue.get`` take."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held while no call waits: set() releases it, wait() takes it back

    def set(self) -> None:
        """Cut the current (or next) wait short; calls made before the wait answers count as one."""
        with contextlib.suppress(RuntimeError):  # already released: a call waits
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds; True when woken (every call made meanwhile is answered at once)."""
        return self._lock.acquire(timeout=max(0.0, timeout))


@dataclass
class Stream:
    """One driver instance as the agent runs it."""

    kind: DriverKind
    config: DriverConfig
    driver: PolledDriver | EventDriver
    interval_s: float
    state: Literal["ok", "unavailable", "starting"] = "starting"
    error: str | None = None
    wake: Wake = field(default_factory=Wake)
    """Set to sample at once (a new interval); the stream's sampling thread waits on it."""
    refused_values: int = 0
    """Values the driver returned as NaN or infinite, refused before serialising (JSON has no such numbers)."""
    refusal_logged_at: float = -1e9
    last_ms: int = -1
    """The millisecond of this stream's last sample (the contract's precision)."""

    def stamp(self, ms: int) -> int:
        """``ms`` (since the epoch), or one millisecond after the previous sample when it falls in the same
        millisecond or just before (a polling loop catching up, a clock slewed back by less than a second): a
        stream's samples keep their order at the contract's millisecond precision, so a store that keeps one sample
        per series and millisecond (VictoriaMetrics) never folds two into one. A larger step back is the clock's
        and is kept."""
        if self.last_ms - 1000 < ms <= self.last_ms:
            ms = self.last_ms + 1
        self.last_ms = ms
        return ms

    def health(self) -> StreamHealth:
        """The stream's entry in the heartbeat."""
        polled = isinstance(self.driver, PolledDriver)
        return StreamHealth(kind=self.kind.kind, state=self.state,
                            interval_s=self.interval_s if polled else None, error=self.error,
                            refused_values=self.refused_values or None)


def describe_error(err: BaseException) -> str:
    """An unexpected error as the heartbeat shows it: its type and message, bounded."""
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 300 else text[:297] + "..."


def finite(value: object) -> bool:
    """False for a float that JSON cannot carry (NaN, +-Infinity)."""
    return not isinstance(value, float) or math.isfinite(value)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set.

    Uses ``asyncio.timeout`` rather than ``asyncio.wait_for``, which on Python 3.11 can swallow a
    cancellation that races with the event (the task then never finishes cancelling).
    """
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class Backoff:
    """Jittered exponential backoff ("full jitter" between half and the whole current delay).

    With ``at_once``, the first delay after a :meth:`reset` is only a jitter of up to a tenth of ``low`` (a link
    that was up is tried again at once; a fleet still does not come back in lockstep), then the backoff starts.
    """

    def __init__(self, low: float, high: float, at_once: bool = False) -> None:
        self._low = low
        self._high = high
        self._at_once = at_once
        self._first = at_once
        self._next = low

    def reset(self) -> None:
        """Start again from the lowest delay."""
        self._next = self._low
        self._first = self._at_once

    def delay(self) -> float:
        """The delay to wait now; doubles the next one up to the ceiling."""
        if self._first:
            self._first = False
            return random.uniform(0.0, self._low / 10)
        current = self._next
        self._next = min(self._high, self._next * 2)
        return random.uniform(current / 2, current)


DOWNLINK_QOS: dict[str, int] = {"ack": 0, "tx": QOS, "cmd": QOS, "config": QOS}
"""The agent's subscriptions under ``down/``. Acks come at QoS 0: no PUBACK for each (half the packets the agent
sends while it streams), and an ack lost is repaired by the resend, which the hub acknowledges again."""
STABLE_LINK_S = 10.0
"""A broker connection that lasted this long is retried at once when it drops (shorter ones back off)."""
ACK_FLUSH_S = 0.5
"""How long acknowledged records may wait before the outbox deletes them, in one transaction for all."""
_CHECKED = {BOUNDS_CHECKED: True}
"""Validation context for a ``down/ack`` whose bytes :func:`edge.contract.within_bounds` cleared."""

TimeOffer = tuple[datetime, float]
"""What a :class:`edge.drivers.ClockSource` offers: a UTC time and the monotonic instant it was true."""

CommandHandler = Callable[["Agent", dict[str, Any]], Awaitable[dict[str, Any]]]


class CommandFailed(NakhonError, ValueError):
    """A command's arguments were wrong or it could not be carried out."""


async def _cmd_ping(agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True, "uptime_s": round(agent.uptime(), 3), "outbox_depth": agent.outbox.depth()}


async def _cmd_set_interval(agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
    sensor, interval = args.get("sensor"), args.get("interval_s")
    if not isinstance(interval, int | float) or isinstance(interval, bool) or not 0 < interval <= 86_400:
        raise CommandFailed("args.interval_s must be a number of seconds in (0, 86400]")
    targets = [s for s in agent.streams.values() if isinstance(s.driver, PolledDriver)
               and (sensor is None or s.config.name == sensor)]
    if not targets:
        raise CommandFailed(f"no polled sensor named {sensor!r}; sensors: {', '.join(agent.polled_names())}")
    for stream in targets:
        stream.interval_s = float(interval)
        stream.wake.set()
    return {"sensors": [s.config.name for s in targets], "interval_s": float(interval)}


async def _cmd_reload_config(agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
    return await agent.reload_config()


async def _cmd_output(agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
    """Drive an output (an LED, a buzzer): ``{"sensor", "on"}`` or ``{"sensor", "blink"|"beep": {on_s, off_s, n}}``."""
    sensor = args.get("sensor")
    stream = agent.streams.get(sensor) if isinstance(sensor, str) else None
    outputs = [n for n, s in agent.streams.items() if hasattr(s.driver, "set")]
    if stream is None or not hasattr(stream.driver, "set"):
        raise CommandFailed(f"no output named {sensor!r}; outputs: {', '.join(outputs) or 'none'}")
    driver: Any = stream.driver
    if "on" in args:
        if not isinstance(args["on"], bool):
            raise CommandFailed("args.on must be true or false")
        state = await asyncio.to_thread(driver.set, args["on"])
    else:
        action = next((a for a in ("blink", "beep") if a in args), None)
        pattern = args.get(action) if action else None
        if action is None or not isinstance(pattern, dict):
            raise CommandFailed('give "on": true|false, or "blink"/"beep": {"on_s", "off_s", "n"}')
        try:
            state = await asyncio.to_thread(getattr(driver, action), **pattern)
        except TypeError as err:
            raise CommandFailed(f"bad {action} pattern: {err}") from err
    return {"sensor": sensor, "state": state}


COMMANDS: dict[str, CommandHandler] = {
    "ping": _cmd_ping,
    "set_interval": _cmd_set_interval,
    "reload_config": _cmd_reload_config,
    "output": _cmd_output,
}
"""Commands an agent understands on ``down/cmd``, by name."""


class Agent:
    """Runs one device: its drivers, its outbox and its broker connection."""

    def __init__(self, loaded: config_module.LoadedConfig, simulate: bool = False) -> None:
        self.loaded = loaded
        self.simulate = simulate
        self.clock = AgentClock()
        self.cfg = loaded.device
        self.outbox = Outbox(self.cfg.outbox.path, self.cfg.outbox)
        self.streams: dict[str, Stream] = {
            conf.name: Stream(kind, conf, kind.build(conf), conf.interval_s) for kind, conf in loaded.drivers
        }
        self.heartbeat_s = self.cfg.agent.heartbeat_s
        self.config_version = self.cfg.config_version
        self.publish_errors = 0
        self.last_error: str | None = None
        self.tasks: dict[str, TaskHealth] = {}
        """The agent's own tasks that failed at least once (driver streams report in ``streams``)."""
        self.outbox_error: str | None = None
        self.unstored = 0
        self.set_aside = 0
        self._refusals: dict[int, int] = {}
        self._refusal_logged_at = -1e9
        self._started = time.monotonic()
        self._client: CheckedClient | None = None
        self._settled = False
        self._window = SendWindow(self.cfg.agent.max_inflight, self.cfg.agent.resend_after_s)
        self._acks_waiting = asyncio.Event()
        self._ack_flush: asyncio.TimerHandle | None = None
        """The ack writer's wake-up ``ACK_FLUSH_S`` after the first ack it has not yet seen."""
        self._acks_lock = asyncio.Lock()
        self._setting_aside: set[asyncio.Task[None]] = set()
        self._outbox_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._events: asyncio.Queue[tuple[str, DriverEvent, Any]] = asyncio.Queue()
        self.event_listeners: list[Callable[[str, DriverEvent], None]] = []
        """Called on the event loop for every driver event, after it is committed (the kiosk flow listens)."""
        self.tx_listeners: list[Callable[[TxOutcome], Awaitable[None]]] = []
        """Awaited for every ``down/tx`` answer before its transaction leaves the outbox."""
        self.kiosk: Kiosk | None = None
        """The kiosk flow, on a device configured as a kiosk, once it runs."""

    # -- helpers -------------------------------------------------------------------------------
    def uptime(self) -> float:
        """Seconds since the agent started."""
        return time.monotonic() - self._started

    def polled_names(self) -> list[str]:
        """Names of the polled sensors."""
        return [n for n, s in self.streams.items() if isinstance(s.driver, PolledDriver)]

    @property
    def online(self) -> bool:
        """True while the agent holds a broker connection."""
        return self._client is not None

    def _topic(self, suffix: str) -> str:
        return topic(self.cfg.broker.root, self.cfg.device, suffix)

    @cached_property
    def _record_topics(self) -> dict[RecordClass, str]:
        """The topic of each class of record (built once, not per send)."""
        return {klass: self._topic(klass.suffix) for klass in RecordClass}

    def status(self, state: DeviceState) -> Status:
        """The status message for ``state``, with the heartbeat fields."""
        dropped = self.outbox.dropped()
        return Status(
            device=self.cfg.device, state=state, at=now(), uptime_s=round(self.uptime(), 3),
            heartbeat_s=self.heartbeat_s, outbox_depth=self.outbox.depth(), dropped=sum(dropped.values()),
            clock=self.clock.state(), config_version=self.config_version,
            streams={name: s.health() for name, s in self.streams.items()},
            publish_errors=self.publish_errors, last_error=self.last_error, node=self.cfg.node,
            site=self.cfg.site, location=self.cfg.location, tasks=dict(self.tasks) or None,
            outbox_error=self.outbox_error, unstored=self.unstored or None, set_aside=self.set_aside or None,
        )

    async def _commit(self, klass: RecordClass, build: Callable[[int], Message], key: str | None = None) -> bool:
        """Commit a droppable record; False (reported, counted) when the outbox cannot take it right now."""
        result: OutboxRecord | OutboxError
        try:
            result = await asyncio.to_thread(self.outbox.append, klass, build, key)
        except OutboxError as err:
            result = err
        return self._committed(result)

    def _committed(self, result: OutboxRecord | OutboxError) -> bool:
        """Report a droppable record's commit (or its failure) and offer it to the publisher."""
        if isinstance(result, OutboxError):
            self.storage_failed(result)
            return False
        self.storage_ok()
        self._window.offer(result)
        self._send_ready()
        return True

    def storage_failed(self, err: OutboxError, lost: bool = True) -> None:
        """Report that the device's storage refused a write (``outbox_error`` in the heartbeat, logged once);
        ``lost`` counts a record that is gone for good."""
        self.unstored += lost
        if self.outbox_error is None:  # once per episode: the heartbeat carries the rest
            log.error("outbox cannot take records: %s; sampling goes on, unstored records are counted", err)
        self.outbox_error = self.last_error = str(err)

    def storage_ok(self) -> None:
        """A write succeeded again: clear ``outbox_error``."""
        if self.outbox_error is not None:
            log.warning("outbox takes records again (%d record(s) could not be stored meanwhile)", self.unstored)
            self.outbox_error = None

    def new_tx_id(self) -> str:
        """A transaction id unique across the deployment (the device id and a random part)."""
        return f"{self.cfg.device}-{uuid.uuid4().hex[:16]}"

    async def submit_tx(self, kind: str, data: dict[str, Any], citizen_ref: str | None = None,
                        location: Location | None = None, tx_id: str | None = None) -> Tx:
        """Commit a service transaction to the outbox (its ``tx_id`` is fixed now, for every send);
        raises :class:`edge.errors.OutboxFull` when the outbox cannot take it."""
        tx_id = tx_id or self.new_tx_id()
        citizen = CitizenRef(ref=citizen_ref) if citizen_ref else None

        def build(seq: int) -> Tx:
            return Tx(device=self.cfg.device, seq=seq, tx_id=tx_id, kind=kind, created_at=now(), data=data,
                      citizen=citizen, location=location)

        try:
            record = await asyncio.to_thread(self.outbox.append, RecordClass.TX, build, tx_id)
        except OutboxFull:
            raise
        except OutboxError as err:
            self.storage_failed(err, lost=False)  # the citizen is told at once: nothing is lost
            raise
        self.storage_ok()
        self._window.offer(record)
        self._send_ready()
        log.info("transaction %s (%s) committed as seq %d", tx_id, kind, record.seq)
        return Tx.model_validate_json(record.payload)

    def request_stop(self) -> None:
        """Ask the agent to stop gracefully (what SIGTERM does)."""
        self._stopping.set()

    # -- supervision ---------------------------------------------------------------------------
    async def supervise(self, name: str, body: Callable[[], Awaitable[None]], *,
                        failed: Callable[[str], None] | None = None, recovered: Callable[[], None] | None = None,
                        passes: tuple[type[BaseException], ...] = (), backoff_max_s: float | None = None) -> None:
        """Run ``body`` until it returns; after an unexpected error, log it, report it and run it again.

        The traceback is logged the first time an error with a given description happens, later repeats in
        one line. ``failed(reason)`` reports the failure (default: ``unavailable`` in the heartbeat's
        ``tasks``), ``recovered()`` the restart; ``passes`` are errors that end the task on purpose (a lost
        broker connection ends the session tasks, and the connection loop reconnects).
        """
        backoff = Backoff(1.0, backoff_max_s or self.cfg.agent.driver_backoff_max_s)
        logged: set[str] = set()
        while True:
            started = time.monotonic()
            try:
                await body()
                return
            except passes:
                raise
            # a supervisor must outlive any error of the task it runs: that is its whole purpose (STYLE.md)
            except Exception as err:
                reason = describe_error(err)
                if time.monotonic() - started > 60:
                    backoff.reset()
                delay = backoff.delay()
                (failed or partial(self._task_failed, name))(reason)
                if reason in logged:
                    log.warning("task %s failed again (%s); restarting in %.1f s", name, reason, delay)
                else:
                    logged.add(reason)
                    log.exception("task %s failed; restarting in %.1f s", name, delay)
            await asyncio.sleep(delay)
            (recovered or partial(self._task_restarted, name))()

    def _task_failed(self, name: str, reason: str) -> None:
        before = self.tasks.get(name)
        self.tasks[name] = TaskHealth(state="unavailable", error=reason, restarts=before.restarts if before else 0)
        self.last_error = f"{name}: {reason}"

    def _task_restarted(self, name: str) -> None:
        before = self.tasks[name]
        self.tasks[name] = TaskHealth(state="ok", error=before.error, restarts=before.restarts + 1)

    def _supervised(self, name: str, body: Callable[[], Awaitable[None]], **kwargs: Any) -> asyncio.Task[None]:
        return asyncio.create_task(self.supervise(name, body, **kwargs), name=name)

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until :meth:`request_stop`; then publish ``offline``, stop the drivers, close the outbox."""
        await asyncio.to_thread(self.outbox.open)
        simulators = contextlib.ExitStack()
        if self.simulate:
            await asyncio.to_thread(self._start_simulators, simulators)
        log.info("agent %s starting: %d driver(s), outbox %s (%d record(s) waiting, last seq %d)",
                 self.cfg.device, len(self.streams), self.cfg.outbox.path, self.outbox.depth(),
                 self.outbox.last_seq())
        self.set_aside = await asyncio.to_thread(self.outbox.set_aside_count)
        tasks = [self._supervised(f"stream-{n}", partial(self._run_stream, s), failed=partial(self._stream_failed, s),
                                  recovered=partial(self._stream_restarting, s)) for n, s in self.streams.items()]
        tasks.append(self._supervised("events", self._write_events))
        tasks.append(self._supervised("housekeeping", self._housekeeping))
        ping = notify.watchdog_interval()
        if ping is not None:
            tasks.append(self._supervised("watchdog", partial(self._feed_watchdog, ping)))
        if self.cfg.kiosk is not None:
            tasks.append(self._supervised("kiosk", self._run_kiosk, backoff_max_s=30))
        link = self._supervised("connection", self._connection_loop, backoff_max_s=self.cfg.agent.backoff_max_s)
        notify.notify("READY=1")
        try:
            await self._stopping.wait()
        finally:
            notify.notify("STOPPING=1")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drain_events()
            self._stopping.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.shield(link)
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)
            for stream in self.streams.values():
                await asyncio.to_thread(_release, stream.driver)
            try:
                await self._apply_acks()
            except OutboxError as err:  # what stays is sent again after the restart, and acknowledged again
                log.warning("could not delete the last acknowledged records: %s", err)
            await asyncio.to_thread(self.outbox.close)
            await asyncio.to_thread(simulators.close)
            log.info("agent %s stopped", self.cfg.device)

    async def _run_kiosk(self) -> None:
        from edge.agents.kiosk import Kiosk

        assert self.cfg.kiosk is not None
        self.kiosk = Kiosk(self, self.cfg.kiosk)  # a fresh flow after a restart: the journal keeps what matters
        await self.kiosk.run()

    def _start_simulators(self, stack: contextlib.ExitStack) -> None:
        for name, stream in self.streams.items():
            if stream.kind.simulate is None:
                continue
            try:
                config = stack.enter_context(stream.kind.simulate(stream.config))
            except DriverError as err:
                stream.state, stream.error = "unavailable", f"simulator: {err}"
                log.error("sensor %s: its simulator did not start: %s", name, err)
                continue
            stream.driver = stream.kind.build(config)
            log.info("sensor %s runs on its simulator", name)

    # -- drivers -------------------------------------------------------------------------------
    def _stream_failed(self, stream: Stream, reason: str) -> None:
        stream.state, stream.error = "unavailable", reason

    def _stream_restarting(self, stream: Stream) -> None:
        stream.state = "starting"  # the error stays until the stream reads again

    async def _run_stream(self, stream: Stream) -> None:
        try:
            await self._drive(stream)
        except Exception:
            await asyncio.to_thread(_release, stream.driver)  # the supervisor restarts the stream from open()
            raise

    async def _drive(self, stream: Stream) -> None:
        backoff = Backoff(1.0, self.cfg.agent.driver_backoff_max_s)
        name = stream.config.name
        while True:
            try:
                if isinstance(stream.driver, PolledDriver):
                    await self._poll(stream, backoff)
                else:
                    await self._listen(stream)
            except DriverError as err:
                stream.state, stream.error = "unavailable", str(err)
                await asyncio.to_thread(_release, stream.driver)
                delay = backoff.delay()
                log.warning("sensor %s unavailable: %s; retrying in %.1f s", name, err, delay)
                await asyncio.sleep(delay)

    async def _poll(self, stream: Stream, backoff: Backoff) -> None:
        """Open the driver, then sample it in its own thread until an error ends the sampling (raised here).

        The thread keeps the schedule, reads and commits; the loop hears from it once per sample, with the
        record to send (no timer and no executor hop on the loop for each sample)."""
        driver = stream.driver
        assert isinstance(driver, PolledDriver)
        await asyncio.to_thread(driver.open)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        handoff = Handoff(loop)

        def sampled(committed: OutboxRecord | OutboxError | None, offer: TimeOffer | None) -> None:
            handoff.call(self._sampled, stream, backoff, committed, offer)

        thread = ThreadPoolExecutor(1, thread_name_prefix=f"sensor-{stream.config.name}")
        try:
            await loop.run_in_executor(thread, self._sampling, stream, driver, stop, sampled)
        finally:
            stop.set()
            stream.wake.set()
            try:
                await asyncio.to_thread(thread.shutdown)  # the driver is idle again when the caller releases it
            finally:
                handoff.close()

    def _sampling(self, stream: Stream, driver: PolledDriver, stop: threading.Event,
                  sampled: Callable[[OutboxRecord | OutboxError | None, TimeOffer | None], object]) -> None:
        """A polled stream's thread: read and commit on schedule and hand each result to the loop; sample at once
        when woken (a new interval). Returns once ``stop`` is set; an error ends it, raised on the loop."""
        units = {f.quantity: f.unit for f in driver.TELEMETRY}
        encoder = telemetry.SampleEncoder(self.cfg.device, stream.config.name, units)
        source = driver if isinstance(driver, ClockSource) else None
        next_at = time.monotonic()
        while True:
            if stop.is_set():  # a wake (set_interval, stop) during a sample cuts the next wait short
                return
            ms, clock = self.clock.now_ms()
            committed = self._sample(stream, driver, encoder, units, stream.stamp(ms), clock)
            sampled(committed, source.time_offer() if source is not None else None)
            next_at = max(next_at + stream.interval_s, time.monotonic())
            if stream.wake.wait(next_at - time.monotonic()):
                next_at = time.monotonic()

    def _sampled(self, stream: Stream, backoff: Backoff, committed: OutboxRecord | OutboxError | None,
                 offer: TimeOffer | None) -> None:
        """On the loop, for each sample the stream's thread took: the clock's offer, the stream's state, the record."""
        if offer is not None:
            self.clock.offer(stream.kind.kind, *offer)
        if stream.state != "ok":
            log.info("sensor %s is reading", stream.config.name)
        stream.state, stream.error = "ok", None
        backoff.reset()
        if committed is not None:
            self._committed(committed)

    def _finite(self, stream: Stream, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` without NaN and infinities, which are counted and logged (once per stream per minute)."""
        refused = [q for q, v in values.items() if not finite(v)]
        if not refused:
            return values
        if time.monotonic() - stream.refusal_logged_at > 60:
            log.warning("sensor %s returned a value that is not a finite number for %s: refused (%d so far)",
                        stream.config.name, ", ".join(refused), stream.refused_values + len(refused))
            stream.refusal_logged_at = time.monotonic()
        stream.refused_values += len(refused)
        return {q: v for q, v in values.items() if q not in refused}

    def _sample(self, stream: Stream, driver: PolledDriver, encoder: telemetry.SampleEncoder,
                units: dict[str, str | None], ts_ms: int, clock: str) -> OutboxRecord | OutboxError | None:
        """In the stream's thread: read the driver and commit its finite values taken at ``ts_ms``; None when
        there was nothing to commit, the error when the outbox could not take it."""
        values = driver.read()
        values = self._finite(stream, values) if values else values
        if not values:
            return None
        build: Callable[[int], Message | bytes] | None = encoder.encode(values, ts_ms, clock)
        if build is None:  # a value the models must validate (and may refuse)
            ts = telemetry.datetime_of_ms(ts_ms)
            readings = [Reading(ts=ts, sensor=stream.config.name, quantity=q, value=v, unit=units.get(q),
                                clock=clock) for q, v in values.items()]
            build = partial(self._telemetry, readings)
        try:
            return self.outbox.append(RecordClass.TELEMETRY, build)
        except OutboxError as err:
            return err

    def _telemetry(self, readings: list[Reading], seq: int) -> Telemetry:
        return Telemetry(device=self.cfg.device, seq=seq, sent_at=now(), readings=readings)

    async def _listen(self, stream: Stream) -> None:
        driver = stream.driver
        assert isinstance(driver, EventDriver)
        loop = asyncio.get_running_loop()
        name = stream.config.name

        def emit(event: DriverEvent) -> None:
            ts, _ = self.clock.now()
            loop.call_soon_threadsafe(self._events.put_nowait, (name, event, ts))

        await asyncio.to_thread(driver.start, emit)
        stream.state, stream.error = "ok", None
        while True:  # the driver's thread does the work; this only follows its health
            await asyncio.sleep(1.0)
            if isinstance(driver, HealthReporting):
                problem = driver.health()
                stream.state, stream.error = ("ok", None) if problem is None else ("unavailable", problem)

    async def _write_events(self) -> None:
        while True:
            name, event, ts = await self._events.get()
            await self._commit_event(name, event, ts)

    async def _commit_event(self, name: str, event: DriverEvent, ts: Any) -> None:
        # the event's data may be personal (a card holder's name): the log names the event only
        log.info("event %s (%s) from sensor %s", event.event, event.severity, name)
        try:
            await self._commit(RecordClass.EVENT, lambda seq: Event(
                device=self.cfg.device, seq=seq, ts=ts, sensor=name, event=event.event,
                severity=event.severity, data=dict(event.data)))
        except ValidationError as err:
            log.error("sensor %s emitted an event that breaks the contract, not sent: %s", name,
                      err.errors()[0]["msg"] if err.errors() else "invalid")
        for listener in self.event_listeners:
            listener(name, event)

    async def _drain_events(self) -> None:
        while not self._events.empty():
            name, event, ts = self._events.get_nowait()
            await self._commit_event(name, event, ts)

    async def _feed_watchdog(self, every_s: float) -> None:
        """Tell systemd that the event loop still turns (``WatchdogSec=`` restarts an agent that hangs)."""
        while True:
            notify.notify("WATCHDOG=1")
            await asyncio.sleep(every_s)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60)
            dropped = await asyncio.to_thread(self.outbox.expire)
            if dropped:
                log.warning("dropped %d outbox record(s) older than their age limit", dropped)

    # -- broker --------------------------------------------------------------------------------
    def _client_for(self) -> CheckedClient:
        b = self.cfg.broker
        lost = Status(device=self.cfg.device, state=DeviceState.LOST, at=now())
        tls: ssl.SSLContext | None = None
        if b.tls:
            resolve = self.loaded.resolve
            tls = ssl.create_default_context(cafile=str(resolve(b.ca_file)) if b.ca_file else None)
            if b.cert_file:
                tls.load_cert_chain(str(resolve(b.cert_file)), str(resolve(b.key_file)) if b.key_file else None)
        return CheckedClient(
            hostname=b.host, port=b.port, username=self.cfg.username, password=self.loaded.password,
            identifier=self.cfg.username, protocol=aiomqtt.ProtocolVersion.V5, keepalive=b.keepalive_s,
            will=aiomqtt.Will(self._topic("up/status"), lost.to_json(), qos=QOS, retain=True),
            clean_start=True, max_inflight_messages=self.cfg.agent.max_inflight, tls_context=tls, timeout=10,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            connect_timeout=10, direct={self._topic("down/ack"): self._ack_received},
        )

    async def _connection_loop(self) -> None:
        backoff = Backoff(self.cfg.agent.backoff_min_s, self.cfg.agent.backoff_max_s, at_once=True)
        b = self.cfg.broker
        while not self._stopping.is_set():
            connected_at: float | None = None
            try:
                async with self._client_for() as client:
                    connected_at = time.monotonic()
                    log.info("connected to broker %s:%d as %s", b.host, b.port, self.cfg.username)
                    await self._session(client)
                    return
            except* aiomqtt.MqttError as group:
                err = group.exceptions[0]
                self.last_error = f"broker link: {err}"
            finally:
                self._client = None
                self._window.reset()
            if self._stopping.is_set():
                return
            if connected_at is not None and time.monotonic() - connected_at >= STABLE_LINK_S:
                backoff.reset()  # a link that held is tried again at once; one that flaps keeps backing off
            delay = backoff.delay()
            log.warning("broker %s:%d unreachable or lost (%s); reconnecting in %.1f s",
                        b.host, b.port, self.last_error, delay)
            await wait_event(self._stopping, delay)

    def _report_refusal(self, err: PublishRefused) -> None:
        self.publish_errors += 1
        self.last_error = str(err)
        at = time.monotonic()
        if at - self._refusal_logged_at < 60:
            return  # counted in the heartbeat; one log line a minute is enough
        self._refusal_logged_at = at
        log.error("%s; the record stays in the outbox (%d refusal(s) so far). Check that the broker credentials "
                  "(user %s) belong to device %s and that its ACL allows %s/%s/up/#", err, self.publish_errors,
                  self.cfg.username, self.cfg.device, self.cfg.broker.root, self.cfg.device)

    async def _session(self, client: CheckedClient) -> None:
        await client.subscribe_checked([(self._topic(f"down/{name}"), qos) for name, qos in DOWNLINK_QOS.items()])
        try:
            await client.publish_checked(self._topic("up/status"), self.status(DeviceState.ONLINE).to_json(),
                                         retain=True)
        except PublishRefused as err:
            self._report_refusal(err)
        self._client = client
        self._window.reset()
        self._outbox_changed.set()
        lost = (aiomqtt.MqttError,)  # ends the session; the connection loop reconnects
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.supervise(name, partial(body, client), passes=lost, backoff_max_s=30))
                     for name, body in (("publisher", self._publisher), ("heartbeat", self._heartbeat),
                                        ("downlink", self._downlink), ("acks", self._ack_writer))]
            if not self._settled:  # start-up is over (imports, configuration, the first connection); in a thread,
                self._settled = True  # beside the first sends rather than before them
                tg.create_task(asyncio.to_thread(memory.release_free_memory))
            await self._stopping.wait()
            for task in tasks:
                task.cancel()
        with contextlib.suppress(aiomqtt.MqttError, PublishRefused):
            await client.publish_checked(self._topic("up/status"),
                                         self.status(DeviceState.OFFLINE).to_json(), retain=True, timeout=5)
            log.info("announced offline")

    async def _heartbeat(self, client: CheckedClient) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await client.publish_checked(self._topic("up/status"),
                                             self.status(DeviceState.ONLINE).to_json(), retain=True)
            except PublishRefused as err:
                self._report_refusal(err)

    async def _publisher(self, client: CheckedClient) -> None:
        window = self._window
        await self._apply_acks()  # what the hub acknowledged before this connection is not sent again
        while True:
            self._outbox_changed.clear()
            room = window.room()
            if room > 0 and window.unread:
                marker = window.marker()
                records = await asyncio.to_thread(self.outbox.pending, room, window.cursor)
                window.took(records, room, marker)
            for record in window.to_send():
                self._send(client, record)
            await wait_event(self._outbox_changed, max(0.05, window.wait_s()))

    def _send_ready(self) -> None:
        """Send a record just taken into the window at once (no need to wake the publisher); wake it when the
        outbox holds records it must read, or when offline."""
        client = self._client
        if client is not None:
            for record in self._window.to_send():
                self._send(client, record)
        if client is None or self._window.unread:
            self._outbox_changed.set()

    async def _ack_writer(self, client: CheckedClient) -> None:
        """Delete what the hub acknowledged, every ack of the last ``ACK_FLUSH_S`` in one outbox transaction, when
        no sample's commit did it meanwhile (see :meth:`_ack_flush_due`)."""
        while True:
            await self._acks_waiting.wait()
            await self._apply_acks()

    def _ack_flush_due(self) -> None:
        """``ACK_FLUSH_S`` after an ack: wake the ack writer if no commit took the acknowledged ranges since (at
        10 samples a second one always has: then nothing wakes)."""
        self._ack_flush = None
        if self.outbox.deferred():
            self._acks_waiting.set()

    async def _apply_acks(self) -> None:
        """Delete what the hub acknowledged unless a sample's commit already did (the outbox keeps the ranges
        until a commit deletes them: after a failure, the next one tries again)."""
        async with self._acks_lock:
            self._acks_waiting.clear()
            if self.outbox.deferred():
                await asyncio.to_thread(self.outbox.ack)

    def _send(self, client: CheckedClient, record: OutboxRecord) -> None:
        name = self._record_topics[record.klass]
        try:
            client.publish_nowait(name, record.payload, partial(self._published, name, record))
        except PublishRefused as err:
            self._refused(record, err)
        except aiomqtt.MqttError:
            self._window.postpone(record.seq, 0.0)  # not sent: again at once (after a reconnect if it is lost)

    def _published(self, name: str, record: OutboxRecord, code: ReasonCode) -> None:
        """The broker's PUBACK for ``record`` (the hub's ack settles it, not this)."""
        if code.is_failure:
            self._refused(record, PublishRefused(name, code.value, code.getName()))
        else:
            self._refusals.pop(record.seq, None)

    def _refused(self, record: OutboxRecord, err: PublishRefused) -> None:
        if err.permanent:
            task = asyncio.create_task(self._set_aside(record, err))
            self._setting_aside.add(task)
            task.add_done_callback(self._setting_aside.discard)
        else:
            self._report_refusal(err)
            self._retry_later(record.seq)

    def _retry_later(self, seq: int) -> None:
        """Hold a refused record back: 2, 4, 8... times ``resend_after_s``, at most 10 minutes."""
        n = self._refusals[seq] = self._refusals.get(seq, 0) + 1
        self._window.postpone(seq, min(600.0, self.cfg.agent.resend_after_s * 2 ** n))

    async def _set_aside(self, record: OutboxRecord, err: PublishRefused) -> None:
        """Take a record the broker refuses for good out of the queue, so that the rest keeps flowing."""
        self.publish_errors += 1
        self.last_error = str(err)
        try:
            moved = await asyncio.to_thread(self.outbox.set_aside, record.seq, str(err))
        except OutboxError as failure:
            self.storage_failed(failure)
            return  # still queued: the next resend meets the same refusal and tries again
        self._window.settle(record.seq)
        self._refusals.pop(record.seq, None)
        if moved:
            self.set_aside += 1
            log.error("%s record seq %d set aside in the outbox's set_aside table, not sent again: %s",
                      record.klass, record.seq, err)

    async def _downlink(self, client: CheckedClient) -> None:
        prefix = self._topic("down/ack")[: -len("ack")]
        async for message in client.messages:
            name = str(message.topic)[len(prefix):]
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            try:
                await self._handle_downlink(name, payload)
            except ValidationError as err:
                log.warning("ignored a down/%s message that breaks the contract: %s", name,
                            err.errors()[0]["msg"] if err.errors() else err)
            except OutboxError as err:
                log.error("outbox error while handling down/%s: %s", name, err)

    def _ack_received(self, payload: bytes) -> None:
        """``down/ack``, handed over by the client as it arrives (on the loop, no task per ack)."""
        try:  # the contract's fast path: bytes that cannot break a bound skip the walk over the decoded payload
            ranges = Ack.model_validate_json(payload, context=_CHECKED if within_bounds(payload) else None).acked
        except ValidationError as err:
            log.warning("ignored a down/ack message that breaks the contract: %s",
                        err.errors()[0]["msg"] if err.errors() else err)
            return
        self._window.acked(ranges)  # room at once; the outbox deletes them within ACK_FLUSH_S
        self.outbox.defer_ack(ranges)  # with the next sample's record, or by the ack writer
        if self._refusals:
            for seq in [seq for seq in self._refusals if any(a <= seq <= b for a, b in ranges)]:
                del self._refusals[seq]
        if self._ack_flush is None:
            self._ack_flush = asyncio.get_running_loop().call_later(ACK_FLUSH_S, self._ack_flush_due)
        if self._window.unread:
            self._outbox_changed.set()  # room for records to read; otherwise new ones are sent as they come

    async def _handle_downlink(self, name: str, payload: bytes) -> None:
        if name == "tx":
            outcome = TxOutcome.model_validate_json(payload)
            for listener in self.tx_listeners:
                await listener(outcome)
            if outcome.status is TxStatus.PENDING:
                log.info("transaction %s is pending at the hub", outcome.tx_id)
                return
            answered = await asyncio.to_thread(self.outbox.answer, outcome.tx_id)
            if answered is not None:
                self._window.settle(answered)
                self._refusals.pop(answered, None)
            log.info("transaction %s answered: %s", outcome.tx_id, outcome.status)
        elif name == "cmd":
            await self._run_command(Command.model_validate_json(payload))
        elif name == "config":
            if payload:
                self._apply_desired(DesiredConfig.model_validate_json(payload))
        else:
            log.warning("ignored a message on unknown topic down/%s", name)

    async def _run_command(self, cmd: Command) -> None:
        handler = COMMANDS.get(cmd.name)
        result: dict[str, Any] | None = None
        error: str | None = None
        code: str | None = None
        at = now()
        if cmd.expires_at is not None and at >= cmd.expires_at:
            code = REPLY_EXPIRED
            error = (f"command expired at {format_timestamp(cmd.expires_at)} "
                     f"(device clock {format_timestamp(at)}); not carried out")
        elif handler is None:
            error = f"unknown command {cmd.name!r}; this agent knows: {', '.join(sorted(COMMANDS))}"
        else:
            try:
                result = await handler(self, dict(cmd.args))
            except (CommandFailed, ConfigError, DriverError) as err:
                error = str(err)
        log.info("command %s (%s): %s", cmd.name, cmd.cmd_id, "ok" if error is None else error)
        await self._commit(RecordClass.REPLY, lambda seq: Reply(
            device=self.cfg.device, seq=seq, cmd_id=cmd.cmd_id, ok=error is None, result=result, error=error,
            code=code))

    def _apply_desired(self, desired: DesiredConfig) -> None:
        if desired.version <= self.config_version:
            return
        if desired.heartbeat_s is not None:
            self.heartbeat_s = desired.heartbeat_s
        unknown = []
        for sensor, interval in (desired.intervals or {}).items():
            stream = self.streams.get(sensor)
            if stream is None:
                unknown.append(sensor)
                continue
            stream.interval_s = interval
            stream.wake.set()
        self.config_version = desired.version
        log.info("applied remote config version %d%s", desired.version,
                 f" (no sensor named {', '.join(unknown)})" if unknown else "")

    async def reload_config(self) -> dict[str, Any]:
        """Re-read the config file; apply the intervals and heartbeat now, report what needs a restart."""
        fresh = await asyncio.to_thread(config_module.load, self.loaded.path)
        applied, restart = [], []
        if fresh.device.agent.heartbeat_s != self.heartbeat_s:
            self.heartbeat_s = fresh.device.agent.heartbeat_s
            applied.append("agent.heartbeat_s")
        fresh_drivers = {conf.name: conf for _, conf in fresh.drivers}
        for name, stream in self.streams.items():
            conf = fresh_drivers.get(name)
            if conf is None or conf.model_copy(update={"interval_s": stream.config.interval_s}) != stream.config:
                restart.append(f"drivers.{name}")
            elif conf.interval_s != stream.interval_s:
                stream.interval_s = conf.interval_s
                stream.wake.set()
                applied.append(f"drivers.{name}.interval_s")
        restart += [f"drivers.{n}" for n in fresh_drivers if n not in self.streams]
        for section in ("broker", "outbox"):
            if getattr(fresh.device, section) != getattr(self.cfg, section):
                restart.append(section)
        self.config_version = max(self.config_version, fresh.device.config_version)
        return {"applied": applied, "restart_required": sorted(set(restart)),
                "config_version": self.config_version}


def _release(driver: PolledDriver | EventDriver) -> None:
    try:
        if isinstance(driver, PolledDriver):
            driver.close()
        else:
            driver.stop()
    except DriverError as err:
        log.warning("closing a driver failed: %s", err)


async def run_agent(loaded: config_module.LoadedConfig, simulate: bool = False) -> None:
    """Run an agent until SIGTERM or SIGINT, then stop it gracefully; ``simulate`` runs drivers on simulators."""
    memory.limit_arenas()  # before the agent's threads start
    agent = Agent(loaded, simulate)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    await agent.run()


def _log_tasks() -> None:
    """SIGUSR1: log where every task of the agent waits (for a technician chasing a stuck agent)."""
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(file=out)
        log.warning("task %s:\n%s", task.get_name(), out.getvalue())
