"""Notifications: LINE push, signed webhook and SMTP mail against local sinks; retries, attempts, channel alarms;
and an SOS press at a simulated pole reaching the stream, LINE and mail once each, also across a hub SIGKILL."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from edge.contract import DeviceState
from hub.alarms.rules import EmailChannel, LineChannel
from hub.broker import free_port
from hub.errors import NotifyError
from hub.notify.channels import Outgoing, send_email, send_line
from hub.notify.messages import compose
from hub.notify.worker import NotificationWorker
from tests.conftest import ROOT, Broker, Hub, Proc, wait_for
from tests.test_alarms import T0, Rig, rule
from tests.test_stream import SseReader

TOKEN = "line-channel-token-for-tests"
SECRET = "webhook-secret-for-tests"


class HttpSink:
    """A local LINE-compatible push endpoint (retry keys honoured, 409 on a repeat) that also takes webhooks."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.accepted: list[str] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                code = sink.answer(self.path, dict(self.headers.items()), body)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            self.requests.append((path, headers, body))
            if self.fail > 0:
                self.fail -= 1
                return 500
            if path != "/v2/bot/message/push":
                return 200
            if headers.get("Authorization") != f"Bearer {TOKEN}":
                return 401
            key = headers.get("X-Line-Retry-Key", "")
            if key in self.accepted:
                return 409
            self.accepted.append(key)
            return 200

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MailSink:
    """aiosmtpd requiring STARTTLS before login, with one account; keeps every message."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                        str(self.cert)], check=True, capture_output=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.messages: list[bytes] = []
        self.credentials = directory / "smtp.credentials"
        self.credentials.write_text("nakhon\nmail-password\n")
        self.credentials.chmod(0o600)
        sink = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                content = envelope.content
                sink.messages.append(content if isinstance(content, bytes) else str(content).encode())
                return "250 OK"

        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                         auth_data: Any) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
                b"nakhon", b"mail-password")
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, authenticator=authenticate, auth_require_tls=True)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()

    def parsed(self) -> list[Any]:
        return [message_from_bytes(m, policy=policy.default) for m in self.messages]


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()
    yield sink
    sink.close()


@pytest.fixture
def mail_sink(tmp_path: Path) -> Iterator[MailSink]:
    sink = MailSink(tmp_path)
    yield sink
    sink.close()


def _secret(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _line(tmp_path: Path, sink: HttpSink, **kwargs: Any) -> dict[str, Any]:
    return {"id": "line-duty", "type": "line", "to": "C0123456789abcdef", "base_url": sink.url,
            "token_file": str(_secret(tmp_path, "line.token", TOKEN)), **kwargs}


def _sos(*channels: str) -> dict[str, Any]:
    return rule("sos", "event", events=["sos.pressed"], severity="critical", title_th="มีผู้กดปุ่ม SOS",
                title_en="SOS button pressed", escalation=[{"after_s": 0, "channels": list(channels)}])


def _rig(tmp_path: Path, channels: list[dict[str, Any]], *channel_ids: str) -> tuple[Rig, NotificationWorker]:
    rig = Rig(tmp_path / "rig", [_sos(*channel_ids)], channels)
    rig.status("pole-0001", DeviceState.ONLINE)
    return rig, NotificationWorker(rig.engine, clock=lambda: rig.now)


def test_line_push_retries_with_one_retry_key_and_every_attempt_is_visible(
        tmp_path: Path, http_sink: HttpSink) -> None:
    http_sink.fail = 2
    rig, worker = _rig(tmp_path, [_line(tmp_path, http_sink)], "line-duty")
    try:
        rig.event("pole-0001", "sos.pressed")
        assert worker.drain() == 1
        rig.now = T0 + 4.9
        assert worker.drain() == 0  # backing off
        rig.now = T0 + 5
        assert worker.drain() == 1
        rig.now = T0 + 15
        assert worker.drain() == 1
        rig.now = T0 + 500
        assert worker.drain() == 0
        keys = {h["X-Line-Retry-Key"] for _, h, _ in http_sink.requests}
        assert len(http_sink.requests) == 3
        assert len(keys) == 1
        assert http_sink.accepted == list(keys)
        body = json.loads(http_sink.requests[-1][2])
        assert body["to"] == "C0123456789abcdef"
        text = body["messages"][0]["text"]
        assert "มีผู้กดปุ่ม SOS" in text
        assert "Khon Kaen" in text
        assert "/api/alarms/1/ack" in text
        [n] = rig.api("viewer", name="vera").get("/api/notifications").json()
        assert (n["state"], n["attempts"]) == ("sent", 3)
        assert [a["ok"] for a in n["attempt_log"]] == [False, False, True]
        assert n["attempt_log"][0]["detail"] == "LINE answered HTTP 500"
        assert TOKEN not in json.dumps(n)
    finally:
        rig.close()


def test_a_retry_that_line_already_accepted_counts_as_sent(tmp_path: Path, http_sink: HttpSink) -> None:
    channel = LineChannel.model_validate(_line(tmp_path, http_sink))
    n = Outgoing(1, "5f1c0d1e-aaaa-4bbb-8ccc-123456789abc", "s", "ข้อความ", {})
    assert send_line(channel, n) == "HTTP 200"
    assert send_line(channel, n) == "HTTP 409 (accepted before)"
    assert len(http_sink.accepted) == 1
    wrong = channel.model_copy(update={"token_file": _secret(tmp_path, "bad.token", "nope")})
    with pytest.raises(NotifyError, match="HTTP 401"):
        send_line(wrong, n)


def test_a_channel_that_keeps_failing_raises_its_own_alarm_cleared_by_its_next_success(
        tmp_path: Path, http_sink: HttpSink) -> None:
    http_sink.fail = 3
    rig, worker = _rig(tmp_path, [_line(tmp_path, http_sink)], "line-duty")
    try:
        rig.event("pole-0001", "sos.pressed")
        for at in (T0, T0 + 5, T0 + 15):
            rig.now = at
            worker.drain()
        assert rig.states() == [("notify.channel-failing", "line-duty", "active"), ("sos", "pole-0001", "active")]
        rig.now = T0 + 35
        worker.drain()
        assert rig.states() == [("notify.channel-failing", "line-duty", "cleared"), ("sos", "pole-0001", "active")]
    finally:
        rig.close()


def test_the_webhook_is_json_signed_with_hmac_sha256_over_timestamp_and_body(
        tmp_path: Path, http_sink: HttpSink) -> None:
    hook = {"id": "city-hook", "type": "webhook", "url": f"{http_sink.url}/hook", "language": "en",
            "secret_file": str(_secret(tmp_path, "hook.secret", SECRET))}
    rig, worker = _rig(tmp_path, [hook], "city-hook")
    try:
        rig.event("pole-0001", "sos.pressed")
        worker.drain()
        [(path, headers, body)] = http_sink.requests
        assert path == "/hook"
        expected = hmac.new(SECRET.encode(), headers["X-Nakhon-Timestamp"].encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        assert headers["X-Nakhon-Signature"] == f"sha256={expected}"
        payload = json.loads(body)
        assert payload["alarm"]["rule"] == "sos"
        assert payload["language"] == "en"
        assert payload["text"].startswith("What: SOS button pressed")
    finally:
        rig.close()


def test_mail_goes_over_starttls_with_login_in_thai(tmp_path: Path, mail_sink: MailSink) -> None:
    channel = EmailChannel(id="mail-duty", type="email", host="127.0.0.1", port=mail_sink.port,
                           sender="nakhon@example.go.th", to=["duty@example.go.th"],
                           credentials_file=mail_sink.credentials, ca_file=mail_sink.cert)
    alarm = {"id": 7, "device": "pole-0001", "sensor": "sos", "severity": "critical", "title_th": "มีผู้กดปุ่ม SOS",
             "title_en": "SOS", "last_seen": T0, "count": 1, "value": None}
    subject, body = compose(alarm, {"site": "บึงแก่นนคร", "lat": 16.4139, "lon": 102.8313}, "th", "http://hub")
    assert send_email(channel, Outgoing(1, "0b6a5e4c-1111-4222-8333-444455556666", subject, body, {})).startswith(
        "SMTP accepted")
    [msg] = mail_sink.parsed()
    assert msg["Subject"] == "[วิกฤต] มีผู้กดปุ่ม SOS ที่ pole-0001"
    text = msg.get_content()
    assert "บึงแก่นนคร" in text
    assert "mlat=16.4139&mlon=102.8313" in text
    assert "http://hub/api/alarms/7/ack" in text
    wrong = channel.model_copy(update={"credentials_file": _secret(tmp_path, "bad.cred", "nakhon\nwrong")})
    with pytest.raises(NotifyError, match=r"SMTP 127\.0\.0\.1") as err:
        send_email(wrong, Outgoing(2, "k", subject, body, {}))
    assert "wrong" not in str(err.value)


def test_messages_in_english_on_request() -> None:
    alarm = {"id": 3, "device": "aq-0002", "sensor": "pm", "severity": "major", "title_th": "ฝุ่นสูง",
             "title_en": "PM2.5 high", "last_seen": T0, "count": 4, "value": 80.5}
    subject, body = compose(alarm, {"site": None}, "en", "http://hub/", step=1)
    assert subject == "[MAJOR] PM2.5 high at aq-0002"
    assert "Value: 80.5" in body
    assert "Where: unknown" in body
    assert "Repeated: 4 times" in body
    assert "escalation step 2" in body


# -- end to end ------------------------------------------------------------------------------------

LAUNCH = """
import sys
from edge.drivers import gpio
from edge.drivers._gpio_sim import Citizen
gpio._WORLDS["button"] = lambda board, config: Citizen(board.pin(config.pin), pressed_level=not config.pull_up,
                                                         mean_gap_s=float(sys.argv[2]), long_presses=0.0)
