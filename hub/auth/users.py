"""The users API (admin): list, add, disable, reset a password, change roles, as ``nakhon hub user ...`` does.

A password the hub generates is in the answer once (``Cache-Control: no-store``) and never kept in clear, logged
or audited. An admin cannot disable themselves or take their own admin role away, so the hub always keeps one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, Field

from hub.audit import Actor, AuditLog
from hub.auth import credentials
from hub.auth.accounts import NAME_PATTERN, AccountError, Accounts, User
from hub.auth.policy import ROLES
from hub.auth.web import CurrentActor

UserName = Annotated[str, Path(min_length=2, max_length=32, pattern=NAME_PATTERN.pattern)]
Password = Annotated[str | None, Field(min_length=credentials.MIN_PASSWORD, max_length=credentials.MAX_PASSWORD)]
RoleName = Annotated[str, Field(pattern=f"^({'|'.join(ROLES)})$")]
RoleList = Annotated[list[RoleName], Field(min_length=1, max_length=len(ROLES))]
NO_STORE = {"Cache-Control": "no-store"}


class NewUser(BaseModel):
    """A user to create; without a password the hub generates one and answers it once."""

    name: Annotated[str, Field(min_length=2, max_length=32, pattern=NAME_PATTERN.pattern)]
    roles: RoleList
    password: Password = None


class PasswordReset(BaseModel):
    """A new password (enabling the user again); without one the hub generates one and answers it once."""

    password: Password = None


class RoleChange(BaseModel):
    """The roles a user holds from now on."""

    roles: RoleList


class UserView(BaseModel):
    """A user as listed (never a password or its hash)."""

    name: str
    roles: list[str]
    disabled: bool
    created_at: str


def _view(user: User) -> UserView:
    return UserView(name=user.name, roles=sorted(user.roles), disabled=user.disabled,
                    created_at=datetime.fromtimestamp(user.created_at, UTC).isoformat().replace("+00:00", "Z"))


def _chosen(password: str | None) -> tuple[str, dict[str, Any]]:
    """The password to set, and what the answer adds (the generated password, once)."""
    if password is not None:
        return password, {}
    generated = credentials.new_password()
    return generated, {"password": generated, "password_shown_once": True}


def _not_self(actor: Actor, name: str, what: str) -> None:
    if actor.user == name:
        raise HTTPException(409, f"you cannot {what} yourself: ask another admin")


def create_router(accounts: Accounts, audit: AuditLog) -> APIRouter:
    """The users endpoints over the accounts; every change is audited with its actor."""
    api = APIRouter(prefix="/api/users", tags=["auth"])

    def known(name: str) -> User:
        user = accounts.user(name)
        if user is None:
            raise HTTPException(404, f"no user {name!r}")
        return user

    @api.get("")
    def users() -> list[UserView]:
        """Every user with their roles and whether they are disabled, by name."""
        return [_view(u) for u in accounts.users()]

    @api.post("", status_code=201)
    def add(body: NewUser, actor: CurrentActor, response: Response) -> dict[str, Any]:
        """Create a user with roles; a generated password is answered once."""
        if accounts.user(body.name) is not None:
            raise HTTPException(409, f"user {body.name!r} exists already (reset or disable it)")
        password, extra = _chosen(body.password)
        try:
            user = accounts.add_user(body.name, body.roles, password)
        except AccountError as err:  # added by someone else meanwhile: the model has checked name and roles
            raise HTTPException(409, str(err)) from err
        audit.record(actor, "user.add", f"user/{user.name}", None, {"roles": sorted(user.roles)})
        response.headers.update(NO_STORE)
        return {**_view(user).model_dump(), **extra}

    @api.post("/{name}/disable")
    def disable(name: UserName, actor: CurrentActor) -> UserView:
        """Disable a user: their sessions end and their tokens stop working."""
        _not_self(actor, name, "disable")
        before = known(name)
        accounts.disable(name)
        audit.record(actor, "user.disable", f"user/{name}", {"disabled": before.disabled}, {"disabled": True})
        return _view(known(name))

    @api.post("/{name}/reset")
    def reset(name: UserName, actor: CurrentActor, response: Response,
              body: PasswordReset | None = None) -> dict[str, Any]:
        """Set a new password and enable the user; their sessions end. A generated password is answered once."""
        before = known(name)
        password, extra = _chosen(body.password if body else None)
        accounts.reset(name, password)
        audit.record(actor, "user.reset", f"user/{name}", {"disabled": before.disabled},
                     {"disabled": False, "password": "changed"})
        response.headers.update(NO_STORE)
        return {**_view(known(name)).model_dump(), **extra}

    @api.put("/{name}/roles")
    def set_roles(name: UserName, body: RoleChange, actor: CurrentActor) -> UserView:
        """Replace a user's roles; their sessions end so the new roles apply at the next sign-in."""
        if "admin" not in body.roles:
            _not_self(actor, name, "take the admin role from")
        before = known(name)
        try:
            user = accounts.set_roles(name, body.roles)
        except AccountError as err:  # removed meanwhile: the model has checked the roles
            raise HTTPException(404, str(err)) from err
        audit.record(actor, "user.roles", f"user/{name}", {"roles": sorted(before.roles)},
                     {"roles": sorted(user.roles)})
        return _view(user)

    return api
