"""Sends operators' commands to devices and keeps every command with its outcome.

A caller waiting for a reply waits on an asyncio future, not on a worker thread, so any number of commands
waiting on silent devices leave the API's workers to everyone else. The future only makes a reply received by
this process quick: with several hub processes on one broker (``--share``), the reply may reach another one, so
the waiter also reads the command's stored outcome at a short, growing interval (:data:`REPLY_POLL_MIN_S` up to
:data:`REPLY_POLL_MAX_S`), and the store's outcome is what the caller gets either way.

Every command carries an expiry: the
caller's timeout for a command sent now, the queue lifetime for one queued (``"queue": true``) until its
device is online. A dispatcher task publishes queued commands when their device's link comes back and settles
what outlived its expiry. The store decides each outcome with conditional updates, so a reply racing a
timeout, or a replayed reply, never overwrites the first outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from edge.contract import Command, Reply, topic
from hub.errors import BrokerError, CommandInvalid, HubError, MessageTooLarge, StoreError
from hub.store.base import CommandOutcome, CommandRecord, Store

log = logging.getLogger("nakhon.hub.commands")

Publish = Callable[[str, bytes], None]
CheckSize = Callable[[str, bytes], None]

MAX_COMMAND_BYTES: Final = 65_536
"""The largest command the hub publishes (its ``down/cmd`` JSON), whatever the broker would take."""

SENT_GRACE_S: Final = 5.0
"""How long after its expiry a sent command without a reply is settled as ``timeout`` by the dispatcher (the
caller waiting on it settles it at its own timeout)."""


REPLY_POLL_MIN_S: Final = 0.05
REPLY_POLL_MAX_S: Final = 0.5
"""How often a waiting caller reads its command's stored outcome (a reply taken by another hub process)."""


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _no_check(topic_name: str, payload: bytes) -> None:
    """No broker limit known."""


def _command(name: str, args: dict[str, Any], expires_at: float) -> Command:
    """A new command, refused with :class:`CommandInvalid` when it breaks the contract's bounds (a device would
    refuse it too)."""
    try:
        return Command(cmd_id=uuid.uuid4().hex, name=name, args=args, expires_at=_at(expires_at))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        raise CommandInvalid(f"{where}: {first['msg']}") from err


