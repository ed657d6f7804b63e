"""``nakhon hub serve``: the store, ingest and the HTTP API in one process."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from hub.api.app import create_app
from hub.ingest.consumer import Ingest, IngestSettings
from hub.metrics import HubMetrics
from hub.router import Router
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


def build(settings: HubSettings) -> tuple[FastAPI, SQLiteStore, Ingest]:
    """Wire the store, metrics, router, ingest and API together (nothing is started)."""
    store = SQLiteStore(settings.data / "hub.sqlite", settings.deadletter_keep_bytes)
    metrics = HubMetrics(store)
    ingest = Ingest(store, settings.ingest, metrics, Router())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store.open()
        ingest.start()
        log.info("hub ingesting from %s:%d into %s", settings.ingest.host, settings.ingest.port, store.path)
        try:
            yield
        finally:
            ingest.stop()
            store.close()
            log.info("hub stopped")

    app = create_app(store, metrics, ingest.commands, broker_connected=ingest.connected.is_set)
    app.router.lifespan_context = lifespan
    return app, store, ingest


def serve(settings: HubSettings) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    app, _, _ = build(settings)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the handler it
    # found; with these no-op handlers a graceful stop exits with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    print(f"Nakhon hub API on http://{settings.http_host}:{settings.http_port}", flush=True)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False)
