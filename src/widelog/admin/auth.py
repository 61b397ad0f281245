"""Bearer-token access to the admin routes: events and incidents hold user data.

Serve them behind TLS: the token travels in every request's `Authorization` header.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import SecretStr


def bearer_token_check(token: SecretStr | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <token>`.

    No token configured: open (the default, for local use). The comparison takes the same time
    however much of the token matches, and the token is never logged or echoed.
    """
    expected = None if token is None else token.get_secret_value().encode()

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(
                status_code=401,
                detail="admin routes need Authorization: Bearer <WIDELOG_ADMIN_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