class CommandDesk:
    """Publishes commands on ``down/cmd``, queues them for offline devices and matches replies to waiters."""

    def __init__(self, store: Store, publish: Publish, root: str, *, check: CheckSize = _no_check,
                 connected: Callable[[], bool] = lambda: True, max_bytes: int = MAX_COMMAND_BYTES,
                 poll_s: float = 0.5) -> None:
        self._store = store
        self._publish = publish
        self._check = check
        self._connected = connected
        self._root = root
        self.max_bytes = max_bytes
        self._poll_s = poll_s
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Reply]]] = {}
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None

    def _wire(self, device: str, cmd: Command) -> tuple[str, bytes]:
        """The topic and payload of a command, refused with :class:`MessageTooLarge` when it cannot be sent."""
        payload = cmd.to_json()
        if len(payload) > self.max_bytes:
            raise MessageTooLarge(f"the command is {len(payload)} bytes as JSON; the hub sends commands of at most "
                                  f"{self.max_bytes} bytes")
        name = topic(self._root, device, "down/cmd")
        self._check(name, payload)
        return name, payload

    async def send(self, device: str, name: str, args: dict[str, Any], timeout: float) -> CommandRecord:
        """Send a command now and wait (without holding a thread) until the device replies or ``timeout`` passes;
        the command expires when the wait ends, so the device never carries it out after the caller gave up."""
        if not self._connected():
            raise BrokerError('the hub is not connected to the broker; queue the command ("queue": true) '
                              "or try again")
        at = time.time()
        cmd = _command(name, args, at + timeout)
        wire = self._wire(device, cmd)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        with self._lock:
            self._waiting[cmd.cmd_id] = (loop, fut)
        try:
            await asyncio.to_thread(self._record_and_publish, device, cmd, at, wire)
            if not await self._replied(cmd.cmd_id, fut, loop.time() + timeout):
                await asyncio.to_thread(self._store.settle_command, cmd.cmd_id, CommandOutcome.TIMEOUT)
        finally:
            with self._lock:
                self._waiting.pop(cmd.cmd_id, None)
        return await asyncio.to_thread(self._record, cmd.cmd_id)

    async def _replied(self, cmd_id: str, fut: asyncio.Future[Reply], deadline: float) -> bool:
        """Wait until this process resolves ``fut`` or the store shows the command settled (by a reply another
        hub process stored); False when ``deadline`` (loop time) passes first."""
        loop = asyncio.get_running_loop()
        interval = REPLY_POLL_MIN_S
        while (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(asyncio.shield(fut), min(left, interval))
                return True
            except TimeoutError:
                record = await asyncio.to_thread(self._store.command, cmd_id)
                if record is not None and record.outcome is not CommandOutcome.SENT:
                    return True
            interval = min(interval * 2, REPLY_POLL_MAX_S)
        return False

    async def enqueue(self, device: str, name: str, args: dict[str, Any], expires_in: float) -> CommandRecord:
        """Queue a command until its device's link is online (sent at once if it is), for ``expires_in`` seconds."""
        at = time.time()
        cmd = _command(name, args, at + expires_in)
        self._wire(device, cmd)
        await asyncio.to_thread(self._store.record_command, cmd.cmd_id, device, name, args, at, at + expires_in,
                                True)
        if self._wake is not None:
            self._wake.set()
        return await asyncio.to_thread(self._record, cmd.cmd_id)

    def resolve(self, reply: Reply) -> None:
        """Wake whoever waits for this reply (called by ingest once the reply settled its command)."""
        with self._lock:
            entry = self._waiting.get(reply.cmd_id)
        if entry is None:
            return
        loop, fut = entry
        if not loop.is_closed():
            loop.call_soon_threadsafe(_deliver, fut, reply)

    async def run(self) -> None:
        """Dispatch queued commands and settle expired ones until cancelled."""
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            try:
                await asyncio.to_thread(self.dispatch)
            except Exception:  # the dispatcher serves every queued command: one bad round must not end it
                log.exception("command dispatch failed; trying again in %.1f s", self._poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    def dispatch(self) -> None:
        """One round: settle what expired, then publish queued commands of devices that are online."""
        now = time.time()
        settled = self._store.expire_commands(now, SENT_GRACE_S)
        if settled:
            log.info("%d command(s) expired or timed out", settled)
        if not self._connected():
            return
        for record in self._store.due_commands(now):
            cmd = Command(cmd_id=record.cmd_id, name=record.name, args=record.args,
                          expires_at=_at(record.expires_at) if record.expires_at is not None else None)
            if not self._store.mark_command_published(record.cmd_id, now):
                continue
            try:
                name, payload = self._wire(record.device, cmd)
                self._publish(name, payload)
            except HubError as err:
                self._store.settle_command(record.cmd_id, CommandOutcome.ERROR, f"not sent: {err}")
                log.error("queued command %s (%s) to %s not sent: %s", record.name, record.cmd_id, record.device,
                          err)
                continue
            log.info("queued command %s (%s) sent to %s", record.name, record.cmd_id, record.device)

    def _record_and_publish(self, device: str, cmd: Command, at: float, wire: tuple[str, bytes]) -> None:
        expires = cmd.expires_at.timestamp() if cmd.expires_at is not None else None
        self._store.record_command(cmd.cmd_id, device, cmd.name, cmd.args, at, expires)
        try:
            self._publish(*wire)
        except HubError as err:
            self._store.settle_command(cmd.cmd_id, CommandOutcome.ERROR, f"not sent: {err}")
            raise

    def _record(self, cmd_id: str) -> CommandRecord:
        record = self._store.command(cmd_id)
        if record is None:
            raise StoreError(f"command {cmd_id} vanished from the store")
        return record


def _deliver(fut: asyncio.Future[Reply], reply: Reply) -> None:
    if not fut.done():
        fut.set_result(reply)
