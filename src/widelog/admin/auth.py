"""Token access to the admin routes: events and incidents hold user data.

Serve them behind TLS: the token travels in every request's `Authorization` header (and the
dashboard's cookie in every browser request to `/dashboard`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import SecretStr

DASHBOARD_COOKIE = "widelog_dashboard"


def bearer_token_check(token: SecretStr | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <token>`.

    No token configured: open (the default, for local use). The comparison takes the same time
    however much of the token matches, and the token is never logged or echoed.
    """
    expected = None if token is None else token.get_secret_value().encode()

    async def check(request: Request) -> None:
        if expected is None or _bearer_matches(request, expected):
            return
        raise HTTPException(
            status_code=401,
            detail="admin routes need Authorization: Bearer <WIDELOG_ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return check


class DashboardAccess:
    """Who may see `/dashboard`: the bearer header, or the cookie its login form sets.

    A browser sends no `Authorization` header on a link or a refresh, hence the cookie. The
    login form POSTs the token, so it never appears in a URL, a browser history or an access
    log. The cookie holds an HMAC of the token rather than the token: it opens the dashboard
    (its path is `/dashboard`), not the JSON admin API.
    """

    def __init__(self, token: SecretStr | None) -> None:
        self._expected = None if token is None else token.get_secret_value().encode()
        self.cookie = (
            None
            if self._expected is None
            else hmac.new(self._expected, b"widelog dashboard", hashlib.sha256).hexdigest()
        )

    @property
    def open(self) -> bool:
        """No token configured: nothing to check (local use)."""
        return self._expected is None

    def accepts(self, token: str) -> bool:
        """The login form's token is the configured one (constant time)."""
        return self._expected is None or hmac.compare_digest(token.encode(), self._expected)

    def allows(self, request: Request) -> bool:
        if self._expected is None or self.cookie is None:
            return True
        if _bearer_matches(request, self._expected):
            return True
        given = request.cookies.get(DASHBOARD_COOKIE, "")
        return hmac.compare_digest(given.encode(), self.cookie.encode())


def _bearer_matches(request: Request, expected: bytes) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected)
