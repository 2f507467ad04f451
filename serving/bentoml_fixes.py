"""Workarounds for BentoML 1.4 defects (checked on 1.4.39 and 1.4.40), each with its reason.

This is the only module that touches BentoML internals. Each patch checks that the
internal it changes is there (else it logs a warning and returns False) and keeps the
original as ``_cshealth_original``; `tests/test_bentoml_fixes.py` inspects those
originals and fails once BentoML fixes a defect upstream (then drop the patch). The
pin is a range (``bentoml>=1.4.39,<1.5``), not a version.

* `fix_timeout_timer`: TimeoutMiddleware never cancels its per-request timer (GC stalls).
* `label_metrics_by_route`: the HTTP metrics label ``endpoint`` with the raw request
  path, so every path a client invents (401s included) became a permanent Prometheus
  series (3,000 random paths: /metrics 76 KB -> 12.6 MB, +61 MB worker memory). Known
  routes keep their path; anything else is counted under one label, ``/{unmatched}``.
* `escape_access_log`: the access log writes the decoded path with ``%s``, so ``%0a``
  in a URL forged a log line. A filter escapes control characters in its arguments.
* `quiet_client_errors`: a 400 (invalid body) was logged as an ERROR traceback holding
  the client's input; client errors are now one WARNING line (`log_rejected`).
* `unknown_fields_are_422`: a request naming a field the endpoint does not take gets 422
  naming the field (the request models forbid extra fields; BentoML would say 400).
* `document_openapi`: BentoML's OpenAPI model (``OpenAPISpecification``) has no
  ``security`` and its operations list only BentoML's generic errors; /docs.json goes
  through a function of ours that adds the bearer scheme and the real error responses.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from cshealth.errors import one_line
from serving.auth import log_rejected

log = logging.getLogger(__name__)

UNMATCHED = "/{unmatched}"
#: BentoML's own routes (probes, metrics, docs); path prefixes of its static files
BENTOML_ROUTES = ("/", "/docs.json", "/schema.json", "/healthz", "/livez", "/readyz", "/metrics")
STATIC_PREFIXES = ("/static_content/", "/assets/")


def _applicable(target: Any, flag: str, attr: str) -> bool | None:
    """True: patched already; False: `attr` is not there to patch; None: go ahead."""
    if getattr(target, flag, False):
        return True
    if not hasattr(target, attr):
        log.warning("BentoML %s has no %s.%s: %s not applied", bentoml.__version__,
                    getattr(target, "__name__", target), attr, flag)  # fmt: skip
        return False
    return None


def fix_timeout_timer() -> bool:
    """Make BentoML's TimeoutMiddleware cancel its per-request timer when done.

    In BentoML 1.4.39 the middleware schedules ``loop.call_later(timeout, ...)`` per
    request and never cancels it, so every request's context (OpenTelemetry span,
    futures, ~20 objects) stays alive for `timeout` seconds. Under load that is hundreds
    of thousands of objects, and each full GC then stalls the worker for 100-200 ms
    (p99 at 32 clients: ~200 ms with the leak). Same behaviour otherwise (504 on
    timeout). Applied only to the version checked; returns whether it was applied.
    """
    from bentoml._internal.server.http import traffic

    mw = traffic.TimeoutMiddleware
    done = _applicable(mw, "_cshealth_fixed", "_set_timer_out")
    if done is not None:
        return done
    original = mw.__call__

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                resp = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504,
                )
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    __call__._cshealth_original = original
    mw.__call__ = __call__
    mw._cshealth_fixed = True
    return True


class RouteLabels:
    """Maps a request path to its metrics label: a known route, or one shared label.

    A route with parameters (Starlette syntax, ``/accounts/{account_id:path}/history``)
    labels every path it matches with its template (``/accounts/{account_id}/history``).
    """

    def __init__(self, routes: Iterable[str], prefixes: Iterable[str] = STATIC_PREFIXES) -> None:
        from starlette.routing import compile_path

        routes = [*routes, *BENTOML_ROUTES]
        self.routes = frozenset(r for r in routes if "{" not in r)
        self.templates = []
        for r in routes:
            if "{" in r:
                regex, label, _ = compile_path(r)
                self.templates.append((regex, label))
        self.prefixes = tuple(prefixes)

    def __call__(self, path: str) -> str:
        if path in self.routes:
            return path
        for regex, label in self.templates:
            if regex.match(path):
                return label
        for prefix in self.prefixes:
            if path.startswith(prefix):
                return prefix + "{path}"
        return UNMATCHED


class _Relabelled:
    """A Prometheus metric whose ``endpoint`` label goes through `route` first."""

    def __init__(self, metric: Any, route: Callable[[str], str]) -> None:
        self._metric = metric
        self._route = route

    def labels(self, *args: Any, **kwargs: Any) -> Any:
        if "endpoint" in kwargs:
            kwargs["endpoint"] = self._route(str(kwargs["endpoint"]))
        return self._metric.labels(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


_ENDPOINT_METRICS = ("metrics_request_duration", "metrics_request_total",
                     "metrics_request_in_progress", "metrics_websocket_connections",
                     "metrics_websocket_data_received", "metrics_websocket_data_sent")  # fmt: skip


def label_metrics_by_route(routes: Iterable[str]) -> bool:
    """Label BentoML's HTTP metrics by route, not by raw path (see the module docstring).

    The new-style service's app (``_bentoml_impl.server.app``) instruments with
    `RunnerTrafficMetricsMiddleware`, which creates its metrics in ``_setup`` (first
    request) and labels them ``endpoint=scope["path"]``. The smallest change: wrap
    those metric objects after ``_setup`` so ``.labels(endpoint=...)`` maps the path.
    """
    from bentoml._internal.server.http import instruments

    mw = instruments.RunnerTrafficMetricsMiddleware
    done = _applicable(mw, "_cshealth_route_labels", "_setup")
    if done is not None:
        return done
    original = mw._setup
    route = RouteLabels(routes)

    def _setup(self: Any) -> None:
        original(self)
        for name in _ENDPOINT_METRICS:
            if hasattr(self, name):
                setattr(self, name, _Relabelled(getattr(self, name), route))

    _setup._cshealth_original = original
    mw._setup = _setup
    mw._cshealth_route_labels = True
    return True


class EscapeControlChars(logging.Filter):
    """Escapes control characters in a record's string arguments (and caps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(one_line(a, 2000) if isinstance(a, str) else a
                                for a in record.args)  # fmt: skip
        return True


