"""``nakhon hub user ...``, ``nakhon hub token ...`` and ``nakhon hub bank-sign``, on the hub's data directory.

A generated password or token is printed once on stdout and never kept in clear nor logged; ``--password-stdin``
reads the password from standard input instead. Every change is written to the audit log as user ``cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from hub.audit import CLI, AuditLog
from hub.auth import credentials, signature
from hub.auth.accounts import AccountError, Accounts
from hub.auth.policy import ROLES
from hub.errors import StoreError
from hub.store.sqlite import SQLiteStore

ACTIONS = ("user", "token", "bank-sign")


def add_parsers(hub: argparse._SubParsersAction, default_data: str) -> None:  # type: ignore[type-arg]
    """Add the account commands under ``nakhon hub``."""
    def data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, default=Path(default_data),
                       help="the hub's data directory; env NAKHON_HUB_DATA")

    user = hub.add_parser("user", help="operators' accounts").add_subparsers(dest="verb", required=True)
    add = user.add_parser("add", help="create a user; prints a generated password once")
    add.add_argument("name")
    add.add_argument("--role", action="append", required=True, choices=list(ROLES),
                     help="a role (repeat for several)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead")
    for verb, text in (("list", "list users and their roles"), ("disable", "disable a user, ending their sessions"),
                       ("reset", "set a new password (printed once, or --password-stdin), enabling the user")):
        p = user.add_parser(verb, help=text)
        if verb != "list":
            p.add_argument("name")
        if verb == "reset":
            p.add_argument("--password-stdin", action="store_true")
        data(p)
    data(add)

    token = hub.add_parser("token", help="personal API tokens").add_subparsers(dest="verb", required=True)
    tadd = token.add_parser("add", help="create a token for a user; prints it once")
    tadd.add_argument("name", help="the user the token acts as")
    tadd.add_argument("--label", default="api", help="what the token is for (a script, a dashboard...)")
    tlist = token.add_parser("list", help="list tokens (never their values)")
    tlist.add_argument("--user")
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    for p in (tadd, tlist, revoke):
        data(p)

    sign = hub.add_parser("bank-sign", help="print curl -H arguments signing a body as the bank does")
    sign.add_argument("--secret-file", type=Path, required=True, help="the bank's signing secret")
    sign.add_argument("body", help="the exact JSON body that will be sent")


def _password(from_stdin: bool) -> tuple[str, bool]:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return credentials.new_password(), True


def _when(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}"


def _user(args: argparse.Namespace, accounts: Accounts, audit: AuditLog) -> None:
    if args.verb == "list":
        for u in accounts.users():
            state = "disabled" if u.disabled else "active"
            print(f"{u.name:<24} {','.join(sorted(u.roles)):<32} {state:<8} since {_when(u.created_at)}")
        return
    if args.verb == "disable":
        accounts.disable(args.name)
        audit.record(CLI, "user.disable", f"user/{args.name}", {"disabled": False}, {"disabled": True})
        print(f"user {args.name} disabled; their sessions ended and their tokens stopped working")
        return
    password, generated = _password(args.password_stdin)
    if args.verb == "add":
        user = accounts.add_user(args.name, args.role, password)
        audit.record(CLI, "user.add", f"user/{user.name}", None, {"roles": sorted(user.roles)})
        print(f"user {user.name} added with roles {', '.join(sorted(user.roles))}")
    else:
        accounts.reset(args.name, password)
        audit.record(CLI, "user.reset", f"user/{args.name}", None, {"password": "changed"})
        print(f"password of {args.name} reset; their sessions ended")
    if generated:
        print(f"password (shown once, keep it safe): {password}")


def _token(args: argparse.Namespace, accounts: Accounts, audit: AuditLog) -> None:
    if args.verb == "add":
        token, value = accounts.add_token(args.name, args.label)
        audit.record(CLI, "token.add", f"token/{token.id}", None, {"user": token.user, "label": token.label})
        print(f"token {token.id} for {token.user} ({token.label}); send it as 'Authorization: Bearer <token>'")
        print(f"token (shown once, keep it safe): {value}")
    elif args.verb == "list":
        for t in accounts.tokens(args.user):
            print(f"{t.id:>5}  {t.user:<24} {t.label:<24} {'revoked' if t.revoked else 'active':<8} "
                  f"since {_when(t.created_at)}")
    else:
        token = accounts.revoke_token(args.id)
        audit.record(CLI, "token.revoke", f"token/{token.id}", {"revoked": False}, {"revoked": True})
        print(f"token {token.id} of {token.user} revoked")


def run(args: argparse.Namespace) -> int:
    """Run one account command; 0 on success, 2 with a message on stderr otherwise."""
    if args.action == "bank-sign":
        try:
            secret = args.secret_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            print(f"nakhon: cannot read --secret-file {args.secret_file}: {err.strerror}", file=sys.stderr)
            return 2
        signed = signature.headers(secret, args.body.encode())
        print(" ".join(f"-H {name}:{value}" for name, value in signed.items()))
        return 0
    store = SQLiteStore(args.data / "hub.sqlite")
    commands: dict[str, Callable[[argparse.Namespace, Accounts, AuditLog], None]] = {"user": _user, "token": _token}
    try:
        store.open()
        commands[args.action](args, Accounts(store), AuditLog(store))
    except (AccountError, ValueError, StoreError) as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0
