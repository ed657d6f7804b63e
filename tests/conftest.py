"""Fixtures that start real things: Mosquitto on a free loopback port, hub and agent processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge.agents.outbox import snapshot
from hub import audit
from hub.auth import accounts
from hub.auth.web import protect
from hub.backends import Backends, open_backends
from hub.broker import BrokerSettings, Mosquitto, free_port
from hub.records.postgresql import records_store
from hub.store.base import ReadingKey
from hub.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ("tests.fixtures.postgres", "tests.fixtures.victoria")
"""Fixtures of the production backends, each started from its Debian package."""

CI_SKIP = "skipped under CI=true, where only the real-Raspberry-Pi tier (`pi` marker) may skip"


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                            pytest.TestReport]:
    """On CI a skip is a failure unless the test is in the `pi` tier: a missing package must not hide a tier."""
    report = yield
    if (_on_ci() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("pi") is None):
        report.outcome = "failed"
        report.longrepr = f"{CI_SKIP}: {_skip_reason(report)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport,
                                                                         pytest.CollectReport]:
    """On CI a module that skips itself at import (``pytest.importorskip``) is a collection error."""
    report = yield
    if _on_ci() and report.skipped and collector.get_closest_marker("pi") is None:
        report.outcome = "failed"
        report.longrepr = f"{CI_SKIP}: {_skip_reason(report)}"
    return report


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Broker:
    """A Mosquitto the test can stop, kill and start again on the same port and data."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        self.settings = BrokerSettings(directory=directory, port=free_port(), **kwargs)
        self.process = Mosquitto(self.settings)

    @property
    def port(self) -> int:
        return self.settings.port

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def log(self) -> str:
        path = self.settings.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make brokers (anonymous unless ``accounts`` is given); all are stopped at the end."""
    made: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        b = Broker(tmp_path / f"broker{len(made)}", **kwargs)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """An anonymous Mosquitto on 127.0.0.1."""
    return broker_factory()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "NAKHON_LOG_LEVEL": "INFO"}


@dataclass
class Proc:
    """A nakhon subprocess with its log file."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "nakhon.cli", *self.args], cwd=ROOT,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={**_env(), **self.env}, start_new_session=True)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"{self.args[:2]} did not stop within {timeout} s on SIGTERM")
        rc = self.process.returncode
        self.process = None
        return rc

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


TEST_PASSWORD = "correct horse battery staple"


def user_token(data: Path, name: str = "admin", roles: tuple[str, ...] = ("admin",), records: str | None = None) -> str:
    """Create (if needed) a user in the hub store of ``data`` (or the ``records`` URL's) and return a new API
    token of theirs."""
    store = SQLiteStore(data / "hub.sqlite") if records is None else records_store(records)
    store.open()
    try:
        users = accounts.Accounts(store)
        if users.user(name) is None:
            users.add_user(name, list(roles), TEST_PASSWORD)
        return users.add_token(name, "tests")[1]
    finally:
        store.close()


def signed_client(app: FastAPI, store: SQLiteStore, *roles: str, name: str = "tester") -> TestClient:
    """Guard ``app`` as the hub does and return a TestClient sending the token of a user with ``roles``."""
    protect(app, accounts.Accounts(store), audit.AuditLog(store))
    users = accounts.Accounts(store)
    if users.user(name) is None:
        users.add_user(name, list(roles or ("admin",)), TEST_PASSWORD)
    _, token = users.add_token(name, "tests")
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


HUB_BANK_SECRET = "bank-signing-secret-for-tests"


@dataclass
class HubApp:
    """The hub's whole app (as ``nakhon hub serve`` builds it) on an open store, without ingest running."""

    app: FastAPI
    store: SQLiteStore

    def client(self, *roles: str, name: str | None = None) -> TestClient:
        """A TestClient sending the API token of a user with these roles (created if needed)."""
        users = accounts.Accounts(self.store)
        user = name or "-".join(("u", *roles))
        if users.user(user) is None:
            users.add_user(user, list(roles), TEST_PASSWORD)
        return TestClient(self.app, headers={"Authorization": f"Bearer {users.add_token(user, 'tests')[1]}"})

    def anonymous(self) -> TestClient:
        """A TestClient with no credentials."""
        return TestClient(self.app)


