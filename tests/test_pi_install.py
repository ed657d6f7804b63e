"""The Raspberry Pi install: the agent speaks systemd's notify protocol, the units verify, the script installs."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.agents import notify
from hub.broker import free_port
from tests.conftest import fast_air, wait_for


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield sock, str(path)


def test_notify_sends_a_datagram_and_does_nothing_outside_systemd(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1"
    assert not notify.notify("READY=1", {})
    assert not notify.notify("READY=1", {"NOTIFY_SOCKET": str(Path(path).with_name("gone.sock"))})


def test_notify_abstract_socket() -> None:
    name = f"nakhon-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert notify.watchdog_interval({}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "nonsense"}) is None


def test_agent_says_ready_feeds_the_watchdog_and_says_stopping(notify_socket: tuple[socket.socket, str],
                                                               procs: dict[str, Callable[..., Any]]) -> None:
    sock, path = notify_socket
    agent = procs["agent"]("kk-aq-0001", free_port(), drivers=[fast_air(interval_s=1)], start=False)
    agent.env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    agent.start()
    seen: list[bytes] = []

    def received(wanted: bytes, count: int = 1) -> bool:
        seen.append(sock.recv(4096))
        return seen.count(wanted) >= count

    wait_for(lambda: received(b"READY=1"), 30, "READY=1 from the agent")
    wait_for(lambda: received(b"WATCHDOG=1", 3), 10, "three WATCHDOG=1 pings (every 0.1 s)")
    assert agent.stop() == 0
    wait_for(lambda: received(b"STOPPING=1"), 10, "STOPPING=1 from the agent")
