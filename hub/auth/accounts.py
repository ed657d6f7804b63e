"""Users with roles, their sign-in sessions and personal API tokens, on the hub's SQLite store.

Nothing secret is kept in clear: passwords as argon2id hashes, sessions and tokens as SHA-256 digests of the
random values the user holds. Disabling a user or resetting their password ends their sessions; a disabled
user's tokens stop working too.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from hub.auth import credentials
from hub.auth.policy import ROLES
from hub.errors import HubError
from hub.records.session import Session
from hub.store.base import SqlStore

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
SESSION_TTL_S = 8 * 3600.0


class AccountError(HubError, ValueError):
    """A user or token operation that cannot be done (unknown name, bad role, name taken...)."""


@dataclass(frozen=True)
class User:
    """A user as listed (never with the password hash)."""

    name: str
    roles: frozenset[str]
    disabled: bool
    created_at: float


@dataclass(frozen=True)
class ApiToken:
    """A personal API token as listed (never with its value)."""

    id: int
    user: str
    label: str
    created_at: float
    revoked: bool


def _roles(text: str) -> frozenset[str]:
    return frozenset(r for r in text.split(",") if r)


def check_name(name: str) -> str:
    """A user name: lower-case letter first, then letters, digits, ``.``, ``_`` or ``-``, 2 to 32 characters."""
    if not NAME_PATTERN.match(name):
        raise AccountError(f"user name {name[:40]!r} must match {NAME_PATTERN.pattern}")
    return name


def check_roles(roles: list[str] | frozenset[str]) -> frozenset[str]:
    """Known roles only, at least one."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise AccountError(f"roles must be among {', '.join(ROLES)} (got {', '.join(unknown) or 'none'})")
    return frozenset(roles)


