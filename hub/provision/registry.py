"""The device registry, the source of truth of who may publish: pending -> active -> suspended / retired.

A technician registers a device (``pending``) and gets a single-use enrollment code; the device redeems it with a
CSR and becomes ``active``. The broker's per-device access (Mosquitto's dynamic-security roles) is generated from
the registry: the hub sends the plugin its commands on every change and again at each (re)connection, so the
broker's view follows the registry. With ``--registry enforce`` ingest also dead-letters as ``unregistered``
anything from a device that is not active.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hub.audit import Actor, AuditLog
from hub.errors import HubError
from hub.provision import pki
from hub.provision.deployment import CONTROL_TOPIC
from hub.records.session import Session
from hub.store.base import SqlStore

CODE_TTL_S = 24 * 3600.0


class Status(StrEnum):
    """A device's place in the registry."""

    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


_ACTIONS = {Status.SUSPENDED: "device.suspend", Status.RETIRED: "device.retire", Status.ACTIVE: "device.resume",
            Status.PENDING: "device.reset"}
"""The audit action of each status change."""


class RegistryError(HubError, ValueError):
    """A registry change that is refused (id taken, unknown device, wrong state); the message says why."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class EnrollmentRefused(RegistryError):
    """An enrollment code that is unknown, used or expired, or a CSR that cannot be signed."""


@dataclass(frozen=True)
class Entry:
    """One registered device."""

    device: str
    node: str
    site: str
    lat: float | None
    lon: float | None
    status: Status
    created_at: float
    created_by: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"device": self.device, "node": self.node, "site": self.site, "lat": self.lat, "lon": self.lon,
                "status": self.status.value, "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat(),
                "created_by": self.created_by}


@dataclass(frozen=True)
class Enrolled:
    """What a device receives for a redeemed code."""

    device: str
    certificate: bytes
    chain: bytes


def code_digest(code: str) -> str:
    """Codes are kept as digests only (they are bearer secrets until used); a code typed in lower case or with
    spaces is the same code."""
    return hashlib.sha256(code.replace(" ", "").upper().encode()).hexdigest()


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], row[4], Status(row[5]), row[6], row[7])


_SELECT = "SELECT device, node, site, lat, lon, status, created_at, created_by FROM registry"


def _acl(acltype: str, topic_name: str) -> dict[str, object]:
    return {"acltype": acltype, "topic": topic_name, "priority": 0, "allow": True}


def grant(root: str, device: str) -> list[dict[str, object]]:
    """Dynamic-security commands giving ``device`` its own topics (and nothing else)."""
    return [{"command": "createRole", "rolename": f"device-{device}", "acls": [
                _acl("publishClientSend", f"{root}/{device}/up/#"),
                _acl("publishClientReceive", f"{root}/{device}/down/#"),
                _acl("subscribePattern", f"{root}/{device}/down/#")]},
            {"command": "createClient", "username": device, "roles": [{"rolename": f"device-{device}"}]}]


def withdraw(device: str) -> list[dict[str, object]]:
    """Dynamic-security commands removing ``device``: the broker disconnects it, and refuses its publishes after."""
    return [{"command": "deleteClient", "username": device}, {"command": "deleteRole", "rolename": f"device-{device}"}]


class Registry:
    """The registry on the hub's store, the issuing CA, and the broker's access kept in step."""

    def __init__(self, store: SqlStore, audit: AuditLog, root: str, issuer: pki.Issuer | None = None,
                 crl_path: Path | None = None, chain: bytes = b"", enforce: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.audit = audit
        self.root = root
        self.issuer = issuer
        self.crl_path = crl_path
        self.chain = chain
        """The CA certificates a device trusts the broker with (issuing + root)."""
        self.enforce = enforce
        self.clock = clock
        self.publish: Callable[[str, bytes], None] | None = None
        """Sends a message to the broker (the hub's ingest client); None while the hub has no broker."""
        self._active: frozenset[str] | None = None
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------------
    def entry(self, device: str) -> Entry | None:
        """One device, or None."""
        row = self.store.read(lambda db: db.execute(_SELECT + " WHERE device = ?",
                                                    (device,)).fetchone())
        return _entry(row) if row else None

    def entries(self, status: Status | None = None) -> list[Entry]:
        """Every device (of one status), by id."""
        sql, args = _SELECT, ()
        if status is not None:
            sql, args = _SELECT + " WHERE status = ?", (status.value,)  # type: ignore[assignment]
        rows = self.store.read(lambda db: db.execute(sql + " ORDER BY device", args).fetchall())
        return [_entry(r) for r in rows]

    def admits(self, device: str) -> bool:
        """Whether ingest takes messages from ``device``: always unless enforcing, then only when active."""
        if not self.enforce:
            return True
        active = self._active
        if active is None:
            active = self._active = frozenset(e.device for e in self.entries(Status.ACTIVE))
        return device in active

    def certificates(self, expiring_within_s: float | None = None) -> list[dict[str, Any]]:
        """Valid (unrevoked) certificates, soonest expiry first; only those ending within the window if given."""
        sql = ("SELECT c.device, c.serial, c.not_after FROM certificates c JOIN registry r USING (device) "
               "WHERE c.revoked_at IS NULL AND r.status != 'retired'")
        args: tuple[Any, ...] = ()
        if expiring_within_s is not None:
            sql, args = sql + " AND c.not_after <= ?", (self.clock() + expiring_within_s,)
        rows = self.store.read(lambda db: db.execute(sql + " ORDER BY c.not_after", args).fetchall())
        return [{"device": d, "serial": s, "not_after": datetime.fromtimestamp(n, UTC).isoformat(),
                 "expires_in_s": n - self.clock()} for d, s, n in rows]

    def expiry_seconds(self) -> dict[str, float]:
        """Per device, seconds until its latest valid certificate ends (negative once it has)."""
        out: dict[str, float] = {}
        for c in self.certificates():
            out[c["device"]] = max(out.get(c["device"], float("-inf")), c["expires_in_s"])
        return out

    # -- changes -------------------------------------------------------------------------------
    def add(self, actor: Actor, device: str, node: str, site: str, lat: float | None, lon: float | None) -> Entry:
        """Register a device as pending; refuse an id already taken (whatever its status, retired included)."""
        now = self.clock()

        def work(db: Session) -> Entry:
            taken = db.execute("SELECT status FROM registry WHERE device = ?", (device,)).fetchone()
            if taken:
                raise RegistryError(f"device id {device!r} is already taken ({taken[0]})")
            db.execute("INSERT INTO registry (device, node, site, lat, lon, status, created_at, created_by, "
                       "changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (device, node, site, lat, lon, Status.PENDING.value, now, actor.user, now))
            e = Entry(device, node, site, lat, lon, Status.PENDING, now, actor.user)
            self.audit.record(actor, "device.register", f"device/{device}", None, e.as_dict(), db=db)
            return e

        return self.store.write(work)

    def issue_code(self, actor: Actor, device: str, ttl_s: float = CODE_TTL_S) -> tuple[str, float]:
        """A new single-use enrollment code for a pending device (or an active one: a rotation); and its expiry."""
        # base32: letters and 2-7 only, easy to type on a ladder, and never a leading "-" that a shell's
        # `--code CODE` would take for an option (120 random bits)
        code = base64.b32encode(secrets.token_bytes(15)).decode()
        expires = self.clock() + ttl_s

        def work(db: Session) -> None:
            row = db.execute("SELECT status FROM registry WHERE device = ?", (device,)).fetchone()
            if row is None:
                raise RegistryError(f"no device {device!r} in the registry", 404)
            if row[0] not in (Status.PENDING, Status.ACTIVE):
                raise RegistryError(f"device {device!r} is {row[0]}: no enrollment code for it")
            db.execute("INSERT INTO enrollment_codes (digest, device, expires_at, created_by) VALUES (?, ?, ?, ?)",
                       (code_digest(code), device, expires, actor.user))
            self.audit.record(actor, "device.enrollment_code", f"device/{device}", None,
                              {"expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
                               "rotation": row[0] == Status.ACTIVE}, db=db)

        self.store.write(work)
        return code, expires

    def enroll(self, actor: Actor, code: str, csr: bytes) -> Enrolled:
        """Redeem a code with a CSR: sign it (CN = the device id), make the device active, grant its topics.

        Every refusal (unknown, used or expired code; bad CSR) is audited with the caller's address.
        """
        if self.issuer is None:
            raise RegistryError("this hub has no issuing CA (serve it with --deployment DIR)", 409)
        issuer = self.issuer
        now = self.clock()
        digest = code_digest(code)

        def work(db: Session) -> Enrolled | str:
            row = db.execute("SELECT device, expires_at, used_at FROM enrollment_codes WHERE digest = ?",
                             (digest,)).fetchone()
            if row is None:
                return "unknown enrollment code"
            device, expires_at, used_at = row
            status = db.execute("SELECT status FROM registry WHERE device = ?", (device,)).fetchone()
            if used_at is not None:
                return f"enrollment code of {device} already used"
            if expires_at < now:
                return f"enrollment code of {device} expired"
            if status is None or status[0] not in (Status.PENDING, Status.ACTIVE):
                return f"device {device} is {status[0] if status else 'not registered'}"
            try:
                cert = issuer.sign_csr(device, csr)
            except pki.CsrRefused as err:
                return f"{device}: {err}"
            db.execute("UPDATE enrollment_codes SET used_at = ? WHERE digest = ?", (now, digest))
            db.execute("UPDATE registry SET status = 'active', changed_at = ? WHERE device = ?", (now, device))
            db.execute("INSERT INTO certificates (serial, device, not_after, issued_at) VALUES (?, ?, ?, ?)",
                       (format(cert.serial_number, "x"), device, cert.not_valid_after_utc.timestamp(), now))
            self.audit.record(actor, "device.enroll", f"device/{device}", {"status": status[0]},
                              {"status": "active", "serial": format(cert.serial_number, "x"),
                               "not_after": cert.not_valid_after_utc.isoformat()}, db=db)
            return Enrolled(device, pki.cert_pem(cert), self.chain or pki.cert_pem(issuer.cert))

        outcome = self.store.write(work)
        if isinstance(outcome, str):
            self.audit.record(actor, "device.enroll_refused", "device/enrollment", None,
                              {"reason": outcome, "code_digest": digest[:12]})
            raise EnrollmentRefused(f"enrollment refused: {outcome}", 403)
        self._changed()
        self._send(grant(self.root, outcome.device))
        return outcome

    def set_status(self, actor: Actor, device: str, to: Status, revoke: bool = False) -> Entry:
        """Suspend or retire a device (``revoke`` also puts its certificates on the CRL and sends it back to
        pending): its broker access is withdrawn at once; the CRL applies from the broker's next restart."""
        now = self.clock()
        allowed = {Status.SUSPENDED: {Status.ACTIVE, Status.PENDING},
                   Status.PENDING: {Status.ACTIVE, Status.SUSPENDED},
                   Status.ACTIVE: {Status.SUSPENDED}, Status.RETIRED: set(Status) - {Status.RETIRED}}

        def work(db: Session) -> Entry:
            row = db.execute(_SELECT + " WHERE device = ?", (device,)).fetchone()
            if row is None:
                raise RegistryError(f"no device {device!r} in the registry", 404)
            before = _entry(row)
            if before.status not in allowed[to]:
                raise RegistryError(f"device {device!r} is {before.status}: it cannot become {to}")
            db.execute("UPDATE registry SET status = ?, changed_at = ? WHERE device = ?", (to.value, now, device))
            revoked: list[str] = []
            if revoke or to is Status.RETIRED:
                revoked = [s for (s,) in db.execute("SELECT serial FROM certificates WHERE device = ? AND "
                                                    "revoked_at IS NULL", (device,))]
                db.execute("UPDATE certificates SET revoked_at = ? WHERE device = ? AND revoked_at IS NULL",
                           (now, device))
                db.execute("UPDATE enrollment_codes SET used_at = coalesce(used_at, ?) WHERE device = ?",
                           (now, device))
            action = "device.revoke" if revoke else _ACTIONS[to]
            self.audit.record(actor, action, f"device/{device}", {"status": before.status.value},
                              {"status": to.value, "revoked": revoked}, db=db)
            if revoked:
                self._write_crl(db)
            return Entry(before.device, before.node, before.site, before.lat, before.lon, to, before.created_at,
                         before.created_by)

        entry = self.store.write(work)
        self._changed()
        self._send(grant(self.root, device) if to is Status.ACTIVE else withdraw(device))
        return entry

    def resume(self, actor: Actor, device: str) -> Entry:
        """A suspended device becomes active again with its certificate (not after a revocation)."""
        return self.set_status(actor, device, Status.ACTIVE)

    def import_rows(self, actor: Actor, rows: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
        """Register many devices; one result per row (created, skipped when it exists, refused with why)."""
        results = []
        for i, row in enumerate(rows, start=1):
            device = str(row.get("device") or "")
            try:
                entry = self.entry(device) if device else None
                if entry is not None:
                    results.append({"row": str(i), "device": device, "result": "skipped",
                                    "reason": f"already registered ({entry.status})"})
                    continue
                self.add(actor, device, row["node"], row["site"], row.get("lat"), row.get("lon"))
                results.append({"row": str(i), "device": device, "result": "created", "reason": ""})
            except (RegistryError, KeyError) as err:
                results.append({"row": str(i), "device": device, "result": "refused", "reason": str(err)})
        return results

    # -- the broker ----------------------------------------------------------------------------
    def sync_broker(self) -> None:
        """Send the broker the whole registry: grant every active device, withdraw every other one.

        Called at each connection of the hub; creating what exists already, or deleting what does not, is
        answered with an error the plugin logs and that changes nothing.
        """
        commands: list[dict[str, object]] = []
        certified = {d for (d,) in self.store.read(lambda db: db.execute(
            "SELECT DISTINCT device FROM certificates").fetchall())}
        for e in self.entries():
            if e.status is Status.ACTIVE:
                commands += grant(self.root, e.device)
            elif e.status is not Status.PENDING or e.device in certified:  # a never-enrolled one has no role
                commands += withdraw(e.device)
        for start in range(0, len(commands), 200):
            self._send(commands[start:start + 200])

    def _send(self, commands: list[dict[str, object]]) -> None:
        if self.publish is not None and commands:
            self.publish(CONTROL_TOPIC, json.dumps({"commands": commands}).encode())

    def _changed(self) -> None:
        with self._lock:
            self._active = None

    def refresh_crl(self) -> None:
        """Re-sign the CRL from the registry (at the hub's start): a full year of validity again."""
        self.store.read(self._write_crl)

    def crl_expiry_seconds(self) -> float | None:
        """Seconds until the CRL on disk passes its nextUpdate (None without a deployment or a readable CRL)."""
        if self.crl_path is None:
            return None
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError):
            return None
        ends = crl.next_update_utc
        return None if ends is None else ends.timestamp() - self.clock()

    def _write_crl(self, db: Session) -> None:
        if self.issuer is None or self.crl_path is None:
            return
        revoked = [(int(s, 16), datetime.fromtimestamp(at, UTC)) for s, at in
                   db.execute("SELECT serial, revoked_at FROM certificates WHERE revoked_at IS NOT NULL")]
        pki.write_private(self.crl_path, pki.crl_pem(self.issuer.crl(revoked)), 0o644)


class ExpiryCollector(Collector):
    """``nakhon_device_cert_expiry_seconds{device}``, read from the registry at scrape time (alarm rules watch it)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("nakhon_device_cert_expiry_seconds",
                                   "seconds until the device's latest valid certificate ends", labels=["device"])
        for device, left in sorted(self._registry.expiry_seconds().items()):
            family.add_metric([device], left)
        yield family
        crl = self._registry.crl_expiry_seconds()
        if crl is not None:
            yield GaugeMetricFamily("nakhon_crl_expiry_seconds",
                                    "seconds until the CRL file passes its nextUpdate (then the broker refuses "
                                    "every device once it reloads it)", value=crl)