from nakhon.cli import main
sys.exit(main(["agent", "run", sys.argv[1], "--simulate"]))
"""
"""The real agent and the gpio driver's own citizen simulator, only pressing more often than its 90 s default."""


class SosPole(Proc):
    """An air-quality pole whose SOS button a simulated citizen presses every ``gap_s`` seconds or so."""

    def __init__(self, directory: Path, device: str, broker_port: int, gap_s: float) -> None:
        config = directory / f"{device}.toml"
        config.write_text(
            f'device = "{device}"\nnode = "air-quality-pole"\nsite = "Bueng Kaen Nakhon, Khon Kaen"\n'
            "location = { lat = 16.4139, lon = 102.8313 }\nconfig_version = 1\n\n"
            f'[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n\n'
            "[agent]\nheartbeat_s = 2\nresend_after_s = 1.0\nbackoff_min_s = 0.2\nbackoff_max_s = 1.0\n\n"
            f'[outbox]\npath = "{directory / (device + "-outbox.sqlite")}"\n\n'
            '[[drivers]]\nkind = "gpio"\nname = "sos"\ndevice = "button"\npin = 17\nevent = "sos"\n'
            'severity = "critical"\nbounce_s = 0.05\nhold_s = 3.0\n'
            '\n[[drivers]]\nkind = "sim_air_quality"\nname = "pm"\ninterval_s = 0.5\nseed = 1\n')
        super().__init__([str(config), str(gap_s)], directory / f"{device}.log")

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-c", LAUNCH, *self.args], cwd=ROOT,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)


