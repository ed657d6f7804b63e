"""Thai ID card driver: decoding from recorded APDU sessions, the watch loop on the in-process reader, and the
real PC/SC stack (pcscd with vsmartcard's vpcd reader and the project's virtual card)."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import hmac
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from edge.drivers import DriverEvent
from edge.drivers import _thai_id_card_sim as sim
from edge.drivers import thai_id_card as idc
from edge.errors import DeviceUnavailable, DriverError
from hub.broker import free_port
from tests.conftest import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "thai_id_card"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
KEY = bytes.fromhex("6b5f8a0c1e2d3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8")
VALID_ID = "1101700230708"
FORGED_ID = "1101700230705"  # the check digit of 110170023070 is 8

# one pcscd per machine (its socket is /run/pcscd/pcscd.comm): every test here runs in the same pytest-xdist worker
pytestmark = pytest.mark.xdist_group("pcscd")


def ref_of(citizen_id: str, key: bytes = KEY) -> str:
    return hmac.new(key, citizen_id.encode(), hashlib.sha256).hexdigest()


# -- recorded sessions ---------------------------------------------------------------------------------------------


@dataclass
class Replay:
    """A recorded session played back as the card: checks each command and answers what the card answered."""

    atr: bytes
    steps: list[tuple[str, str]]
    position: int = 0

    @classmethod
    def load(cls, name: str) -> Replay:
        atr = b""
        steps: list[tuple[str, str]] = []
        for line in (FIXTURES / f"{name}.session").read_text(encoding="utf-8").splitlines():
            if line.startswith("ATR "):
                atr = bytes.fromhex(line[4:])
            elif line[:1] in (">", "<", "!"):
                steps.append((line[0], line[2:]))
        return cls(atr, steps)

    def __call__(self, apdu: bytes) -> bytes:
        kind, text = self.steps[self.position]
        assert kind == ">", f"the driver sent a command the recording does not have: step {self.position}"
        assert apdu == bytes.fromhex(text), f"step {self.position}: sent {apdu.hex()} instead of {text}"
        kind, text = self.steps[self.position + 1]
        self.position += 2
        if kind == "!":
            raise idc.CardReadError(text)
        return bytes.fromhex(text)

    @property
    def finished(self) -> bool:
        return self.position == len(self.steps)

    def sent(self) -> list[bytes]:
        return [bytes.fromhex(text) for kind, text in self.steps[:self.position] if kind == ">"]


ALL_BUT_PHOTO = tuple(name for name in idc.FIELDS if name != "photo")


@pytest.mark.parametrize("name", ["somchai_3b79", "boonmee_3b67_small_buffer", "malee_p2_retry"])
def test_a_recorded_card_gives_the_citizens_fields(name: str) -> None:
    expected = EXPECTED[name]
    card = Replay.load(name)
    fields = (*ALL_BUT_PHOTO, "photo") if "photo" in expected else ALL_BUT_PHOTO
    data = idc.event_data(idc.read_card(card, card.atr, set(idc.RECORDS), photo="photo" in fields), fields, KEY)
    assert card.finished
    assert data.pop("citizen") == {"ref": ref_of(expected["citizen_id"])}
    if "photo" in expected:
        jpeg = base64.b64decode(data.pop("photo"))
        assert jpeg == (FIXTURES / expected["photo"]).read_bytes()
        assert Image.open(io.BytesIO(jpeg)).size == (96, 120)
    assert data == expected["event"]


def test_a_3b67_card_gets_p2_01_and_its_short_answers_are_chained() -> None:
    card = Replay.load("boonmee_3b67_small_buffer")
    idc.read_card(card, card.atr, {"name_th"})
    get_responses = [c for c in card.sent() if c[1] == 0xC0]
    assert {c[3] for c in get_responses} == {0x01}
    assert [c[4] for c in get_responses[1:]] == [0x64, 0x40, 0x24]  # asked 100, told 64 (6C), then 61 24


def test_a_card_refusing_p2_is_asked_once_with_the_other_and_keeps_it() -> None:
    card = Replay.load("malee_p2_retry")
    session = idc.CardSession(card, card.atr)
    assert session.p2 == 0x00  # a 3B 78 card
    session.select()
    session.read(0x0004, 13, "the citizen id")
    session.read(0x0011, 100, "the Thai name")
    assert session.p2 == 0x01
    assert [c[3] for c in card.sent() if c[1] == 0xC0] == [0x00, 0x01, 0x01]


def test_a_forged_card_is_refused_and_nothing_else_is_read() -> None:
    card = Replay.load("forged_check_digit")
    with pytest.raises(idc.CardRejected, match="check digit") as refused:
        idc.read_card(card, card.atr, set(idc.RECORDS), photo=True)
    assert card.finished  # no READ after the citizen id
    assert FORGED_ID not in str(refused.value)


def test_a_card_pulled_mid_read_is_a_clear_read_error() -> None:
    card = Replay.load("pulled_mid_read")
    with pytest.raises(idc.CardReadError, match="pulled out"):
        idc.read_card(card, card.atr, set(ALL_BUT_PHOTO) & set(idc.RECORDS))
    assert card.finished


def test_a_card_without_the_applet_is_not_a_thai_id_card() -> None:
    with pytest.raises(idc.CardReadError, match=r"not a Thai national ID card.*6A 82"):
        idc.read_card(lambda apdu: b"\x6a\x82", bytes.fromhex("3B8F8001"), {"name_th"})


def test_a_card_answering_61_forever_is_given_up() -> None:
    with pytest.raises(idc.CardReadError, match="kept asking"):
        idc.CardSession(lambda apdu: b"\x00\x61\x01", sim.ATR_2016).read(0x11, 100, "the Thai name")


# -- pure functions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("citizen_id", "ok"), [
    (VALID_ID, True), (FORGED_ID, False), ("3409900123451", True), ("3400100456783", True),
    ("1101700230741", True), ("1101700230040", True),  # sums leaving 0 and 1: check digits 11 and 10, kept mod 10
    ("110170023070", False), ("11017002307088", False), ("11017002307O8", False), ("๑๑๐๑๗๐๐๒๓๐๗๐๘", False),
])
def test_the_check_digit(citizen_id: str, ok: bool) -> None:
    assert idc.check_digit_ok(citizen_id) is ok


def test_the_citizen_ref_is_a_keyed_hash_and_the_mask_hides_the_middle() -> None:
    assert idc.citizen_ref(VALID_ID, KEY) == ref_of(VALID_ID)
    assert idc.citizen_ref(VALID_ID, b"another deployment key, 32 bytes") != ref_of(VALID_ID)
    assert idc.citizen_ref(VALID_ID, KEY) != hashlib.sha256(VALID_ID.encode()).hexdigest()
    assert idc.mask_citizen_id(VALID_ID) == "1-1017-xxxxx-xx-8"


def test_text_is_cp874_which_takes_bytes_tis620_refuses() -> None:
    raw = "นาย#สมชาย".encode("cp874") + b"\xa0" + "ใจดี".encode("cp874") + b"   \x00\x00"
    with pytest.raises(UnicodeDecodeError):
        raw.decode("tis-620")
    assert idc.decode_text(raw) == "นาย#สมชาย\u00a0ใจดี"
    assert idc.parse_name("Mr.#Somchai#Kit#Jaidee").display == "Mr. Somchai Kit Jaidee"
    assert idc.parse_name("นาย#สมชาย##ใจดี") == idc.PersonName("นาย", "สมชาย", "", "ใจดี")


@pytest.mark.parametrize(("text", "value", "published"), [
    ("25280420", date(1985, 4, 20), "1985-04-20"),
    ("24900000", idc.PartialDate(1947), "1947"),
    ("24900300", idc.PartialDate(1947, 3), "1947-03"),
    ("99999999", idc.DateMark.LIFELONG, "lifelong"),
    ("ตลอดชีพ", idc.DateMark.LIFELONG, "lifelong"),
    ("        ", idc.DateMark.UNKNOWN, "unknown"),
    ("25281320", idc.DateMark.UNKNOWN, "unknown"),
    ("25280230", idc.DateMark.UNKNOWN, "unknown"),
    ("00000000", idc.DateMark.UNKNOWN, "unknown"),
])
def test_buddhist_era_dates_are_data_even_when_not_dates(text: str, value: idc.CardDate, published: str) -> None:
    assert idc.parse_be_date(text) == value
    assert idc.date_text(value) == published


@pytest.mark.parametrize(("sw", "step"), [
    ("9000", idc.Step.DONE), ("6164", idc.Step.MORE), ("6100", idc.Step.MORE), ("6C40", idc.Step.WRONG_LE),
    ("6A86", idc.Step.OTHER_P2), ("6B00", idc.Step.OTHER_P2), ("6A82", idc.Step.FAIL), ("6982", idc.Step.FAIL),
    ("1234", idc.Step.FAIL),
])
def test_status_words(sw: str, step: idc.Step) -> None:
    assert idc.status_step(*bytes.fromhex(sw))[0] is step


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(body) + 2).to_bytes(2, "big") + body


def test_the_photo_keeps_its_0x20_bytes_and_loses_the_padding() -> None:
    portrait = sim.portrait_jpeg(3)
    jpeg = portrait[:2] + _segment(0xFE, b"\x20" * 600) + portrait[2:]  # a comment of 0x20s across part boundaries
    card = sim.ThaiIdCard(sim.CITIZENS[0], photo=jpeg)
    assert idc.read_card(card.process, card.atr, set(), photo=True)["photo"] == jpeg
    with pytest.raises(idc.CardReadError, match="not a JPEG"):
        idc.extract_photo(b"\x20" * 5100)
    with pytest.raises(idc.CardReadError, match="not a complete JPEG"):
        idc.extract_photo(jpeg[:-2] + b"\x20" * 100)  # cut before its end marker: refused, not published broken


def _with_exif_thumbnail(main: Image.Image, thumbnail: Image.Image) -> bytes:
    """A JPEG whose EXIF (APP1) carries a JPEG thumbnail, as cameras and card personalisation software write."""
    small = io.BytesIO()
    thumbnail.save(small, "JPEG", quality=40)
    thumb = small.getvalue()
    # TIFF, little-endian: an empty IFD0 pointing to IFD1, which locates the thumbnail (tags 0x0201/0x0202)
    ifd1 = (2).to_bytes(2, "little") + b"".join(
        tag.to_bytes(2, "little") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little") + value.to_bytes(4, "little")
        for tag, value in ((0x0201, 44), (0x0202, len(thumb)))) + (0).to_bytes(4, "little")
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + (0).to_bytes(2, "little") + (14).to_bytes(4, "little") + ifd1
    out = io.BytesIO()
    main.save(out, "JPEG", quality=50, exif=b"Exif\x00\x00" + tiff + thumb)
    return out.getvalue()


def test_a_photo_with_an_exif_thumbnail_is_read_whole() -> None:
    main = Image.open(io.BytesIO(sim.portrait_jpeg(5)))
    jpeg = _with_exif_thumbnail(main, main.resize((24, 30)))
    assert jpeg.find(b"\xff\xd9") < len(jpeg) - 2  # the thumbnail's end marker comes first
    card = sim.ThaiIdCard(sim.CITIZENS[0], photo=jpeg)
    photo = idc.read_card(card.process, card.atr, set(), photo=True)["photo"]
    assert photo == jpeg
    image = Image.open(io.BytesIO(photo))
    image.load()  # decodes the whole image: a photo cut at the thumbnail's end would fail here
    assert image.size == (96, 120)


@pytest.mark.parametrize(("code", "error", "meaning"), [
    (0x80100069, idc.CardReadError, "pulled out"),
    (-0x7FEFFF97, idc.CardReadError, "pulled out"),  # the same code, as pyscard sometimes hands it over
    (0, idc.CardReadError, "no valid response"),
    (0x8010001D, DeviceUnavailable, "pcscd is not running"),
    (0x8010006A, DeviceUnavailable, "pcscd closed the connection"),  # pcscd stopped during SCardGetStatusChange
    (0x80100009, DeviceUnavailable, "unplugged"),
    (0x80100001, DeviceUnavailable, "PC/SC error"),
])
def test_pcsc_codes_become_the_projects_errors(code: int, error: type[DriverError], meaning: str) -> None:
    translated = idc.pcsc_error(code, "talking to the card", DeviceUnavailable)
    assert type(translated) is error
    assert meaning in str(translated)


# -- configuration -------------------------------------------------------------------------------------------------


def config(key_file: Path, **kwargs: Any) -> idc.Config:
    return idc.Config.model_validate({"name": "id-card", "hmac_key_file": str(key_file), "settle_s": 0.05,
                                      "poll_s": 0.05, **kwargs})


def test_the_raw_citizen_id_is_not_a_field_and_the_photo_is_opt_in(tmp_path: Path) -> None:
    assert config(tmp_path / "k").fields == ("citizen_ref", "name_th", "name_en")
    with pytest.raises(ValidationError, match="raw citizen id never leaves the driver"):
        config(tmp_path / "k", fields=["citizen_ref", "citizen_id"])
    with pytest.raises(ValidationError, match="citizen_id_masked"):
        config(tmp_path / "k", fields=["national_id"])
    with pytest.raises(ValidationError, match="absolute path"):
        idc.Config.model_validate({"name": "id-card", "hmac_key_file": "citizen-ref.key"})
    assert config(tmp_path / "k", reader="ACS").claims() == {"pcsc:ACS"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "citizen-ref.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read the citizen-ref key file"),
    ("not a key at all\n", "is not hex text"),
    ("00112233\n", "has 4 bytes, at least 32"),
])
def test_a_missing_or_bad_key_file_stops_start_naming_the_file(tmp_path: Path, content: str | None,
                                                                problem: str) -> None:
    path = tmp_path / "citizen-ref.key"
    if content is not None:
        path.write_text(content)
    driver = idc.Driver(config(path), readers=sim.SimulatedReaders("r"))
    with pytest.raises(DriverError, match=problem) as failed:
        driver.start(lambda event: None)
    assert str(path) in str(failed.value)
    driver.stop()


def test_a_key_readable_by_others_is_used_with_a_warning(key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file.chmod(0o644)
    assert idc.read_hmac_key(key_file, "id-card") == KEY
    assert "chmod 600" in caplog.text
    assert KEY.hex() not in caplog.text


# -- the watch loop, on the in-process reader -----------------------------------------------------------------------


@dataclass
class Events:
    """Events a driver emitted, with a way to wait for the next one of a kind."""

    got: list[DriverEvent] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, event: DriverEvent) -> None:
        with self.changed:
            self.got.append(event)
            self.changed.notify_all()

    def wait(self, name: str, timeout: float = 5.0, after: int = 0) -> DriverEvent:
        """The first ``name`` event at index ``after`` or later."""
        def found() -> DriverEvent | None:
            return next((e for e in self.got[after:] if e.event == name), None)
        with self.changed:
            if not self.changed.wait_for(found, timeout):
                pytest.fail(f"no {name} within {timeout} s; got {[e.event for e in self.got]}")
            event = found()
        assert event is not None
        return event

    def names(self) -> list[str]:
        with self.changed:
            return [e.event for e in self.got]


@pytest.fixture
def run_driver() -> Iterator[Callable[..., tuple[idc.Driver, Events]]]:
    """Start drivers; every one is stopped at the end."""
    started: list[idc.Driver] = []

    def start(conf: idc.Config, readers: idc.CardReaders | None = None) -> tuple[idc.Driver, Events]:
        driver = idc.Driver(conf, readers=readers)
        events = Events()
        driver.start(events)
        started.append(driver)
        return driver, events

    yield start
    for driver in started:
        driver.stop()


def no_personal_data(events: Events, *secrets: str) -> None:
    text = json.dumps([{"event": e.event, "data": e.data} for e in events.got], ensure_ascii=False)
    for secret in secrets:
        assert secret not in text


def test_cards_in_and_out_of_the_simulated_reader(key_file: Path, run_driver: Callable[..., Any]) -> None:
    readers = sim.SimulatedReaders("Kiosk reader")
    driver, events = run_driver(config(key_file), readers)
    events.wait("reader.ready")

    readers.insert(sim.ThaiIdCard(sim.CITIZENS[0]))
    inserted = events.wait("card.inserted")
    assert inserted.private == {"citizen": {"ref": ref_of(VALID_ID)}, "name_th": "นาย สมชาย ใจดี",
                                "name_en": "Mr. Somchai Jaidee"}
    assert inserted.data == {"fields": ["citizen_ref", "name_th", "name_en"]}  # what is published: no values
    assert driver.card == inserted.private
    readers.remove()
    assert events.wait("card.removed").data == {}
    assert driver.card is None

    readers.insert(sim.ThaiIdCard(sim.FORGED))
    rejected = events.wait("card.rejected")
    assert rejected.severity == "warning" and set(rejected.data) == {"reason"}
    readers.remove()
    events.wait("card.removed", after=events.names().index("card.rejected"))
    no_personal_data(events, VALID_ID, FORGED_ID, "อนันต์", "Anan")


def test_a_card_swapped_during_the_settle_delay_is_read_once(key_file: Path, run_driver: Callable[..., Any]) -> None:
    readers = sim.SimulatedReaders("Kiosk reader")
    _, events = run_driver(config(key_file, settle_s=0.3), readers)
    events.wait("reader.ready")
    readers.insert(sim.ThaiIdCard(sim.CITIZENS[0]))
    time.sleep(0.1)
    readers.insert(sim.ThaiIdCard(sim.CITIZENS[1]))  # the citizen pushes the wrong card back in at once
    assert events.wait("card.inserted").private["name_en"] == "Miss Malee Srisuk"
    time.sleep(0.2)
    assert events.names() == ["reader.ready", "card.inserted"]


def test_a_card_swapped_at_once_is_a_removal_and_an_insertion(key_file: Path,
                                                             run_driver: Callable[..., Any]) -> None:
    readers = sim.SimulatedReaders("Kiosk reader")
    driver, events = run_driver(config(key_file), readers)
    events.wait("reader.ready")
    readers.insert(sim.ThaiIdCard(sim.CITIZENS[0]))
    events.wait("card.inserted")
    readers.insert(sim.ThaiIdCard(sim.CITIZENS[1]))  # faster than the reader polls: pcscd's event counter tells
    assert events.wait("card.inserted", after=2).private["name_en"] == "Miss Malee Srisuk"
    assert events.names() == ["reader.ready", "card.inserted", "card.removed", "card.inserted"]
    assert driver.card is not None and driver.card["name_en"] == "Miss Malee Srisuk"


def test_simulate_runs_a_kiosk_with_visitors_and_a_throwaway_key() -> None:
    conf = idc.Config.model_validate(idc.SAMPLE_CONFIG)
    with idc.simulate(conf) as simulated:
        assert simulated.backend == idc.Backend.SIMULATED
        assert simulated.hmac_key_file.stat().st_mode & 0o777 == 0o600
        kiosk = sim.running_kiosk(simulated.reader or "")
        driver, events = idc.Driver(simulated), Events()
        driver.start(events)
        try:
            kiosk.insert(sim.ThaiIdCard(sim.CITIZENS[2]))  # the first visitor is early
            assert events.wait("card.inserted").private["name_en"] == "Mrs. Boonmee Meesuk"
        finally:
            driver.stop()
    assert not simulated.hmac_key_file.exists()
    with pytest.raises(DriverError, match="no simulated card reader"):
        sim.running_kiosk(simulated.reader or "")


# -- the real PC/SC stack: pcscd with a vpcd reader ----------------------------------------------------------------

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")


def _free_port_pair() -> int:
    """A port P with P + 1 free too (vpcd opens both)."""
    return free_port(span=2)


CLONE_NEWNET = 0x40000000


class CardInNamespace(sim.VpcdCard):
    """A :class:`sim.VpcdCard` whose socket is opened in pcscd's network namespace (the only place vpcd listens)."""

    def __init__(self, card: sim.ThaiIdCard, port: int, netns: Path) -> None:
        super().__init__(card, port)
        self._netns = netns

    def insert(self) -> None:
        """Connect from a thread that joined the namespace; the socket stays in it, whichever thread uses it."""
        failure: list[OSError] = []

        def connect() -> None:
            try:
                fd = os.open(self._netns, os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns({self._netns})")
                finally:
                    os.close(fd)
                super(CardInNamespace, self).insert()
            except OSError as err:  # DeviceUnavailable included; raised again in the test's thread below
                failure.append(err)

        thread = threading.Thread(target=connect, name="vpcd-card-netns")  # only this thread joins the namespace
        thread.start()
        thread.join()
        if failure:
            raise failure[0]


class Pcscd:
    """pcscd in the foreground with one vpcd reader config; the tests start and stop it."""

    friendly_name = "Nakhon Test Reader"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port_pair()
        self.reader = f"{self.friendly_name} 00 00"
        self.process: subprocess.Popen[bytes] | None = None
        (directory / "conf").mkdir()
        (directory / "conf" / "vpcd").write_text(
            f'FRIENDLYNAME "{self.friendly_name}"\nDEVICENAME /dev/null:0x{self.port:04X}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{self.port:04X}\n")

    def start(self) -> None:
        # vpcd listens on every interface: pcscd runs in a network namespace of its own that has only loopback
        # (its client socket is a file, /run/pcscd/pcscd.comm, which every namespace sees)
        with open(self.directory / "pcscd.log", "ab") as log:
            self.process = subprocess.Popen(
                ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec pcscd --foreground --config "$1"',
                 "pcscd-in-netns", str(self.directory / "conf")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"pcscd exited: {(self.directory / 'pcscd.log').read_text()[-2000:]}")
            try:
                return self.reader in idc.PcscReaders().names()
            except DeviceUnavailable:
                return False

        wait_for(ready, 10, "pcscd to list the vpcd reader")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        wait_for(lambda: not PCSCD_SOCKET.exists(), 5, "pcscd to remove its socket")

    @property
    def netns(self) -> Path:
        """pcscd's network namespace, where vpcd listens."""
        assert self.process is not None
        return Path(f"/proc/{self.process.pid}/ns/net")

    def card(self, card: sim.ThaiIdCard) -> CardInNamespace:
        """A virtual card for this pcscd's reader, inserted from inside its network namespace."""
        return CardInNamespace(card, self.port, self.netns)

    def slot_empty(self) -> bool:
        """True once pcscd has noticed that the last card left (it polls vpcd a few times a second)."""
        readers = idc.PcscReaders()
        try:
            return not readers.wait_for_change(self.reader, 0).present
        finally:
            readers.release()


def _pcscd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "pcscd"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def pcscd_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    """The pcscd of these tests (one per machine: skipped when another one owns /run/pcscd/pcscd.comm); for the
    session, as a pytest-xdist worker may run other modules' tests between this module's (a module fixture would
    stop and start it again)."""
    if shutil.which("pcscd") is None or not VPCD_DRIVER.exists():
        pytest.skip("needs the pcscd and vsmartcard-vpcd packages")
    if _pcscd_running():
        pytest.skip("another pcscd is running and owns /run/pcscd/pcscd.comm (one per machine); stop it first")
    if not os.access(PCSCD_SOCKET.parent if PCSCD_SOCKET.parent.exists() else PCSCD_SOCKET.parent.parent, os.W_OK):
        pytest.skip("pcscd needs root or a writable /run/pcscd")
    daemon = Pcscd(tmp_path_factory.mktemp("pcscd"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def pcscd(pcscd_daemon: Pcscd) -> Iterator[Pcscd]:
    """The module's pcscd with an empty reader slot before and after the test (no stale card for the next test)."""
    wait_for(pcscd_daemon.slot_empty, 5, "the vpcd reader to be empty")
    yield pcscd_daemon
    if pcscd_daemon.process is not None:
        wait_for(pcscd_daemon.slot_empty, 5, "the vpcd reader to be empty")


def on_pcscd(pcscd: Pcscd, key_file: Path, **kwargs: Any) -> idc.Config:
    return config(key_file, reader=pcscd.reader, settle_s=0.1, **kwargs)


APDU_TRACES = ("80 B0", "80B0", "80b0", "00 C0", "00c0", "A0 00 00 00 54 48", "a000000054480001",
               VALID_ID.encode().hex(), VALID_ID.encode().hex(" "))


@pytest.mark.pcsc
def test_pcscd_a_full_read_publishes_only_the_configured_fields(
        pcscd: Pcscd, key_file: Path, run_driver: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    driver, events = run_driver(on_pcscd(pcscd, key_file))
    events.wait("reader.ready")
    card = sim.ThaiIdCard(sim.CITIZENS[0])
    with pcscd.card(card):
        inserted = events.wait("card.inserted")
    removed = events.wait("card.removed")
    assert inserted.private == {"citizen": {"ref": ref_of(VALID_ID)}, "name_th": "นาย สมชาย ใจดี",
                                "name_en": "Mr. Somchai Jaidee"}
    assert removed.data == {}
    assert driver.card is None
    assert card.commands == 7  # SELECT, then READ + GET RESPONSE for the id and both names; nothing else
    no_personal_data(events, VALID_ID, "1985", "มิตรภาพ", "สมชาย", "Somchai")
    for trace in (VALID_ID, *APDU_TRACES):
        assert trace not in caplog.text
    assert "card read" in caplog.text


@pytest.mark.pcsc
def test_pcscd_a_3b67_card_with_short_answers(pcscd: Pcscd, key_file: Path, run_driver: Callable[..., Any]) -> None:
    _, events = run_driver(on_pcscd(pcscd, key_file, fields=["citizen_id_masked", "birth_date", "expiry_date",
                                                             "photo"]))
    events.wait("reader.ready")
    with pcscd.card(sim.ThaiIdCard(sim.CITIZENS[2], atr=sim.ATR_3B67, io_buffer=0x40)):
        inserted = events.wait("card.inserted")
    photo = base64.b64decode(inserted.private.pop("photo"))
    assert inserted.private == {"citizen_id_masked": "3-4001-xxxxx-xx-3", "birth_date": "1947",
                                "expiry_date": "lifelong"}
    assert Image.open(io.BytesIO(photo)).size == (96, 120)


@pytest.mark.pcsc
def test_pcscd_a_card_pulled_mid_read_then_the_next_card(pcscd: Pcscd, key_file: Path,
                                                         run_driver: Callable[..., Any]) -> None:
    _, events = run_driver(on_pcscd(pcscd, key_file))
    events.wait("reader.ready")
    with pcscd.card(sim.ThaiIdCard(sim.CITIZENS[1], pull_after=4)) as pulled:
        failed = events.wait("card.read_failed")
        assert pulled.pulled.is_set()
    assert "pulled out" in failed.data["reason"]
    events.wait("card.removed")
    seen = len(events.got)
    with pcscd.card(sim.ThaiIdCard(sim.CITIZENS[0])):
        assert events.wait("card.inserted", after=seen).private["name_en"] == "Mr. Somchai Jaidee"
    no_personal_data(events, "Malee", "3409900123451")


@pytest.mark.pcsc
def test_pcscd_a_forged_card_is_refused(pcscd: Pcscd, key_file: Path, run_driver: Callable[..., Any]) -> None:
    _, events = run_driver(on_pcscd(pcscd, key_file, fields=list(ALL_BUT_PHOTO)))
    events.wait("reader.ready")
    card = sim.ThaiIdCard(sim.FORGED)
    with pcscd.card(card):
        rejected = events.wait("card.rejected")
    events.wait("card.removed")
    assert rejected.data == {"reason": "the citizen id on the card fails its check digit (damaged or forged card)"}
    assert card.commands == 3
    assert "card.inserted" not in events.names()


@pytest.mark.pcsc
def test_pcscd_restarted_the_driver_recovers(pcscd: Pcscd, key_file: Path, run_driver: Callable[..., Any]) -> None:
    _, events = run_driver(on_pcscd(pcscd, key_file))
    events.wait("reader.ready")
    pcscd.stop()
    lost = events.wait("reader.lost")
    assert "pcscd" in lost.data["reason"]
    pcscd.start()
    events.wait("reader.ready", timeout=10, after=events.names().index("reader.lost"))
    with pcscd.card(sim.ThaiIdCard(sim.CITIZENS[0])):
        assert events.wait("card.inserted").private["citizen"] == {"ref": ref_of(VALID_ID)}


@pytest.mark.pcsc
def test_pcscd_vpcd_listens_only_in_a_private_network_namespace(pcscd: Pcscd) -> None:
    """vpcd binds every interface: from the machine's own network nothing may reach it."""
    listening = subprocess.run(["nsenter", f"--net={pcscd.netns}", "ss", "-ltnH"], capture_output=True, text=True,
                               check=True).stdout
    assert f":{pcscd.port} " in listening  # vpcd is there, inside
    links = subprocess.run(["nsenter", f"--net={pcscd.netns}", "ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    outside = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    assert f":{pcscd.port} " not in outside
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", pcscd.port), timeout=2):
        pass
