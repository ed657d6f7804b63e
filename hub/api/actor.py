"""Who is acting: the one seam where sign-in plugs into the alarm endpoints.

Until accounts land (issue 8), the acting user is the ``X-Nakhon-User`` header, else ``anonymous``. Endpoints
that change state depend on :func:`current_actor`; swapping it for the real authentication dependency is a
one-line change here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Header
from pydantic import StringConstraints

UserName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]


def current_actor(x_nakhon_user: Annotated[UserName | None, Header()] = None) -> str:
    """The name of the user making this request."""
    return x_nakhon_user or "anonymous"