def rules_file(tmp_path: Path, line: HttpSink, mail: MailSink) -> Path:
    """Rules with the SOS alarm going to the local LINE sink and the local SMTP server."""
    path = tmp_path / "rules.toml"
    token = _secret(tmp_path, "line.token", TOKEN)
    path.write_text(
        'public_url = "http://hub.example.go.th"\n\n'
        f'[[channels]]\nid = "line-duty"\ntype = "line"\nto = "C0123456789abcdef"\ntoken_file = "{token}"\n'
        f'base_url = "{line.url}"\n\n'
        f'[[channels]]\nid = "mail-duty"\ntype = "email"\nhost = "127.0.0.1"\nport = {mail.port}\n'
        f'sender = "nakhon@example.go.th"\nto = ["duty@example.go.th"]\ncredentials_file = "{mail.credentials}"\n'
        f'ca_file = "{mail.cert}"\n\n'
        '[[rules]]\nid = "sos"\ntype = "event"\nevents = ["sos.pressed"]\nseverity = "critical"\n'
        'title_th = "มีผู้กดปุ่ม SOS"\ntitle_en = "SOS button pressed"\n'
        'escalation = [{ after_s = 0, channels = ["line-duty", "mail-duty"] }]\n')
    return path


@pytest.mark.broker
@pytest.mark.parametrize("crash", [False, True], ids=["steady", "sigkill-after-commit"])
def test_an_sos_press_reaches_the_stream_line_and_mail_once_each(
        crash: bool, tmp_path: Path, broker: Broker, procs: Any, http_sink: HttpSink, mail_sink: MailSink) -> None:
    rules = rules_file(tmp_path, http_sink, mail_sink)
    env = {"NAKHON_CRASH_AT": "alarm-committed"} if crash else {}
    hub: Hub = procs["hub"](broker.port, "--rules", str(rules), env=env)
    current = {"hub": hub}
    reader = SseReader(lambda: current["hub"].url, hub.auth, last_id=0).start()
    pole = SosPole(tmp_path, "kk-aq-0001", broker.port, gap_s=1.0)
    pole.start()
    try:
        if crash:
            wait_for(lambda: not hub.alive(), 60, "the hub to die at its crash point")
            assert http_sink.requests == [] and mail_sink.messages == []
            current["hub"] = procs["hub"](broker.port, "--rules", str(rules), data=hub.data)

        def alarm() -> dict[str, Any] | None:
            found = current["hub"].get("/api/alarms", rule="sos")
            return found[0] if found and found[0]["count"] >= 3 else None

        wait_for(alarm, 60, "three presses counted on the one SOS alarm")
        wait_for(lambda: http_sink.accepted and mail_sink.messages, 30, "LINE and mail")
        wait_for(lambda: [n["state"] for n in current["hub"].get("/api/notifications")] == ["sent", "sent"], 30,
                 "both notifications recorded as sent")
        raised = wait_for(lambda: [a for a in reader.of("alarm") if a["change"] == "raised"], 10,
                          "the alarm on the stream")
    finally:
        reader.stop()
        pole.kill()
    assert len(raised) == 1
    assert raised[0]["alarm"]["device"] == "kk-aq-0001"
    assert len(http_sink.accepted) == 1, http_sink.requests
    [msg] = mail_sink.parsed()
    assert "Bueng Kaen Nakhon" in msg.get_content()
    text = json.loads(http_sink.requests[-1][2])["messages"][0]["text"]
    assert "mlat=16.4139" in text
    assert "http://hub.example.go.th/api/alarms/" in text
    assert len(current["hub"].get("/api/alarms")) == 1


def test_a_misconfigured_channel_fails_as_a_notification_error_not_a_crash(tmp_path: Path) -> None:
    mail = EmailChannel(id="mail-duty", type="email", host="127.0.0.1", port=free_port(), sender="a@b.th",
                        to=["c@d.th"], ca_file=tmp_path / "missing-ca.pem")
    with pytest.raises(NotifyError, match=r"SMTP 127\.0\.0\.1.*FileNotFoundError"):
        send_email(mail, Outgoing(1, "k", "s", "b", {}))
    line = LineChannel(id="line-duty", type="line", to="C1", token_file=tmp_path / "missing.token",
                       base_url="http://127.0.0.1:9")
    with pytest.raises(NotifyError, match=r"cannot read the LINE channel access token file .*missing\.token"):
        send_line(line, Outgoing(1, "k", "s", "b", {}))
