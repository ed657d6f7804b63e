"""The records store on PostgreSQL 15 + PostGIS, over psycopg 3 and its connection pool.

Everything engine-specific for PostgreSQL is here and in ``migrations/postgresql/``: the :class:`PostgresSession`
the portable SQL of the domain modules runs on (``?`` placeholders rewritten to ``%s``, ``%`` to ``%%``, the
reserved word ``user`` quoted, once per statement and cached), write transactions retried whole on a
serialization failure or a deadlock, reads on a pool of read-only autocommit connections, the migrations taken
under an advisory lock (several hub processes may start at once), and the records URL, whose password comes
from a file and never appears in a log or an error.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import AdaptersMap, Buffer, Dumper, Loader
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from hub.errors import HubConfigError, RecordRejected, StoreError
from hub.records.migrate import Migration, describe, upgrade
from hub.records.session import Session
from hub.store.records import RecordsStore

if TYPE_CHECKING:
    from hub.gis.reports import Zones

T = TypeVar("T")
log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x4E414B484F4E
"""The ``pg_advisory_xact_lock`` key every hub process takes to migrate ("NAKHON" in ASCII)."""
URL_MAX = 2048
SCHEMES = ("postgresql", "postgres")

_RETRIED = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
"""Errors that say "run the same work again": another transaction won a race."""
_REFUSED = (psycopg.IntegrityError, psycopg.DataError)
"""Errors about the records written rather than the database: the write is refused, not retried."""


def redact(url: str) -> str:
    """The URL as it may be logged: a password in it (user:password@ or ?password=) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        query = "&".join(f"{k}=***" if k == "password" else f"{k}={v}"
                         for k, v in parse_qsl(parts.query, keep_blank_values=True))
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "postgresql://(unreadable URL)"


def read_password(path: Path) -> str:
    """The password in a secret file (its first line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise HubConfigError(f"cannot read the records password file {path}: {err}") from err
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise HubConfigError(f"the records password file {path} is empty")
    return password


def connect_params(url: str, password_file: Path | None = None) -> dict[str, Any]:
    """libpq connection parameters from a ``postgresql://user@host:port/db?...`` URL.

    The password comes from ``?password_file=PATH`` (a file holding only the password, like the hub's other
    secrets) or from ``password_file``; a password written in the URL is refused. Other query parameters are
    libpq's own (``sslmode``, ``passfile`` in pgpass format, ``application_name``, ``connect_timeout``...)."""
    if len(url) > URL_MAX:
        raise HubConfigError(f"the records URL is longer than {URL_MAX} characters")
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as err:
        raise HubConfigError(f"{shown}: not a PostgreSQL URL: {err}") from err
    if parts.scheme not in SCHEMES:
        raise HubConfigError(f"{shown}: a PostgreSQL records URL starts with postgresql://")
    if parts.password is not None:
        raise HubConfigError(f"{shown}: put the password in a file (?password_file=PATH, mode 600), "
                             "not in the URL")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise HubConfigError(f"{shown}: name one database (postgresql://user@host:port/DATABASE)")
    params: dict[str, Any] = {"dbname": dbname}
    if parts.hostname:
        params["host"] = unquote(parts.hostname)
    if port is not None:
        params["port"] = port
    if parts.username:
        params["user"] = unquote(parts.username)
    for key, value in query:
        if key == "password":
            raise HubConfigError(f"{shown}: put the password in a file (?password_file=PATH), not in the URL")
        if key == "password_file":
            password_file = Path(value)
        else:
            params[key] = value
    if password_file is not None:
        params["password"] = read_password(password_file)
    return params


