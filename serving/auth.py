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

Only ``cshealth serve --no-auth`` turns authentication off. It starts the server with a
fresh per-start id in `CSHEALTH_INSTANCE` and `CSHEALTH_NO_AUTH` set to
`no_auth_marker(id)`; any other value of `CSHEALTH_NO_AUTH` (a leftover ``yes`` or ``1``
in a shell) is refused, as is the marker together with a key (ambiguous), a blank key and
neither key nor marker: `auth_settings` raises `AuthConfigError` and the service does not
start rather than serve scores to anyone. ``cshealth serve`` drops any inherited
`CSHEALTH_NO_AUTH` before it starts the server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cshealth.errors import one_line

log = logging.getLogger(__name__)
reject_log = logging.getLogger("cshealth.rejected")

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
    """No usable API key and no explicit opt-out: the service must not start."""


#: the per-start id `cshealth serve` gives the server (echoed by `InstanceMiddleware`)
INSTANCE_ENV = "CSHEALTH_INSTANCE"


def no_auth_marker(instance: str) -> str:
    """The `CSHEALTH_NO_AUTH` value meaning `cshealth serve --no-auth` for this start."""
    return f"cshealth-serve-no-auth:{instance}"


@dataclass(frozen=True)
class AuthSettings:
    """The configured key (None when authentication is disabled)."""

    key: str | None = field(default=None, repr=False)
    disabled: bool = False

    def __post_init__(self) -> None:
        if not self.disabled and not self.key:
            raise AuthConfigError(
                f"refusing to start without an API key: set {API_KEY_ENV}, or disable "
                "authentication explicitly with `cshealth serve --no-auth`"
            )

    def __repr__(self) -> str:
        return f"AuthSettings(disabled={self.disabled}, key={'***' if self.key else None})"


def auth_settings(api_key: str | None, no_auth: str | None, instance: str | None) -> AuthSettings:
    """Settings from the key and the `--no-auth` marker (see the module doc); or AuthConfigError.

    The arguments are the `CSHEALTH_API_KEY`, `CSHEALTH_NO_AUTH` and `CSHEALTH_INSTANCE`
    settings (`cshealth.settings.Settings`; a blank key is refused there).
    """
    key = (api_key or "").strip() or None
    if not no_auth:
        return AuthSettings(key)
    instance = (instance or "").strip()
    if not instance or no_auth != no_auth_marker(instance):
        # A leftover variable must never switch authentication off.
        raise AuthConfigError(
            f"{NO_AUTH_ENV} is set ({no_auth[:20]!r}) but only `cshealth serve --no-auth` can "
            f"disable authentication: unset {NO_AUTH_ENV}"
        )
    if key:
        raise AuthConfigError(
            f"ambiguous: both {API_KEY_ENV} and the --no-auth marker are set; unset one"
        )
    log.warning("authentication is OFF (cshealth serve --no-auth): anyone who can reach "
                "the port can score")  # fmt: skip
    return AuthSettings(None, disabled=True)


def log_rejected(scope: Scope, status: int, reason: str) -> None:
    """One WARNING line per rejected request: method, path, status, reason (escaped, capped)."""
    reject_log.warning("rejected %s %s: %d %s", scope.get("method", "WS"),
                       one_line(scope.get("path", ""), 200), status,
                       one_line(reason, 300))  # fmt: skip


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BearerAuthMiddleware:
    """ASGI middleware checking ``Authorization: Bearer <key>`` (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: AuthSettings,
        open_paths: Iterable[str] = OPEN_PATHS,
        open_docs: bool = True,
    ) -> None:
        self.app = app
        self.settings = settings
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
        log_rejected(scope, 401, problem)
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
