"""Who may call what: one table from (method, route path template) to the roles that may call it.

:func:`hub.auth.web.protect` applies the table to every route of the app at creation; a route without an entry
is refused to everyone (and fails ``tests/test_auth.py``), so a new endpoint cannot escape it. ``admin`` passes
every check.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES: dict[str, str] = {
    "viewer": "reads everything but personal data",
    "operator": "device commands, alarms",
    "finance": "voids, refunds, reconciliation, pending payments",
    "gis": "the problem-report workflow",
    "technician": "registers, enrolls, suspends and revokes devices (provisioning)",
    "admin": "users, rules, settings, the audit log; passes every check",
}

PERSONAL_DATA_ROLES = frozenset(ROLES) - {"viewer", "technician"}
"""Roles that see personal data (citizen references and names, report contact fields)."""

PERSONAL_FIELDS = frozenset({"citizen", "citizen_ref", "citizen_name", "contact", "contact_name", "contact_phone",
                             "contact_email", "phone", "email"})
"""JSON keys removed from every answer to a user without a personal-data role."""


@dataclass(frozen=True)
class Access:
    """How one route is guarded."""

    roles: frozenset[str] = frozenset()
    public: bool = False
    """Open to anyone (no sign-in)."""
    signed: bool = False
    """Authenticated by the route itself with a request signature (the bank's callback), not by a user."""
    ogc: bool = False
    """A GIS layer: readers only, or public with ``--public-ogc``."""

    def admits(self, roles: frozenset[str]) -> bool:
        """Whether a user with these roles may call the route."""
        return "admin" in roles or bool(self.roles & roles)


PUBLIC = Access(public=True)
SIGNED = Access(signed=True)
READ = Access(roles=frozenset(ROLES))
OGC = Access(roles=frozenset(ROLES), ogc=True)
ADMIN = Access(roles=frozenset({"admin"}))


def role(*names: str) -> Access:
    """Access for users holding any of these roles (or admin)."""
    unknown = set(names) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    return Access(roles=frozenset(names))


POLICY: dict[tuple[str, str], Access] = {
    ("GET", "/healthz"): PUBLIC,
    # the API's description and its interactive pages carry no data; the pages sign in through /api/session
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("POST", "/api/session"): PUBLIC,
    # the dashboard's page, modules and vendored libraries hold no data: every data call goes through the API
    ("GET", "/"): PUBLIC,
    ("GET", "/ui/{path:path}"): PUBLIC,
    ("GET", "/vendor/{path:path}"): PUBLIC,
    ("GET", "/api/dashboard/settings"): READ,
    ("GET", "/api/dashboard/basemap.pmtiles"): READ,
    ("GET", "/api/session"): READ,
    ("DELETE", "/api/session"): READ,
    ("GET", "/api/audit"): ADMIN,
    ("GET", "/api/users"): ADMIN,
    ("POST", "/api/users"): ADMIN,
    ("POST", "/api/users/{name}/disable"): ADMIN,
    ("POST", "/api/users/{name}/reset"): ADMIN,
    ("PUT", "/api/users/{name}/roles"): ADMIN,
    ("GET", "/metrics"): READ,
    ("GET", "/api/devices"): READ,
    ("GET", "/api/devices/{device}"): READ,
    ("GET", "/api/devices/{device}/readings"): READ,
    ("GET", "/api/devices/{device}/readings/aggregate"): READ,
    ("GET", "/api/devices/{device}/readings/buckets"): READ,
    ("GET", "/api/devices/{device}/readings/columns"): READ,
    ("GET", "/api/devices/{device}/quantities"): READ,
    ("GET", "/api/deadletters"): READ,
    ("POST", "/api/devices/{device}/commands"): role("operator"),
    ("GET", "/api/devices/{device}/commands"): READ,
    ("POST", "/api/finance/payments/{tx_id}/confirm"): SIGNED,
    ("POST", "/api/finance/payments/{tx_id}/cancel"): role("finance"),
    ("POST", "/api/finance/payments/{tx_id}/expire"): role("finance"),
    ("GET", "/api/finance/payments"): READ,
    ("GET", "/api/finance/ledger"): READ,
    ("GET", "/api/finance/receipts"): READ,
    ("POST", "/api/finance/receipts/{receipt_no}/reverse"): role("finance"),
    ("GET", "/api/finance/summary"): READ,
    ("POST", "/api/finance/reconciliations"): role("finance"),
    ("GET", "/api/finance/reconciliations"): READ,
    ("GET", "/api/finance/reconciliation.csv"): READ,
    ("GET", "/api/finance/register.csv"): READ,
    ("GET", "/api/finance/register.xlsx"): READ,
    ("GET", "/api/gis/reports"): READ,
    ("GET", "/api/gis/reports.geojson"): READ,
    ("GET", "/api/gis/reports/{report_id}"): READ,
    ("PATCH", "/api/gis/reports/{report_id}"): role("gis"),
    ("GET", "/api/gis/reports/{report_id}/history"): READ,
    ("GET", "/api/gis/zones"): READ,
    ("POST", "/api/provision/devices"): role("technician"),
    ("POST", "/api/provision/devices/import"): role("technician"),
    ("GET", "/api/provision/devices"): READ,
    ("POST", "/api/provision/devices/{device}/code"): role("technician"),
    ("GET", "/api/provision/devices/{device}/config"): role("technician"),
    ("POST", "/api/provision/devices/{device}/suspend"): role("technician", "operator"),
    ("POST", "/api/provision/devices/{device}/resume"): role("technician"),
    ("POST", "/api/provision/devices/{device}/revoke"): role("technician"),
    # a device redeems its single-use enrollment code here: the code is the credential, every refusal is audited
    ("POST", "/api/provision/enroll"): PUBLIC,
    # the deployment's CA certificates (public by nature): a device pins them against the code's fingerprint
    ("GET", "/api/provision/ca"): PUBLIC,
    ("GET", "/api/provision/certificates"): READ,
    ("DELETE", "/api/devices/{device}"): ADMIN,
    ("GET", "/ogc"): OGC,
    ("GET", "/ogc/conformance"): OGC,
    ("GET", "/ogc/collections"): OGC,
    ("GET", "/ogc/collections/{cid}"): OGC,
    ("GET", "/ogc/collections/{cid}/items"): OGC,
    ("GET", "/ogc/collections/{cid}/items/{fid}"): OGC,
    # events, the live stream, alarms, notifications and the AQI (docs/alarms.md)
    ("GET", "/api/events"): READ,
    ("GET", "/api/stream"): READ,
    ("GET", "/api/alarms"): READ,
    ("GET", "/api/alarms/{alarm_id}"): READ,
    ("POST", "/api/alarms/{alarm_id}/ack"): role("operator"),
    ("POST", "/api/alarms/{alarm_id}/clear"): role("operator"),
    ("POST", "/api/alarms/{alarm_id}/shelve"): role("operator"),
    ("POST", "/api/alarms/{alarm_id}/comment"): role("operator"),
    ("GET", "/api/alarm-rules"): READ,
    ("PUT", "/api/alarm-rules/{rule_id}"): ADMIN,
    ("DELETE", "/api/alarm-rules/{rule_id}"): ADMIN,
    ("GET", "/api/notifications"): READ,
    ("GET", "/api/devices/{device}/aqi"): READ,
}
"""Every route of the hub and who may call it."""
