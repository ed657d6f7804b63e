"""Alarm rules and notification channels as typed models, loaded from a TOML file or given through the API.

A rule is scoped by device, kind (the device's ``node``, e.g. ``air-quality-pole``) or site; an empty scope
matches every device. Five rule types cover a city fleet: ``threshold`` (with hysteresis and a minimum
duration), ``rate`` (a rise or fall within a window), ``no_data`` (a sensor silent for N of its intervals),
``offline`` (the link is offline or lost past a grace period) and ``event`` (an event name, latched by default).
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from hub.errors import HubConfigError

DEMO_RULES = Path(__file__).with_name("demo-rules.toml")

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Quantity = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Seconds = Annotated[float, Field(ge=0, le=30 * 86_400)]


class AlarmSeverity(StrEnum):
    """How urgent an alarm is, most urgent first."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EscalationStep(_Strict):
    """Notify these channels ``after_s`` seconds after the alarm was raised, unless acknowledged by then."""

    after_s: Seconds = 0.0
    channels: Annotated[list[Slug], Field(min_length=1, max_length=10)]


class _RuleBase(_Strict):
    id: Slug
    severity: AlarmSeverity = AlarmSeverity.WARNING
    title_th: Text
    title_en: Text
    device: Annotated[str | None, StringConstraints(max_length=64)] = None
    kind: Annotated[str | None, StringConstraints(max_length=64)] = None
    site: Annotated[str | None, StringConstraints(max_length=200)] = None
    escalation: Annotated[list[EscalationStep], Field(max_length=10)] = Field(default_factory=list)
    language: Literal["th", "en"] = "th"

    def applies_to(self, device: str, node: str | None, site: str | None) -> bool:
        """Whether a device is in this rule's scope (``device`` may be a glob such as ``kk-aq-*``)."""
        return ((self.device is None or fnmatchcase(device, self.device))
                and (self.kind is None or node == self.kind)
                and (self.site is None or site == self.site))


class ThresholdRule(_RuleBase):
    """A quantity above (or below) a trip value for ``for_s`` seconds; clears past the ``clear`` value."""

    type: Literal["threshold"]
    quantity: Quantity
    above: float | None = None
    below: float | None = None
    clear: float
    for_s: Seconds = 0.0

    @model_validator(mode="after")
    def _one_direction(self) -> ThresholdRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above or below")
        if self.above is not None and self.clear > self.above:
            raise ValueError("clear must not be above the trip value (hysteresis)")
        if self.below is not None and self.clear < self.below:
            raise ValueError("clear must not be below the trip value (hysteresis)")
        return self

    def trips(self, value: float) -> bool:
        """Whether this value is past the trip value."""
        return value > self.above if self.above is not None else value < (self.below or 0.0)

    def clears(self, value: float) -> bool:
        """Whether this value is back past the clear value."""
        return value <= self.clear if self.above is not None else value >= self.clear


class RateRule(_RuleBase):
    """A quantity changing by ``change`` (negative for a fall) or more within ``within_s`` seconds."""

    type: Literal["rate"]
    quantity: Quantity
    change: float
    within_s: Annotated[float, Field(gt=0, le=7 * 86_400)]

    @model_validator(mode="after")
    def _not_zero(self) -> RateRule:
        if self.change == 0:
            raise ValueError("change must not be 0")
        return self


class NoDataRule(_RuleBase):
    """A sensor silent for ``intervals`` of its reporting interval (from the heartbeat, or ``interval_s``)."""

    type: Literal["no_data"]
    sensor: Annotated[str | None, StringConstraints(max_length=64)] = None
    intervals: Annotated[float, Field(gt=0, le=1000)] = 3.0
    interval_s: Annotated[float | None, Field(gt=0, le=86_400)] = None


class OfflineRule(_RuleBase):
    """A device whose link is offline or lost for longer than ``grace_s``; clears when it is online again."""

    type: Literal["offline"]
    grace_s: Seconds = 60.0