_LITERALS = r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$\w*\$).*?\1|--[^\n]*|/\*.*?\*/"""
_TOKENS = re.compile(_LITERALS + r"|\?|%|\buser\b", re.S | re.I)
_STATEMENTS = re.compile(_LITERALS + r"|;", re.S)


def _rewrite(match: re.Match[str]) -> str:
    token = match.group(0)
    if token == "?":  # noqa: S105 (a placeholder, not a password)
        return "%s"
    if token.lower() == "user":
        return '"user"'
    return token.replace("%", "%%")  # a literal, a quoted name, a comment or a lone %


@lru_cache(maxsize=4096)
def to_postgres(sql: str) -> str:
    """Portable SQL (qmark placeholders) as psycopg runs it: ``?`` -> ``%s`` and ``%`` -> ``%%`` outside string
    literals, and the column name ``user`` (reserved in PostgreSQL) quoted."""
    return _TOKENS.sub(_rewrite, sql)


class _BoolAsUnknown(Dumper):
    """Python booleans go as untyped ``1``/``0``: an INTEGER column takes them as 0/1 (how the schema stores
    booleans, as SQLite does) and a boolean context (``CASE WHEN ?``) as true/false."""

    oid = 0

    def dump(self, obj: Any) -> Buffer:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """NUMERIC results (``sum`` of a BIGINT column, ``avg``) as int when whole, float otherwise: what SQLite
    answers, instead of Decimal."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode("ascii")
        return float(text) if any(c in text for c in ".eEN") else int(text)


ADAPTERS = AdaptersMap(psycopg.adapters)
ADAPTERS.register_dumper(bool, _BoolAsUnknown)
ADAPTERS.register_loader("numeric", _NumericAsNumber)


class PostgresSession:
    """The :class:`hub.records.session.Session` on one pooled connection inside :meth:`PostgresRecords.write`
    or :meth:`PostgresRecords.read`."""

    engine: Literal["postgresql"] = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run one portable statement."""
        return self._conn.execute(to_postgres(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one portable statement per row (pipelined)."""
        with self._conn.cursor() as cur:
            cur.executemany(to_postgres(sql), [tuple(r) for r in rows])

    def script(self, sql: str) -> None:
        """Run PostgreSQL's own SQL as it is (several statements, no parameters, no rewriting)."""
        self._conn.execute(sql.encode("utf-8"))


