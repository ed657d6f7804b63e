"""The 422 answer to a request that fails validation: what was wrong, without repeating the whole input back.

FastAPI's default handler echoes each offending value in full (a 30 MB field came back as 15 MB of JSON); this
one keeps every error's location and message but cuts what it repeats, and lists at most :data:`MAX_ERRORS`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_ECHO = 200
"""Characters of an offending value (or of a location key) repeated in an error."""
MAX_ERRORS = 20
"""Errors listed in one answer; ``errors_total`` says how many there were."""


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ECHO else f"{text[:MAX_ECHO]}... ({len(text)} characters)"


def _echo(value: Any) -> Any:
    """A value as it may be repeated: scalars as they are, long text cut, containers as cut JSON text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return _cut(value)
    text = json.dumps(jsonable_encoder(value), ensure_ascii=False, default=str)
    return value if len(text) <= MAX_ECHO else _cut(text)


def _error(error: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": error.get("type"), "loc": [_echo(part) for part in error.get("loc", ())],
                           "msg": _cut(str(error.get("msg", "")))}
    if "input" in error:
        out["input"] = _echo(error["input"])
    if error.get("ctx"):
        out["ctx"] = {str(k): _echo(v if isinstance(v, str | int | float | bool) else str(v))
                      for k, v in error["ctx"].items()}
    return out


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """Answer 422 with each error's location, message and a cut copy of the value."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={
        "detail": [_error(dict(e)) for e in errors[:MAX_ERRORS]], "errors_total": len(errors)})
