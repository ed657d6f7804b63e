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
from fastapi.testclient import TestClient

from hub.alarms import feed as feed_module
from hub.alarms.feed import Feed, FeedItem
from hub.api import events as events_api
from hub.auth import accounts
from tests.conftest import TEST_PASSWORD, Broker, Hub, HubApp, wait_for

BUTTON = {"kind": "sim_button", "name": "sos", "event": "sos.pressed", "mean_gap_s": 0.15, "seed": 3}


class SseReader:
    """Reads ``/api/stream`` in a thread, reconnecting with ``Last-Event-ID`` to wherever ``url()`` points."""

    def __init__(self, url: Callable[[], str], auth: dict[str, str], last_id: int | None = None) -> None:
        self.url = url
        self.auth = auth
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
            headers = self.auth if self.last_id is None else {**self.auth, "Last-Event-ID": str(self.last_id)}
            try:
                with httpx.stream("GET", f"{self.url()}/api/stream", headers=headers,
                                  timeout=httpx.Timeout(5, read=1)) as r:
                    assert r.status_code == 200, f"the stream answered {r.status_code}"
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
    reader = SseReader(lambda: hub.url, hub.auth).start()
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
    first = SseReader(lambda: hub.url, hub.auth).start()
    wait_for(lambda: len(_pressed(first)) >= 3, 30, "presses on the first connection")
    first.stop()
    resume_from = first.last_id
    wait_for(lambda: hub.get("/api/events", event="sos.pressed", limit=1)["events"][0]["seq"]
             > max(_pressed(first)) + 3, 30, "presses while disconnected")
    second = SseReader(lambda: hub.url, hub.auth, last_id=resume_from).start()
    wait_for(lambda: len(_pressed(second)) >= 6, 30, "the backlog from the ring and live presses")
    second.stop()
    hub.stop()
    hub.start()  # the ring is gone: the resume comes from the stored feed
    third = SseReader(lambda: hub.url, hub.auth, last_id=second.last_id).start()
    wait_for(lambda: len(_pressed(third)) >= 3, 30, "presses after the restart")
    third.stop()
    seen = _pressed(first) + _pressed(second) + _pressed(third)
    ids = [i for r in (first, second, third) for i, _, _ in r.messages]
    assert ids == sorted(set(ids)), "an event came twice or out of order"
    stored = sorted(e["seq"] for e in hub.get("/api/events", event="sos.pressed", limit=1000)["events"])
    # the first connection starts live: presses before it connected are not its to show
    assert sorted(seen) == [s for s in stored if min(seen) <= s <= max(seen)], "an event was missed"


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
    r = httpx.get(f"{hub.url}/api/events", params={"cursor": "bm9wZQ"}, headers=hub.auth, timeout=10)
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
            with httpx.stream("GET", f"{hub.url}/api/stream", headers=hub.auth, timeout=60) as r:
                assert r.status_code == 200
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


REPORT = {"id": 7, "device": "kiosk-1", "category": "streetlight", "lat": 16.43, "lon": 102.83,
          "contact_name": "Somsri", "contact_phone": "0812345678"}


def _frames(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event type, data) of each message of an ended stream."""
    out = []
    for frame in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line and line[0] != ":")
        if "data" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_the_stream_needs_sign_in_by_cookie_or_token_and_leaves_personal_fields_out_for_a_viewer(
        hub_app: HubApp) -> None:
    feed: Feed = hub_app.app.state.feed
    feed.publish([FeedItem(1, "report", json.dumps(REPORT)), FeedItem(2, "event", json.dumps({"seq": 1}))])
    feed.close()  # every stream then ends after its backlog, so a TestClient answer is complete
    assert hub_app.anonymous().get("/api/stream").status_code == 401
    resume = {"Last-Event-ID": "0"}
    viewer = hub_app.client("viewer")
    r = viewer.get("/api/stream", headers=resume)
    assert (r.status_code, r.headers["content-type"].split(";")[0]) == (200, "text/event-stream")
    [(kind, report), event] = _frames(r.text)
    assert kind == "report"
    assert report == {k: v for k, v in REPORT.items() if not k.startswith("contact")}
    assert event == ("event", {"seq": 1})
    gis = hub_app.client("gis")
    assert _frames(gis.get("/api/stream", headers=resume).text)[0] == ("report", REPORT)
    browser = hub_app.anonymous()
    signed_in = browser.post("/api/session", json={"name": "u-viewer", "password": TEST_PASSWORD})
    assert signed_in.status_code == 200, signed_in.text
    by_cookie = browser.get("/api/stream", headers=resume)
    assert by_cookie.status_code == 200
    assert _frames(by_cookie.text)[0] == ("report", report)


def test_an_open_stream_ends_when_its_token_is_revoked(hub_app: HubApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_api, "KEEPALIVE_S", 0.05)
    feed: Feed = hub_app.app.state.feed
    users = accounts.Accounts(hub_app.store)
    users.add_user("watcher", ["viewer"], TEST_PASSWORD)
    token, secret = users.add_token("watcher", "tests")
    client = TestClient(hub_app.app, headers={"Authorization": f"Bearer {secret}"})
    answers: list[httpx.Response] = []
    reader = threading.Thread(target=lambda: answers.append(client.get("/api/stream")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: feed.subscribers == 1, 10, "the stream to open")
        users.revoke_token(token.id)
        reader.join(10)
        assert not reader.is_alive(), "the stream outlived its revoked token"
    finally:
        feed.close()
        reader.join(10)
    assert answers[0].status_code == 200
    assert ": keepalive" in answers[0].text
