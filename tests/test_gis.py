"""GIS: reports routed from kiosks land in their zone, move through the workflow, and GDAL reads the OGC API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import DeviceState, Location, Status, Tx, TxOutcome, TxStatus, now
from hub.gis.reports import DEMO_ZONES, Zones
from tests.conftest import Broker, wait_for

ZONES = Zones(DEMO_ZONES)


def test_points_fall_in_their_zone() -> None:
    assert ZONES.locate(102.80, 16.45) == "zone-1"
    assert ZONES.locate(102.86, 16.45) == "zone-2"
    assert ZONES.locate(102.80, 16.40) == "zone-3"
    assert ZONES.locate(102.86, 16.40) == "zone-4"
    assert ZONES.locate(100.50, 13.75) is None  # Bangkok is not in Khon Kaen


class Kiosk:
    """A bare MQTT client speaking the contract for one kiosk: sends transactions, collects answers."""

    def __init__(self, port: int, device: str) -> None:
        self.device = device
        self.answers: list[TxOutcome] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.answers.append(TxOutcome.model_validate_json(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"nakhon/{device}/down/tx", qos=1)
        self.client.loop_start()
        # the hub takes reports only from a device registered as a service kiosk (its node in up/status)
        self.client.publish(f"nakhon/{device}/up/status", Status(
            device=device, state=DeviceState.ONLINE, at=now(), node="service-kiosk").to_json(),
            qos=1, retain=True).wait_for_publish(10)
        self.seq = 0

    def send(self, tx_id: str, kind: str, data: dict[str, Any], location: Location | None) -> None:
        self.seq += 1
        tx = Tx(device=self.device, seq=self.seq, tx_id=tx_id, kind=kind, created_at=now(), data=data,
                location=location)
        self.client.publish(f"nakhon/{self.device}/up/tx", tx.to_json(), qos=1).wait_for_publish(10)

    def answer(self, tx_id: str) -> TxOutcome:
        answer: TxOutcome = wait_for(lambda: next((a for a in self.answers if a.tx_id == tx_id), None), 30,
                                     f"the answer to {tx_id}")
        return answer

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(params=["sqlite", "postgresql"])
def reports_hub(request: pytest.FixtureRequest, broker: Broker, procs: dict[str, Any], tmp_path: Path) -> Any:
    stores = [] if request.param == "sqlite" else [
        "--records", request.getfixturevalue("postgres_url"), "--timeseries", f"sqlite:///{tmp_path / 'series.sqlite'}"]
    hub = procs["hub"](broker.port, *stores)
    kiosk = Kiosk(broker.port, "kk-kiosk-0001")
    time.sleep(0.3)
    places = [(16.45, 102.80, "streetlight"), (16.45, 102.86, "pothole"), (16.40, 102.80, "flooding"),
              (16.40, 102.86, "garbage"), (16.441, 102.836, "drain")]
    for i, (lat, lon, category) in enumerate(places):
        kiosk.send(f"kk-kiosk-0001-r{i:04d}", "issue.report",
                   {"category": category, "description": f"ปัญหา {category} หน้าบ้านเลขที่ {i + 1}"},
                   Location(lat=lat, lon=lon))
        assert kiosk.answer(f"kk-kiosk-0001-r{i:04d}").status is TxStatus.ACCEPTED
    yield hub, kiosk
    kiosk.close()


@pytest.mark.broker
def test_a_report_is_stored_in_its_zone_and_follows_the_workflow(reports_hub: Any) -> None:
    hub, kiosk = reports_hub
    first = kiosk.answer("kk-kiosk-0001-r0000")
    assert first.result["zone"] == "zone-1" and first.result["status"] == "new"
    kiosk.send("kk-kiosk-0001-r0000", "issue.report", {"category": "streetlight", "description": "again"},
               Location(lat=16.45, lon=102.80))
    wait_for(lambda: sum(a.tx_id == "kk-kiosk-0001-r0000" for a in kiosk.answers) == 2, 30, "a second answer")
    second = [a for a in kiosk.answers if a.tx_id == "kk-kiosk-0001-r0000"][1]
    assert second.duplicate and second.result == first.result
    kiosk.send("kk-kiosk-0001-bad", "issue.report", {"category": "ufo"}, Location(lat=16.45, lon=102.8))
    assert "unknown category 'ufo'" in (kiosk.answer("kk-kiosk-0001-bad").reason or "")

    reports = hub.get("/api/gis/reports")
    assert len(reports["features"]) == 5
    rid = first.result["report_id"]
    url = f"{hub.url}/api/gis/reports/{rid}"
    assert httpx.patch(url, headers=hub.auth, json={"status": "assigned"}).status_code == 409  # needs an assignee
    assigned = httpx.patch(url, headers=hub.auth, json={"status": "assigned", "assignee": "Electrical team"})
    assert assigned.json()["properties"]["status"] == "assigned"
    assert httpx.patch(url, headers=hub.auth, json={"status": "resolved", "note": "lamp replaced"}).status_code == 200
    history = hub.get(f"/api/gis/reports/{rid}/history")
    assert [h["status"] for h in history] == ["new", "assigned", "resolved"]
    export = httpx.get(f"{hub.url}/api/gis/reports.geojson", headers=hub.auth)
    assert export.headers["content-type"].startswith("application/geo+json")
    assert json.loads(export.text)["features"][0]["geometry"]["type"] == "Point"


@pytest.mark.broker
def test_ogc_api_features_paging_and_filters(reports_hub: Any) -> None:
    hub, _ = reports_hub
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in hub.get("/ogc/conformance")["conformsTo"]
    ids = [c["id"] for c in hub.get("/ogc/collections")["collections"]]
    assert ids == ["reports", "devices", "zones"]
    page = hub.get("/ogc/collections/reports/items", limit=2)
    assert page["numberMatched"] == 5 and page["numberReturned"] == 2
    nxt = next(link["href"] for link in page["links"] if link["rel"] == "next")
    page2 = httpx.get(nxt, headers=hub.auth).json()
    assert [f["id"] for f in page2["features"]] == [3, 4]
    west = hub.get("/ogc/collections/reports/items", bbox="102.78,16.39,102.83,16.48")
    assert {f["properties"]["zone"] for f in west["features"]} == {"zone-1", "zone-3"}
    assert hub.get("/ogc/collections/reports/items", datetime="../2000-01-01T00:00:00Z")["numberMatched"] == 0
    assert hub.get("/ogc/collections/reports/items", datetime="2000-01-01T00:00:00Z/..")["numberMatched"] == 5
    assert hub.get("/ogc/collections/reports/items/1")["id"] == 1
    assert httpx.get(f"{hub.url}/ogc/collections/reports/items/999", headers=hub.auth).status_code == 404
    assert httpx.get(f"{hub.url}/ogc/collections/reports/items", headers=hub.auth,
                     params={"bbox": "1,2"}).status_code == 400


@pytest.mark.broker
@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="GDAL's ogrinfo is not installed (Debian gdal-bin)")
def test_gdal_reads_the_layers_through_its_oapif_driver(reports_hub: Any) -> None:
    hub, _ = reports_hub
    refused = subprocess.run(["ogrinfo", "-ro", "-q", f"OAPIF:{hub.url}/ogc"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "401" in refused.stderr
    gdal = {**os.environ, "GDAL_HTTP_HEADERS": f"Authorization: Bearer {hub.token}"}
    listing = subprocess.run(["ogrinfo", "-ro", "-q", f"OAPIF:{hub.url}/ogc"], capture_output=True, text=True,
                             timeout=60, env=gdal)
    assert listing.returncode == 0, listing.stderr
    for layer in ("reports", "devices", "zones"):
        assert layer in listing.stdout
    features = subprocess.run(["ogrinfo", "-ro", "-al", f"OAPIF:{hub.url}/ogc", "reports"], capture_output=True,
                              text=True, timeout=60, env=gdal)
    assert features.returncode == 0, features.stderr
    assert "Feature Count: 5" in features.stdout
    assert "POINT (102.8 16.45)" in features.stdout
    assert "category (String) = streetlight" in features.stdout
    zones = subprocess.run(["ogrinfo", "-ro", "-so", f"OAPIF:{hub.url}/ogc", "zones"], capture_output=True,
                           text=True, timeout=60, env=gdal)
    assert "Feature Count: 4" in zones.stdout
