"""Kiosk transactions: tx/s and send-to-answer latency through the hub, steady and across a broker restart.

Run by hand (not a test): ``.venv/bin/python benchmarks/transactions.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import sqlite3
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _harness import (
    FORK,
    HOST,
    POLL_S,
    ROOT,
    STALL_S,
    START_S,
    BenchError,
    HubProcess,
    child_signals,
    progress,
    receive,
    run_guarded,
    start_broker,
    start_child,
    table,
    work_dir,
)
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from edge.agents.agent import STABLE_LINK_S, Backoff
from edge.config import AgentSettings
from edge.contract import QOS, DeviceState, Status, Tx, TxOutcome, TxStatus, now, topic
from hub.errors import BrokerError

KIND = "fee.payment"
OFFICE = "kkc-hq"
FEE = {"office": OFFICE, "service": "garbage-monthly", "amount_satang": 4000, "method": "cash"}
"""A cash payment of the demo catalogue's anonymous monthly garbage fee: accepted at once, with a receipt."""
TICK_S = 0.05
"""How often a kiosk process checks its kiosks for transactions to re-send."""
RESTART_AT = 1 / 3
"""The broker is stopped once this fraction of the transactions has been answered."""
DOWN_S = 1.0
"""How long the broker stays down before it is started again on the same port."""
KEEPALIVE_S = 30
BACKOFF_MIN_S = AgentSettings().backoff_min_s
BACKOFF_MAX_S = AgentSettings().backoff_max_s
"""The kiosks reconnect with the agent's default backoff."""


@dataclass(frozen=True)
class Params:
    """The workload: how many kiosks send how many transactions, and how a kiosk re-sends."""

    kiosks: int
    transactions: int
    runs: int
    processes: int
    resend_after_s: float
    kill: bool

    @property
    def total(self) -> int:
        """Transactions sent per run."""
        return self.kiosks * self.transactions


@dataclass(frozen=True)
class TxRecord:
    """One transaction as its kiosk saw it: monotonic times of the first send and of the first final answer."""

    tx_id: str
    device: str
    seq: int
    first_send: float
    answered: float | None
    status: str | None
    reason: str | None
    receipt_no: str | None
    receipts_seen: int
    """Distinct receipt numbers over every answer to this tx_id (1 when the duplicates agree)."""


