"""The BentoML 1.4 service: a thin HTTP layer over `serving.app.HealthApp`.

Run: ``bentoml serve serving.service:HealthService --port 3000`` (``cshealth serve``).

Endpoints (JSON in and out):

* ``POST /score`` ``{"account_ids": [...]}`` -> ``{"results": [...], "errors": [...]}``:
  the newest scoring run's stored scores; an unknown id fails its own item.
* ``POST /score_features`` ``{"rows": [{feature: value, ...}, ...]}`` -> same shape:
  explicit feature rows scored by the loaded champions.
* ``POST /model_info`` (empty body or ``{}``) -> versions, training time, test metrics,
  features, the store's newest run, the request limits.
* BentoML's own ``/healthz``, ``/livez``, ``/readyz`` (503 until the models and the store
  are loaded and reachable: `HealthService.__is_ready__`), ``/metrics`` (Prometheus, with
  ``cshealth_batch_requests`` and ``cshealth_unknown_accounts_total`` added), and the
  docs ``/`` + OpenAPI ``/docs.json``.

Status codes: 200; 400 malformed JSON or a body not matching the schema (BentoML's
validation: ``{"error", "detail": [{"loc", "msg", "type"}]}``, loc naming the field);
401 missing or wrong API key; 413 more ids/rows than ``serving.max_ids_per_request`` /
``max_rows_per_request``; 422 feature rows failing the models' metadata (loc
``["rows", i, field]``); 503 while not loaded or when the store is unreachable.

Environment: `CSHEALTH_API_KEY` (required unless `CSHEALTH_NO_AUTH=1`: without either,
importing this module raises `AuthConfigError` and ``bentoml serve`` exits at once),
`CSHEALTH_PARAMS`, `MLFLOW_TRACKING_URI`, `CSHEALTH_DB_URL` (see `HealthApp.from_env`),
`CSHEALTH_WORKERS` (BentoML worker processes, default 1: on 2 cores one async worker
with micro-batching serves more than two, see below),
`CSHEALTH_LOAD_RETRY_S` (while loading fails, e.g. before the first `cshealth score`,
retry this often; default 10), `CSHEALTH_BATCH_WAIT_MS` (extra wait to fill a batch,
default 0: batches form only from requests arriving while one is scored),
`CSHEALTH_MICROBATCH=0` (no micro-batching: each request scored on its own in a thread;
for comparison in the benchmark), `CSHEALTH_BENTOML_TIMER_FIX=0` (leave BentoML's timeout
middleware as it is; see `_fix_bentoml_timeout_timer`).

Batching, measured (benchmarks/bench_serving.py, 2 cores, results/serving*.json): the
`MicroBatcher` in `HealthApp` against one thread hop per request: single-account /score
at 8 clients 1,184 vs 427 req/s (p99 10 vs 36 ms), at 32 clients 1,467 vs 511 req/s
(p99 32 vs 103 ms); single-row /score_features at 8 clients 168 vs 21 req/s (one Scorer
call costs ~25 ms whatever the row count, so coalescing is what makes it scale). Two
workers on 2 cores: 952 req/s at 8 clients, below one worker. BentoML's adaptive
batching does not fit these endpoints (see `serving.app`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from typing import Annotated, Any

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse

from serving.api import AccountId, ModelInfo, ScoreResponse
from serving.app import HealthApp, LoadError, NotReady, ServiceError
from serving.auth import BearerAuthMiddleware, auth_from_env

log = logging.getLogger("cshealth.service")

#: checked at import: `bentoml serve` exits with this error instead of serving unprotected
AUTH = auth_from_env()
WORKERS = int(os.environ.get("CSHEALTH_WORKERS") or 1)
REQUEST_TIMEOUT_S = 30

AccountIds = Annotated[
    list[AccountId],
    Field(min_length=1, description="Account ids to look up in the newest scoring run (at "
          "most serving.max_ids_per_request; repeated ids are answered once)."),
]  # fmt: skip
FeatureRows = Annotated[
    list[dict[str, Any]],
    Field(min_length=1, description="Feature rows: optional account_id and as_of, feature "
          "values by name (see /model_info); absent or null features are missing. At most "
          "serving.max_rows_per_request rows."),
]  # fmt: skip

_metrics: dict[str, Any] = {}


def _fix_bentoml_timeout_timer() -> bool:
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
    if getattr(mw, "_cshealth_fixed", False):
        return True
    if bentoml.__version__ != "1.4.39" or not hasattr(mw, "_set_timer_out"):
        return False

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

    mw.__call__ = __call__
    mw._cshealth_fixed = True
    return True


if os.environ.get("CSHEALTH_BENTOML_TIMER_FIX", "1") != "0":
    _fix_bentoml_timeout_timer()


def _prometheus() -> dict[str, Any]:
    """Our metrics, created once per process (after BentoML set up multiprocess mode)."""
    if not _metrics:
        from prometheus_client import Counter, Histogram

        _metrics["batch"] = Histogram(
            "cshealth_batch_requests", "Requests coalesced into one scoring batch",
            ["endpoint"], buckets=(1, 2, 4, 8, 16, 32, 64),
        )  # fmt: skip
        _metrics["unknown"] = Counter(
            "cshealth_unknown_accounts", "Requested account ids absent from the latest run"
        )
    return _metrics


def _observe_batch(endpoint: str) -> Any:
    hist = _prometheus()["batch"].labels(endpoint)
    return lambda calls, _items: hist.observe(calls)


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else default


def _error(err: ServiceError) -> JSONResponse:
    headers = {"Retry-After": "5"} if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


@bentoml.service(
    name="cshealth",
    workers=WORKERS,
    traffic={"timeout": REQUEST_TIMEOUT_S},
)
class HealthService:
    """Churn / expansion scores, health and explanations over HTTP (see the module doc)."""

    def __init__(self) -> None:
        auth_from_env()  # the worker refuses too (defence in depth; see AUTH)
        self.load_retry_s = _env_float("CSHEALTH_LOAD_RETRY_S", 10.0)
        self.batch_wait_s = _env_float("CSHEALTH_BATCH_WAIT_MS", 0.0) / 1000
        self.microbatch = os.environ.get("CSHEALTH_MICROBATCH", "1").strip() != "0"
        self.app: HealthApp | None = None
        self.load_error = "loading the models and the score store"
        self._stop = threading.Event()
        self._loader = threading.Thread(target=self._load, name="cshealth-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        """Load in the background (readiness fails meanwhile); retry until it works."""
        while not self._stop.is_set():
            try:
                app = HealthApp.from_env(batch_wait_s=self.batch_wait_s)
            except LoadError as err:
                self.load_error = str(err)
                log.error("not ready: %s (retrying in %g s)", err, self.load_retry_s)
            except Exception as err:
                self.load_error = f"loading failed: {err}"
                log.exception("not ready: loading failed (retrying in %g s)", self.load_retry_s)
            else:
                app.id_batcher.on_batch = _observe_batch("score")
                app.row_batcher.on_batch = _observe_batch("score_features")
                self.app = app
                # Everything loaded so far (mlflow, pandas, models) is long-lived: keep it
                # out of the cyclic GC's full collections, which otherwise stall the event
                # loop for hundreds of ms every few thousand requests.
                gc.freeze()
                log.info("ready: champions %s", app.model_version)
                return
            self._stop.wait(self.load_retry_s)

    def __is_ready__(self) -> bool:
        app = self.app
        return app is not None and app.ready()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self._stop.set()
        if self.app is not None:
            self.app.close()

    def _require(self) -> HealthApp:
        app = self.app
        if app is None:
            raise NotReady(f"not ready: {self.load_error}")
        return app

    @bentoml.api(route="/score")
    async def score(
        self,
        account_ids: AccountIds,
    ) -> ScoreResponse:
        """Stored scores, health and explanations of accounts by id."""
        try:
            app = self._require()
            if self.microbatch:
                res = await app.ascore_ids(account_ids)
            else:
                res = await asyncio.to_thread(app.score_ids, account_ids)
        except ServiceError as err:
            return _error(err)  # type: ignore[return-value]
        if res.errors:
            _prometheus()["unknown"].inc(len(res.errors))
        return res

    @bentoml.api(route="/score_features")
    async def score_features(
        self,
        rows: FeatureRows,
    ) -> ScoreResponse:
        """Scores, health and explanations of explicit feature rows (what-if)."""
        try:
            app = self._require()
            if self.microbatch:
                return await app.ascore_rows(rows)
            return await asyncio.to_thread(app.score_rows, rows)
        except ServiceError as err:
            return _error(err)  # type: ignore[return-value]

    @bentoml.api(route="/model_info")
    async def model_info(self) -> ModelInfo:
        """The loaded champion models, their features and test metrics."""
        try:
            app = self._require()
        except ServiceError as err:
            return _error(err)  # type: ignore[return-value]
        return await asyncio.to_thread(app.model_info)


HealthService.add_asgi_middleware(BearerAuthMiddleware, settings=AUTH)
