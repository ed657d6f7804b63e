"""``nakhon hub serve``: the store, ingest and the HTTP API in one process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from edge.contract import TxOutcome, topic
from hub import audit as audit_log
from hub.alarms import api as alarms_api
from hub.alarms.feed import Feed
from hub.alarms.rules import DEMO_RULES, load_rules
from hub.alarms.service import AlarmService
from hub.api import aggregate
from hub.api import events as events_api
from hub.api.app import compress, create_app
from hub.auth import accounts as auth_accounts
from hub.auth import throttle as auth_throttle
from hub.auth import users as auth_users
from hub.auth.web import protect
from hub.backends import open_backends, redact
from hub.dashboard import add_dashboard
from hub.errors import HubConfigError, StoreError
from hub.finance import api as finance_api
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.promptpay import PromptPaySettings
from hub.finance.repository import SqlFinance
from hub.gis import api as gis_api
from hub.gis import ogc, reports
from hub.gis.reports import DEMO_ZONES, Zones
from hub.gis.repository import SqlReports
from hub.ingest.consumer import Ingest, IngestSettings
from hub.metrics import HubMetrics
from hub.provision import api as provision_api
from hub.provision import deployment as provision_deployment
from hub.provision import pki
from hub.provision import registry as provision_registry
from hub.records.dialect import dialect_of
from hub.router import Route, Router
from hub.store.base import SqlStore

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
    promptpay: PromptPaySettings = field(default_factory=PromptPaySettings)
    bank_secret: str | None = None
    public_ogc: bool = False
    tiles: str | None = None
    """The dashboard map's basemap tile URL template (none: a plain background)."""
    pmtiles: Path | None = None
    """A local PMTiles file for the dashboard map's basemap (none: a plain background, or ``tiles``)."""
    deployment: Path | None = None
    """A provisioned deployment (``nakhon provision init``): its issuing CA signs devices' CSRs, the API is
    served over HTTPS with its certificate, and the registry is enforced unless ``enforce_registry`` is False."""
    enforce_registry: bool | None = None
    """Dead-letter as ``unregistered`` what devices that are not active send; None: only with a deployment."""
    rules: Path = DEMO_RULES
    https: bool = True
    """With a deployment, serve the API over HTTPS; False only on a loopback address (the demo's browser pages)."""
    records: str | None = None
    """The records store's URL (:mod:`hub.backends`); None: ``sqlite:///<data>/hub.sqlite``."""
    timeseries: str | None = None
    """The time-series store's URL; None: the readings table of the SQLite records file."""