@dataclass
class KioskCounts:
    """What a group of kiosks counted besides the per-transaction records."""

    resends: int = 0
    answers: int = 0
    duplicates: int = 0
    pending: int = 0
    late: int = 0
    """Answers to a transaction already settled (a duplicate answer that crossed a re-send)."""
    invalid: int = 0
    """Answers that are not a valid TxOutcome or name a tx_id the kiosk never sent."""

    def add(self, other: KioskCounts) -> None:
        """Add another group's counts to these."""
        for name in asdict(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class RunResult:
    """One scenario run: throughput, latency, what the kiosks had to re-send, and the correctness checks."""

    scenario: str
    run: int
    transactions: int
    """Transactions answered (all of them unless the run stalled)."""
    seconds: float
    """From the first send to the last answer."""
    p50_s: float
    p99_s: float
    max_s: float
    resends: int
    duplicates: int
    late: int
    broker_down_s: float | None
    resumed_after_s: float | None
    """From the broker listening again to the first answer after it."""
    failures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tx_per_s(self) -> float:
        """Transactions answered per second over the run."""
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    @property
    def passed(self) -> bool:
        """Whether every correctness check held."""
        return not self.failures


def kiosk_ids(count: int) -> list[str]:
    """The simulated kiosks' ids (``bench-kiosk-007``)."""
    width = max(3, len(str(count)))
    return [f"bench-kiosk-{i:0{width}d}" for i in range(1, count + 1)]


class _Kiosk:
    """One simulated kiosk: a citizen at a time, each transaction kept and re-sent until its down/tx answer."""

    def __init__(self, port: int, device: str, count: int, token: str, resend_after_s: float) -> None:
        self.device = device
        self.resend_after_s = resend_after_s
        self.tx_ids = [f"{device}-{token}-{i:05d}" for i in range(1, count + 1)]
        self.index_of = {tx_id: i for i, tx_id in enumerate(self.tx_ids)}
        self.first_send = [0.0] * count
        self.answered: list[float | None] = [None] * count
        self.status: list[str | None] = [None] * count
        self.reason: list[str | None] = [None] * count
        self.receipt: list[str | None] = [None] * count
        self.receipts_seen: list[set[str]] = [set() for _ in range(count)]
        self.counts = KioskCounts()
        self.current = 0
        """Index of the transaction in hand; ``count`` once every one is settled."""
        self.payload = b""
        self.last_send = 0.0
        self.started = False
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.done = threading.Event()
        self.up = topic(ROOT, device, "up/tx")
        self.down = topic(ROOT, device, "down/tx")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S, at_once=True)
        self.connected_at = 0.0
        self.client.on_disconnect = self._next_reconnect
        self.client.on_connect_fail = self._next_reconnect
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(HOST, port, keepalive=KEEPALIVE_S, clean_start=True)
        self.client.loop_start()

    def _send_locked(self, resend: bool) -> bytes:
        """Under the lock: stamp the send (building the payload the first time); returns what to publish."""
        at = time.monotonic()
        if resend:
            self.counts.resends += 1
        else:
            i = self.current
            self.payload = Tx(device=self.device, seq=i + 1, tx_id=self.tx_ids[i], kind=KIND, created_at=now(),
                              data=FEE).to_json()
            self.first_send[i] = at
        self.last_send = at
        return self.payload

    def start(self) -> None:
        """Send the first transaction."""
        with self.lock:
            self.started = True
            payload = self._send_locked(resend=False)
        self.client.publish(self.up, payload, qos=QOS)

    def tick(self, at: float) -> None:
        """Re-send the transaction in hand, unchanged, when it has waited ``resend_after_s`` for its answer."""
        with self.lock:
            due = (self.started and not self.done.is_set() and self.client.is_connected()
                   and at - self.last_send >= self.resend_after_s)
            payload = self._send_locked(resend=True) if due else b""
        if due:
            self.client.publish(self.up, payload, qos=QOS)

    def _next_reconnect(self, client: mqtt.Client, *_: Any) -> None:
        """Reconnect as the Nakhon agent does: a link that held at once (with jitter), then jittered backoff."""
        if self.connected_at and time.monotonic() - self.connected_at >= STABLE_LINK_S:
            self.backoff.reset()
        self.connected_at = 0.0
        delay = self.backoff.delay()
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # paho sleeps a float as well

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            return
        self.connected_at = time.monotonic()
        # A clean start: subscribe again, then send again what is unanswered (the broker handles both in order,
        # so the subscription is in place before the hub can answer).
        client.subscribe(self.down, qos=QOS)
        # the hub takes payments only from a device registered as a service kiosk (its node in up/status)
        client.publish(topic(ROOT, self.device, "up/status"),
                       Status(device=self.device, state=DeviceState.ONLINE, at=now(), node="service-kiosk").to_json(),
                       qos=QOS, retain=True)
        with self.lock:
            due = self.started and not self.done.is_set()
            payload = self._send_locked(resend=True) if due else b""
        if due:
            client.publish(self.up, payload, qos=QOS)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        if not any(rc.is_failure for rc in reason_codes):
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        try:
            outcome = TxOutcome.model_validate_json(message.payload)
        except ValidationError:
            outcome = None
        payload = b""
        with self.lock:
            self.counts.answers += 1
            i = self.index_of.get(outcome.tx_id) if outcome is not None else None
            if outcome is None or i is None:
                self.counts.invalid += 1
                return
            if outcome.duplicate:
                self.counts.duplicates += 1
            receipt = outcome.result.get("receipt_no")
            if isinstance(receipt, str):
                self.receipts_seen[i].add(receipt)
            if outcome.status == TxStatus.PENDING:
                self.counts.pending += 1
                return
            if i != self.current:
                self.counts.late += 1
                return
            self.answered[i] = at
            self.status[i] = outcome.status.value
            self.reason[i] = outcome.reason
            self.receipt[i] = receipt if isinstance(receipt, str) else None
            self.current += 1
            if self.current == len(self.tx_ids):
                self.done.set()
            else:
                payload = self._send_locked(resend=False)
        if payload:
            client.publish(self.up, payload, qos=QOS)

    def answered_count(self) -> int:
        """Transactions settled so far."""
        return self.current

    def records(self) -> list[TxRecord]:
        """Every transaction sent, answered or not."""
        with self.lock:
            return [TxRecord(tx_id, self.device, i + 1, self.first_send[i], self.answered[i], self.status[i],
                             self.reason[i], self.receipt[i], len(self.receipts_seen[i]))
                    for i, tx_id in enumerate(self.tx_ids) if self.first_send[i]]

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _kiosk_worker(port: int, devices: list[str], params: Params, token: str, ready: Queue[int], go: Event,
                  stop: Event, answered: Any, results: Queue[tuple[list[TxRecord], KioskCounts]]) -> None:
    """Run some kiosks: connect and subscribe, wait for the go, work until done (or told to stop), report."""
    child_signals()
    kiosks = [_Kiosk(port, d, params.transactions, token, params.resend_after_s) for d in devices]
    if not all(k.subscribed.wait(START_S) for k in kiosks):
        sys.exit(3)
    ready.put(os.getpid())
    go.wait()
    for k in kiosks:
        k.start()
    while not stop.is_set() and not all(k.done.is_set() for k in kiosks):
        at = time.monotonic()
        for k in kiosks:
            k.tick(at)
        answered.value = sum(k.answered_count() for k in kiosks)
        time.sleep(TICK_S)
    answered.value = sum(k.answered_count() for k in kiosks)
    counts = KioskCounts()
    for k in kiosks:
        counts.add(k.counts)
    results.put(([r for k in kiosks for r in k.records()], counts))
    for k in kiosks:
        k.close()


