"""PDPA canary: a citizen id and name read from a card appear nowhere outside the kiosk's memory and receipt.

A kiosk reads a card carrying a canary citizen id and canary Thai and English names, the citizen pays a fee,
the hub applies it, and then every byte the pipeline wrote is searched for the id and the names in any encoding
and as unkeyed hashes: MQTT traffic, the kiosk's outbox and journal, the hub's store (events and dead letters
included), the broker's files and every log. Only the printed receipt, the citizen's own, carries the name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.drivers._thai_id_card_sim import with_check_digit
from tests.conftest import Broker, wait_for
from tests.test_transactions import Kiosk

pytestmark = pytest.mark.broker

CANARY = with_check_digit("318802020202")
NAME_TH = ("นาย", "ขมิ้นชันทอง", "นกขมิ้นเหลือง")
NAME_EN = ("Mr.", "Kaminchanthong", "Nokkaminlueang")


def forms(citizen_id: str) -> dict[str, bytes]:
    """Every way the id could leak: text in several encodings and layouts, and unkeyed hashes."""
    digits = citizen_id.encode()
    dashed = f"{citizen_id[0]}-{citizen_id[1:5]}-{citizen_id[5:10]}-{citizen_id[10:12]}-{citizen_id[12]}"
    out: dict[str, bytes] = {
        "ascii": digits, "dashed": dashed.encode(), "spaced": " ".join(dashed.split("-")).encode(),
        "utf-16-le": citizen_id.encode("utf-16-le"), "utf-16-be": citizen_id.encode("utf-16-be"),
        "hex": digits.hex().encode(), "HEX": digits.hex().upper().encode(),
        "base64": base64.b64encode(digits).rstrip(b"="), "bcd-hex": citizen_id.encode(),
    }
    for name in ("md5", "sha1", "sha256", "sha512", "blake2b"):
        digest = hashlib.new(name, digits)
        out[f"{name}-hex"] = digest.hexdigest().encode()
        out[f"{name}-HEX"] = digest.hexdigest().upper().encode()
        out[f"{name}-raw"] = digest.digest()
        out[f"{name}-b64"] = base64.b64encode(digest.digest()).rstrip(b"=")
    return out


def name_forms(prefix: str, first: str, last: str) -> dict[str, bytes]:
    """Every way a name could leak: each part and the whole in the text encodings a system might use (the card's
    own TIS-620, UTF-8, UTF-16, JSON's \\u escapes, hex, base64) and as unkeyed hashes of the whole name."""
    out: dict[str, bytes] = {}
    whole = f"{prefix} {first} {last}"
    for label, text in (("first", first), ("last", last), ("whole", whole)):
        for encoding in ("utf-8", "cp874", "utf-16-le", "utf-16-be"):
            with_encoding = text.encode(encoding)
            out[f"{label}-{encoding}"] = with_encoding
            out[f"{label}-{encoding}-hex"] = with_encoding.hex().encode()
            out[f"{label}-{encoding}-b64"] = base64.b64encode(with_encoding).rstrip(b"=")
        out[f"{label}-json-escaped"] = json.dumps(text).strip('"').encode()
    for name in ("md5", "sha1", "sha256"):
        digest = hashlib.new(name, whole.encode())
        out[f"whole-{name}-hex"] = digest.hexdigest().encode()
        out[f"whole-{name}-raw"] = digest.digest()
    return out


def leaks(blob: bytes, patterns: dict[str, bytes]) -> list[str]:
    """Names of the forms found in ``blob``."""
    return [name for name, pattern in patterns.items() if pattern in blob]


def test_forms_catch_what_they_should() -> None:
    patterns = forms(CANARY)
    assert leaks(f"id={CANARY}".encode(), patterns) == ["ascii", "bcd-hex"]
    assert "sha256-hex" in leaks(hashlib.sha256(CANARY.encode()).hexdigest().encode(), patterns)
    assert leaks(b"1-xxxx-xxxxx-xx-" + CANARY[-1].encode(), patterns) == []
    names = name_forms(*NAME_TH)
    assert "last-cp874" in leaks("ชื่อ นกขมิ้นเหลือง".encode("cp874"), names)
    assert "whole-json-escaped" in leaks(json.dumps({"n": " ".join(NAME_TH)}).encode(), names)
    assert leaks(b"Nokkaminlueang", name_forms(*NAME_EN)) == ["last-utf-8", "last-cp874", "last-json-escaped"]
    assert leaks(b"Kaminchan Nokkamin", name_forms(*NAME_EN)) == []


def test_a_canary_citizen_id_never_leaves_the_card_reader(tmp_path: Path, broker: Broker,
                                                          procs: dict[str, Any]) -> None:
    traffic: list[bytes] = []
    lock = threading.Lock()
    sniffer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pdpa-sniffer", protocol=mqtt.MQTTv5)

    def on_message(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with lock:
            traffic.append(message.topic.encode() + b"\n" + message.payload)

    sniffer.on_message = on_message
    sniffer.connect("127.0.0.1", broker.port)
    sniffer.subscribe("#", qos=1)
    sniffer.loop_start()

    hub = procs["hub"](broker.port)
    citizens = tmp_path / "card-in-the-reader.json"  # the card itself: the only place the id may be
    citizens.write_text(json.dumps([{"citizen_id": CANARY, "name_th": "{}#{}##{}".format(*NAME_TH),
                                     "name_en": "{}#{}##{}".format(*NAME_EN)}], ensure_ascii=False))
    kiosk = Kiosk(tmp_path, broker.port)
    config = Path(kiosk.args[-1])
    config.write_text(config.read_text() + f'''
[[drivers]]
kind = "thai_id_card"
name = "id-card"
fields = ["citizen_ref", "name_th", "name_en", "citizen_id_masked"]
hmac_key_file = "/etc/nakhon/secrets/citizen-ref.key"
sim_citizens = "{citizens}"
''')
    text = config.read_text().replace('printer = "receipt"', 'printer = "receipt"\ncard_reader = "id-card"')
    text = text.replace(
        '[[kiosk.services]]\ncode = "garbage-monthly"',
        '[[kiosk.services]]\ncode = "water-meter-check"\nname_th = "ค่าตรวจสอบมาตรวัดน้ำ"\n'
        'name_en = "Water meter inspection"\namount_satang = 10000\n\n[[kiosk.services]]\ncode = "garbage-monthly"')
    config.write_text(text)
    try:
        kiosk.start()
        assert kiosk.state()["card_fields"] == ["citizen_ref", "name_th", "name_en", "citizen_id_masked"]
        wait_for(lambda: "card.inserted" in kiosk.log(), 30, "the canary card read")
        kiosk.touch("accept")
        state = kiosk.state()
        assert state["step"] == "service" and state["card"]["name_en"] == " ".join(NAME_EN)
        kiosk.touch("select", service="water-meter-check")  # needs the card
        kiosk.touch("pay", method="cash")
        done = wait_for(lambda: (s := kiosk.state())["step"] == "done" and s, 60, "the payment done")
        assert done["tx"]["result"]["receipt_no"]
        wait_for(lambda: kiosk.receipts() == 1, 30, "the receipt")
        with hub.db() as db:
            refs = [r[0] for r in db.execute("SELECT citizen_ref FROM ledger")]
            events = [r[0] for r in db.execute("SELECT data FROM events WHERE event = 'card.inserted'")]
        assert refs and len(refs[0]) == 64  # the keyed hash reached the ledger
        # the event says what was read, not who: no name, no masked id, no pseudonym to follow a citizen by
        assert events and json.loads(events[0]) == {"fields": ["citizen_ref", "name_th", "name_en",
                                                               "citizen_id_masked"]}
        paper = "\n".join(kiosk.paper())
        assert f"xxxxx-xx-{CANARY[-1]}" in paper and " ".join(NAME_TH) in paper  # the masked id and the name
    finally:
        kiosk.stop()
        hub.stop()
        sniffer.loop_stop()
        sniffer.disconnect()
        broker.stop()  # the broker writes its persistence file on a clean stop: search that too

    patterns = {**forms(CANARY), **{f"th-{k}": v for k, v in name_forms(*NAME_TH).items()},
                **{f"en-{k}": v for k, v in name_forms(*NAME_EN).items()}}
    receipt = tmp_path / "paper.log"  # the printed receipt is the citizen's own: the name belongs on it
    found: dict[str, list[str]] = {}
    with lock:
        assert traffic, "the sniffer saw nothing"
        for i, message in enumerate(traffic):
            if hits := leaks(message, patterns):
                found[f"mqtt message {i}: {message[:60]!r}"] = hits
    searched = 0
    for path in sorted(tmp_path.rglob("*")):
        if not path.is_file() or path in (citizens, receipt):
            continue
        searched += 1
        if hits := leaks(path.read_bytes(), patterns):
            found[str(path.relative_to(tmp_path))] = hits
    assert searched >= 8  # outbox, journal, hub store, broker files, logs, paper, configs
    assert found == {}
