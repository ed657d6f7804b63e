"""The alarm API: alarms and their actions, rules (admin), notifications with every attempt, and the Thai AQI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, model_validator

from edge.contract import DeviceId
from hub import aqi
from hub.alarms.engine import AlarmEngine
from hub.alarms.rules import RULE, AlarmSeverity, AnyRule
from hub.alarms.store import AlarmRecords, audited
from hub.api.bounds import Instant, PositiveId
from hub.audit import Actor, AuditLog
from hub.auth.web import CurrentActor
from hub.errors import AlarmError

Comment = Annotated[str | None, Field(max_length=1000)]
RuleId = Annotated[str, Path(min_length=1, max_length=64)]


class ActionRequest(BaseModel):
    """An optional comment with an action."""

    comment: Comment = None


class CommentRequest(BaseModel):
    """A comment for an alarm's history."""

    comment: Annotated[str, Field(min_length=1, max_length=1000)]


class ShelveRequest(BaseModel):
    """Shelve until a time (or for a number of seconds), with a reason."""

    until: Instant | None = None
    for_s: Annotated[float | None, Field(gt=0, le=30 * 86_400)] = None
    comment: Comment = None

    @model_validator(mode="after")
    def _one_of(self) -> ShelveRequest:
        if (self.until is None) == (self.for_s is None):
            raise ValueError("give exactly one of until or for_s")
        return self


def _invalid_rule(err: ValueError) -> RequestValidationError:
    """A refused rule as the API's other 422 answers: each error with its place in the body."""
    if isinstance(err, ValidationError):
        return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)])
    return RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(err)}])


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _view(alarm: dict[str, Any]) -> dict[str, Any]:
    out = dict(alarm)
    for k in ("first_seen", "last_seen", "acked_at", "cleared_at", "shelved_until"):
        out[k] = _when(alarm[k])
    out.pop("next_step", None)
    return out