class Kiosks:
    """The kiosk processes, a few kiosks each, released together."""

    def __init__(self, stack: contextlib.ExitStack, port: int, params: Params, token: str) -> None:
        devices = kiosk_ids(params.kiosks)
        groups = [devices[i::params.processes] for i in range(min(params.processes, len(devices)))]
        self.go, self.stop = FORK.Event(), FORK.Event()
        self.ready: Queue[int] = FORK.Queue()
        self.results: Queue[tuple[list[TxRecord], KioskCounts]] = FORK.Queue()
        self.answered = [FORK.Value("q", 0, lock=False) for _ in groups]
        self.processes = [start_child(stack, _kiosk_worker, port, group, params, token, self.ready, self.go,
                                      self.stop, answered, self.results)
                          for group, answered in zip(groups, self.answered, strict=True)]

    def release(self) -> None:
        """Wait until every kiosk is connected and subscribed, then start sending."""
        for _ in self.processes:
            receive(self.ready, self.processes, "the kiosks to connect and subscribe")
        self.go.set()

    def answered_count(self) -> int:
        """Transactions settled so far, over every process (at most TICK_S old)."""
        failed = [p.exitcode for p in self.processes if p.exitcode not in (None, 0)]
        if failed:
            raise BenchError(f"a kiosk process exited with {failed[0]}")
        return sum(int(a.value) for a in self.answered)

    def collect(self) -> tuple[list[TxRecord], KioskCounts]:
        """Every process's records and counts (each reports once its kiosks are done or told to stop)."""
        records: list[TxRecord] = []
        counts = KioskCounts()
        for _ in self.processes:
            part, part_counts = receive(self.results, self.processes, "the kiosks' results")
            records += part
            counts.add(part_counts)
        return records, counts


