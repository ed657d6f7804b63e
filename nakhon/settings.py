"""The configuration base of the agent and the hub: a TOML file, environment overrides, secrets in their own files.

One loader for both sides, on pydantic-settings. A settings class names its environment prefix
(``NAKHON_`` for a device, ``NAKHON_HUB_`` for the hub); loading reads its TOML file, overlays the environment
(``PREFIX<KEY>``, ``__`` between nested keys, list entries by number, values read as TOML values and falling
back to plain strings), puts the keyword overrides (the hub's command-line flags) above both, and validates
the whole. Precedence: defaults < file < environment < keyword overrides.

Problems are reported one per line as ``FILE: KEY: what was expected``, so that whoever installs the machine
can fix them on the spot. Secrets (passwords, keys) are never in a config: a key names a file that holds
the secret, which should be readable by its owner only (``chmod 600``).

This module imports neither ``edge`` nor ``hub``: both sides build on it.
"""

from __future__ import annotations

import copy
import logging
import stat
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

log = logging.getLogger(__name__)


class InvalidSettings(ValueError):
    """A config file, environment variable or flag that cannot be used: one ``FILE: KEY: problem`` per line."""


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file; :class:`InvalidSettings` when it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InvalidSettings(f"{path}: cannot read the config file: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise InvalidSettings(f"{path}: not valid TOML: {err}") from err


def env_value(raw: str) -> Any:
    """An environment variable's value as a TOML value (``5``, ``true``, ``"text"``), else the plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def overlay_env(data: dict[str, Any], environ: Mapping[str, str], prefix: str,
                ignored: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Overlay ``PREFIX<A>__<B>=value`` variables onto parsed TOML (returns a new dict).

    A number in the path names an existing list entry (``NAKHON_DRIVERS__0__INTERVAL_S``); one past the end
    is refused, since an entry made of one key would never be valid.
    """
    merged = copy.deepcopy(data)
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or name in ignored:
            continue
        path = [p.lower() for p in name[len(prefix):].split("__")]
        node: Any = merged
        for i, part in enumerate(path):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise InvalidSettings(f"environment {name}: no list entry {part!r} to override")
                key: int | str = int(part)
            else:
                key = part
            if i == len(path) - 1:
                node[key] = env_value(raw)
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]
    return merged


def location(loc: tuple[int | str, ...]) -> str:
    """A key path as a config names it: ``drivers[0].interval_s``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(err: ValidationError, prefix: tuple[int | str, ...] = (),
             unquoted: frozenset[str] = frozenset()) -> list[tuple[tuple[int | str, ...], str]]:
    """Each validation problem as (its key path, ``KEY: what was expected (got VALUE)``); the value given to a
    key in ``unquoted`` is left out (a URL that may carry a password)."""
    lines = []
    for e in err.errors():
        if e["type"] == "default_factory_not_called":
            continue  # a default made from other keys, one of which is wrong: that key's line says why
        loc = prefix + tuple(e["loc"])
        given = "" if e["type"] == "missing" or (loc and loc[0] in unquoted) else f" (got {e['input']!r})"
        lines.append((loc, f"{location(loc)}: {e['msg']}{given}"))
    return lines


def read_secret(path: Path, where: str, key: str, *, private: bool) -> str:
    """The secret a file holds (stripped); ``where: key: problem`` when it is missing, empty or, with
    ``private``, readable by other users (without ``private`` that is only a warning)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise InvalidSettings(f"{where}: {key}: cannot read secret file {path}: {err.strerror}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        if private:
            raise InvalidSettings(f"{where}: {key}: secret file {path} can be read by other users; "
                                  f"run: chmod 600 {path}")
        log.warning("secret file %s is readable by other users; run: chmod 600 %s", path, path)
    if not text:
        raise InvalidSettings(f"{where}: {key}: secret file {path} is empty")
    return text


@dataclass(frozen=True)
class _Request:
    """What one :meth:`FileSettings.load` reads: the file (if any) and the environment."""

    path: Path | None
    environ: Mapping[str, str]


# the file and environment of the load in progress: pydantic-settings builds its sources inside the
# constructor, which takes no arguments for them
_LOADING: ContextVar[_Request | None] = ContextVar("nakhon_settings_loading", default=None)


class FileAndEnvironment(PydanticBaseSettingsSource):
    """The settings source of :class:`FileSettings`: the TOML file overlaid by the environment."""

    def __init__(self, settings_cls: type[FileSettings]) -> None:
        super().__init__(settings_cls)
        self._owner = settings_cls
        self._request = _LOADING.get()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: the source gives the whole tree at once (list entries are overridden in place)."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The file's keys with the environment's on top; nothing outside :meth:`FileSettings.load`."""
        if self._request is None:
            return {}
        owner = self._owner
        data = {} if self._request.path is None else owner.from_file(read_toml(self._request.path),
                                                                       self._request.path)
        return overlay_env(data, self._request.environ, owner.model_config.get("env_prefix", ""),
                           owner.env_ignored)


class FileSettings(BaseSettings):
    """Settings read by :meth:`load` from a TOML file, the environment and keyword overrides."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)
    env_ignored: ClassVar[frozenset[str]] = frozenset()
    """Variables with the prefix that are no setting (the config file's own variable, the log level...)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword overrides, then the file overlaid by the environment (no dotenv, no secrets directory)."""
        return init_settings, FileAndEnvironment(cls)

    @classmethod
    def from_file(cls, data: dict[str, Any], path: Path) -> dict[str, Any]:
        """The file's keys as the settings take them (a hook: the hub resolves relative paths here)."""
        return data

    @classmethod
    def load(cls, path: Path | None, environ: Mapping[str, str], **overrides: Any) -> Self:
        """Read ``path`` (none: defaults), overlay ``environ`` and ``overrides``, validate.

        Raises :class:`InvalidSettings` for an unreadable file or a bad environment path, and pydantic's
        ``ValidationError`` for values (the caller names where each came from).
        """
        token = _LOADING.set(_Request(path, environ))
        try:
            return cls(**overrides)
        finally:
            _LOADING.reset(token)
