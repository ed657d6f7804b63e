"""What a notification says, in Thai or English, from one message table: what, where, when, severity, and how
to acknowledge."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

BANGKOK = timezone(timedelta(hours=7), "ICT")
"""Thailand keeps UTC+7 all year."""

MAP_LINK = "https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=18/{lat}/{lon}"

MESSAGES: dict[str, dict[str, str]] = {
    "th": {
        "subject": "[{severity}] {title} ที่ {device}",
        "what": "เหตุ: {title}",
        "device": "อุปกรณ์: {device}{sensor}",
        "value": "ค่าที่วัดได้: {value}",
        "where": "สถานที่: {site}",
        "map": "แผนที่: {map}",
        "when": "เวลา: {when} น.",
        "severity": "ระดับ: {severity}",
        "count": "เกิดซ้ำ: {count} ครั้ง",
        "ack": "รับทราบเหตุ: {url}/api/alarms/{id}/ack (POST) หรือในแดชบอร์ด หมายเลขเหตุ {id}",
        "escalated": "ยังไม่มีผู้รับทราบ: แจ้งต่อขั้นที่ {step}",
        "unknown_site": "ไม่ทราบ",
    },
    "en": {
        "subject": "[{severity}] {title} at {device}",
        "what": "What: {title}",
        "device": "Device: {device}{sensor}",
        "value": "Value: {value}",
        "where": "Where: {site}",
        "map": "Map: {map}",
        "when": "When: {when} (Bangkok time)",
        "severity": "Severity: {severity}",
        "count": "Repeated: {count} times",
        "ack": "Acknowledge: POST {url}/api/alarms/{id}/ack, or alarm {id} on the dashboard",
        "escalated": "Not acknowledged yet: escalation step {step}",
        "unknown_site": "unknown",
    },
}

SEVERITY_NAMES: dict[str, dict[str, str]] = {
    "th": {"critical": "วิกฤต", "major": "รุนแรง", "minor": "ปานกลาง", "warning": "เฝ้าระวัง", "info": "แจ้งให้ทราบ"},
    "en": {"critical": "CRITICAL", "major": "MAJOR", "minor": "MINOR", "warning": "WARNING", "info": "INFO"},
}


def compose(alarm: dict[str, Any], where: dict[str, Any], language: str, public_url: str,
            step: int = 0) -> tuple[str, str]:
    """The subject and the text of a notification about ``alarm`` at the place ``where`` (site, lat, lon)."""
    m = MESSAGES[language]
    severity = SEVERITY_NAMES[language][alarm["severity"]]
    title = alarm["title_th" if language == "th" else "title_en"]
    when = f"{datetime.fromtimestamp(alarm['last_seen'], BANGKOK):%Y-%m-%d %H:%M:%S}"
    sensor = f" / {alarm['sensor']}" if alarm.get("sensor") else ""
    lines = [m["what"].format(title=title), m["device"].format(device=alarm["device"], sensor=sensor)]
    if alarm.get("value") is not None:
        lines.append(m["value"].format(value=f"{alarm['value']:g}"))
    lines.append(m["where"].format(site=where.get("site") or m["unknown_site"]))
    if where.get("lat") is not None and where.get("lon") is not None:
        lines.append(m["map"].format(map=MAP_LINK.format(lat=where["lat"], lon=where["lon"])))
    lines += [m["when"].format(when=when), m["severity"].format(severity=severity)]
    if alarm.get("count", 1) > 1:
        lines.append(m["count"].format(count=alarm["count"]))
    if step > 0:
        lines.append(m["escalated"].format(step=step + 1))
    lines.append(m["ack"].format(url=public_url.rstrip("/"), id=alarm["id"]))
    return m["subject"].format(severity=severity, title=title, device=alarm["device"]), "\n".join(lines)
