"""API-key authentication: a plain ASGI middleware (BentoML 1.4 has none built in).

Every HTTP request needs ``Authorization: Bearer <key>``, the key being the value of
`CSHEALTH_API_KEY`, except:

* the probes and metrics: ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``;
* the API documentation: ``/`` (BentoML's docs page), ``/docs.json`` (OpenAPI),
  ``/schema.json`` (BentoML's schema) and the docs page's static files. They describe
  the API and hold no data; `BearerAuthMiddleware(open_docs=False)` closes them too.

Everything else (the scoring endpoints, unknown paths) answers 401 with a JSON body
``{"detail": "..."}`` and ``WWW-Authenticate: Bearer`` without the right key. The key is
compared in constant time (`hmac.compare_digest` on SHA-256 digests, so not even its
length leaks) and is never logged or shown in a repr.

`CSHEALTH_NO_AUTH=1` (set by ``cshealth serve --no-auth`` only) turns authentication off.
With neither a key nor that flag `auth_from_env` raises `AuthConfigError`: the service
refuses to start rather than serve scores to anyone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

API_KEY_ENV = "CSHEALTH_API_KEY"
NO_AUTH_ENV = "CSHEALTH_NO_AUTH"
#: always reachable without a key (probes and Prometheus)
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
#: the API documentation (open unless open_docs=False)
DOC_PATHS = frozenset({"/", "/docs.json", "/schema.json"})
DOC_PREFIXES = ("/static_content/", "/assets/")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AuthConfigError(RuntimeError):
    """Neither an API key nor an explicit opt-out: the service must not start."""


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class AuthSettings:
    """The configured key (None when authentication is disabled)."""

    key: str | None = field(default=None, repr=False)
    disabled: bool = False

    def __post_init__(self) -> None:
        if not self.disabled and not self.key:
            raise AuthConfigError(
                f"refusing to start without an API key: set {API_KEY_ENV}, or disable "
                f"authentication explicitly with `cshealth serve --no-auth` ({NO_AUTH_ENV}=1)"
            )

    def __repr__(self) -> str:
        return f"AuthSettings(disabled={self.disabled}, key={'***' if self.key else None})"


def auth_from_env(environ: Mapping[str, str] | None = None) -> AuthSettings:
    """Settings from `CSHEALTH_API_KEY` / `CSHEALTH_NO_AUTH`; AuthConfigError when neither."""
    env = os.environ if environ is None else environ
    key = (env.get(API_KEY_ENV) or "").strip() or None
    if _truthy(env.get(NO_AUTH_ENV)):
        if key:
            log.warning("%s is set: authentication is disabled although %s is set",
                        NO_AUTH_ENV, API_KEY_ENV)  # fmt: skip
        else:
            log.warning("%s is set: authentication is disabled", NO_AUTH_ENV)
        return AuthSettings(None, disabled=True)
    return AuthSettings(key)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BearerAuthMiddleware:
    """ASGI middleware checking ``Authorization: Bearer <key>`` (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: AuthSettings | None = None,
        open_paths: Iterable[str] = OPEN_PATHS,
        open_docs: bool = True,
    ) -> None:
        self.app = app
        self.settings = settings if settings is not None else auth_from_env()
        self.open_paths = frozenset(open_paths) | (DOC_PATHS if open_docs else frozenset())
        self.open_prefixes = DOC_PREFIXES if open_docs else ()
        self._key = _digest(self.settings.key.encode()) if self.settings.key else None

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """None when the request carries the key, else why not (for the 401 body)."""
        values = [v for k, v in headers if k.lower() == b"authorization"]
        if not values:
            return "missing API key: send the header 'Authorization: Bearer <key>'"
        scheme, _, token = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "malformed Authorization header: expected 'Bearer <key>'"
        if self._key is None or not hmac.compare_digest(_digest(token.strip()), self._key):
            return "invalid API key"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or self.settings.disabled
            or self.is_open(scope.get("path", ""))
        ):
            await self.app(scope, receive, send)
            return
        problem = self.authorized(scope.get("headers") or [])
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.info("401 %s %s: %s", scope.get("method", "WS"), scope.get("path"), problem)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": problem}).encode()
        challenge = b'Bearer realm="cshealth"'
        if problem == "invalid API key":
            challenge += b', error="invalid_token"'
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", challenge)],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})
