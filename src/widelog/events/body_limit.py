"""Pure ASGI middleware: a request body larger than `max_bytes` gets a 413 before it is parsed.

Separate from `WideEventMiddleware` on purpose: the wide-event middleware only observes, and must
not change what an app answers; a body limit is the app's decision. Installed inside it (the
reference chat service does), so the event of a refused request records `BODY_TOO_LARGE`.

A `Content-Length` over the limit is answered at once, without running the app. A body that
streams past the limit (chunked, or a lying `Content-Length`) stops being read there: the app is
told the client disconnected, whatever it answers is replaced by the 413, and no more than
`max_bytes` plus one chunk is ever held.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from widelog.events.logging_service import current_event

if TYPE_CHECKING:
    from widelog.events.middleware import ASGIApp, ASGIMessage, Receive, Scope, Send

ERROR_CODE = "BODY_TOO_LARGE"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"Content-Length {declared} > {self.max_bytes} bytes")
            return
        received = 0
        too_large = False
        answered = False

        async def limited_receive() -> ASGIMessage:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def send_unless_refused(message: ASGIMessage) -> None:
            nonlocal answered
            if too_large:
                if not answered:
                    answered = True
                    await self._refuse(send, f"body over {self.max_bytes} bytes")
                return  # the app's own answer to the "disconnect" is dropped
            await send(message)

        try:
            await self.app(scope, limited_receive, send_unless_refused)
        except Exception:
            if not too_large:
                raise
            # The app failed on the disconnect it was told about: the 413 is the answer.
        if too_large and not answered:
            await self._refuse(send, f"body over {self.max_bytes} bytes")

    async def _refuse(self, send: Send, why: str) -> None:
        current_event().error(ERROR_CODE, message=why)
        body = json.dumps({"detail": f"request body too large: {why}", "code": ERROR_CODE})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one; count what arrives instead
    return None
