"""HMAC-SHA256 request signatures with a timestamp, as payment providers sign webhooks.

The signed string is ``<timestamp>.<raw body>`` (the timestamp in Unix seconds, as sent in
``X-Nakhon-Timestamp``); the signature is sent as ``X-Nakhon-Signature: sha256=<hex>``. A receiver recomputes
it with the shared secret, compares in constant time, and refuses timestamps more than 5 minutes away.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Nakhon-Timestamp"
SIGNATURE_HEADER = "X-Nakhon-Signature"
WINDOW_S = 300


class SignatureError(ValueError):
    """A request whose signature is missing, wrong or outside the time window."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Nakhon-Signature`` value of a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Both headers for a body sent now."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body)}


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float | None = None,
           window_s: int = WINDOW_S) -> None:
    """Raise :class:`SignatureError` unless the signature is right and the timestamp within the window."""
    if not timestamp or not signature:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    if not (timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError(f"{TIMESTAMP_HEADER} must be Unix seconds")
    ts = int(timestamp)
    if abs((time.time() if now is None else now) - ts) > window_s:
        raise SignatureError(f"{TIMESTAMP_HEADER} is more than {window_s} s away from the hub's clock")
    if not hmac.compare_digest(signature.encode(), sign(secret, ts, body).encode()):
        raise SignatureError("wrong signature")
