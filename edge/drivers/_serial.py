"""The serial seam: opening ports (real, ``loop://``, ``socket://``, a pty) and simulated devices on a pty.

Drivers open their port through :func:`open_serial`, which translates pyserial's errors into the project's
own. Simulators derive from :class:`PtyDevice`: the driver opens ``device.path`` like a real
``/dev/ttyUSB0`` while the simulator reads and writes the other end of the pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import tempfile
import termios
import threading
import tty
from types import TracebackType
from typing import Any, Self

import serial

from edge.drivers import Presence
from edge.errors import DeviceUnavailable, DriverError

UART_FIX = ("for /dev/serial0 enable the UART (sudo raspi-config nonint do_serial_hw 0; sudo raspi-config nonint "
            "do_serial_cons 1) and reboot; for a USB adapter plug it in and look at ls /dev/ttyUSB* /dev/ttyACM*")


def serial_present(url: str) -> Presence:
    """Whether the serial port ``url`` exists (a pyserial URL such as ``socket://`` has nothing to look for)."""
    if "://" in url:
        return Presence(True, f"{url} (a network or loop port, nothing to look for)")
    if not os.path.exists(url):
        return Presence(False, f"serial port {url} does not exist", UART_FIX)
    return Presence(True, f"serial port {url} present", device_file=url, group="dialout")


def open_serial(url: str, *, baudrate: int, timeout: float, what: str, **kwargs: Any) -> serial.SerialBase:
    """Open a serial port or pyserial URL; raise :class:`DeviceUnavailable` naming what and where."""
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, **kwargs)
    except (serial.SerialException, OSError, ValueError) as err:
        raise DeviceUnavailable(f"{what}: cannot open serial port {url}: {err}") from err


def read_bytes(port: serial.SerialBase, size: int, what: str) -> bytes:
    """Read up to ``size`` bytes (fewer on timeout); translate errors into :class:`DeviceUnavailable`."""
    try:
        data: bytes = port.read(size)
    except (serial.SerialException, OSError, TypeError, termios.error) as err:
        # pyserial raises TypeError when the port is closed under it, termios.error when a pty vanishes
        raise DeviceUnavailable(f"{what}: serial read failed: {err}") from err
    return data


def write_bytes(port: serial.SerialBase, data: bytes, what: str) -> None:
    """Write all of ``data``; translate errors into :class:`DeviceUnavailable`."""
    try:
        port.write(data)
        port.flush()
    except (serial.SerialException, OSError, TypeError, termios.error) as err:
        raise DeviceUnavailable(f"{what}: serial write failed: {err}") from err


class PtyDevice:
    """A simulated serial device on a pseudo-terminal, run by a thread while the context is open.

    Subclasses implement :meth:`serve`, which loops until :attr:`stopping` is set, using :meth:`read`
    and :meth:`write` on the simulator's end.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._master = -1
        self._slave = -1
        self._thread: threading.Thread | None = None
        self._link_dir: str | None = None
        self.path = ""
        """The simulator's port: a link of its own to the pty (like /dev/serial/by-id/...), gone when it closes, so
        a driver left behind never reaches the next pty that reuses the number (other processes open ptys too)."""

    def __enter__(self) -> Self:
        try:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave, termios.TCSANOW)
            self._link_dir = tempfile.mkdtemp(prefix=f"nakhon-{self.name}-")
            self.path = os.path.join(self._link_dir, "tty")
            os.symlink(os.ttyname(self._slave), self.path)
        except OSError as err:
            self.close()
            raise DriverError(f"{self.name} simulator: cannot create a pty: {err}") from err
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the simulator thread and close both ends; safe to call twice."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):  # already closed
                    os.close(fd)
        self._master = self._slave = -1
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None

    def _run(self) -> None:
        try:
            self.serve()
        except OSError:
            if not self.stopping.is_set():
                raise

    def serve(self) -> None:
        """The simulator's loop; runs until :attr:`stopping` is set."""
        raise NotImplementedError

    def read(self, size: int = 4096, timeout: float = 0.1) -> bytes:
        """Bytes the driver wrote, or b'' after ``timeout``."""
        ready, _, _ = select.select([self._master], [], [], timeout)
        return os.read(self._master, size) if ready else b""

    def write(self, data: bytes) -> None:
        """Send bytes to the driver."""
        view = memoryview(data)
        while view:
            n = os.write(self._master, view)
            view = view[n:]
