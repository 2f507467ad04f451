"""The errors of a request the service cannot answer, each with its HTTP status.

A `ServiceError` becomes the JSON body ``{"error": message, "detail": [{"loc", "msg",
"type"}]}`` with its status: 422 invalid input (`RequestError`; 413 beyond a limit),
404 unknown account (`NotFound`), 503 not loaded or the store unreachable (`NotReady`).
`LoadError` is not a request's error: the service cannot load (no champion, no run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError


class ServiceError(Exception):
    """A request that cannot be answered; `status` is the HTTP status to send."""

    status = 500

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None,
                 status: int | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.message = message
        self.detail = detail or []
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": message, "detail": [{"loc", "msg", "type"}]}``."""
        return {"error": self.message, "detail": self.detail}


class RequestError(ServiceError):
    """Invalid input (422) or beyond a limit (413)."""

    status = 422


class NotReady(ServiceError):
    """Models or store not loaded (yet), or the store unreachable."""

    status = 503


class NotFound(ServiceError):
    """The account has no stored score."""

    status = 404


class LoadError(RuntimeError):
    """`Handlers.load` cannot load the models or the store (no champion, no scoring run, ...)."""


def validation_detail(err: ValidationError, prefix: Sequence[str | int]) -> list[dict]:
    out = []
    for e in err.errors(include_url=False, include_input=False, include_context=False):
        loc = [*prefix, *e["loc"]]
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            msg = f"unknown feature {loc[-1]!r} (see /model_info for the feature names)"
        out.append({"loc": loc, "msg": msg, "type": e["type"]})
    return out


def summary(detail: list[dict], what: str) -> str:
    first = detail[0]
    where = ".".join(str(x) for x in first["loc"])
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return f"invalid {what}: {where}: {first['msg']}{more}"
