"""Passwords (argon2id through argon2-cffi), session and API-token secrets, and how they are kept at rest."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
MIN_PASSWORD = 12
MAX_PASSWORD = 256
TOKEN_PREFIX = "nkt_"  # noqa: S105 (a marker that makes leaked tokens easy to scan for)
SESSION_BYTES = 32


def new_password() -> str:
    """A generated password, printed once to the person it is for."""
    return secrets.token_urlsafe(15)


def check_password_rules(password: str) -> None:
    """Refuse a password that is too short or too long (ValueError with the reason, never the password)."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def hash_password(password: str) -> str:
    """The argon2id hash kept instead of the password."""
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether the password matches the stored argon2 hash."""
    try:
        return _HASHER.verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False


DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
"""Verified against for unknown names, so a sign-in takes as long whether the name exists or not."""


def new_token() -> str:
    """A personal API token, shown once: ``nkt_`` and 43 random URL-safe characters."""
    return TOKEN_PREFIX + secrets.token_urlsafe(SESSION_BYTES)


def new_session() -> str:
    """A session cookie value."""
    return secrets.token_urlsafe(SESSION_BYTES)


def digest(secret: str) -> str:
    """How a token or session is kept at rest: its SHA-256 (they are random, so no slow hash is needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_for(session: str) -> str:
    """The CSRF token of a session, derived from it so nothing more is stored."""
    return hmac.new(session.encode(), b"nakhon-csrf", hashlib.sha256).hexdigest()
