"""Simulated push button (an SOS button on a pole, a kiosk key): pressed now and then by a simulated citizen."""

from __future__ import annotations

import random
import threading
from typing import Annotated, Literal

from pydantic import Field as PydanticField

from edge.contract import Severity
from edge.drivers import DriverConfig, DriverEvent, EmitEvent


class Config(DriverConfig):
    """A simulated button; ``mean_gap_s`` is the mean time between presses."""

    kind: Literal["sim_button"] = "sim_button"
    event: Annotated[str, PydanticField(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")] = "sos.pressed"
    severity: Severity = Severity.CRITICAL
    mean_gap_s: Annotated[float, PydanticField(gt=0)] = 600.0
    seed: int | None = None


SAMPLE_CONFIG = {"kind": "sim_button", "name": "sos", "event": "sos.pressed", "severity": "critical",
                 "mean_gap_s": 600}


class Driver:
    """Emits a press event at random times (exponential gaps) from its own thread."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._presses = 0

    def start(self, emit: EmitEvent) -> None:
        """Begin pressing the button in a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(emit,), name=f"button-{self._config.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self, emit: EmitEvent) -> None:
        while not self._stop.wait(self._rng.expovariate(1.0 / self._config.mean_gap_s)):
            self._presses += 1
            emit(DriverEvent(self._config.event, self._config.severity,
                             {"press": self._presses, "held_s": round(self._rng.uniform(0.1, 2.0), 2)}))

    def stop(self) -> None:
        """Stop pressing; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