def create_router(engine: AlarmEngine, audit: AuditLog) -> APIRouter:
    """Alarm, rule, notification and AQI endpoints over the engine; every change is audited with its actor."""
    router = APIRouter()
    records = AlarmRecords(engine.store)

    @router.get("/api/alarms")
    def alarms(state: Literal["active", "acknowledged", "shelved", "cleared"] | None = None,
               severity: AlarmSeverity | None = None,
               device: Annotated[str | None, Query(max_length=64)] = None,
               rule: Annotated[str | None, Query(max_length=64)] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        """Alarms newest first, filtered by state, severity, device and rule."""
        filters = {"state": state, "severity": severity.value if severity else None, "device": device, "rule": rule}
        return [_view(a) for a in records.alarms(filters, limit)]

    @router.get("/api/alarms/{alarm_id}")
    def alarm(alarm_id: PositiveId) -> dict[str, Any]:
        """One alarm with its history (who did what) and its notifications."""
        found = records.alarm(alarm_id)
        if found is None:
            raise HTTPException(404, f"no alarm {alarm_id}")
        return {**_view(found), "history": [{**h, "at": _when(h["at"])} for h in found["history"]]}

    def _act(alarm_id: int, action: str, actor: Actor, comment: str | None, until: float | None = None,
             ) -> dict[str, Any]:
        def shown(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            return _view(before), {**_view(after), "comment": comment}

        try:
            after = engine.act(alarm_id, action, actor.user, comment, until,
                               audited=audited(audit, actor, f"alarm.{action}", f"alarm/{alarm_id}", shown))
        except LookupError as err:
            raise HTTPException(404, str(err)) from err
        except AlarmError as err:
            raise HTTPException(409, str(err)) from err
        return _view(after)

    @router.post("/api/alarms/{alarm_id}/ack")
    def ack(alarm_id: PositiveId, actor: CurrentActor,
            request: Annotated[ActionRequest | None, Body()] = None) -> dict[str, Any]:
        """Acknowledge an active alarm (stops its escalation)."""
        return _act(alarm_id, "ack", actor, request.comment if request else None)

    @router.post("/api/alarms/{alarm_id}/clear")
    def clear(alarm_id: PositiveId, actor: CurrentActor,
              request: Annotated[ActionRequest | None, Body()] = None) -> dict[str, Any]:
        """Clear an alarm (the only way a latched one clears)."""
        return _act(alarm_id, "clear", actor, request.comment if request else None)

    @router.post("/api/alarms/{alarm_id}/comment")
    def comment(alarm_id: PositiveId, request: CommentRequest, actor: CurrentActor) -> dict[str, Any]:
        """Add a comment to an alarm's history."""
        return _act(alarm_id, "comment", actor, request.comment)

    @router.post("/api/alarms/{alarm_id}/shelve")
    def shelve(alarm_id: PositiveId, request: ShelveRequest, actor: CurrentActor,
               ) -> dict[str, Any]:
        """Hide an alarm (no notifications, no escalation) until a time; it then returns to its state."""
        until = request.until.timestamp() if request.until else engine.clock() + (request.for_s or 0)
        return _act(alarm_id, "shelve", actor, request.comment, until)

    @router.get("/api/alarm-rules")
    def rules() -> list[dict[str, Any]]:
        """Every rule, with where it comes from (``file`` or ``api``)."""
        return [{**r.model_dump(mode="json"), "source": "file" if r.id in engine.file_rules else "api"}
                for r in engine.rules.values()]

    @router.put("/api/alarm-rules/{rule_id}")
    def put_rule(rule_id: RuleId, body: Annotated[dict[str, Any], Body()],
                 actor: CurrentActor) -> dict[str, Any]:
        """Add or replace a rule (admin); rules from the rules file are changed in the file."""
        try:
            rule: AnyRule = RULE.validate_python({**body, "id": rule_id})
            engine.put_rule(rule, actor.user, audited=audited(audit, actor, "alarm-rule.put", f"alarm-rule/{rule_id}"))
        except AlarmError as err:
            raise HTTPException(409, str(err)) from err
        except ValueError as err:
            raise _invalid_rule(err) from err
        return rule.model_dump(mode="json")

    @router.delete("/api/alarm-rules/{rule_id}", status_code=204)
    def delete_rule(rule_id: RuleId, actor: CurrentActor) -> None:
        """Remove a rule added through the API."""
        try:
            deleted = engine.delete_rule(rule_id, audited=audited(audit, actor, "alarm-rule.delete",
                                                                  f"alarm-rule/{rule_id}"))
        except AlarmError as err:
            raise HTTPException(409, str(err)) from err
        if not deleted:
            raise HTTPException(404, f"no API rule {rule_id!r}")

    @router.get("/api/notifications")
    def notifications(alarm: PositiveId | None = None, channel: Annotated[str | None, Query(max_length=64)] = None,
                      state: Literal["pending", "sent", "failed"] | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        """Notifications newest first, each with every attempt and its outcome."""
        return records.notifications(alarm, channel, state, limit)

    @router.get("/api/devices/{device}/aqi")
    def device_aqi(device: DeviceId) -> dict[str, Any]:
        """The Thai AQI of a device: from 24-hour averages (None below 12 hours of data) and the last hour's."""
        now = engine.clock()
        day_ago, until = datetime.fromtimestamp(now - 86_400, UTC), datetime.fromtimestamp(now, UTC)
        # the hourly means of the day from the time-series store, one sample per hour (at its middle): the mean of
        # hourly means is the same, and the last of the 24 buckets is the hour just gone
        samples = {p: [(b.start.timestamp() + 1800, b.avg) for b in engine.timeseries.aggregate(
                       device, p, day_ago, until, 3600, 24, origin=day_ago)] for p in ("pm2_5", "pm10")}
        if not any(samples.values()) and engine.store.device(device) is None:
            raise HTTPException(404, f"no device {device!r} in the registry")
        daily = {p: v for p, s in samples.items() if (v := aqi.daily_average(s, now)) is not None}
        hourly = {p: v for p, s in samples.items() if (v := aqi.hourly_average(s, now)) is not None}
        day_value, hour_value = aqi.thai_aqi(daily), aqi.thai_aqi(hourly)
        return {"device": device, "quantity": "aqi_th", "at": _when(now),
                "averages_24h": {p: round(v, 1) for p, v in daily.items()},
                "averages_1h": {p: round(v, 1) for p, v in hourly.items()},
                "aqi_24h": day_value.model_dump(mode="json") if day_value else None,
                "aqi_1h": hour_value.model_dump(mode="json") if hour_value else None}

    return router
