"""What the hub acknowledges leaves the agent's outbox even when no record follows to take the deletion with it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Broker, wait_for

pytestmark = pytest.mark.broker


def test_an_acknowledged_sample_is_deleted_without_another_sample(broker: Broker, procs: dict[str, Any]) -> None:
    procs["hub"](broker.port)
    slow = {"kind": "sim_air_quality", "name": "pm", "interval_s": 3600, "seed": 7}  # one sample, then an hour
    agent = procs["agent"]("kk-aq-0201", broker.port, drivers=[slow], heartbeat_s=3600)
    wait_for(lambda: agent.outbox_state()[1] >= 1, 30, "the agent's first sample")
    # the hub acknowledges it within its ack window (1 s); nothing else is committed, so the ack writer deletes it
    wait_for(lambda: agent.outbox_state()[0] == 0, 30, "the acknowledged sample to leave the outbox")
    assert agent.outbox_state()[1] == 1, agent.log()[-2000:]
    assert agent.alive()
    assert agent.stop() == 0
