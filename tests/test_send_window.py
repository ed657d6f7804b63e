"""The agent's send window: records taken in seq order once per connection, resent in order after a reconnect,
nothing skipped, nothing sent again once the hub acknowledged it, and no outbox read after every ack."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.agents.agent import Backoff
from edge.agents.outbox import Outbox, OutboxRecord, RecordClass, SendWindow
from edge.config import OutboxConfig
from edge.contract import Ack, Reading, Telemetry, Tx, now, seq_ranges, topic
from tests.conftest import Broker, wait_for


def _telemetry(seq: int, device: str = "kk-aq-0301") -> Telemetry:
    return Telemetry(device=device, seq=seq, sent_at=now(),
                     readings=[Reading(ts=now(), sensor="pm", quantity="pm2_5", value=seq, unit="ug/m3")])


def _tx(seq: int) -> Tx:
    return Tx(device="kk-aq-0301", seq=seq, tx_id=f"tx-{seq:08d}", kind="fee.payment", created_at=now(), data={})


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", OutboxConfig(path=tmp_path / "outbox.sqlite")) as outbox:
        yield outbox


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fill(box: Outbox, window: SendWindow) -> None:
    """What the publisher does before sending: read after the cursor when there is room and more to read."""
    room = window.room()
    if room > 0 and window.unread:
        marker = window.marker()
        window.took(box.pending(room, window.cursor), room, marker)


def seqs(records: list[OutboxRecord]) -> list[int]:
    return [r.seq for r in records]


def unread(window: SendWindow) -> bool:
    """``window.unread`` read afresh (mypy would otherwise keep its value from an earlier assert)."""
    return window.unread


def test_records_are_taken_in_order_once_and_acks_make_room_without_rereading(box: Outbox) -> None:
    for _ in range(10):
        box.append(RecordClass.TELEMETRY, _telemetry)
    window = SendWindow(4, 15.0)
    fill(box, window)
    assert seqs(window.to_send()) == [1, 2, 3, 4]
    fill(box, window)  # full: nothing more is read or sent
    assert window.room() == 0 and window.to_send() == []
    assert box.ack([(1, 2)]) == [1, 2]
    window.acked([(1, 2)])
    fill(box, window)
    assert seqs(window.to_send()) == [5, 6]  # after the cursor: 1 and 2 are gone, 3 and 4 are still in flight
    assert window.inflight() == [3, 4, 5, 6]
    window.acked([(3, 6)])
    box.ack([(3, 6)])
    fill(box, window)
    assert seqs(window.to_send()) == [7, 8, 9, 10]
    window.acked([(7, 10)])
    fill(box, window)
    assert window.to_send() == [] and not window.unread and window.room() == 4


def test_a_reconnect_resends_from_the_oldest_unacknowledged_record_in_order(box: Outbox) -> None:
    for _ in range(8):
        box.append(RecordClass.TELEMETRY, _telemetry)
    window = SendWindow(5, 15.0)
    fill(box, window)
    assert seqs(window.to_send()) == [1, 2, 3, 4, 5]
    window.acked([(1, 1), (3, 3)])
    box.ack([(1, 1), (3, 3)])
    window.reset()  # the connection was lost
    fill(box, window)
    assert seqs(window.to_send()) == [2, 4, 5, 6, 7]  # nothing acked again, nothing skipped, in order
    fill(box, window)
    assert window.to_send() == []


def test_a_committed_record_is_taken_without_a_read_when_it_is_the_next_one(box: Outbox) -> None:
    window = SendWindow(3, 15.0)
    fill(box, window)
    assert not window.unread
    first = box.append(RecordClass.TELEMETRY, _telemetry)
    window.offer(first)
    assert not window.unread and seqs(window.to_send()) == [1]
    second, third = (box.append(RecordClass.TELEMETRY, _telemetry) for _ in range(2))
    window.offer(third)  # offered out of order (two writers): left to a read, which takes both in order
    window.offer(second)
    assert unread(window)
    fill(box, window)
    assert seqs(window.to_send()) == [2, 3]
    fourth = box.append(RecordClass.TELEMETRY, _telemetry)
    window.offer(fourth)  # no room: read later
    assert unread(window) and window.to_send() == []
    window.acked([(1, 3)])
    fill(box, window)
    assert seqs(window.to_send()) == [4]


def test_an_offer_missed_while_a_read_is_under_way_is_not_lost(box: Outbox) -> None:
    window = SendWindow(10, 15.0)
    box.append(RecordClass.TELEMETRY, _telemetry)
    marker = window.marker()
    read = box.pending(10, window.cursor)  # the read sees seq 1; seq 2 commits after it
    late = box.append(RecordClass.TELEMETRY, _telemetry)
    window.offer(late)  # not the next one yet: missed
    window.took(read, 10, marker)
    assert window.unread  # so the next pass reads again
    fill(box, window)
    assert seqs(window.to_send()) == [1, 2]


def test_unacknowledged_records_are_due_again_in_order_and_postponed_ones_later(box: Outbox) -> None:
    clock = Clock()
    for _ in range(3):
        box.append(RecordClass.TELEMETRY, _telemetry)
    window = SendWindow(10, 15.0, clock)
    fill(box, window)
    assert seqs(window.to_send()) == [1, 2, 3]
    assert window.wait_s() == 15.0
    clock.t += 14.9
    assert window.to_send() == []
    window.acked([(2, 2)])
    window.postpone(3, 60.0)  # the broker refused it for now
    clock.t += 0.2
    assert seqs(window.to_send()) == [1]
    clock.t += 15.0
    assert seqs(window.to_send()) == [1]
    clock.t += 60.0
    assert seqs(window.to_send()) == [1, 3]


def test_acks_settle_everything_but_transactions_even_records_the_outbox_dropped(box: Outbox) -> None:
    box.append(RecordClass.TELEMETRY, _telemetry)
    box.append(RecordClass.TX, _tx, key="tx-00000002")
    box.append(RecordClass.TELEMETRY, _telemetry)
    window = SendWindow(10, 15.0)
    fill(box, window)
    assert seqs(window.to_send()) == [1, 2, 3]
    assert box.set_aside(3, "gone from the queue while in flight")
    assert box.ack([(1, 3)]) == [1]
    window.acked([(1, 3)])
    assert window.inflight() == [2]  # seq 3 left too; a transaction leaves only when it is answered
    window.settle(2)
    assert window.inflight() == []


def test_an_agent_resends_after_a_reconnect_only_what_was_not_acknowledged(
        broker: Broker, procs: dict[str, Any], tmp_path: Path) -> None:
    device = "kk-aq-0302"
    outbox_path = tmp_path / f"{device}-outbox.sqlite"
    with Outbox(outbox_path, OutboxConfig(path=outbox_path)) as queued:
        for _ in range(30):
            queued.append(RecordClass.TELEMETRY, lambda seq: _telemetry(seq, device))
    received: list[list[int]] = [[]]
    ack_up_to = [10]
    lock = threading.Lock()
    hub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-hub", protocol=mqtt.MQTTv5)
    hub.on_connect = lambda client, *_: client.subscribe(topic("nakhon", device, "up/telemetry"), qos=1)

    def on_message(client: mqtt.Client, _: Any, message: mqtt.MQTTMessage) -> None:
        seq = Telemetry.model_validate_json(message.payload).seq
        with lock:
            received[-1].append(seq)
        if seq <= ack_up_to[0]:
            client.publish(topic("nakhon", device, "down/ack"), Ack(acked=seq_ranges([seq])).to_json(), qos=1)

    hub.on_message = on_message
    hub.connect("127.0.0.1", broker.port)
    hub.loop_start()
    try:
        wait_for(lambda: hub.is_connected(), 10, "the fake hub to connect")
        agent = procs["agent"](device, broker.port, drivers=[], resend_after_s=600.0)
        wait_for(lambda: agent.outbox_state()[0] == 20 and len(received[0]) == 30, 30,
                 "the first ten records acknowledged")
        assert received[0] == list(range(1, 31))
        with lock:
            received.append([])
        ack_up_to[0] = 30
        thief = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        thief.connect("127.0.0.1", broker.port)  # takes the agent's client id: the broker drops the agent
        thief.loop_start()
        wait_for(lambda: "lost" in agent.log() or "reconnecting" in agent.log(), 10, "the agent to lose its link")
        thief.disconnect()
        thief.loop_stop()
        wait_for(lambda: agent.outbox_state()[0] == 0, 30, "the agent to deliver the rest after reconnecting")
        assert received[1] == list(range(11, 31))  # in order, nothing skipped, nothing acknowledged sent again
        assert agent.stop() == 0
    finally:
        hub.disconnect()
        hub.loop_stop()


def test_a_lost_link_is_tried_again_at_once_with_jitter_then_with_backoff() -> None:
    firsts = []
    for _ in range(50):
        backoff = Backoff(1.0, 8.0, at_once=True)
        firsts.append(backoff.delay())
        assert 0.5 <= backoff.delay() <= 1.0
        assert 1.0 <= backoff.delay() <= 2.0
        backoff.reset()
        assert backoff.delay() <= 0.1  # again at once after a link that held
    assert max(firsts) <= 0.1 and len(set(firsts)) > 1  # at once, but a fleet does not reconnect in lockstep
    assert 0.5 <= Backoff(1.0, 8.0).delay() <= 1.0  # without at_once (driver restarts) it starts at its lowest delay