def escape_access_log() -> bool:
    """Install `EscapeControlChars` on ``bentoml.access`` (it logs the decoded path)."""
    logger = logging.getLogger("bentoml.access")
    if not any(isinstance(f, EscapeControlChars) for f in logger.filters):
        logger.addFilter(EscapeControlChars())
    return True


def _client_error(exc: BaseException | None) -> tuple[int, str] | None:
    """(status, short reason) when `exc` is the client's fault (4xx), else None."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = errors[0] if errors else {"loc": (), "msg": str(exc.title)}
        where = ".".join(str(x) for x in first["loc"]) or "body"
        return 400, f"{len(errors)} validation error(s), first: {where}: {first['msg']}"
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return exc.error_code.value, str(exc)
    return None


def quiet_client_errors() -> bool:
    """Client errors as one WARNING line instead of an ERROR traceback with their input."""
    from _bentoml_impl.server import app as server_app

    done = _applicable(server_app, "_cshealth_quiet_client_errors", "log_exception")
    if done is not None:
        return done
    original = server_app.log_exception

    def log_exception(request: Any, exc_info: Any = True) -> None:
        client = _client_error(sys.exc_info()[1])
        if client is None:  # a server error: keep the traceback
            original(request, exc_info)
        else:
            log_rejected(request.scope, *client)

    log_exception._cshealth_original = original
    server_app.log_exception = log_exception
    server_app._cshealth_quiet_client_errors = True
    return True


def _unknown_fields(exc: Any) -> list[dict[str, Any]]:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    return [{"loc": list(e["loc"]), "msg": f"unknown field {e['loc'][0]!r}", "type": e["type"]}
            for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]  # fmt: skip


def unknown_fields_are_422() -> bool:
    """422 naming the field for a top-level field the endpoint does not take."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from pydantic import ValidationError

    done = _applicable(ServiceAppFactory, "_cshealth_unknown_422", "api_endpoint")
    if done is not None:
        return done
    original = ServiceAppFactory.api_endpoint

    async def api_endpoint(self: Any, name: str, request: Any) -> Any:
        try:
            return await original(self, name, request)
        except ValidationError as exc:
            spec = self.service.apis[name].input_spec
            unknown = _unknown_fields(exc) if exc.title == spec.__name__ else []
            if not unknown:
                raise
            names = ", ".join(repr(d["loc"][0]) for d in unknown)
            log_rejected(request.scope, 422, f"unknown field(s) {names}")
            body = {"error": f"invalid request: unknown field(s) {names}", "detail": unknown}
            return JSONResponse(body, status_code=422)

    api_endpoint._cshealth_original = original
    ServiceAppFactory.api_endpoint = api_endpoint
    ServiceAppFactory._cshealth_unknown_422 = True
    return True


def document_openapi(post_process: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """Serve /docs.json as `post_process(spec)`, the spec being BentoML's as a dict.

    BentoML 1.4.39 builds the document from ``Service.openapi_spec``, an attrs model that
    cannot hold ``security`` (and ``asdict`` drops what it does not know); the view
    ``ServiceAppFactory.openapi_spec_view`` is where the finished dict is sent, so the
    change goes there. A failing `post_process` is logged and BentoML's spec served.
    """
    from _bentoml_impl.server.app import ServiceAppFactory

    done = _applicable(ServiceAppFactory, "_cshealth_openapi", "openapi_spec_view")
    if done is False:
        return done
    ServiceAppFactory._cshealth_openapi_post = staticmethod(post_process)
    if done:
        return done

    async def openapi_spec_view(self: Any, req: Any) -> Any:
        try:
            spec = self.service.openapi_spec.asdict()
        except Exception:
            log.exception("generating the OpenAPI document failed")
            return JSONResponse({"error": "Failed to generate OpenAPI spec"}, status_code=500)
        try:
            spec = self._cshealth_openapi_post(spec)
        except Exception:
            log.exception("completing the OpenAPI document failed (serving BentoML's)")
        return JSONResponse(spec)

    openapi_spec_view._cshealth_original = ServiceAppFactory.openapi_spec_view
    ServiceAppFactory.openapi_spec_view = openapi_spec_view
    ServiceAppFactory._cshealth_openapi = True
    return True
