"""Sends operators' commands to devices and waits for their replies."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from edge.contract import Command, Reply, topic
from hub.store.base import Store

Publish = Callable[[str, bytes], None]


@dataclass(frozen=True)
class CommandResult:
    """What became of a command: the device's reply, or None after the timeout."""

    cmd_id: str
    reply: Reply | None


class CommandDesk:
    """Publishes commands on ``down/cmd`` and matches replies from ingest to the callers waiting for them."""

    def __init__(self, store: Store, publish: Publish, root: str) -> None:
        self._store = store
        self._publish = publish
        self._root = root
        self._waiting: dict[str, Future[Reply]] = {}
        self._lock = threading.Lock()

    def send(self, device: str, name: str, args: dict[str, Any], timeout: float) -> CommandResult:
        """Send a command and block until the device replies or ``timeout`` seconds pass."""
        cmd = Command(cmd_id=uuid.uuid4().hex, name=name, args=args)
        fut: Future[Reply] = Future()
        with self._lock:
            self._waiting[cmd.cmd_id] = fut
        try:
            self._store.record_command(cmd.cmd_id, device, name, args, time.time())
            self._publish(topic(self._root, device, "down/cmd"), cmd.to_json())
            try:
                return CommandResult(cmd.cmd_id, fut.result(timeout=timeout))
            except FutureTimeout:
                return CommandResult(cmd.cmd_id, None)
        finally:
            with self._lock:
                self._waiting.pop(cmd.cmd_id, None)

    def resolve(self, reply: Reply) -> None:
        """Hand a device's reply to whoever waits for it (called by ingest after the reply is stored)."""
        with self._lock:
            fut = self._waiting.pop(reply.cmd_id, None)
        if fut is not None and not fut.done():
            fut.set_result(reply)
