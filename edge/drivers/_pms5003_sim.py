"""A simulated Plantower PMS5003 on a pseudo-terminal: the real protocol, its fan, and its faults.

It answers the mode, read, sleep and wake commands like the sensor (mode and sleep are acknowledged with an
8-byte answer frame, wake is not), streams a frame every ``frame_period_s`` in active mode, and now and then
puts garbage bytes between frames, spoils a checksum or goes silent for a while. PM2.5 follows a daily cycle
around ``pm2_5_mean`` (hazy nights and mornings, clearer afternoons). After a wake the fan needs ``warmup_s``:
the first third of it reads zero, then the values climb to the true level.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final

from edge.drivers._serial import PtyDevice
from edge.drivers._simulation import DailyWalk, wall_clock
from edge.drivers.pms5003 import ANSWER_LENGTH, COMMANDS, HEADER, PmsFrame, checksum, encode_frame

_COMMAND_SIZE: Final = 7
_BY_CODE: Final = {code: name for name, code in COMMANDS.items()}
_ACKNOWLEDGED: Final = frozenset({"passive", "active", "sleep"})
_ANSWER_DELAY_S: Final = 0.02  # the sensor takes a moment to answer a read command

# particle counts per 0.1 L for 1 ug/m3 of PM2.5, by size bin, from frames of real sensors in city air
_COUNTS_PER_UG: Final = (170.0, 48.0, 7.5, 0.7, 0.2, 0.07)


class PmsSensor(PtyDevice):
    """A PMS5003 behind a pty; tests can also script faults with :meth:`go_silent` and :meth:`corrupt_next`."""

    def __init__(self, *, seed: int | None = None, pm2_5_mean: float = 30.0, frame_period_s: float = 1.0,
                 garbage_rate: float = 0.1, garbage_max: int = 12, bad_checksum_rate: float = 0.02,
                 silence_rate: float = 1 / 600, silence_s: float = 15.0, quiet_start_s: float = 60.0,
                 warmup_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("pms5003")
        self._rng = random.Random(seed)
        self._walk = DailyWalk(self._rng, pm2_5_mean, daily_swing=-0.3 * pm2_5_mean, noise=1.0, low=0.0,
                               high=999.0, peak_hour=14.0)
        self._period = frame_period_s
        self._garbage_rate = garbage_rate
        self._garbage_max = garbage_max
        self._bad_rate = bad_checksum_rate
        self._silence_rate = silence_rate
        self._silence_s = silence_s
        self._warmup_s = warmup_s
        self._clock = clock
        self._started = clock()
        self._quiet_until = self._started + quiet_start_s  # no random silence while a technician watches it start
        self._silent_until = 0.0
        self._corrupt = 0
        self._woke_at = float("-inf")  # powered long ago: warm
        self.mode = "active"
        self.asleep = False
        self.commands: list[str] = []
        """Names of the commands received, in order."""
        self.frames_sent = 0
        self._handlers: dict[str, Callable[[float], None]] = {
            "active": self._set_active, "passive": self._set_passive, "read": self._answer_read,
            "sleep": self._sleep, "wake": self._wake,
        }

    def go_silent(self, seconds: float) -> None:
        """Send nothing and answer nothing for ``seconds`` (a loose wire, a stalled fan)."""
        self._silent_until = self._clock() + seconds

    def corrupt_next(self, count: int) -> None:
        """Spoil the checksum of the next ``count`` frames."""
        self._corrupt = count

    def serve(self) -> None:
        """Answer commands and stream frames until stopped."""
        pending = b""
        next_frame = self._clock()
        while not self.stopping.is_set():
            pending += self.read(timeout=min(0.05, max(0.0, next_frame - self._clock())))
            pending = self._obey(pending)
            now = self._clock()
            if now >= next_frame:
                next_frame = max(next_frame + self._period, now)
                self._maybe_fall_silent(now)
                if self.mode == "active" and self._answering(now):
                    self._send_frame(now)

    def _obey(self, pending: bytes) -> bytes:
        while True:
            start = pending.find(HEADER)
            if start < 0:
                return pending[-1:] if pending.endswith(HEADER[:1]) else b""
            if len(pending) - start < _COMMAND_SIZE:
                return pending[start:]
            raw = pending[start:start + _COMMAND_SIZE]
            pending = pending[start + _COMMAND_SIZE:]
            name = _BY_CODE.get((raw[2], raw[4]))
            if name is None or checksum(raw[:5]) != int.from_bytes(raw[5:], "big"):
                continue  # the sensor ignores what it does not understand
            self.commands.append(name)
            self._handle(name)

    def _handle(self, name: str) -> None:
        now = self._clock()
        if name != "wake" and not self._answering(now):
            return  # asleep it hears only the wake command; silent it hears nothing
        if name in _ACKNOWLEDGED:
            cmd, data = COMMANDS[name]
            body = HEADER + ANSWER_LENGTH.to_bytes(2, "big") + bytes((cmd, data))
            self.write(body + checksum(body).to_bytes(2, "big"))
        self._handlers[name](now)

    def _set_active(self, now: float) -> None:
        self.mode = "active"

    def _set_passive(self, now: float) -> None:
        self.mode = "passive"

    def _answer_read(self, now: float) -> None:
        if self.mode == "passive":
            time.sleep(_ANSWER_DELAY_S)
            self._send_frame(self._clock())

    def _sleep(self, now: float) -> None:
        self.asleep = True

    def _wake(self, now: float) -> None:
        if self.asleep:
            self.asleep, self._woke_at = False, now

    def _answering(self, now: float) -> bool:
        return not self.asleep and now >= self._silent_until

    def _maybe_fall_silent(self, now: float) -> None:
        if now >= self._quiet_until and self._rng.random() < self._silence_rate * self._period:
            self._silent_until = now + self._silence_s

    def _send_frame(self, now: float) -> None:
        if self._rng.random() < self._garbage_rate:
            self.write(self._rng.randbytes(self._rng.randint(1, self._garbage_max)))
        corrupt = self._corrupt > 0 or self._rng.random() < self._bad_rate
        self._corrupt = max(0, self._corrupt - 1)
        self.write(encode_frame(self._measure(now), corrupt=corrupt))
        self.frames_sent += 1

    def _measure(self, now: float) -> PmsFrame:
        # the fan needs warmup_s after a wake: a third of it reads nothing, then the flow (and the values) climb
        warm = 1.0 if self._warmup_s <= 0 else (now - self._woke_at) / self._warmup_s
        settled = min(1.0, max(0.0, (warm - 1 / 3) * 1.5))
        pm2_5 = self._walk.sample(wall_clock()) * settled
        pm1_0 = pm2_5 * self._rng.uniform(0.65, 0.8)
        pm10 = pm2_5 * self._rng.uniform(1.3, 1.6)
        atmospheric = [round(v) for v in (pm1_0, pm2_5, pm10)]
        # CF=1 reads like the atmospheric value in clean air and higher in dense haze
        cf1 = [v if v <= 30 else round(v * 1.5 - 15) for v in atmospheric]
        counts = [min(65535, round(pm2_5 * k * self._rng.uniform(0.9, 1.1))) for k in _COUNTS_PER_UG]
        reserved = 0x9700  # firmware version 0x97, no error code
        return PmsFrame(*[*cf1, *atmospheric, *counts, reserved])
