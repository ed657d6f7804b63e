"""A small HTTPS client for the hub's API (stdlib only, so it runs on a fresh Pi): JSON in, JSON out."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ANSWER = 16 * 1024 * 1024


class ApiError(RuntimeError):
    """The hub refused a request (status and its reason) or could not be reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Hub:
    """Where the hub is, the CA to check its HTTPS certificate with, and the caller's API token."""

    url: str
    ca: Path | None = None
    token: str | None = None
    verify: bool = True
    """False only to fetch the CA chain that is then pinned against a fingerprint (``agent enroll``)."""

    @classmethod
    def from_args(cls, url: str | None, ca: Path | None, token_file: Path | None) -> Hub:
        """From the command line, else ``NAKHON_HUB_URL``, ``NAKHON_HUB_CA``, ``NAKHON_TOKEN_FILE``/``NAKHON_TOKEN``."""
        url = url or os.environ.get("NAKHON_HUB_URL")
        if not url:
            raise ApiError(0, "no hub: give --hub URL or set NAKHON_HUB_URL")
        ca = ca or (Path(os.environ["NAKHON_HUB_CA"]) if os.environ.get("NAKHON_HUB_CA") else None)
        token_file = token_file or (Path(os.environ["NAKHON_TOKEN_FILE"]) if os.environ.get("NAKHON_TOKEN_FILE")
                                    else None)
        token = os.environ.get("NAKHON_TOKEN")
        if token_file is not None:
            try:
                token = token_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise ApiError(0, f"cannot read the token file {token_file}: {err.strerror}") from err
        return cls(url.rstrip("/"), ca, token)

    def _context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https://"):
            return None
        if not self.verify:
            unverified = ssl.create_default_context()
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE
            return unverified
        return ssl.create_default_context(cafile=str(self.ca) if self.ca else None)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer or raise :class:`ApiError` with the hub's reason."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if not self.url.startswith(("https://", "http://")):
            raise ApiError(0, f"the hub's URL must start with https:// (or http:// on the hub itself): {self.url}")
        request = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310 (checked above)
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60, context=self._context()) as answer:  # noqa: S310
                return json.loads(answer.read(MAX_ANSWER) or b"null")
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read(65_536)).get("detail", err.reason)
            except (ValueError, AttributeError):
                detail = err.reason
            raise ApiError(err.code, f"the hub answered {err.code}: {detail}") from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ApiError(0, f"cannot reach the hub at {self.url}: {reason}") from err
