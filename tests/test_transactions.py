"""Kiosk transactions end to end: exactly once through hub crashes and kiosk crashes, one receipt each."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.broker import free_port
from tests.conftest import Broker, Hub, Proc, wait_for
from tests.test_gis import Kiosk as BareKiosk

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("backend")]  # embedded and production stores

KIOSK = "kk-kiosk-0101"


def kiosk_config(tmp_path: Path, broker_port: int, http_port: int, answer_timeout_s: float = 30) -> Path:
    """A kiosk with a simulated printer (code page mode, so the paper log has the text) and no card reader."""
    path = tmp_path / f"{KIOSK}.toml"
    path.write_text(f'''
device = "{KIOSK}"
node = "service-kiosk"
location = {{ lat = 16.4322, lon = 102.8236 }}
[broker]
port = {broker_port}
[agent]
heartbeat_s = 1
resend_after_s = 1
backoff_min_s = 0.2
backoff_max_s = 1
[outbox]
path = "{tmp_path / 'kiosk-outbox.sqlite'}"
synchronous = "full"
[[drivers]]
kind = "escpos_printer"
name = "receipt"
thai_mode = "codepage"
status_poll_s = 60
sim_paper_log = "{tmp_path / 'paper.log'}"
[kiosk]
office = "kkc-hq"
http_port = {http_port}
printer = "receipt"
answer_timeout_s = {answer_timeout_s}
[[kiosk.services]]
code = "garbage-monthly"
name_th = "ค่าธรรมเนียมเก็บขนขยะมูลฝอย (รายเดือน)"
name_en = "Household garbage collection (monthly)"
amount_satang = 4000
anonymous = true
''')
    return path


class Kiosk(Proc):
    """A kiosk agent process and its screen API."""

    def __init__(self, tmp_path: Path, broker_port: int, answer_timeout_s: float = 30) -> None:
        self.http_port = free_port()
        self.tmp = tmp_path
        config = kiosk_config(tmp_path, broker_port, self.http_port, answer_timeout_s)
        super().__init__(["agent", "run", "--simulate", str(config)], tmp_path / "kiosk.log")

    def start(self) -> None:
        super().start()
        wait_for(self._screen_up, 30, "the kiosk screen")

    def _screen_up(self) -> bool:
        if not self.alive():
            pytest.fail(f"kiosk exited:\n{self.log()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/api/state", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.http_port}/api/state", timeout=5).json()
        return state

    def touch(self, action: str, **args: Any) -> dict[str, Any]:
        r = httpx.post(f"http://127.0.0.1:{self.http_port}/api/action", json={"action": action, **args}, timeout=10)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def pay_garbage_fee_in_cash(self) -> None:
        self.touch("accept")
        self.touch("anonymous")
        self.touch("select", service="garbage-monthly")
        self.touch("pay", method="cash")

    def committed(self) -> list[str]:
        path = self.tmp / "kiosk-journal.sqlite"
        if not path.exists():
            return []
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return [r[0] for r in db.execute("SELECT tx_id FROM journal")]

    def paper(self) -> list[str]:
        path = self.tmp / "paper.log"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def receipts(self) -> int:
        return sum(1 for line in self.paper() if line.startswith("text") and "Receipt" in line)


@pytest.fixture
def kiosk(tmp_path: Path, broker: Broker) -> Any:
    k = Kiosk(tmp_path, broker.port)
    yield k
    k.kill()


def ledger(hub: Hub) -> list[tuple[str, str]]:
    """(tx_id, receipt_no) of every ledger entry, from the hub's records store."""
    return [(tx_id, receipt_no) for tx_id, receipt_no in hub.rows("SELECT tx_id, receipt_no FROM ledger")]


@pytest.mark.parametrize("crash_at", ["tx-received", "tx-applied"])
def test_hub_killed_around_applying_still_applies_once_and_answers(
        broker: Broker, procs: dict[str, Any], kiosk: Kiosk, crash_at: str) -> None:
    hub = procs["hub"](broker.port, env={"NAKHON_CRASH_AT": crash_at})
    kiosk.start()
    kiosk.pay_garbage_fee_in_cash()
    wait_for(lambda: hub.process is not None and hub.process.poll() is not None, 30, f"the hub to die at {crash_at}")
    assert hub.process is not None and hub.process.returncode == -9
    applied = ledger(hub)
    assert len(applied) == (1 if crash_at == "tx-applied" else 0)
    hub.env = {}
    hub.start()
    state = wait_for(lambda: (s := kiosk.state())["step"] == "done" and s, 60, "the answer on the kiosk screen")
    receipt_no = state["tx"]["result"]["receipt_no"]
    assert ledger(hub) == [(kiosk.committed()[0], receipt_no)]
    wait_for(lambda: kiosk.receipts() == 1, 30, "the receipt printed")
    time.sleep(2)  # resends and duplicate answers must not print again
    assert kiosk.receipts() == 1
    assert len(kiosk.committed()) == 1  # one tx_id, never a new one