class Broker:
    """A private anonymous Mosquitto on 127.0.0.1 with persistence, which can be restarted on the same port."""

    def __init__(self, stack: contextlib.ExitStack, directory: Path) -> None:
        self.mosquitto = start_broker(stack, directory)

    @property
    def port(self) -> int:
        """The port, the same across restarts."""
        return self.mosquitto.settings.port

    def restart(self, kill: bool) -> tuple[float, float]:
        """Stop (SIGTERM saves its state, SIGKILL loses it), wait DOWN_S, start again; returns (stopped, back)."""
        stopped = time.monotonic()
        if kill:
            self.mosquitto.kill()
        else:
            self.mosquitto.stop()
        time.sleep(DOWN_S)
        self.mosquitto.start()
        return stopped, time.monotonic()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _sample(items: list[str] | set[str], limit: int = 3) -> str:
    """A few examples for a failure message."""
    shown = sorted(items)[:limit]
    return ", ".join(shown) + (", ..." if len(items) > limit else "")


def verify(db: sqlite3.Connection, records: list[TxRecord], expected: int) -> list[str]:
    """The correctness checks: every transaction accepted, one ledger entry each, receipts unique and gapless."""
    failures = []
    if len(records) != expected:
        failures.append(f"{expected - len(records)} of {expected} transactions were never sent (the run stalled)")
    unanswered = [r.tx_id for r in records if r.answered is None]
    if unanswered:
        failures.append(f"{len(unanswered)} transactions never answered: {_sample(unanswered)}")
    refused = Counter(f"{r.status}: {r.reason}" for r in records if r.status not in (None, TxStatus.ACCEPTED.value))
    failures += [f"{n} transactions answered {what}" for what, n in refused.items()]
    disagreeing = [r.tx_id for r in records if r.receipts_seen > 1]
    if disagreeing:
        failures.append(f"{len(disagreeing)} transactions got answers with different receipt numbers: "
                        f"{_sample(disagreeing)}")
    rows = db.execute("SELECT tx_id, receipt_no, office, fiscal_year, entry FROM ledger").fetchall()
    other = Counter(entry for *_, entry in rows if entry != "payment")
    failures += [f"{n} unexpected '{entry}' ledger entries" for entry, n in other.items()]
    payments = [row[:4] for row in rows if row[4] == "payment"]
    per_tx = Counter(tx_id for tx_id, *_ in payments)
    ours = {r.tx_id for r in records if r.status == TxStatus.ACCEPTED.value}
    repeated = [t for t, n in per_tx.items() if n > 1]
    if repeated:
        failures.append(f"{len(repeated)} tx_ids with more than one ledger entry: {_sample(repeated)}")
    missing, surplus = ours - set(per_tx), set(per_tx) - ours
    if missing:
        failures.append(f"{len(missing)} accepted transactions without a ledger entry: {_sample(missing)}")
    if surplus:
        failures.append(f"{len(surplus)} ledger entries for transactions no kiosk saw accepted: {_sample(surplus)}")
    receipts = Counter(receipt for _, receipt, _, _ in payments)
    reused = [str(r) for r, n in receipts.items() if n > 1]
    if reused:
        failures.append(f"{len(reused)} receipt numbers used more than once: {_sample(reused)}")
    numbers: dict[tuple[str, int], list[int]] = defaultdict(list)
    for _, receipt, office, fy in payments:
        try:
            numbers[(office, fy)].append(int(str(receipt).rsplit("-", 1)[1]))
        except (IndexError, ValueError):
            failures.append(f"receipt number {receipt!r} does not end in a counter")
    for (office, fy), got in sorted(numbers.items()):
        if sorted(got) != list(range(1, len(got) + 1)):
            gaps = sorted(set(range(1, max(got) + 1)) - set(got))
            failures.append(f"receipts of {office} {fy} are not 1..{len(got)}: {len(gaps)} gaps, max {max(got)}")
    ledger_receipt = {tx_id: receipt for tx_id, receipt, _, _ in payments}
    wrong = [r.tx_id for r in records
             if r.receipt_no is not None and r.tx_id in ledger_receipt and ledger_receipt[r.tx_id] != r.receipt_no]
    if wrong:
        failures.append(f"{len(wrong)} kiosks were given a receipt number the ledger does not hold: {_sample(wrong)}")
    return failures


