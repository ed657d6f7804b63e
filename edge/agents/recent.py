"""The outbox's recent file: the newest telemetry records, each committed by one ``write`` beside the SQLite file.

A sampling device commits a record every second or faster. In SQLite each of those is a transaction: three B-tree
pages written to the WAL (about 12 KB on the SD card) and the whole of SQLite's commit path, which on a device that
sleeps between samples costs about a quarter of a millisecond of CPU every time. Here a telemetry record is one frame
appended to ``outbox.sqlite-recent``: a ``write`` of its payload and 32 bytes. That is as durable as a commit with
``synchronous=NORMAL``: it survives the agent's crash at once, and a power cut once the kernel has written it out.
The outbox moves the file's records into SQLite in one transaction now and then (before any other write of its own,
before a record is set aside, when the file passes a size), with the highest seq handed out, and only then empties
the file: the seq counter never goes back, whatever the hub acknowledged meanwhile.

Each frame is its body's length and CRC-32, then the body: ``R`` (a record: seq, created, payload) or ``A`` (an
acknowledged range of seqs: first, last). Opening the outbox reads the frames back in order, up to the first that
is incomplete or does not match its CRC (a write cut short by a power cut), and puts the records that no later
``A`` frame acknowledged into SQLite.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

SUFFIX = "-recent"
"""The file's name is the outbox file's name with this after it: ``outbox.sqlite-recent``."""

_FRAME = struct.Struct("<II")
"""A frame's head: the body's length and its CRC-32."""
_RECORD = struct.Struct("<cqd")
"""A record's body before its payload: ``R``, seq, created (seconds since the epoch)."""
_ACKED = struct.Struct("<cqq")
"""An acknowledgement's body: ``A``, the first and the last seq of the range."""
MAX_BODY = 64 * 1024 * 1024
"""A length beyond this is not a frame this module wrote (a payload is bounded far below it)."""


@dataclass(frozen=True)
class Replay:
    """What a recent file holds: the records not acknowledged, in seq order, and the bytes of a cut-off end."""

    records: dict[int, tuple[float, bytes]]
    """seq -> (created, payload)."""
    last_seq: int
    """The highest seq of any record in the file, acknowledged or not (0 when none)."""
    torn_bytes: int
    """Bytes after the last complete frame (a write cut short), ignored."""


def recent_path(outbox: Path) -> Path:
    """The recent file of the outbox file ``outbox``."""
    return outbox.with_name(outbox.name + SUFFIX)


def parse(data: bytes) -> Replay:
    """The records of a recent file's bytes that no later ``A`` frame acknowledges, up to the first broken frame."""
    records: dict[int, tuple[float, bytes]] = {}
    at, head, last_seq = 0, _FRAME.size, 0
    while at + head <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        body = data[at + head:at + head + length]
        if not 0 < length <= MAX_BODY or len(body) != length or zlib.crc32(body) != crc:
            break
        kind = body[:1]
        if kind == b"R" and length >= _RECORD.size:
            _, seq, created = _RECORD.unpack_from(body)
            records[seq] = (created, body[_RECORD.size:])
            last_seq = max(last_seq, seq)
        elif kind == b"A" and length == _ACKED.size:
            _, first, last = _ACKED.unpack(body)
            for seq in [seq for seq in records if first <= seq <= last]:
                del records[seq]
        else:
            break
        at += head + length
    return Replay(records, last_seq, len(data) - at)


def read(path: Path) -> Replay:
    """What the recent file at ``path`` holds (nothing when there is no such file)."""
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return Replay({}, 0, 0)


class RecentFile:
    """An open recent file, appended to by one writer (the outbox, under its lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = 0
        """Bytes in the file, all of them whole frames."""

    def open(self) -> Replay:
        """Open (creating it, mode 0600) and read back what it holds."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            data = self.path.read_bytes()
        except BaseException:
            os.close(fd)
            raise
        replay = parse(data)
        self._fd = fd
        self.size = len(data) - replay.torn_bytes
        return replay

    def close(self, remove: bool = False) -> None:
        """Close; with ``remove``, delete the file (when it is empty). Safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if remove:
                self.path.unlink(missing_ok=True)

    def add(self, seq: int, created: float, payload: bytes) -> None:
        """Commit a record (one ``write``); raises OSError (ENOSPC for a write the disk cut short)."""
        body = _RECORD.pack(b"R", seq, created) + payload
        self._write(_FRAME.pack(len(body), zlib.crc32(body)) + body)

    def acked(self, first: int, last: int) -> None:
        """Note that the hub acknowledged the records ``first`` to ``last``, so that a reopen does not bring them
        back."""
        body = _ACKED.pack(b"A", first, last)
        self._write(_FRAME.pack(len(body), zlib.crc32(body)) + body)

    def empty(self) -> None:
        """Drop every frame, once SQLite holds the records not acknowledged and the last seq."""
        os.ftruncate(self._open_fd(), 0)
        self.size = 0

    def _open_fd(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, f"{self.path} is not open")
        return self._fd

    def _write(self, frame: bytes) -> None:
        fd = self._open_fd()
        try:
            written = os.write(fd, frame)
        except OSError:
            self._cut()
            raise
        if written != len(frame):
            self._cut()
            raise OSError(errno.ENOSPC, f"wrote {written} of {len(frame)} bytes to {self.path}")
        self.size += written

    def _cut(self) -> None:
        """Drop what a failed write left after the last whole frame."""
        if self._fd is not None:
            with contextlib.suppress(OSError):  # if this fails too, the next open ignores a broken last frame
                os.ftruncate(self._fd, self.size)