class PostgresRecords:
    """The records database on PostgreSQL: ``write``/``read`` like :class:`hub.store.sqlite.SQLiteStore`'s,
    over two psycopg pools (read-write transactions; read-only autocommit reads)."""

    engine: Literal["postgresql"] = "postgresql"

    def __init__(self, url: str, *, password_file: Path | None = None, max_connections: int = 10,
                 write_attempts: int = 8, migrate: bool = True, connect_timeout_s: float = 10.0) -> None:
        self.url = url
        self.shown = redact(url)
        self._password_file = password_file
        self._max = max_connections
        self._attempts = write_attempts
        self._migrate = migrate
        self._timeout = connect_timeout_s
        self._writer: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._reader: ConnectionPool[psycopg.Connection[Any]] | None = None
        self.applied: list[Migration] = []
        """The migrations the last :meth:`open` applied."""

    def _pool(self, params: dict[str, Any], *, read_only: bool) -> ConnectionPool[psycopg.Connection[Any]]:
        kwargs: dict[str, Any] = {"context": ADAPTERS, "autocommit": read_only}
        if "password" in params:
            kwargs["password"] = params["password"]
        if read_only:
            kwargs["options"] = (params.get("options", "") + " -c default_transaction_read_only=on").strip()
        conninfo = make_conninfo(**{k: v for k, v in params.items() if k not in ("password", "options")})
        if "options" in params and not read_only:
            kwargs["options"] = params["options"]
        return ConnectionPool(conninfo, kwargs=kwargs, min_size=1, max_size=self._max, open=False,
                              timeout=self._timeout, check=ConnectionPool.check_connection,
                              name=f"nakhon-records-{'read' if read_only else 'write'}")

    def open(self) -> None:
        """Connect (failing with a readable reason), open the pools and apply pending migrations."""
        params = connect_params(self.url, self._password_file)
        try:
            psycopg.connect(connect_timeout=max(1, int(self._timeout)), **params).close()
        except psycopg.Error as err:
            raise StoreError(f"cannot reach the records database {self.shown}: {err}") from err
        self._writer = self._pool(params, read_only=False)
        self._reader = self._pool(params, read_only=True)
        try:
            self._writer.open(wait=True, timeout=self._timeout)
            self._reader.open(wait=True, timeout=self._timeout)
        except PoolTimeout as err:
            self.close()
            raise StoreError(f"cannot open connections to the records database {self.shown}: {err}") from err
        log.info("records store: PostgreSQL at %s", self.shown)
        if self._migrate:
            self.applied = self.migrate()
            for line in describe(self.applied):
                log.info("records store: %s", line)

    def close(self) -> None:
        """Close both pools; safe to call twice and on a half-opened store."""
        for pool in (self._writer, self._reader):
            if pool is not None:
                pool.close()
        self._writer = self._reader = None

    def write(self, work: Callable[[PostgresSession], T]) -> T:
        """Run ``work`` in one transaction (committed if it returns, rolled back if it raises); run again whole,
        after a short jittered pause, when PostgreSQL aborted it for a serialization failure or a deadlock, and
        once at once after a unique violation (a race with another process that committed the same key)."""
        pool = self._open(self._writer)
        attempt = 0
        while True:
            attempt += 1
            try:
                with pool.connection() as conn, conn.transaction():
                    return work(PostgresSession(conn))
            except _RETRIED as err:
                if attempt >= self._attempts:
                    raise StoreError(f"write failed after {attempt} attempts: {err}") from err
                time.sleep(random.uniform(0.5, 1.5) * min(0.2, 0.002 * 2 ** attempt))
            except pg_errors.UniqueViolation as err:
                # another hub process committed the same key (a transaction id) between this one's check and its
                # insert: run once more, and the check sees that row; a second violation is a refused record
                if attempt > 1:
                    raise RecordRejected(f"the store refused a record: {type(err).__name__}: {err}") from err
            except _REFUSED as err:
                raise RecordRejected(f"the store refused a record: {type(err).__name__}: {err}") from err
            except (psycopg.Error, PoolTimeout) as err:
                raise StoreError(f"write failed: {err}") from err

    def read(self, work: Callable[[PostgresSession], T]) -> T:
        """Run ``work`` on a pooled read-only connection (each statement its own snapshot, as on SQLite)."""
        try:
            with self._open(self._reader).connection() as conn:
                return work(PostgresSession(conn))
        except (psycopg.Error, PoolTimeout) as err:
            raise StoreError(f"read failed: {err}") from err

    def _open(self, pool: ConnectionPool[psycopg.Connection[Any]] | None) -> ConnectionPool[psycopg.Connection[Any]]:
        if pool is None:
            raise StoreError("the records store is not open")
        return pool

    def migrate(self) -> list[Migration]:
        """Apply the pending migrations in order, in one transaction under the advisory lock: a second hub
        process waits, then finds nothing to do. Returns those applied."""
        return self.write(lambda session: upgrade(session, DIALECT))


def split_script(script: str) -> list[str]:
    """A migration's statements, split at the ``;`` outside literals, quoted names, dollar-quoted function bodies
    and comments; statements that are only comments are left out."""
    statements, start = [], 0
    for match in _STATEMENTS.finditer(script):
        if match.group(0) == ";":
            statements.append(script[start:match.start()])
            start = match.end()
    statements.append(script[start:])
    return [s.strip() for s in statements if _STATEMENTS.sub("", s).strip()]


def _json_keys(keys: Sequence[str]) -> str:
    for key in keys:
        if not key.replace("_", "").isalnum():
            raise ValueError(f"not a plain JSON key: {key!r}")
    return "ARRAY[" + ", ".join(f"'{k}'" for k in keys) + "]::text[]"