def drive(kiosks: Kiosks, hub: HubProcess, broker: Broker, params: Params, restart: bool,
          label: str) -> tuple[float, float] | None:
    """Wait for every answer, restarting the broker once RESTART_AT of them are in; stop the kiosks on a stall."""
    total = params.total
    restarted: tuple[float, float] | None = None
    seen, moved = -1, time.monotonic()
    while True:
        hub.check()
        answered = kiosks.answered_count()
        at = time.monotonic()
        if answered >= total:
            return restarted
        if restart and restarted is None and answered >= total * RESTART_AT:
            how = "SIGKILL" if params.kill else "SIGTERM"
            progress(f"{label} {answered:,} of {total:,} answered: stopping the broker ({how}), "
                     f"starting it again on {HOST}:{broker.port} after {DOWN_S:.0f} s")
            restarted = broker.restart(params.kill)
            progress(f"{label} broker back after {restarted[1] - restarted[0]:.2f} s down")
            moved = time.monotonic()
        if answered != seen:
            seen, moved = answered, at
        elif at - moved > STALL_S:
            progress(f"{label} no answer for {STALL_S:.0f} s at {answered:,} of {total:,}; stopping the kiosks")
            kiosks.stop.set()
            return restarted
        time.sleep(POLL_S)


def run_scenario(params: Params, scenario: str, run: int) -> RunResult:
    """One run: fresh broker and hub, the kiosks work through their transactions, then the checks."""
    restart = scenario != "steady"
    label = f"[{scenario} {run}/{params.runs}]"
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        broker = Broker(stack, work / "broker")
        hub = HubProcess(stack, work / "hub", broker.port)
        hub.wait_healthy()
        hub.wait_subscribed(broker.port)
        kiosks = Kiosks(stack, broker.port, params, secrets.token_hex(4))
        progress(f"{label} broker on {HOST}:{broker.port}, hub healthy and subscribed (API {HOST}:{hub.http_port}), "
                 f"{len(kiosks.processes)} kiosk processes forked")
        kiosks.release()
        progress(f"{label} {params.kiosks} kiosks connected and subscribed; sending {params.total:,} transactions")
        restarted = drive(kiosks, hub, broker, params, restart, label)
        records, counts = kiosks.collect()
        answers = [r.answered for r in records if r.answered is not None]
        latencies = [r.answered - r.first_send for r in records if r.answered is not None]
        first = min((r.first_send for r in records), default=0.0)
        seconds = max(answers, default=first) - first
        progress(f"{label} {len(answers):,} answered in {seconds:.2f} s ({counts.resends:,} resends, "
                 f"{counts.duplicates:,} duplicate answers); checking the answers and the ledger")
        with contextlib.closing(hub.db()) as db:
            failures = verify(db, records, params.total)
    if counts.invalid:
        failures.append(f"{counts.invalid} answers were not a TxOutcome for a transaction the kiosk sent")
    resumed = None
    if restarted is not None:
        after = [a for a in answers if a > restarted[1]]
        resumed = min(after) - restarted[1] if after else None
    result = RunResult(scenario, run, len(answers), seconds, percentile(latencies, 50) if latencies else 0.0,
                       percentile(latencies, 99) if latencies else 0.0, max(latencies, default=0.0),
                       counts.resends, counts.duplicates, counts.late,
                       restarted[1] - restarted[0] if restarted else None, resumed, tuple(failures))
    verdict = "PASS" if result.passed else "FAIL: " + "; ".join(failures)
    progress(f"{label} {result.tx_per_s:,.0f} tx/s, p50 {result.p50_s * 1000:,.1f} ms, "
             f"p99 {result.p99_s * 1000:,.1f} ms, max {result.max_s * 1000:,.0f} ms; {verdict}")
    return result