def private_directory(path: Path) -> None:
    """Create the hub's data directory for its owner only (0700), or narrow an existing one to that."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as err:
        raise HubConfigError(f"cannot make the data directory {path} private: {err.strerror}") from err


def _warn_about(settings: HubSettings) -> None:
    """Say at start-up what the settings leave switched off or fake."""
    if settings.bank_secret is None:
        log.warning("no --bank-secret-file: the bank's payment confirmations will be refused, so PromptPay "
                    "payments stay pending")
    if not settings.promptpay.configured:
        log.warning("PromptPay is off (no --promptpay-biller or --promptpay-target): kiosks take cash only")
    elif settings.promptpay.demo:
        log.warning("PromptPay in DEMO mode: QR codes go to %s, which is no account; do not use for real payments",
                    settings.promptpay.target)


def build(settings: HubSettings) -> tuple[FastAPI, SqlStore, Ingest]:
    """Wire the stores, metrics, router, ingest and API together (nothing is started)."""
    catalogue = load_catalogue(settings.fees)
    _warn_about(settings)
    zones = Zones(settings.zones)
    backends = open_backends(settings.records, settings.timeseries, settings.data, settings.deadletter_keep_bytes)
    store, timeseries = backends.records, backends.timeseries
    audit = audit_log.AuditLog(store)
    alarms = AlarmService(store, load_rules(settings.rules), timeseries=timeseries)
    metrics = HubMetrics(store)
    finance = ledger.FinanceRoute(catalogue, settings.promptpay)
    finance_records = SqlFinance(store, catalogue, audit)
    report_records = SqlReports(store, audit)
    gis = reports.ReportRoute(zones)
    routes: dict[str, Route] = {kind: finance for kind in finance.KINDS}
    routes.update({kind: gis for kind in gis.KINDS})
    ingest = Ingest(store, settings.ingest, metrics, Router(routes), observer=alarms.engine,
                    timeseries=timeseries if backends.separate else None)
    registry, broker_host, broker_port = _registry(settings, store, audit, ingest)
    metrics.registry.register(provision_registry.ExpiryCollector(registry))

    def answer_kiosk(device: str, outcome: TxOutcome) -> None:
        try:
            ingest.publish(topic(settings.ingest.root, device, "down/tx"), outcome.to_json())
        except StoreError as err:
            # the outcome is committed: the kiosk resends its pending transaction and gets it then
            log.warning("cannot tell %s about %s now (%s); it gets the outcome on its next resend",
                        device, outcome.tx_id, err)

    stop_expiry = threading.Event()

    def expire_payments() -> None:
        every = min(30.0, max(1.0, settings.promptpay.expire_after_s / 4))
        while not stop_expiry.wait(every):
            try:
                ended = finance_api.expire_pending(finance_records, answer_kiosk, datetime.now(UTC))
            except StoreError as err:
                log.warning("cannot expire pending PromptPay payments now: %s", err)
                continue
            except Exception:  # the sweep must outlive any one bad payment: it retries next round
                log.exception("expiring pending PromptPay payments failed; trying again in %.0f s", every)
                continue
            if ended:
                log.info("%d pending PromptPay payment(s) expired", ended)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        backends.open()
        store.write(lambda db: dialect_of(db).load_zones(db, zones))
        registry.refresh_crl()
        alarms.start()
        ingest.start()
        dispatcher = asyncio.create_task(ingest.commands.run(), name="command-dispatcher")
        stop_expiry.clear()
        expiry = threading.Thread(target=expire_payments, name="payment-expiry", daemon=True)
        expiry.start()
        log.info("hub ingesting from %s:%d into records %s, time series %s", settings.ingest.host,
                 settings.ingest.port, redact(settings.records or f"sqlite:///{settings.data / 'hub.sqlite'}"),
                 redact(settings.timeseries or "sqlite"))
        try:
            yield
        finally:
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
            stop_expiry.set()
            expiry.join()
            ingest.stop()
            alarms.stop()
            backends.close()
            log.info("hub stopped")

    app = create_app(store, metrics, ingest.commands, broker_connected=ingest.connected.is_set,
                     writer_state=ingest.writer_state, audit=audit, timeseries=timeseries)
    app.include_router(finance_api.create_router(finance_records, answer_kiosk, settings.bank_secret))
    app.include_router(gis_api.create_router(report_records, zones))
    app.include_router(provision_api.create_router(registry, broker_host, broker_port))
    app.include_router(provision_api.retire_route(registry))
    app.include_router(ogc.create_router({"reports": gis_api.reports_layer(report_records),
                                          "devices": gis_api.devices_layer(store, timeseries),
                                          "zones": gis_api.zones_layer(zones)}))
    app.include_router(auth_users.create_router(auth_accounts.Accounts(store), audit))
    app.include_router(events_api.create_router(store, alarms.feed))
    app.include_router(alarms_api.create_router(alarms.engine, audit))
    app.include_router(aggregate.create_router(store, timeseries))
    add_dashboard(app, settings.tiles, settings.pmtiles)
    protect(app, auth_accounts.Accounts(store), audit, public_ogc=settings.public_ogc,
            throttle=auth_throttle.StoredSignInThrottle(store))
    compress(app)
    app.router.lifespan_context = lifespan
    app.state.feed = alarms.feed
    return app, store, ingest


def _registry(settings: HubSettings, store: SqlStore, audit: audit_log.AuditLog,
              ingest: Ingest) -> tuple[provision_registry.Registry, str, int]:
    """The device registry, with the deployment's issuing CA when there is one; and where devices reach the broker."""
    enforce = settings.deployment is not None if settings.enforce_registry is None else settings.enforce_registry
    if settings.deployment is None:
        registry = provision_registry.Registry(store, audit, settings.ingest.root, enforce=enforce)
        host, port = settings.ingest.host, settings.ingest.port
    else:
        d, paths = provision_deployment.load(settings.deployment)
        try:
            issuer = pki.Issuer.load(paths.issuing_key, paths.issuing_cert)
            chain = paths.chain.read_bytes()
        except (OSError, ValueError) as err:
            raise HubConfigError(f"cannot read the issuing CA of {settings.deployment}: {err}") from err
        registry = provision_registry.Registry(store, audit, d.root, issuer, paths.crl, chain, enforce=enforce)
        registry.publish = ingest.publish
        registry.reload_broker = lambda: provision_deployment.reload_broker(paths)
        ingest.on_connected = registry.sync_broker
        host, port = d.broker_names[0], d.device_port
    if enforce:
        ingest.admits = registry.admits
        log.info("registry enforced: messages from devices that are not active are dead-lettered as unregistered")
    return registry, host, port


class _Server(uvicorn.Server):
    """uvicorn, ending the live streams as soon as a stop is asked for (it waits for open responses)."""

    def __init__(self, config: uvicorn.Config, feed: Feed) -> None:
        super().__init__(config)
        self._feed = feed

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop as uvicorn does, after telling every SSE client to go."""
        self._feed.close()
        super().handle_exit(sig, frame)


YOUNG_COLLECTION_EVERY = 10_000
"""Allocations between two young garbage collections in a serving hub (Python's default: 700)."""


def settle_heap() -> None:
    """Tune the garbage collector for a hub that has built everything and starts serving.

    What start-up built (modules, models, schemas, routes: some 130,000 objects) lives as long as the process:
    frozen, the collector no longer walks it on every full collection, which ingest's allocations trigger often.
    Ingest allocates about 20 objects per message, most of which live until their batch commits: a young
    collection every :data:`YOUNG_COLLECTION_EVERY` allocations walks them a few times per batch, not dozens.
    Together about a fifth of the writer's CPU per message (benchmarks/README.md).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


def serve(settings: HubSettings) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    if not settings.https and settings.http_host not in ("127.0.0.1", "::1", "localhost"):
        raise HubConfigError(f"--plain-http serves only a loopback --http-host, not {settings.http_host}: "
                             "enrollment codes and tokens must not cross a network in clear")
    private_directory(settings.data)
    app, _, _ = build(settings)
    settle_heap()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the handler it
    # found; with these no-op handlers a graceful stop exits with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    tls: dict[str, str] = {}
    if settings.deployment is not None and settings.https:
        _, paths = provision_deployment.load(settings.deployment)
        tls = {"ssl_certfile": str(paths.https_cert), "ssl_keyfile": str(paths.https_key)}
    scheme = "https" if tls else "http"
    print(f"Nakhon hub API on {scheme}://{settings.http_host}:{settings.http_port}", flush=True)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                            access_log=False, **tls)  # type: ignore[arg-type]
    _Server(config, app.state.feed).run()