class Accounts:
    """Users, sessions and tokens: the domain methods the CLI and the API use."""

    def __init__(self, store: SqlStore, clock: Any = time.time) -> None:
        self._store = store
        self._clock = clock

    # -- users -----------------------------------------------------------------------------------
    def add_user(self, name: str, roles: list[str], password: str) -> User:
        """Create a user; the password is hashed here and never kept."""
        check_name(name)
        chosen = check_roles(roles)
        credentials.check_password_rules(password)
        hashed, now = credentials.hash_password(password), self._clock()

        def work(db: Session) -> None:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"user {name!r} exists already (use reset or disable)")
            db.execute("INSERT INTO users (name, password_hash, roles, created_at, changed_at) VALUES (?, ?, ?, ?, ?)",
                       (name, hashed, ",".join(sorted(chosen)), now, now))

        self._store.write(work)
        return User(name, chosen, False, now)

    def users(self) -> list[User]:
        """Every user, by name."""
        rows = self._store.read(lambda db: db.execute(
            "SELECT name, roles, disabled, created_at FROM users ORDER BY name").fetchall())
        return [User(n, _roles(r), bool(d), c) for n, r, d, c in rows]

    def user(self, name: str) -> User | None:
        """One user, or None."""
        return next((u for u in self.users() if u.name == name), None)

    def _change(self, name: str, sql: str, args: tuple[Any, ...]) -> None:
        def work(db: Session) -> None:
            if not db.execute(sql, (*args, self._clock(), name)).rowcount:
                raise AccountError(f"no user {name!r}")
            db.execute("DELETE FROM sessions WHERE user = ?", (name,))

        self._store.write(work)

    def disable(self, name: str) -> None:
        """Disable a user: their sessions end and their tokens stop working."""
        self._change(name, "UPDATE users SET disabled = 1, changed_at = ? WHERE name = ?", ())

    def reset(self, name: str, password: str) -> None:
        """Set a new password (and enable the user again); their sessions end."""
        credentials.check_password_rules(password)
        self._change(name, "UPDATE users SET password_hash = ?, disabled = 0, changed_at = ? WHERE name = ?",
                     (credentials.hash_password(password),))

    def set_roles(self, name: str, roles: list[str]) -> User:
        """Replace a user's roles; their sessions end so the new roles apply at the next sign-in."""
        chosen = check_roles(roles)
        self._change(name, "UPDATE users SET roles = ?, changed_at = ? WHERE name = ?", (",".join(sorted(chosen)),))
        user = self.user(name)
        if user is None:
            raise AccountError(f"no user {name!r}")
        return user

    def verify(self, name: str, password: str) -> User | None:
        """The user if the name and password match an enabled account (slow on purpose: argon2)."""
        row = self._store.read(lambda db: db.execute(
            "SELECT password_hash, roles, disabled, created_at FROM users WHERE name = ?", (name,)).fetchone())
        if row is None:
            credentials.verify_password(credentials.DUMMY_HASH, password)
            return None
        stored, roles, disabled, created = row
        if not credentials.verify_password(stored, password) or disabled:
            return None
        return User(name, _roles(roles), False, created)

    # -- sessions --------------------------------------------------------------------------------
    def open_session(self, user: str, address: str) -> str:
        """Start a session; returns the cookie value (kept only as its digest)."""
        session, now = credentials.new_session(), self._clock()

        def work(db: Session) -> None:
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            db.execute("INSERT INTO sessions (digest, user, address, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                       (credentials.digest(session), user, address[:64], now, now + SESSION_TTL_S))

        self._store.write(work)
        return session

    def session_user(self, session: str) -> User | None:
        """The enabled user of an unexpired session, or None."""
        return self._holder("SELECT u.name, u.roles, u.created_at FROM sessions s JOIN users u ON u.name = s.user "
                            "WHERE s.digest = ? AND s.expires_at > ? AND u.disabled = 0",
                            (credentials.digest(session), self._clock()))

    def close_session(self, session: str) -> None:
        """End a session (signing out)."""
        self._store.write(lambda db: db.execute("DELETE FROM sessions WHERE digest = ?",
                                                (credentials.digest(session),)))

    # -- tokens ----------------------------------------------------------------------------------
    def add_token(self, user: str, label: str) -> tuple[ApiToken, str]:
        """Create a personal API token; returns it and its value, which is shown once and kept as a digest."""
        value, now = credentials.new_token(), self._clock()
        label = label[:100]

        def work(db: Session) -> int:
            if not db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
                raise AccountError(f"no user {user!r}")
            cur = db.execute("INSERT INTO api_tokens (digest, user, label, created_at) VALUES (?, ?, ?, ?) "
                             "RETURNING id",
                             (credentials.digest(value), user, label, now))
            return int(cur.fetchone()[0])

        return ApiToken(self._store.write(work), user, label, now, False), value

    def tokens(self, user: str | None = None) -> list[ApiToken]:
        """Tokens (revoked ones too), by id."""
        sql = "SELECT id, user, label, created_at, revoked_at FROM api_tokens"
        args: tuple[Any, ...] = ()
        if user is not None:
            sql, args = sql + " WHERE user = ?", (user,)
        rows = self._store.read(lambda db: db.execute(sql + " ORDER BY id", args).fetchall())
        return [ApiToken(i, u, label, c, r is not None) for i, u, label, c, r in rows]

    def revoke_token(self, token_id: int) -> ApiToken:
        """Revoke a token for good."""
        def work(db: Session) -> None:
            if not db.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                              (self._clock(), token_id)).rowcount:
                raise AccountError(f"no active token {token_id}")

        self._store.write(work)
        return next(t for t in self.tokens() if t.id == token_id)

    def token_user(self, value: str) -> User | None:
        """The enabled user of an unrevoked token, or None."""
        return self._holder("SELECT u.name, u.roles, u.created_at FROM api_tokens t JOIN users u ON u.name = t.user "
                            "WHERE t.digest = ? AND t.revoked_at IS NULL AND u.disabled = 0",
                            (credentials.digest(value),))

    def _holder(self, sql: str, args: tuple[Any, ...]) -> User | None:
        row = self._store.read(lambda db: db.execute(sql, args).fetchone())
        return User(row[0], _roles(row[1]), False, row[2]) if row else None
