"""Plain ASGI middlewares of the service (besides authentication, `serving.auth`).

* `BodyLimitMiddleware`: every request body is capped (``serving.max_body_bytes``, by
  default derived from ``max_rows_per_request``): 413 with a JSON body naming the
  limit. A too large ``Content-Length`` is refused before anything is read; a body
  without one (chunked) is read only up to the limit. The accepted body is handed on as
  one message.
* `InstanceMiddleware`: answers carry ``X-CSHealth-Instance: <id>`` (the per-start id
  ``cshealth serve`` passes in `CSHEALTH_INSTANCE`), so its readiness probe can tell the
  server it started from anything else listening on the port.
"""

from __future__ import annotations

import json
from typing import Any

from serving.auth import ASGIApp, Receive, Scope, Send, log_rejected

INSTANCE_HEADER = "x-cshealth-instance"


class BodyTooLarge(Exception):
    """The request body exceeds the limit."""


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """413 for request bodies over `limit` bytes (see the module docstring)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def too_large(self) -> dict[str, Any]:
        msg = f"request body too large: at most max_body_bytes={self.limit} bytes"
        return {"error": msg, "detail": [{"loc": [], "msg": msg, "type": "too_long"}]}

    def _declared_length(self, scope: Scope) -> int | None:
        for k, v in scope.get("headers") or []:
            if k.lower() == b"content-length":
                try:
                    return int(v)
                except ValueError:
                    return None  # the server rejects a malformed length itself
        return None

    async def _read(self, receive: Receive) -> tuple[bytes, dict[str, Any] | None]:
        """The whole body (at most `limit` bytes), and a disconnect message if one came."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), message
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                raise BodyTooLarge
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = self._declared_length(scope)
        try:
            if declared is not None and declared > self.limit:
                raise BodyTooLarge
            body, early = await self._read(receive)
        except BodyTooLarge:
            log_rejected(scope, 413, f"body over max_body_bytes={self.limit}")
            await _send_json(send, 413, self.too_large())
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                if early is None:
                    return {"type": "http.request", "body": body, "more_body": False}
                return early
            return await receive()

        await self.app(scope, replay, send)


class InstanceMiddleware:
    """Adds ``X-CSHealth-Instance`` to every response (see the module docstring)."""

    def __init__(self, app: ASGIApp, instance: str | None) -> None:
        self.app = app
        self.header = (INSTANCE_HEADER.encode(), instance.encode()) if instance else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.header is None:
            await self.app(scope, receive, send)
            return

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)