def summarise(results: list[RunResult], scenario: str) -> dict[str, Any]:
    """Medians of one scenario's runs, and whether every run passed."""
    mine = [r for r in results if r.scenario == scenario]
    names = ("transactions", "seconds", "tx_per_s", "p50_s", "p99_s", "max_s", "resends", "duplicates", "late",
             "broker_down_s", "resumed_after_s")
    summary: dict[str, Any] = {}
    for name in names:
        values = [v for v in (getattr(r, name) for r in mine) if v is not None]
        summary[name] = statistics.median(values) if values else None
    summary["pass"] = all(r.passed for r in mine)
    return summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.1f}" if value < 0.1 else f"{value * 1000:,.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(params: Params, summaries: dict[str, dict[str, Any]], titles: dict[str, str]) -> str:
    """The side-by-side table and the verdict."""
    cols = list(summaries)
    rows = [("", *(titles[c] for c in cols))]
    lines_of: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("transactions", lambda s: _n(s["transactions"])),
        ("elapsed (s)", lambda s: _s(s["seconds"])),
        ("tx/s", lambda s: _n(s["tx_per_s"])),
        ("latency p50 (ms)", lambda s: _ms(s["p50_s"])),
        ("latency p99 (ms)", lambda s: _ms(s["p99_s"])),
        ("latency max (ms)", lambda s: _ms(s["max_s"])),
        ("resends", lambda s: _n(s["resends"])),
        ("duplicates answered", lambda s: _n(s["duplicates"])),
        ("broker down (s)", lambda s: _s(s["broker_down_s"])),
        ("first answer after (s)", lambda s: _s(s["resumed_after_s"])),
        ("correctness", lambda s: "PASS" if s["pass"] else "FAIL"),
    ]
    rows += [(name, *(cell(summaries[c]) for c in cols)) for name, cell in lines_of]
    lines = table(rows)
    passed = all(s["pass"] for s in summaries.values())
    runs = "1 run" if params.runs == 1 else f"medians of {params.runs} runs"
    if passed:
        lines.append(f"PASS: every transaction answered accepted, one ledger entry per tx_id, receipts unique and "
                     f"gapless ({params.kiosks} kiosks x {params.transactions} transactions; {runs})")
    else:
        lines.append(f"FAIL: a correctness check failed ({runs}); the reasons are printed above, on stderr")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--kiosks", type=int, default=50, help="simulated kiosks (default 50)")
    p.add_argument("--transactions", type=int, default=40,
                   help="transactions per kiosk, one after another (default 40)")
    p.add_argument("--runs", type=int, default=1, help="runs of each scenario; medians are reported (default 1)")
    p.add_argument("--processes", type=int, default=4,
                   help="kiosk processes, the kiosks split among them (default 4)")
    p.add_argument("--resend-after", type=float, default=2.0,
                   help="seconds a kiosk waits for an answer before sending the same transaction again (default 2)")
    p.add_argument("--kill", action="store_true",
                   help="stop the broker with SIGKILL (its in-memory state is lost) instead of SIGTERM")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios, print the table; exit 0 when every check passes, 1 when one fails, 2 when a run fails."""
    args = _parser().parse_args(argv)
    params = Params(args.kiosks, args.transactions, args.runs, args.processes, args.resend_after, args.kill)
    if min(params.kiosks, params.transactions, params.runs, params.processes) < 1 or params.resend_after_s <= 0:
        _parser().error("every count must be at least 1 and --resend-after positive")
    restart = "kill" if params.kill else "restart"
    titles = {"steady": "steady", restart: f"broker restart ({'SIGKILL' if params.kill else 'SIGTERM'})"}
    progress(f"{params.total:,} transactions per run ({params.kiosks} kiosks x {params.transactions}, "
             f"{KIND} cash, re-sent after {params.resend_after_s:g} s unanswered); scenarios: {', '.join(titles)}")
    results: list[RunResult] = []

    def scenarios() -> None:
        for run in range(1, params.runs + 1):
            for scenario in titles:
                results.append(run_scenario(params, scenario, run))

    status = run_guarded(scenarios, (BenchError, BrokerError))
    if status is not None:
        return status
    summaries = {scenario: summarise(results, scenario) for scenario in titles}
    print(report(params, summaries, titles))
    passed = all(s["pass"] for s in summaries.values())
    if args.json:
        runs = [{**asdict(r), "tx_per_s": r.tx_per_s, "pass": r.passed} for r in results]
        workload = {**asdict(params), "total": params.total, "restart_at": RESTART_AT, "down_s": DOWN_S}
        print(json.dumps({"params": workload, "runs": runs, "median": summaries, "pass": passed}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
