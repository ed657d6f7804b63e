"""``GET /api/events`` and ``GET /api/stream`` on a real hub fed by a real agent through Mosquitto."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.alarms import feed as feed_module
from hub.alarms.feed import Feed, FeedItem
from tests.conftest import Broker, Hub, wait_for

BUTTON = {"kind": "sim_button", "name": "sos", "event": "sos.pressed", "mean_gap_s": 0.15, "seed": 3}


class SseReader:
    """Reads ``/api/stream`` in a thread, reconnecting with ``Last-Event-ID`` to wherever ``url()`` points."""

    def __init__(self, url: Callable[[], str], last_id: int | None = None) -> None:
        self.url = url
        self.last_id = last_id
        self.messages: list[tuple[int, str, dict[str, Any]]] = []
        self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SseReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [data for _, t, data in self.messages if t == kind]

    def _run(self) -> None:
        while not self._stop.is_set():
            headers = {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}
            try:
                with httpx.stream("GET", f"{self.url()}/api/stream", headers=headers,
                                  timeout=httpx.Timeout(5, read=1)) as r:
                    self.connections += 1
                    self._read(r)
            except httpx.HTTPError:
                self._stop.wait(0.2)

    def _read(self, r: httpx.Response) -> None:
        fields: dict[str, str] = {}
        lines = r.iter_lines()
        while not self._stop.is_set():
            try:
                line = next(lines)
            except StopIteration:
                return
            except httpx.ReadTimeout:
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "id" in fields:
                with self._lock:
                    self.messages.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                self.last_id = int(fields["id"])
            fields = {}


def _start(broker: Broker, procs: Any) -> tuple[Hub, Any]:
    hub = procs["hub"](broker.port)
    agent = procs["agent"]("pole-stream-1", broker.port, drivers=[BUTTON], heartbeat_s=1.0)
    return hub, agent


def _pressed(reader: SseReader) -> list[int]:
    return [e["seq"] for e in reader.of("event") if e["event"] == "sos.pressed"]


@pytest.mark.broker
def test_the_stream_carries_device_state_events_and_alarms(broker: Broker, procs: Any) -> None:
    hub, agent = _start(broker, procs)
    reader = SseReader(lambda: hub.url).start()
    try:
        wait_for(lambda: len(_pressed(reader)) >= 3, 30, "three presses on the stream")
        wait_for(lambda: any(a["alarm"]["rule"] == "sos" for a in reader.of("alarm")), 10, "the SOS alarm")
        raised = [a for a in reader.of("alarm") if a["change"] == "raised"]
        assert [(a["alarm"]["rule"], a["alarm"]["device"]) for a in raised] == [("sos", "pole-stream-1")]
        assert any(a["change"] == "repeated" for a in reader.of("alarm"))
        agent.stop()
        wait_for(lambda: any(d["state"] == "offline" for d in reader.of("device")), 20, "offline on the stream")
    finally:
        reader.stop()


@pytest.mark.broker
def test_reconnecting_with_last_event_id_resumes_without_a_gap_also_after_a_restart(
        broker: Broker, procs: Any) -> None:
    hub, _agent = _start(broker, procs)
    first = SseReader(lambda: hub.url).start()
    wait_for(lambda: len(_pressed(first)) >= 3, 30, "presses on the first connection")
    first.stop()
    resume_from = first.last_id
    wait_for(lambda: hub.get("/api/events", event="sos.pressed", limit=1)["events"][0]["seq"]
             > max(_pressed(first)) + 3, 30, "presses while disconnected")
    second = SseReader(lambda: hub.url, last_id=resume_from).start()
    wait_for(lambda: len(_pressed(second)) >= 6, 30, "the backlog from the ring and live presses")
    second.stop()
    hub.stop()
    hub.start()  # the ring is gone: the resume comes from the stored feed
    third = SseReader(lambda: hub.url, last_id=second.last_id).start()
    wait_for(lambda: len(_pressed(third)) >= 3, 30, "presses after the restart")
    third.stop()
    seen = _pressed(first) + _pressed(second) + _pressed(third)
    ids = [i for r in (first, second, third) for i, _, _ in r.messages]
    assert ids == sorted(set(ids)), "an event came twice or out of order"
    stored = sorted(e["seq"] for e in hub.get("/api/events", event="sos.pressed", limit=1000)["events"])
    assert sorted(seen) == [s for s in stored if s <= max(seen)], "an event was missed"


@pytest.mark.broker
def test_events_newest_first_with_filters_and_cursor_paging(broker: Broker, procs: Any, tmp_path: Path) -> None:
    hub, agent = _start(broker, procs)
    wait_for(lambda: len(hub.get("/api/events", limit=100)["events"]) >= 7, 30, "seven events")
    agent.stop()
    everything = hub.get("/api/events", device="pole-stream-1", limit=1000)["events"]
    ts = [e["ts"] for e in everything]
    assert ts == sorted(ts, reverse=True)
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"device": "pole-stream-1", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = hub.get("/api/events", **params)
        pages += page["events"]
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == everything
    assert {e["event"] for e in hub.get("/api/events", event="sos.*")["events"]} == {"sos.pressed"}
    assert hub.get("/api/events", severity="info")["events"] == []
    assert hub.get("/api/events", device="nobody-here")["events"] == []
    middle = everything[len(everything) // 2]["ts"]
    older = hub.get("/api/events", until=middle, limit=1000)["events"]
    assert older and all(e["ts"] < middle for e in older)
    r = httpx.get(f"{hub.url}/api/events", params={"cursor": "bm9wZQ"}, timeout=10)
    assert r.status_code == 422


def test_the_ring_answers_a_resume_only_when_it_reaches_back_and_a_slow_client_is_told_to_reconnect() -> None:
    async def scenario() -> tuple[int, FeedItem | None]:
        feed = Feed()
        sub = feed.subscribe(asyncio.get_running_loop())
        feed.publish([FeedItem(i, "event", "{}") for i in range(1, feed_module.QUEUE_MAX + 10)])
        await asyncio.sleep(0)
        delivered = sub.queue.qsize()
        last = None
        while not sub.queue.empty():
            last = sub.queue.get_nowait()
        feed.unsubscribe(sub)
        return delivered, last

    delivered, last = asyncio.run(scenario())
    assert delivered == feed_module.QUEUE_MAX + 1
    assert last is None, "a client that fell behind must be told to reconnect"
    feed = Feed()
    assert feed.from_ring(0) is None  # empty (after a restart): the stored feed answers
    feed.publish([FeedItem(i, "event", "{}") for i in range(1, feed_module.RING_MAX + 11)])
    assert feed.from_ring(5) is None
    ring = feed.from_ring(10)
    assert ring is not None
    assert [i.id for i in ring][:2] == [11, 12]


@pytest.mark.broker
def test_a_connected_stream_does_not_hold_up_a_graceful_stop(broker: Broker, procs: Any) -> None:
    hub = procs["hub"](broker.port)
    opened = threading.Event()
    ended: list[str] = []

    def browser() -> None:  # patient like a browser: waits a minute for the next byte
        try:
            with httpx.stream("GET", f"{hub.url}/api/stream", timeout=60) as r:
                opened.set()
                for _ in r.iter_lines():
                    pass
            ended.append("stream ended")
        except httpx.HTTPError as err:
            ended.append(type(err).__name__)

    thread = threading.Thread(target=browser, daemon=True)
    thread.start()
    assert opened.wait(10)
    assert hub.stop(timeout=10) == 0
    thread.join(10)
    assert ended, "the stream stayed open after the hub stopped"