class EventRule(_RuleBase):
    """An event name (globs allowed); latched ones never clear by themselves, others clear on ``clear_events``."""

    type: Literal["event"]
    events: Annotated[list[Annotated[str, StringConstraints(max_length=64)]], Field(min_length=1, max_length=20)]
    latched: bool = True
    clear_events: Annotated[list[Annotated[str, StringConstraints(max_length=64)]], Field(max_length=20)] = (
        Field(default_factory=list))

    def matches(self, event: str) -> bool:
        """Whether an event raises this alarm."""
        return any(fnmatchcase(event, pattern) for pattern in self.events)

    def ends(self, event: str) -> bool:
        """Whether an event clears this (unlatched) alarm."""
        return not self.latched and any(fnmatchcase(event, pattern) for pattern in self.clear_events)


Rule = Annotated[ThresholdRule | RateRule | NoDataRule | OfflineRule | EventRule, Field(discriminator="type")]
RULE: TypeAdapter[ThresholdRule | RateRule | NoDataRule | OfflineRule | EventRule] = TypeAdapter(Rule)
AnyRule = ThresholdRule | RateRule | NoDataRule | OfflineRule | EventRule


class WebhookChannel(_Strict):
    """POST the alarm as JSON, signed with HMAC-SHA256 over ``timestamp.body`` with the secret in a file."""

    id: Slug
    type: Literal["webhook"]
    url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=500)]
    secret_file: Path
    language: Literal["th", "en"] = "th"


class LineChannel(_Strict):
    """LINE Messaging API push to a user or group id, with the channel access token in a file."""

    id: Slug
    type: Literal["line"]
    to: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    token_file: Path
    base_url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=500)] = "https://api.line.me"
    language: Literal["th", "en"] = "th"


class EmailChannel(_Strict):
    """E-mail over SMTP with STARTTLS; ``credentials_file`` holds the user name and the password on two lines."""

    id: Slug
    type: Literal["email"]
    host: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65_535)] = 587
    sender: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)]
    to: Annotated[list[Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)]],
                  Field(min_length=1, max_length=20)]
    credentials_file: Path | None = None
    ca_file: Path | None = None
    """A CA bundle to trust instead of the system's (a municipal relay with its own certificate)."""
    language: Literal["th", "en"] = "th"


Channel = Annotated[WebhookChannel | LineChannel | EmailChannel, Field(discriminator="type")]
AnyChannel = WebhookChannel | LineChannel | EmailChannel


class RulesFile(_Strict):
    """The ``--rules`` file: where the hub is seen from, the channels, and the rules."""

    public_url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=500)] = "http://127.0.0.1:8080"
    channels: Annotated[list[Channel], Field(max_length=50)] = Field(default_factory=list)
    rules: Annotated[list[Rule], Field(max_length=1000)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> RulesFile:
        channel_ids = [c.id for c in self.channels]
        rule_ids = [r.id for r in self.rules]
        for what, ids in (("channel", channel_ids), ("rule", rule_ids)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"{what} ids must be unique: {', '.join(dup)}")
        for rule in self.rules:
            check_channels(rule, set(channel_ids))
        return self


def check_channels(rule: AnyRule, known: set[str]) -> None:
    """Refuse a rule whose escalation names a channel that does not exist."""
    for step in rule.escalation:
        missing = sorted(set(step.channels) - known)
        if missing:
            raise ValueError(f"rule {rule.id}: unknown channel(s) {', '.join(missing)}")


def load_rules(path: Path) -> RulesFile:
    """Read and validate a rules file, or refuse with the file, the key and what was expected."""
    try:
        data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise HubConfigError(f"{path}: cannot read the alarm rules: {err}") from err
    try:
        return RulesFile.model_validate(data)
    except ValidationError as err:
        lines = [f"{path}: invalid alarm rules"]
        for e in err.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}")
        raise HubConfigError("\n".join(lines)) from err
