"""Sending one notification over one channel: a signed webhook, a LINE Messaging API push, or SMTP mail.

Each sender raises :class:`hub.errors.NotifyError` with a reason an operator can act on (never a secret), and
returns a short description of the accepted answer. Secrets are read from their files at every send, so a
rotated token is picked up without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx

from hub.alarms.rules import AnyChannel, EmailChannel, LineChannel, WebhookChannel
from hub.errors import NotifyError

TIMEOUT_S = 10.0
LINE_TEXT_MAX = 5000
"""LINE refuses text messages longer than this."""


@dataclass(frozen=True)
class Outgoing:
    """A notification ready to send: the same ``retry_key`` on every try."""

    id: int
    retry_key: str
    subject: str
    body: str
    payload: dict[str, Any]


def _secret(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise NotifyError(f"cannot read the {what} file {path}: {err.strerror}") from err
    if not value:
        raise NotifyError(f"the {what} file {path} is empty")
    return value


def _post(url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    try:
        return httpx.post(url, content=content, headers=headers, timeout=TIMEOUT_S)
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise NotifyError(f"POST {url}: {type(err).__name__}: {err}") from err


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature: hex HMAC-SHA256 of ``timestamp.body``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def send_webhook(channel: WebhookChannel, n: Outgoing) -> str:
    """POST the alarm as JSON with ``X-Nakhon-Timestamp`` and ``X-Nakhon-Signature: sha256=...``."""
    body = json.dumps(n.payload, ensure_ascii=False, separators=(",", ":")).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json; charset=utf-8", "X-Nakhon-Timestamp": ts,
               "X-Nakhon-Signature": "sha256=" + sign(_secret(channel.secret_file, "webhook secret"), ts, body),
               "X-Nakhon-Delivery": n.retry_key}
    r = _post(channel.url, body, headers)
    if not r.is_success:
        raise NotifyError(f"webhook answered HTTP {r.status_code}")
    return f"HTTP {r.status_code}"


def send_line(channel: LineChannel, n: Outgoing) -> str:
    """Push a text message; a 409 is LINE saying this retry key was already accepted, so it counts as sent."""
    body = json.dumps({"to": channel.to, "messages": [{"type": "text", "text": n.body[:LINE_TEXT_MAX]}]},
                      ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "X-Line-Retry-Key": n.retry_key,
               "Authorization": "Bearer " + _secret(channel.token_file, "LINE channel access token")}
    r = _post(channel.base_url.rstrip("/") + "/v2/bot/message/push", body, headers)
    if r.status_code == 409:
        return "HTTP 409 (accepted before)"
    if not r.is_success:
        raise NotifyError(f"LINE answered HTTP {r.status_code}" + (" (rate limited)" if r.status_code == 429 else ""))
    return f"HTTP {r.status_code}"


def send_email(channel: EmailChannel, n: Outgoing) -> str:
    """Send over SMTP after STARTTLS (refused without it), logging in when credentials are configured."""
    msg = EmailMessage()
    msg["Subject"] = n.subject
    msg["From"] = channel.sender
    msg["To"] = ", ".join(channel.to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{n.retry_key}@nakhon>"
    msg.set_content(n.body)
    credentials = None
    if channel.credentials_file is not None:
        lines = _secret(channel.credentials_file, "SMTP credentials").splitlines()
        if len(lines) < 2:
            raise NotifyError(f"{channel.credentials_file}: expected the user name and the password on two lines")
        credentials = (lines[0].strip(), lines[1].strip())
    try:
        context = ssl.create_default_context(cafile=str(channel.ca_file) if channel.ca_file else None)
        with smtplib.SMTP(channel.host, channel.port, timeout=TIMEOUT_S) as smtp:
            smtp.ehlo()
            smtp.starttls(context=context)
            smtp.ehlo()
            if credentials is not None:
                smtp.login(*credentials)
            refused = smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as err:
        raise NotifyError(f"SMTP {channel.host}:{channel.port}: {type(err).__name__}: {err}") from err
    if refused:
        raise NotifyError(f"SMTP refused {', '.join(sorted(refused))}")
    return f"SMTP accepted for {len(channel.to)} recipient(s)"


SENDERS: dict[type[Any], Callable[[Any, Outgoing], str]] = {
    WebhookChannel: send_webhook,
    LineChannel: send_line,
    EmailChannel: send_email,
}


def send(channel: AnyChannel, n: Outgoing) -> str:
    """Send ``n`` over ``channel``; raises :class:`NotifyError` when it was not taken."""
    return SENDERS[type(channel)](channel, n)
