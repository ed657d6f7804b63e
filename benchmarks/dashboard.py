"""The dashboard under a city's load: 2,000 devices, a week of 10-second readings for some, 200 open alarms.

Measured in one run, in headless Chromium against a hub subprocess: the time to first render of the fleet and
map pages (navigation start to the page marked ready, cold browser), what the browser downloads for each (as sent,
gzip-compressed, and the same files uncompressed), the time from a device's state change (its status published to
the broker) to the fleet page showing it, and the aggregate endpoint's time and size for a week of 10-second data
against returning the raw points; then the fleet page's first render with 5,000 devices (a second hub).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from _harness import HOST, REPO, ROOT, BenchError, HubProcess, progress, run_guarded, start_broker, table, work_dir
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(REPO))

from edge.contract import QOS, ClockState, DeviceState, Location, Reading, Status, now, topic
from hub.auth.accounts import Accounts
from hub.ingest.consumer import IngestSettings
from hub.serve import HubSettings, build
from hub.store.base import IngestBatch, SeqMessage, StatusUpdate
from tests.browser import chromium, js, open_page, sign_in

PASSWORD = "benchmark password, not a secret"  # noqa: S105  (a throwaway hub in a temporary directory)
WEEK_S = 7 * 86_400
STEP_S = 10
SEVERITIES = ["critical"] * 10 + ["major"] * 30 + ["minor"] * 60 + ["warning"] * 100


def _device(i: int) -> str:
    return f"kk-bench-{i:04d}"


def populate(data: Path, devices: int, weekly: int, alarms: int, broker_port: int) -> None:
    """The registry, a week of readings for ``weekly`` devices and open alarms, written before the hub starts."""
    _, store, _ = build(HubSettings(data=data, ingest=IngestSettings(port=broker_port)))
    store.open()
    rng = random.Random(9)
    try:
        Accounts(store).add_user("admin", ["admin"], PASSWORD)
        statuses = [StatusUpdate(Status(
            device=_device(i), state=DeviceState.ONLINE, at=now(), heartbeat_s=30, outbox_depth=rng.randint(0, 3),
            config_version=1, clock=ClockState(source="system", synchronized=True), node="air-quality-pole",
            site=f"Site {i % 40}", location=Location(lat=16.38 + rng.random() * 0.1, lon=102.78 + rng.random() * 0.1)),
            time.time()) for i in range(devices)]
        store.ingest(IngestBatch(statuses=statuses))
        start = datetime.now(UTC) - timedelta(seconds=WEEK_S)
        per_message = 60
        for i in range(weekly):
            messages = []
            for seq, first in enumerate(range(0, WEEK_S, STEP_S * per_message), start=1):
                messages.append(SeqMessage(device=_device(i), seq=seq, received_at=time.time(), telemetry=[
                    Reading(ts=start + timedelta(seconds=s), sensor="pm", quantity="pm2_5",
                            value=round(20 + 15 * rng.random(), 1), unit="ug/m3")
                    for s in range(first, min(first + STEP_S * per_message, WEEK_S), STEP_S)]))
                if len(messages) == 200:
                    store.ingest(IngestBatch(messages=messages))
                    messages = []
            if messages:
                store.ingest(IngestBatch(messages=messages))
        at = time.time()
        store.write(lambda db: db.executemany(
            "INSERT INTO alarms (rule, device, severity, state, latched, title_th, title_en, detail, first_seen, "
            "last_seen) VALUES ('sos', ?, ?, 'active', 1, 'มีผู้กดปุ่มขอความช่วยเหลือ (SOS)', 'SOS button pressed', "
            "'{}', ?, ?)", [(_device(i), SEVERITIES[i % len(SEVERITIES)], at - i, at - i) for i in range(alarms)]))
    finally:
        store.close()


def first_render(url: str, page: str, ready: str) -> tuple[float, int, int]:
    """(ms from navigation start to the page rendered, bytes transferred, the same uncompressed) in a cold
    browser."""
    took, sent, plain, _ = first_render_and(url, page, ready, "return 0")
    return took, sent, plain


def first_render_and(url: str, page: str, ready: str, then: str) -> tuple[float, int, int, float]:
    """:func:`first_render`, and the number the script ``then`` returns from the rendered page."""
    with tempfile.TemporaryDirectory() as profile, chromium(Path(profile)) as driver:
        sign_in(driver, url, "admin", PASSWORD, lang="en")
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        driver.get(f"{url}/#/{page}")
        deadline = time.monotonic() + 60
        done = f"return Boolean(document.querySelector('.page[data-page={page}][data-ready]') && ({ready}))"
        while not js(driver, done):
            if time.monotonic() > deadline:
                raise BenchError(f"the {page} page did not render within 60 s")
            time.sleep(0.02)
        took = float(js(driver, "return window.nakhon.readyAt"))
        sent, plain = js(driver, "const all = performance.getEntriesByType('navigation').concat("
                                 "performance.getEntriesByType('resource'));"
                                 "return [all.reduce((n, e) => n + e.transferSize, 0),"
                                 "all.reduce((n, e) => n + e.decodedBodySize, 0)]")
        return took, int(sent), int(plain), float(js(driver, then))


SHOW = """
const search = document.getElementById("fleet-search");
search.value = arguments[0];
search.dispatchEvent(new Event("input"));
"""

WATCH = """
const [device, state] = arguments;
window.seen = null;
const look = () => {
  const row = document.querySelector(`tr[data-device="${device}"]`);
  if (row && row.dataset.link === state) window.seen = Date.now(); else requestAnimationFrame(look);
};
look();
"""


def _signed_in(url: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/session", json={"name": "admin", "password": PASSWORD}, timeout=30)
    r.raise_for_status()
    return {"nakhon_session": r.cookies["nakhon_session"]}


def _read_stream(url: str, seen: dict[tuple[str, str], float]) -> None:
    """Note when each (device, state) change first arrives on /api/stream (epoch ms)."""
    with httpx.stream("GET", f"{url}/api/stream", cookies=_signed_in(url),
                      timeout=httpx.Timeout(30.0, read=120.0)) as response:
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "device":
                data = json.loads(line[5:])
                seen.setdefault((data["device"], data["state"]), time.time() * 1000)


def state_changes(url: str, broker_port: int, changes: int) -> tuple[list[float], list[float]]:
    """ms from publishing a device's status to the stream carrying it, and to the fleet page showing the new
    state, for ``changes`` changes."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-state", protocol=mqtt.MQTTv5)
    client.connect(HOST, broker_port)
    client.loop_start()
    on_stream: dict[tuple[str, str], float] = {}
    threading.Thread(target=_read_stream, args=(url, on_stream), daemon=True).start()
    took, streamed = [], []
    try:
        with tempfile.TemporaryDirectory() as profile, chromium(Path(profile)) as driver:
            sign_in(driver, url, "admin", PASSWORD, lang="en")
            open_page(driver, "fleet", 60)
            for n in range(changes):
                device, state = _device(1000 + n // 2), ("offline" if n % 2 == 0 else "online")
                js(driver, SHOW, device)  # the table draws only the rows in view: bring this one there
                wait_for_row = time.monotonic() + 10
                while not js(driver, f"return Boolean(document.querySelector('tr[data-device=\"{device}\"]'))"):
                    if time.monotonic() > wait_for_row:
                        raise BenchError(f"{device} has no row on the fleet page")
                    time.sleep(0.01)
                js(driver, WATCH, device, state)
                sent = time.time()
                client.publish(topic(ROOT, device, "up/status"), Status(
                    device=device, state=DeviceState(state), at=now(), heartbeat_s=30).to_json(),
                    qos=QOS).wait_for_publish(10)
                deadline = time.monotonic() + 30
                while (seen := js(driver, "return window.seen")) is None:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{device} never showed {state} on the fleet page")
                    time.sleep(0.01)
                took.append(float(seen) - sent * 1000)
                while (device, state) not in on_stream:  # the page can be quicker than this reader thread
                    if time.monotonic() > deadline:
                        raise BenchError(f"{device} {state} never came on the stream")
                    time.sleep(0.01)
                streamed.append(on_stream[(device, state)] - sent * 1000)
    finally:
        client.loop_stop()
        client.disconnect()
    return streamed, took


def aggregate_vs_raw(url: str, runs: int) -> dict[str, tuple[float, int, int]]:
    """name -> (median ms, bytes, points) of a week of one device as aggregates and as raw readings."""
    cookies = _signed_in(url)
    until = datetime.now(UTC)
    since = (until - timedelta(seconds=WEEK_S + 60)).isoformat()
    queries = {"aggregate (300 buckets)": ("/readings/aggregate", {"buckets": 300}),
               "raw points": ("/readings", {"limit": 100_000})}
    out = {}
    for name, (path, extra) in queries.items():
        times, size, points = [], 0, 0
        for _ in range(runs):
            started = time.perf_counter()
            r = httpx.get(f"{url}/api/devices/{_device(0)}{path}", cookies=cookies, timeout=60,
                          params={"quantity": "pm2_5", "since": since, "until": until.isoformat(), **extra})
            times.append((time.perf_counter() - started) * 1000)
            r.raise_for_status()
            body = r.json()
            size = len(r.content)
            points = sum(b["count"] for b in body["buckets"]) if "buckets" in body else body["count"]
        out[name] = (statistics.median(times), size, points)
    return out


def fleet_ready(devices: int) -> str:
    """The page's check that the fleet table holds every device (its rows in view drawn)."""
    return f"window.nakhon.fleet && window.nakhon.fleet.total >= {devices} && window.nakhon.fleet.rendered > 0"


def city_fleet(stack: contextlib.ExitStack, directory: Path, devices: int,
               runs: int) -> tuple[list[tuple[float, int, int]], list[float], list[float]]:
    """On a second hub (with a broker of its own) whose registry holds ``devices``: the fleet page's first renders,
    the device list's answer times (ms, gzip) and the page's own time to filter, sort and draw its table (ms)."""
    progress(f"fleet page with {devices} devices")
    broker = start_broker(stack, directory / "city" / "broker")
    data = directory / "city" / "hub"
    populate(data, devices, 0, 0, broker.settings.port)
    hub = HubProcess(stack, data, broker.settings.port)
    hub.wait_healthy()
    url = f"http://{HOST}:{hub.http_port}"
    cookies = _signed_in(url)
    answers = []
    for _ in range(runs):
        started = time.perf_counter()
        httpx.get(f"{url}/api/devices", cookies=cookies, timeout=60).raise_for_status()
        answers.append((time.perf_counter() - started) * 1000)
    renders = [first_render_and(url, "fleet", fleet_ready(devices), "return window.nakhon.fleet.drawMs")
               for _ in range(runs)]
    return [(t, s, p) for t, s, p, _ in renders], answers, [d for *_, d in renders]


def run(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        directory = work_dir(stack)
        broker = start_broker(stack, directory / "broker")
        data = directory / "hub"
        progress(f"populating: {args.devices} devices, a week of 10 s readings for {args.weekly}, "
                 f"{args.alarms} open alarms")
        populate(data, args.devices, args.weekly, args.alarms, broker.settings.port)
        hub = HubProcess(stack, data, broker.settings.port)
        hub.wait_healthy()
        hub.wait_subscribed(broker.settings.port)
        url = f"http://{HOST}:{hub.http_port}"
        progress("fleet and map pages, cold")
        fleet = [first_render(url, "fleet", fleet_ready(args.devices)) for _ in range(args.runs)]
        map_ = [first_render(url, "map", "window.nakhon.map") for _ in range(args.runs)]
        progress(f"{args.changes} state changes to the fleet page")
        streamed, changes = state_changes(url, broker.settings.port, args.changes)
        progress("aggregate against raw readings")
        week = aggregate_vs_raw(url, args.runs)
        city, city_api, city_draw = city_fleet(stack, directory, args.city, args.runs) if args.city else ([], [], [])
    rows = [["measure", "median", "all runs"],
            ["fleet page, first render (ms)", f"{statistics.median(t for t, _, _ in fleet):.0f}",
             " ".join(f"{t:.0f}" for t, _, _ in fleet)],
            ["fleet page, downloaded (KB)", f"{statistics.median(s for _, s, _ in fleet) / 1024:.0f}",
             f"uncompressed {statistics.median(p for _, _, p in fleet) / 1024:.0f}"],
            ["map page, first render (ms)", f"{statistics.median(t for t, _, _ in map_):.0f}",
             " ".join(f"{t:.0f}" for t, _, _ in map_)],
            ["map page, downloaded (KB)", f"{statistics.median(s for _, s, _ in map_) / 1024:.0f}",
             f"uncompressed {statistics.median(p for _, _, p in map_) / 1024:.0f}"],
            ["state change to the stream (ms)", f"{statistics.median(streamed):.0f}",
             f"p90 {sorted(streamed)[int(0.9 * (len(streamed) - 1))]:.0f}, max {max(streamed):.0f}"],
            ["state change to fleet page (ms)", f"{statistics.median(changes):.0f}",
             f"p90 {sorted(changes)[int(0.9 * (len(changes) - 1))]:.0f}, max {max(changes):.0f}"]]
    rows += [[f"week of 10 s data, {name}", f"{ms:.0f} ms", f"{size / 1024:.0f} KB, {points} points"]
             for name, (ms, size, points) in week.items()]
    if city:
        rows += [[f"fleet page at {args.city} devices, first render (ms)",
                  f"{statistics.median(t for t, _, _ in city):.0f}", " ".join(f"{t:.0f}" for t, _, _ in city)],
                 [f"fleet page at {args.city} devices, downloaded (KB)",
                  f"{statistics.median(s for _, s, _ in city) / 1024:.0f}",
                  f"uncompressed {statistics.median(p for _, _, p in city) / 1024:.0f}"],
                 [f"of which GET /api/devices at {args.city} (ms)", f"{statistics.median(city_api):.0f}",
                  " ".join(f"{t:.0f}" for t in city_api)],
                 [f"of which the page's filter, sort and draw at {args.city} (ms)",
                  f"{statistics.median(city_draw):.0f}", " ".join(f"{t:.0f}" for t in city_draw)]]
    print("\n".join(table(rows)))
    if args.json:
        print(json.dumps({"fleet": fleet, "map": map_, "city_fleet": city, "city_devices_api_ms": city_api,
                          "city_draw_ms": city_draw, "state_change_ms": changes,
                          "stream_ms": streamed,
                          "week": {k: {"ms": v[0], "bytes": v[1], "points": v[2]} for k, v in week.items()}}))


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=2000, help="devices in the registry (default 2000)")
    p.add_argument("--weekly", type=int, default=3, help="devices with a week of 10 s readings (default 3)")
    p.add_argument("--alarms", type=int, default=200, help="open alarms (default 200)")
    p.add_argument("--changes", type=int, default=20, help="state changes timed to the page (default 20)")
    p.add_argument("--city", type=int, default=5000, help="devices of the second hub, for the fleet page alone "
                   "(default 5000; 0: skip)")
    p.add_argument("--runs", type=int, default=3, help="runs of each page load and query (default 3)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    args = p.parse_args(argv)
    return run_guarded(lambda: run(args), (BenchError, httpx.HTTPError)) or 0


if __name__ == "__main__":
    sys.exit(main())