def build_hub_app(data: Path, public_ogc: bool = False) -> HubApp:
    """Build the hub app on ``data`` and open its store."""
    from hub.ingest.consumer import IngestSettings
    from hub.serve import HubSettings, build

    app, store, _ = build(HubSettings(data=data, ingest=IngestSettings(port=free_port()),
                                      bank_secret=HUB_BANK_SECRET, public_ogc=public_ogc))
    assert isinstance(store, SQLiteStore)  # the embedded default
    store.open()
    return HubApp(app, store)


@pytest.fixture
def hub_app(tmp_path: Path) -> Iterator[HubApp]:
    """The hub app on a fresh store, for TestClient tests; see :meth:`HubApp.client` to sign in."""
    made = build_hub_app(tmp_path / "hub")
    yield made
    made.store.close()


HUB_HEALTHY_S = 60
"""How long a starting hub may take to answer /healthz with 200 (about 2 s on a quiet machine; a loaded CI runner
with three workers and Chromium can starve a start)."""


class Hub(Proc):
    """``nakhon hub serve`` on a free HTTP port, with an admin API token (``auth``) its helpers send."""

    def __init__(self, data: Path, broker_port: int, extra: list[str], log_path: Path) -> None:
        self.http_port = free_port()
        self.data = data
        self.records_url = extra[extra.index("--records") + 1] if "--records" in extra else None
        self.timeseries_url = extra[extra.index("--timeseries") + 1] if "--timeseries" in extra else None
        self.token = user_token(data, records=self.records_url)
        self._stores: Backends | None = None
        super().__init__(["hub", "serve", "--data", str(data), "--broker-port", str(broker_port),
                          "--http-port", str(self.http_port), *extra], log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        super().start()

        last: list[str] = ["no answer yet"]

        def healthy() -> bool:
            if not self.alive():
                pytest.fail(f"hub exited:\n{self.log()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=2)
            except httpx.HTTPError as err:
                last[0] = repr(err)
                return False
            last[0] = f"{r.status_code} {r.text}"
            return r.status_code == 200

        try:
            wait_for(healthy, HUB_HEALTHY_S, "the hub to be healthy")
        except pytest.fail.Exception:
            if not self.alive():
                raise  # "hub exited", with its log
            pytest.fail(f"the hub was not healthy within {HUB_HEALTHY_S} s (last /healthz: {last[0]}); its log:\n"
                        f"{self.log()[-4000:]}")

    @property
    def auth(self) -> dict[str, str]:
        """Headers signing a request in as the hub's test admin."""
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, headers=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.data / 'hub.sqlite'}?mode=ro", uri=True)

    def stores(self) -> Backends:
        """The hub's records and time-series stores (whichever backend it runs on), opened in the test process
        to read what the hub wrote; closed by :meth:`close_stores`."""
        if self._stores is None:
            stores = open_backends(self.records_url, self.timeseries_url, self.data)
            stores.open()
            self._stores = stores
        return self._stores

    def close_stores(self) -> None:
        """Close what :meth:`stores` opened (idempotent)."""
        if self._stores is not None:
            self._stores.close()
            self._stores = None

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of a query on the hub's records store (SQLite or PostgreSQL)."""
        return [tuple(r) for r in self.stores().records.read(lambda session: session.execute(sql).fetchall())]

    def readings(self, device: str) -> list[dict[str, Any]]:
        """Every reading of ``device`` in the hub's time-series store, as the API writes them, oldest first."""
        series = self.stores().timeseries
        found: list[dict[str, Any]] = []
        after: ReadingKey | None = None
        while True:
            page = series.readings_page(device, None, None, None, 10_000, after)
            found += [json.loads(row) for row in page.rows]
            if page.next_after is None:
                return found
            after = page.next_after

    def stored(self) -> set[tuple[str, int]]:
        """Every (device, seq) the hub's records store counts as received."""
        return {(device, seq) for device, seq in self.rows("SELECT device, seq FROM received")}


def agent_config(path: Path, device: str, broker_port: int, *, drivers: list[dict[str, Any]],
                 username: str | None = None, password_file: Path | None = None,
                 resend_after_s: float = 2.0, heartbeat_s: float = 5.0, extra: str = "") -> Path:
    """Write a device TOML for a test agent."""
    lines = [f'device = "{device}"', "config_version = 1", "", "[broker]", 'host = "127.0.0.1"',
             f"port = {broker_port}"]
    if username:
        lines.append(f'username = "{username}"')
    if password_file:
        lines.append(f'password_file = "{password_file}"')
    lines += ["", "[agent]", f"heartbeat_s = {heartbeat_s}", f"resend_after_s = {resend_after_s}",
              "backoff_min_s = 0.2", "backoff_max_s = 2.0", "", "[outbox]",
              f'path = "{path.parent / (device + "-outbox.sqlite")}"', ""]
    for d in drivers:
        lines.append("[[drivers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in d.items()]
        lines.append("")
    path.write_text("\n".join(lines) + extra)
    return path


class Agent(Proc):
    """``nakhon agent run`` of one test device."""

    def __init__(self, config: Path, log_path: Path) -> None:
        super().__init__(["agent", "run", str(config)], log_path)
        self.config = config
        self.outbox = config.parent / (config.stem + "-outbox.sqlite")

    def outbox_state(self) -> tuple[int, int]:
        """(records waiting, last seq handed out), read from the outbox's files (SQLite and its recent file)."""
        if not self.outbox.exists():
            return (0, 0)
        try:
            state = snapshot(self.outbox)
        except sqlite3.OperationalError:  # the file exists, the agent has not made its tables yet
            return (0, 0)
        return len(state.waiting), state.last_seq


HUB_BACKENDS = ("embedded", "production")


@pytest.fixture(params=HUB_BACKENDS)
def backend(request: pytest.FixtureRequest) -> list[str]:
    """The stores every hub of a test runs on, as ``nakhon hub serve`` flags: ``embedded`` (one SQLite file) or
    ``production`` (records on a fresh PostgreSQL database, readings on a VictoriaMetrics of the test's own).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("backend")``: the ``procs`` hubs take it."""
    if request.param == "embedded":
        return []
    records: str = request.getfixturevalue("postgres_url")
    series: str = request.getfixturevalue("victoria").timeseries_url
    return ["--records", records, "--timeseries", series]


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Start hubs and agents; every process is stopped (or killed) at the end of the test. With the ``backend``
    fixture in the test, every hub runs on its stores."""
    started: list[Proc] = []
    stores: list[str] = request.getfixturevalue("backend") if "backend" in request.fixturenames else []

    def hub(broker_port: int, *extra: str, data: Path | None = None, env: dict[str, str] | None = None,
            start: bool = True) -> Hub:
        h = Hub(data or tmp_path / "hub", broker_port, [*stores, *extra], tmp_path / f"hub{len(started)}.log")
        h.env = env or {}
        if start:
            h.start()
        started.append(h)
        return h

    def agent(device: str, broker_port: int, *, start: bool = True, **kwargs: Any) -> Agent:
        config = agent_config(tmp_path / f"{device}.toml", device, broker_port, **kwargs)
        a = Agent(config, tmp_path / f"{device}-{len(started)}.log")
        if start:
            a.start()
        started.append(a)
        return a

    yield {"hub": hub, "agent": agent}  # type: ignore[misc]
    for p in reversed(started):
        if p.alive():
            p.kill()
        if isinstance(p, Hub):
            p.close_stores()


def fast_air(name: str = "pm", interval_s: float = 0.02) -> dict[str, Any]:
    """A simulated air-quality sensor read very often."""
    return {"kind": "sim_air_quality", "name": name, "interval_s": interval_s, "seed": 7}
