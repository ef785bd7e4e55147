"""Bearer-token guard for the destructive endpoints.

The token is compared with ``hmac.compare_digest`` so response time does not
reveal how many leading characters matched. With no ``ADMIN_TOKEN`` configured
the destructive endpoints are switched off rather than left open.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import current_app, request

from serve.errors import ApiError

F = TypeVar("F", bound=Callable)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="galaxy-classifier"'}


def token_matches(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def check_admin() -> None:
    """Raise ApiError unless the request carries the configured admin token."""
    expected = current_app.extensions["galaxy"].settings.admin_token
    if expected is None:
        raise ApiError(
            403, "admin_disabled", "admin endpoints are disabled: set ADMIN_TOKEN on the server to enable them"
        )
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(
            401, "missing_token", "send the admin token as 'Authorization: Bearer <token>'", headers=_CHALLENGE
        )
    if not token_matches(presented.strip(), expected):
        raise ApiError(
            401,
            "invalid_token",
            "the admin token is not valid",
            headers={"WWW-Authenticate": _CHALLENGE["WWW-Authenticate"] + ', error="invalid_token"'},
        )


def admin_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args, **kwargs):
        check_admin()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
