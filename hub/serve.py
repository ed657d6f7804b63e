"""``nakhon hub serve``: the store, ingest and the HTTP API in one process."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from edge.contract import TxOutcome, topic
from hub.alarms import api as alarms_api
from hub.alarms import store as alarms_store
from hub.alarms.feed import Feed
from hub.alarms.rules import DEMO_RULES, load_rules
from hub.alarms.service import AlarmService
from hub.api import events as events_api
from hub.api.app import create_app
from hub.finance import api as finance_api
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.promptpay import PromptPaySettings
from hub.gis import api as gis_api
from hub.gis import ogc, reports
from hub.gis.reports import DEMO_ZONES, Zones
from hub.ingest.consumer import Ingest, IngestSettings
from hub.metrics import HubMetrics
from hub.router import Route, Router
from hub.store.sqlite import SQLiteStore

log = logging.getLogger("nakhon.hub")


@dataclass(frozen=True)
class HubSettings:
    """Everything ``nakhon hub serve`` takes."""

    data: Path
    ingest: IngestSettings
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    deadletter_keep_bytes: int = 4096
    fees: Path = DEMO_FEES
    zones: Path = DEMO_ZONES
    promptpay: PromptPaySettings = field(default_factory=lambda: PromptPaySettings(target="0801234567"))
    bank_token: str | None = None
    rules: Path = DEMO_RULES


def build(settings: HubSettings) -> tuple[FastAPI, SQLiteStore, Ingest]:
    """Wire the store, metrics, router, ingest and API together (nothing is started)."""
    catalogue = load_catalogue(settings.fees)
    zones = Zones(settings.zones)
    store = SQLiteStore(settings.data / "hub.sqlite", settings.deadletter_keep_bytes,
                        schemas=(ledger.ensure_schema, reports.ensure_schema, alarms_store.ensure_schema))
    alarms = AlarmService(store, load_rules(settings.rules))
    metrics = HubMetrics(store)
    finance = ledger.FinanceRoute(catalogue, settings.promptpay)
    gis = reports.ReportRoute(zones)
    routes: dict[str, Route] = {kind: finance for kind in finance.KINDS}
    routes.update({kind: gis for kind in gis.KINDS})
    ingest = Ingest(store, settings.ingest, metrics, Router(routes), observer=alarms.engine)

    def answer_kiosk(device: str, outcome: TxOutcome) -> None:
        ingest.publish(topic(settings.ingest.root, device, "down/tx"), outcome.to_json())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store.open()
        alarms.start()
        ingest.start()
        log.info("hub ingesting from %s:%d into %s", settings.ingest.host, settings.ingest.port, store.path)
        try:
            yield
        finally:
            ingest.stop()
            alarms.stop()
            store.close()
            log.info("hub stopped")

    app = create_app(store, metrics, ingest.commands, broker_connected=ingest.connected.is_set)
    app.include_router(finance_api.create_router(store, finance, answer_kiosk, settings.bank_token))
    app.include_router(gis_api.create_router(store, zones))
    app.include_router(ogc.create_router({"reports": gis_api.reports_layer(store),
                                          "devices": gis_api.devices_layer(store),
                                          "zones": gis_api.zones_layer(zones)}))
    app.include_router(events_api.create_router(store, alarms.feed))
    app.include_router(alarms_api.create_router(alarms.engine))
    app.router.lifespan_context = lifespan
    app.state.feed = alarms.feed
    return app, store, ingest


class _Server(uvicorn.Server):
    """uvicorn, ending the live streams as soon as a stop is asked for (it waits for open responses)."""

    def __init__(self, config: uvicorn.Config, feed: Feed) -> None:
        super().__init__(config)
        self._feed = feed

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop as uvicorn does, after telling every SSE client to go."""
        self._feed.close()
        super().handle_exit(sig, frame)


def serve(settings: HubSettings) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    app, _, _ = build(settings)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the handler it
    # found; with these no-op handlers a graceful stop exits with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    print(f"Nakhon hub API on http://{settings.http_host}:{settings.http_port}", flush=True)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                            access_log=False)
    _Server(config, app.state.feed).run()
