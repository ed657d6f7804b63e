"""The house's directions: drivers know no MQTT, the hub imports only the wire contract from the edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _files("hub"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_hub_imports_nothing_from_the_edge_but_the_contract(path: Path) -> None:
    edge = {m for m in _imports(path) if m == "edge" or m.startswith("edge.")}
    assert edge <= {"edge.contract"}, f"{path} imports {edge - {'edge.contract'}}"


@pytest.mark.parametrize("path", _files("edge/drivers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_drivers_know_nothing_about_mqtt_or_agents(path: Path) -> None:
    bad = {m for m in _imports(path) if m.split(".")[0] in {"paho", "aiomqtt", "hub"} or m.startswith("edge.agents")}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _files("edge/agents"), ids=lambda p: str(p.relative_to(ROOT)))
def test_agents_know_nothing_about_bytes_on_a_wire(path: Path) -> None:
    hardware = {"serial", "smartcard", "gpiozero", "escpos", "pymodbus", "hub"}
    bad = {m for m in _imports(path) if m.split(".")[0] in hardware}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _files("edge/agents"), ids=lambda p: str(p.relative_to(ROOT)))
def test_agents_reach_drivers_only_through_the_registry(path: Path) -> None:
    """``edge.drivers`` (registry, protocols, events) yes; a driver module such as ``escpos_printer`` no."""
    bad = {m for m in _imports(path) if m.startswith("edge.drivers.")}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _files("hub/finance") + _files("hub/gis"), ids=lambda p: str(p.relative_to(ROOT)))
def test_finance_and_gis_know_the_store_interface_not_an_engine(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith("hub.store.") and m != "hub.store.base"}
    assert not bad, f"{path} imports {bad}"


def test_the_rules_see_imports_inside_functions_too(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from edge.drivers.escpos_printer import Receipt\n    import hub.store.sqlite\n")
    assert {"edge.drivers.escpos_printer", "hub.store.sqlite"} <= _imports(module)


@pytest.mark.parametrize("path", [p for f in ("edge", "hub", "nakhon", "tests", "benchmarks") for p in _files(f)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_imports_provisioning(path: Path) -> None:
    assert not {m for m in _imports(path) if m.split(".")[0] == "provisioning"}


def _runs_sql(path: Path) -> bool:
    """Whether the module calls ``execute``/``executemany`` on anything (a session, a connection, a cursor)."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr in {"execute", "executemany"}
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


_DOMAIN_CODE = [p for p in _files("hub/finance") + _files("hub/gis") + [ROOT / "hub" / "router.py"]
                if p.name != "repository.py"]


@pytest.mark.parametrize("path", _DOMAIN_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_routes_and_api_modules_see_repositories_never_a_session_or_sql(path: Path) -> None:
    assert "hub.records.session" not in _imports(path), f"{path} imports the Session"
    assert not _runs_sql(path), f"{path} runs SQL outside its repository module"


def test_the_sql_rule_sees_a_statement_anywhere(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("class R:\n    def apply(self, tx, unit):\n"
                      "        return unit.db.execute('DELETE FROM ledger')\n")
    assert _runs_sql(module)


_SQLITE_ENGINE = {"hub/records/sqlite.py", "hub/store/sqlite.py"}
_ENGINES = {"sqlite3", "psycopg", "psycopg_pool", "hub.records.sqlite", "hub.records.postgresql", "hub.store.sqlite"}


@pytest.mark.parametrize("path", _files("hub"), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_sqlite_engine_modules_import_sqlite3(path: Path) -> None:
    assert "sqlite3" not in _imports(path) or path.relative_to(ROOT).as_posix() in _SQLITE_ENGINE


@pytest.mark.parametrize("module", ["hub/store/base.py", "hub/store/records.py", "hub/records/unit.py"])
def test_the_engine_neutral_store_imports_no_engine(module: str) -> None:
    assert not _imports(ROOT / module) & _ENGINES


_COMPOSITION_ROOT = ROOT / "hub" / "serve.py"
"""Opens the stores and assembles the app from the routers (it loads the zones at start-up): not an API module."""


def _api_modules() -> list[Path]:
    """``hub/api/*.py``, ``hub/*/api.py`` and every other hub module that builds routes (imports FastAPI)."""
    named = set(_files("hub/api")) | set((ROOT / "hub").glob("*/api.py"))
    routed = {p for p in _files("hub") if any(m.split(".")[0] == "fastapi" for m in _imports(p))}
    return sorted((named | routed) - {_COMPOSITION_ROOT})


def _hands_work_to_a_transaction(path: Path) -> bool:
    """Whether the module passes a function to a store's ``read``/``write`` (a lambda given the connection), or
    runs one of them in a thread (``to_thread(store.read, ...)``)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        if (isinstance(node.func, ast.Attribute) and node.func.attr in {"read", "write"}
                and any(isinstance(a, ast.Lambda) for a in node.args)):
            return True
        if any(isinstance(a, ast.Attribute) and a.attr in {"read", "write"} for a in node.args):
            return True
    return False


@pytest.mark.parametrize("path", _api_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_api_modules_call_repositories_never_a_session_or_sql(path: Path) -> None:
    assert "hub.records.session" not in _imports(path), f"{path} imports the Session"
    assert not _runs_sql(path), f"{path} runs SQL instead of calling its repository"
    assert not _hands_work_to_a_transaction(path), f"{path} runs work in a store transaction itself"


def test_the_api_rules_cover_the_api_folders_and_every_router(tmp_path: Path) -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _api_modules()}
    assert {"hub/api/events.py", "hub/alarms/api.py", "hub/finance/api.py", "hub/auth/users.py"} <= names
    module = tmp_path / "m.py"
    module.write_text("def f(store, q):\n    return store.read(lambda db: q(db))\n")
    assert _hands_work_to_a_transaction(module)
    module.write_text("async def f(store, q):\n    return await asyncio.to_thread(store.read, q)\n")
    assert _hands_work_to_a_transaction(module)
    module.write_text("async def f(upload):\n    return await upload.read()\n")
    assert not _hands_work_to_a_transaction(module)
