"""The service kiosk: the citizen's flow on a local touch screen, transactions through the outbox, receipts.

Flow: privacy notice -> ID card (or anonymous, for services that allow it) -> service -> payment method ->
the transaction is committed to the outbox (its ``tx_id`` is fixed before the first send) -> the hub's
answer is shown and printed. If no answer comes within ``answer_timeout_s``, a provisional slip with the
transaction reference is printed; the outcome is shown and printed whenever it arrives, and the
transaction is never sent under a new id.

A small journal (SQLite, next to the outbox) remembers each transaction's summary and whether its slip and
receipt were printed, so a kiosk restarted after a crash prints the receipt of an answer once. Card data
lives in this process's memory only and is dropped when the card is removed or the flow resets.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import segno
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from edge.agents.outbox import storage_error
from edge.config import KioskService, KioskSettings
from edge.contract import REPORT_CATEGORIES, TxOutcome, TxStatus, tx_reference
from edge.drivers import DriverEvent
from edge.errors import DriverError, NakhonError, OutboxDiskFull, OutboxError, OutboxFull

if TYPE_CHECKING:
    from edge.agents.agent import Agent

log = logging.getLogger("nakhon.kiosk")

Step = Literal["notice", "identify", "service", "report", "payment", "sending", "awaiting_payment", "done",
               "provisional", "rejected", "error"]

REFUSALS: tuple[tuple[type[OutboxError], str], ...] = (
    (OutboxFull, "outbox_full"),
    (OutboxDiskFull, "storage_full"),
    (OutboxError, "storage_error"),
)
"""Why the kiosk could not take a transaction -> the screen's message (first match)."""


class KioskScreenError(NakhonError, OSError):
    """The kiosk's screen server stopped (its port taken, or uvicorn gave up)."""


def _baht(satang: int) -> str:
    whole, part = divmod(satang, 100)
    return f"{whole:,}.{part:02d}"


def qr_svg(payload: str) -> str:
    """An SVG of a QR code, drawn locally (the kiosk works offline)."""
    out = io.BytesIO()
    segno.make(payload, error="m").save(out, kind="svg", scale=6, border=2, xmldecl=False, svgns=True)
    return out.getvalue().decode()


class KioskJournal:
    """What the kiosk did with each transaction, kept across restarts."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open or create the journal."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS journal (tx_id TEXT PRIMARY KEY, kind TEXT NOT NULL, summary TEXT "
                   "NOT NULL, created REAL NOT NULL, outcome TEXT, provisional_printed INTEGER NOT NULL DEFAULT 0, "
                   "receipt_printed INTEGER NOT NULL DEFAULT 0)")
        self._db = db

    def close(self) -> None:
        """Close the journal."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection."""
        assert self._db is not None, "journal not open"
        return self._db

    def record(self, tx_id: str, kind: str, summary: dict[str, Any]) -> None:
        """Remember a transaction the moment it is committed; :class:`OutboxDiskFull` on a full disk."""
        try:
            self.db.execute("INSERT OR IGNORE INTO journal (tx_id, kind, summary, created) VALUES (?, ?, ?, ?)",
                            (tx_id, kind, json.dumps(summary, ensure_ascii=False), time.time()))
        except sqlite3.Error as err:
            raise storage_error(err, f"cannot record {tx_id} in the kiosk journal {self._path}") from err

    def get(self, tx_id: str) -> dict[str, Any] | None:
        """A transaction's summary, outcome and print marks."""
        row = self.db.execute("SELECT kind, summary, outcome, provisional_printed, receipt_printed FROM journal "
                              "WHERE tx_id = ?", (tx_id,)).fetchone()
        if row is None:
            return None
        kind, summary, outcome, provisional, printed = row
        return {"tx_id": tx_id, "kind": kind, "summary": json.loads(summary),
                "outcome": json.loads(outcome) if outcome else None, "provisional_printed": bool(provisional),
                "receipt_printed": bool(printed)}

    def forget(self, tx_id: str) -> None:
        """Drop the entry of a transaction the outbox refused (it was never sent)."""
        try:
            self.db.execute("DELETE FROM journal WHERE tx_id = ?", (tx_id,))
        except sqlite3.Error as err:
            raise storage_error(err, f"cannot forget {tx_id} in the kiosk journal {self._path}") from err

    def set_outcome(self, tx_id: str, outcome: TxOutcome) -> None:
        """Store the latest answer."""
        self.db.execute("UPDATE journal SET outcome = ? WHERE tx_id = ?", (outcome.model_dump_json(), tx_id))

    def mark(self, tx_id: str, what: Literal["provisional_printed", "receipt_printed"]) -> None:
        """Note that a slip or a receipt came out of the printer."""
        self.db.execute(f"UPDATE journal SET {what} = 1 WHERE tx_id = ?", (tx_id,))  # noqa: S608 (literal)