def test_kiosk_killed_after_sending_gets_its_answer_after_restart_and_prints_once(
        broker: Broker, procs: dict[str, Any], kiosk: Kiosk) -> None:
    hub = procs["hub"](broker.port)
    hub.stop()  # the hub is down: the transaction waits in the outbox
    kiosk.start()
    kiosk.pay_garbage_fee_in_cash()
    wait_for(kiosk.committed, 10, "the transaction committed")
    kiosk.kill()
    hub.start()
    kiosk.start()
    wait_for(lambda: len(ledger(hub)) == 1, 60, "the payment applied")
    wait_for(lambda: kiosk.receipts() == 1, 30, "the receipt printed after the restart")
    receipt_no = ledger(hub)[0][1]
    assert any(receipt_no in line for line in kiosk.paper())
    time.sleep(2)
    assert kiosk.receipts() == 1


def test_no_answer_in_time_prints_a_provisional_slip_then_the_receipt(
        broker: Broker, procs: dict[str, Any], tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    hub.stop()
    kiosk = Kiosk(tmp_path, broker.port, answer_timeout_s=1.5)
    try:
        kiosk.start()
        kiosk.pay_garbage_fee_in_cash()
        state = wait_for(lambda: (s := kiosk.state())["step"] == "provisional" and s, 20, "the provisional step")
        reference = state["tx"]["reference"]
        wait_for(lambda: any("Provisional" in line for line in kiosk.paper()), 10, "the provisional slip")
        assert any(reference in line for line in kiosk.paper())
        hub.start()
        wait_for(lambda: kiosk.state()["step"] == "done", 60, "the outcome on screen")
        wait_for(lambda: kiosk.receipts() == 1, 30, "the receipt after the slip")
        assert len(kiosk.committed()) == 1
    finally:
        kiosk.kill()


def pay_five_rounds(kiosks: Sequence[BareKiosk]) -> None:
    """Each kiosk pays five cash fees, all sent before any answer is awaited, alternating two offices; every
    payment is accepted."""
    for round_no in range(5):
        for k in kiosks:
            office = "kkc-hq" if (round_no + int(k.device[-2:])) % 2 else "kkc-north"
            k.send(f"{k.device}-pay-{round_no}", "fee.payment", {"office": office, "service": "garbage-monthly",
                                                                 "amount_satang": 4000, "method": "cash"}, None)
    for k in kiosks:
        for round_no in range(5):
            assert k.answer(f"{k.device}-pay-{round_no}").status.value == "accepted"


def test_twenty_kiosks_paying_at_once_through_two_hub_processes_get_gapless_receipts(
        broker: Broker, procs: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "shared-hub"
    hubs = [procs["hub"](broker.port, "--share", "ingest", "--client-id", f"hub-{i}", data=data) for i in range(2)]
    kiosks = [BareKiosk(broker.port, f"kk-kiosk-{i:04d}") for i in range(20)]
    try:
        time.sleep(0.5)
        pay_five_rounds(kiosks)
    finally:
        for k in kiosks:
            k.close()
    rows = hubs[0].rows("SELECT office, fiscal_year, receipt_no, tx_id FROM ledger")
    assert len(rows) == 100 and len({r[3] for r in rows}) == 100
    for office in ("kkc-hq", "kkc-north"):
        numbers = sorted(int(r[2].rsplit("-", 1)[1]) for r in rows if r[0] == office)
        assert numbers == list(range(1, len(numbers) + 1))
    counts = [_transactions_answered(h) for h in hubs]
    assert sum(counts) >= 100 and all(c > 0 for c in counts), counts  # both hub processes took a share


def _transactions_answered(hub: Hub) -> float:
    total = 0.0
    for line in httpx.get(f"{hub.url}/metrics", headers=hub.auth, timeout=10).text.splitlines():
        if line.startswith("nakhon_transactions_total{"):
            total += float(line.split()[-1])
    return total
