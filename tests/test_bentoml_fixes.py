"""Every BentoML workaround in `serving.bentoml_fixes` is still needed.

Each test runs or reads BentoML's own code (the original the patch keeps) and asserts
the defect is still there: when an upgrade fixes one, its test fails, and the patch
should go. The patches themselves are tested through the service (tests/test_service.py,
tests/adversarial/test_server.py).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from serving import bentoml_fixes as fixes
from serving.openapi import complete_openapi


def _original(fn: Any) -> Any:
    return getattr(fn, "_cshealth_original", fn)


def _patched() -> None:
    assert fixes.fix_timeout_timer() and fixes.quiet_client_errors()
    assert fixes.unknown_fields_are_422() and fixes.document_openapi(complete_openapi)
    assert fixes.label_metrics_by_route(["/score"])


def test_every_patch_applies_to_the_installed_bentoml() -> None:
    _patched()


def test_timeout_middleware_still_leaves_its_timer_running() -> None:
    """BentoML's TimeoutMiddleware keeps each request alive for `timeout` seconds."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    _patched()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def pending_timers(call: Any) -> int:
        async def send(_: Any) -> None:
            return None

        await call(TimeoutMiddleware(app, timeout=60), {"type": "http"}, None, send)
        loop = asyncio.get_running_loop()
        return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]

    assert asyncio.run(pending_timers(_original(TimeoutMiddleware.__call__))) == 1
    assert asyncio.run(pending_timers(TimeoutMiddleware.__call__)) == 0  # the fix


def test_http_metrics_still_label_by_raw_path() -> None:
    """Unbounded Prometheus label values: one series per path a client invents."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Mw

    _patched()
    assert 'endpoint = scope["path"]' in inspect.getsource(Mw.__call__)


def test_client_errors_are_still_logged_as_tracebacks() -> None:
    """BentoML logs a 400 (the client's invalid body) as an ERROR with its traceback."""
    from _bentoml_impl.server import app as server_app

    _patched()
    source = inspect.getsource(_original(server_app.log_exception))
    assert "logger.error(" in source and "exc_info" in source


def test_unknown_fields_are_still_a_bare_400() -> None:
    """An unknown top-level field is BentoML's generic 400, not a 422 naming the field."""
    from _bentoml_impl.server.app import ServiceAppFactory

    _patched()
    source = inspect.getsource(_original(ServiceAppFactory.api_endpoint))
    assert "extra_forbidden" not in source and "422" not in source


def test_openapi_model_still_cannot_hold_security() -> None:
    """BentoML's OpenAPI model has no `security` field: the bearer scheme is dropped."""
    import attrs
    from bentoml._internal.service.openapi.specification import OpenAPISpecification

    names = {f.name for f in attrs.fields(OpenAPISpecification)}
    assert "security" not in names


@pytest.mark.parametrize("path", ["/score", "/accounts/x/history", "/nope"])
def test_route_labels_are_bounded(path: str) -> None:
    route = fixes.RouteLabels(["/score", "/accounts/{account_id:path}/history"])
    assert route(path) in {"/score", "/accounts/{account_id}/history", fixes.UNMATCHED}