class Action(BaseModel):
    """A touch on the screen."""

    action: Literal["accept", "decline", "anonymous", "select", "report", "pay", "reset", "lang"]
    service: str | None = None
    method: Literal["cash", "promptpay"] | None = None
    category: str | None = None
    description: str | None = Field(default=None, max_length=500)
    lang: Literal["th", "en"] | None = None


@dataclass
class Session:
    """One citizen at the kiosk; dropped (with any card data) on reset."""

    step: Step = "notice"
    lang: Literal["th", "en"] = "th"
    card: dict[str, Any] | None = None
    anonymous: bool = False
    service: KioskService | None = None
    tx_id: str | None = None
    message: str | None = None
    touched: float = field(default_factory=time.monotonic)


class _ScreenServer(uvicorn.Server):
    """uvicorn without its signal handlers: the agent owns SIGTERM and SIGINT and stops the screen itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Kiosk:
    """Runs the kiosk's screen and flow inside an agent."""

    def __init__(self, agent: Agent, settings: KioskSettings) -> None:
        self.agent = agent
        self.settings = settings
        self.session = Session()
        self.journal = KioskJournal(agent.cfg.outbox.path.with_name("kiosk-journal.sqlite"))
        self._timeouts: dict[str, asyncio.Task[None]] = {}
        self._present: dict[str, Any] | None = None
        """The card in the reader right now (a citizen may insert it before touching the screen)."""
        self._holders: dict[str, dict[str, str]] = {}
        """Name and masked id for each receipt still to print: in memory only, never in the journal."""
        self.server: uvicorn.Server | None = None

    # -- wiring --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the screen and follow card events and answers until cancelled."""
        await asyncio.to_thread(self.journal.open)
        config = uvicorn.Config(self.app(), host=self.settings.http_host, port=self.settings.http_port,
                                log_level="warning", access_log=False, lifespan="off")
        self.server = _ScreenServer(config)
        self.agent.event_listeners.append(self._on_event)
        self.agent.tx_listeners.append(self._on_answer)
        serving = asyncio.create_task(self._serve(self.server), name="kiosk-screen")
        log.info("kiosk screen on http://%s:%d/", self.settings.http_host, self.settings.http_port)
        try:
            while True:
                await asyncio.wait({serving}, timeout=1)
                if serving.done():
                    serving.result()  # raises why it stopped
                    raise KioskScreenError(f"the kiosk screen on port {self.settings.http_port} stopped")
                self._reset_if_idle()
        finally:
            self.agent.event_listeners.remove(self._on_event)
            self.agent.tx_listeners.remove(self._on_answer)
            self.server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(serving, 5)
            for task in self._timeouts.values():
                task.cancel()
            await asyncio.to_thread(self.journal.close)

    async def _serve(self, server: uvicorn.Server) -> None:
        try:
            await server.serve()
        except SystemExit as err:  # uvicorn exits the process when it cannot listen: only the screen must stop
            raise KioskScreenError(f"the kiosk screen cannot listen on {self.settings.http_host}:"
                                   f"{self.settings.http_port} (taken by another program?)") from err

    def _reset_if_idle(self) -> None:
        """Back to the notice, in Thai, after ``idle_reset_s`` untouched (``error_reset_s`` on an error screen)."""
        s = self.session
        if s.step == "notice" and s.lang == "th":
            return
        limit = self.settings.error_reset_s if s.step == "error" else self.settings.idle_reset_s
        if time.monotonic() - s.touched > limit:
            log.info("kiosk untouched for %.0f s on %s: back to the notice", limit, s.step)
            self.reset()

    def port(self) -> int:
        """The port the screen listens on (useful when configured as 0)."""
        assert self.server is not None and self.server.servers
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    # -- the flow ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the notice, in Thai; forget the citizen (card data included)."""
        self.session = Session()

    def _on_event(self, sensor: str, event: DriverEvent) -> None:
        if sensor != self.settings.card_reader:
            return
        s = self.session
        if event.event == "card.inserted":
            self._present = dict(event.private)
            if s.step == "identify":
                self._use_card()
        elif event.event == "card.removed":
            self._present = None
            if s.step in ("identify", "service", "report", "payment"):
                self.reset()
            else:
                s.card = None  # the transaction already left with the ref; drop the rest
        elif event.event in ("card.rejected", "card.read_failed") and s.step == "identify":
            s.message = "card_error"

    def _use_card(self) -> None:
        s = self.session
        s.card, s.anonymous, s.step, s.touched = self._present, False, "service", time.monotonic()

    async def act(self, action: Action) -> None:
        """Apply one touch to the flow."""
        s = self.session
        s.touched = time.monotonic()
        if action.action == "lang":
            if action.lang is None:
                raise HTTPException(400, "lang needs a language: th or en")
            s.lang = action.lang
            return  # a language switch keeps the message on screen
        s.message = None
        if action.action == "reset" or action.action == "decline":
            self.reset()
        elif action.action == "accept" and s.step == "notice":
            s.step = "identify"
            if self._present is not None:
                self._use_card()
        elif action.action == "anonymous" and s.step == "identify":
            s.anonymous, s.step = True, "service"
        elif action.action == "select" and s.step == "service":
            service = next((x for x in self.settings.services if x.code == action.service), None)
            if action.service == "report" and self.settings.reports:
                s.step = "report"
            elif service is None:
                raise HTTPException(400, f"unknown service {action.service!r}")
            elif s.anonymous and not service.anonymous:
                s.message = "card_required"
            else:
                s.service, s.step = service, "payment"
        elif action.action == "pay" and s.step == "payment" and s.service is not None:
            if action.method not in s.service.methods:
                raise HTTPException(400, f"{s.service.code} cannot be paid by {action.method}")
            await self._send("fee.payment", {"office": self.settings.office, "service": s.service.code,
                                             "amount_satang": s.service.amount_satang, "method": action.method},
                             {"service": s.service.model_dump(), "method": action.method})
        elif action.action == "report" and s.step == "report":
            if action.category not in REPORT_CATEGORIES:
                raise HTTPException(400, f"unknown category {action.category!r}")
            await self._send("issue.report", {"category": action.category,
                                              "description": (action.description or "").strip()},
                             {"category": action.category})
        else:
            raise HTTPException(409, f"{action.action!r} does not apply at step {s.step!r}")

    async def _send(self, kind: str, data: dict[str, Any], summary: dict[str, Any]) -> None:
        s = self.session
        ref = (s.card or {}).get("citizen", {}).get("ref") if s.card else None
        masked = (s.card or {}).get("citizen_id_masked")
        name = (s.card or {}).get("name_th") or (s.card or {}).get("name_en")
        s.step = "sending"
        tx_id = self.agent.new_tx_id()
        holder = {k: v for k, v in (("holder", name), ("citizen_id_masked", masked)) if v}
        if holder:
            self._holders[tx_id] = holder
        try:
            # the journal first: an answer can only arrive after the outbox commit, and must find the entry
            await asyncio.to_thread(self.journal.record, tx_id, kind, summary)
            await self.agent.submit_tx(kind, data, citizen_ref=ref, tx_id=tx_id,
                                       location=self.agent.cfg.location if kind == "issue.report" else None)
        except OutboxError as err:
            # nothing was committed, so nothing is sent nor charged: the citizen is told at once
            log.error("transaction refused before it was taken: %s", err)
            if not isinstance(err, OutboxFull):
                self.agent.storage_failed(err, lost=False)
            self._holders.pop(tx_id, None)
            with contextlib.suppress(OutboxError):
                await asyncio.to_thread(self.journal.forget, tx_id)
            s.step, s.message = "error", next(m for t, m in REFUSALS if isinstance(err, t))
            s.touched = time.monotonic()
            return
        s.tx_id = tx_id
        self._timeouts[tx_id] = asyncio.create_task(self._answer_timeout(tx_id))

    async def _answer_timeout(self, tx_id: str) -> None:
        await asyncio.sleep(self.settings.answer_timeout_s)
        entry = await asyncio.to_thread(self.journal.get, tx_id)
        if entry is None or entry["outcome"] is not None:
            return
        log.warning("no answer for %s within %.0f s: printing a provisional slip", tx_id,
                    self.settings.answer_timeout_s)
        if self.session.tx_id == tx_id and self.session.step == "sending":
            self.session.step = "provisional"
        if not entry["provisional_printed"] and await self._print(self._slip(entry)):
            await asyncio.to_thread(self.journal.mark, tx_id, "provisional_printed")

    async def _on_answer(self, outcome: TxOutcome) -> None:
        entry = await asyncio.to_thread(self.journal.get, outcome.tx_id)
        if entry is None:
            return  # not one of this kiosk's screen transactions
        await asyncio.to_thread(self.journal.set_outcome, outcome.tx_id, outcome)
        if self.session.tx_id == outcome.tx_id:
            self.session.step = {TxStatus.ACCEPTED: "done", TxStatus.REJECTED: "rejected",
                                 TxStatus.PENDING: "awaiting_payment"}[outcome.status]  # type: ignore[assignment]
            self.session.touched = time.monotonic()
            if outcome.result.get("ended") in ("expired", "cancelled"):  # a QR payment the hub ended unpaid
                self.session.message = f"payment_{outcome.result['ended']}"
        if outcome.status is TxStatus.PENDING:
            return
        timeout = self._timeouts.pop(outcome.tx_id, None)
        if timeout is not None:
            timeout.cancel()
        if not entry["receipt_printed"] and await self._print(self._receipt(entry, outcome)):
            await asyncio.to_thread(self.journal.mark, outcome.tx_id, "receipt_printed")
        self._holders.pop(outcome.tx_id, None)

    # -- printing ------------------------------------------------------------------------------
    async def _print(self, receipt: Any) -> bool:
        name = self.settings.printer
        stream = self.agent.streams.get(name) if name else None
        if stream is None or receipt is None:
            return False
        printer = stream.driver
        try:
            await asyncio.to_thread(printer.print_receipt, receipt)  # type: ignore[union-attr]
        except DriverError as err:
            log.error("printer %s could not print: %s", name, err)
            return False
        return True

    def _receipt_model(self) -> Callable[..., Any]:
        """The configured printer driver's ``receipt_model`` (the kiosk knows no driver module); else nothing."""
        stream = self.agent.streams.get(self.settings.printer) if self.settings.printer else None
        model = getattr(stream.driver, "receipt_model", None) if stream is not None else None
        return model if callable(model) else _no_receipt

    def _slip(self, entry: dict[str, Any]) -> Any:
        summary = entry["summary"]
        lines: list[tuple[str, str]] = [("อ้างอิง / Reference", tx_reference(entry["tx_id"]))]
        if "service" in summary:
            service = summary["service"]
            lines += [(service["name_th"], f"{_baht(service['amount_satang'])} บาท")]
        footer = ("รอผลจากระบบ ใบเสร็จจะพิมพ์เมื่อได้รับผล", "Waiting for the municipality; your receipt follows.")
        return self._receipt_model()(title=("ใบรับชั่วคราว", "Provisional slip"), lines=tuple(lines),
                                     footer=footer, provisional=True)

    def _receipt(self, entry: dict[str, Any], outcome: TxOutcome) -> Any:
        r = outcome.result
        holder = self._holders.get(entry["tx_id"], {})
        title: tuple[str, ...]
        if outcome.status is TxStatus.REJECTED:
            title = ("ทำรายการไม่สำเร็จ", "Not completed")
            failed = (("อ้างอิง / Reference", tx_reference(entry["tx_id"])), ("เหตุผล / Reason", outcome.reason or "-"))
            return self._receipt_model()(title=title, lines=failed)
        if entry["kind"] == "issue.report":
            title = ("รับแจ้งปัญหาแล้ว", "Report received")
            lines = (("เลขที่ / No.", str(r.get("report_id", "-"))), ("เรื่อง / Problem", r.get("category_th", "")),
                     ("เขต / Zone", self.zone_name(r.get("zone"))))
            return self._receipt_model()(title=title, lines=lines, footer=("ขอบคุณที่แจ้ง", "Thank you"))
        title = (r.get("municipality_th", ""), "ใบเสร็จรับเงิน / Receipt")
        lines_list: list[tuple[str, str]] = [("เลขที่ / No.", r.get("receipt_no", "-")),
                                             (r.get("service_th", ""), f"{_baht(int(r.get('amount_satang', 0)))} บาท"),
                                             ("ชำระโดย / Paid by", "เงินสด / Cash" if r.get("method") == "cash"
                                              else "พร้อมเพย์ / PromptPay")]
        if holder.get("holder"):
            lines_list.append(("ผู้ชำระ / Payer", holder["holder"]))
        if holder.get("citizen_id_masked"):
            lines_list.append(("เลขประจำตัว / ID", holder["citizen_id_masked"]))
        return self._receipt_model()(title=title, lines=tuple(lines_list),
                                     totals=(("รวม / Total", f"{_baht(int(r.get('amount_satang', 0)))} บาท"),),
                                     footer=(r.get("office_th", ""), r.get("paid_at", "")))

    def zone_name(self, code: object) -> str:
        """A zone's Thai name from the kiosk's zone table (its code when the table lacks it)."""
        zone = next((z for z in self.settings.zones if z.code == code), None)
        return zone.name_th if zone is not None else str(code or "-")

    # -- the screen ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything the screen shows, as JSON."""
        s = self.session
        tx: dict[str, Any] | None = None
        if s.tx_id:
            entry = self.journal.get(s.tx_id) or {}
            outcome = entry.get("outcome") or {}
            result = outcome.get("result") or {}
            tx = {"tx_id": s.tx_id, "reference": tx_reference(s.tx_id), "status": outcome.get("status"),
                  "reason": outcome.get("reason"), "result": result,
                  "qr_svg": qr_svg(result["promptpay"]) if result.get("promptpay") else None}
        services = [x.model_dump() for x in self.settings.services]
        reader = self.agent.streams.get(self.settings.card_reader or "")
        card_fields = list(getattr(reader.config, "fields", ())) if reader else []
        return {"step": s.step, "lang": s.lang, "message": s.message, "anonymous": s.anonymous,
                "card": None if s.card is None else {k: s.card.get(k) for k in ("name_th", "name_en")},
                "service": s.service.model_dump() if s.service else None, "services": services,
                "reports": self.settings.reports, "zones": [z.model_dump() for z in self.settings.zones],
                "categories": [{"code": c, "name_th": th, "name_en": en} for c, (th, en) in REPORT_CATEGORIES.items()],
                "tx": tx, "online": self.agent.online, "card_fields": card_fields}

    def app(self) -> FastAPI:
        """The local screen: one page and a small JSON API."""
        app = FastAPI(title="Nakhon kiosk", docs_url=None, redoc_url=None, openapi_url=None)
        page = resources.files("edge.agents").joinpath("kiosk_screen/index.html").read_text(encoding="utf-8")

        @app.get("/", response_class=HTMLResponse)
        def index() -> str:
            return page

        @app.get("/api/state")
        def state() -> dict[str, Any]:
            return self.state()

        @app.post("/api/action")
        async def action(body: Action) -> dict[str, Any]:
            await self.act(body)
            return self.state()

        return app


def _no_receipt(**fields: Any) -> None:
    """Without a printer there is nothing to print."""