class PostgresDialect:
    """PostgreSQL's :class:`hub.records.dialect.Dialect`: point-in-polygon by PostGIS in the database, jsonb."""

    engine: Literal["postgresql"] = "postgresql"
    insertion_order = "rowid"
    """An identity column of that name, which the migrations give the tables SQLite orders by its ``rowid``."""

    def split_script(self, script: str) -> list[str]:
        """See :func:`split_script`."""
        return split_script(script)

    def lock_migrations(self, session: Session) -> None:
        """``pg_advisory_xact_lock``: a second hub process migrating at the same time waits for this one's commit,
        then finds nothing pending."""
        session.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    def load_zones(self, session: Session, zones: Zones) -> None:
        """Replace the ``zones`` table's rows with these zones (PostGIS keeps their geometry column)."""
        session.execute("DELETE FROM zones")
        session.executemany("INSERT INTO zones (zone, position, properties, geometry) VALUES (?, ?, ?, ?)",
                            [(z.zone, i, json.dumps(z.properties, ensure_ascii=False), json.dumps(z.geometry))
                             for i, z in enumerate(zones.zones)])

    def zone_at(self, session: Session, zones: Zones, lon: float, lat: float) -> str | None:
        """The zone whose polygon covers the point (boundary included, as shapely's ``covers``; the first listed
        where zones overlap), found through the GiST index."""
        row = session.execute("SELECT zone FROM zones WHERE ST_Covers(geom, ST_SetSRID(ST_MakePoint(?, ?), 4326)) "
                              "ORDER BY position LIMIT 1", (lon, lat)).fetchone()
        return None if row is None else str(row[0])

    def json_keys_present(self, column: str, keys: Sequence[str]) -> str:
        """``jsonb_exists_any`` (the ``?|`` operator, whose ``?`` would read as a placeholder)."""
        return f"jsonb_exists_any(CAST({column} AS jsonb), {_json_keys(keys)})"

    def json_without_keys(self, column: str, keys: Sequence[str]) -> str:
        """The jsonb ``-`` of the keys, as text again."""
        return f"CAST(CAST({column} AS jsonb) - {_json_keys(keys)} AS text)"


DIALECT: Final = PostgresDialect()


class PostgresStore(RecordsStore):
    """The hub's store (:class:`hub.store.base.SqlStore`) with its records on PostgreSQL.

    The store's domain SQL is the engine-neutral :class:`hub.store.records.RecordsStore`'s; this class supplies
    its transactions from :class:`PostgresRecords`. Readings go to the time-series store."""

    def __init__(self, url: str, deadletter_keep_bytes: int = 4096,
                 schemas: Sequence[Callable[[Session], None]] = (), *, password_file: Path | None = None,
                 max_connections: int = 10) -> None:
        super().__init__(deadletter_keep_bytes, schemas)
        self.records = PostgresRecords(url, password_file=password_file, max_connections=max_connections,
                                       migrate=False)

    def open(self) -> None:
        """Connect, apply the pending migrations, then the ``schemas`` hooks."""
        self.records.open()
        try:
            self.applied = self.records.migrate()
            for hook in self._schemas:
                self.write(hook)
        except StoreError:
            self.close()
            raise

    def close(self) -> None:
        """Close the pools; safe to call twice."""
        self.records.close()

    def write(self, work: Callable[[Session], T]) -> T:
        """See :meth:`PostgresRecords.write`."""
        return self.records.write(work)

    def read(self, work: Callable[[Session], T]) -> T:
        """See :meth:`PostgresRecords.read`."""
        return self.records.read(work)


def records_store(url: str, *, deadletter_keep_bytes: int = 4096, password_file: Path | None = None) -> PostgresStore:
    """The records store a ``postgresql://`` URL names (:mod:`hub.backends` calls this); not opened yet."""
    return PostgresStore(url, deadletter_keep_bytes, password_file=password_file)
