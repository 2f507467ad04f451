"""The BentoML 1.4 service: a thin HTTP layer over `serving.handlers.Handlers`.

Run: ``bentoml serve serving.service:HealthService --port 3000`` (``cshealth serve``).

Endpoints (JSON in and out):

* ``POST /score`` ``{"account_ids": [...]}`` -> ``{"results": [...], "errors": [...]}``:
  the newest scoring run's stored scores; an unknown id fails its own item.
* ``POST /score_features`` ``{"rows": [{feature: value, ...}, ...]}`` -> same shape:
  explicit feature rows scored by the loaded champions.
* ``POST /model_info`` (empty body or ``{}``) -> versions, training time, test metrics,
  features, the store's newest run, the request limits.
* ``GET /accounts?csm_id=&band=red|yellow|green&segment=&limit=&offset=0`` ->
  ``{"run_id", "as_of", "total", "limit", "offset", "results": [...]}``: the newest run's
  accounts matching every filter, lowest health first (a CSM's red accounts); limit
  1..``max_ids_per_request`` (default 100 or that limit; 413 beyond).
* ``GET /accounts/{account_id}/history`` -> ``{"account_id", "runs": [...]}``: every
  stored scoring of the account, oldest first (health, band, probabilities, change,
  reasons); 404 when it has none.
* ``GET /accounts/{account_id}/explanation.svg``: the waterfall picture of the account's
  latest health (`serving.waterfall`; image/svg+xml); 404 for an unknown account.
  These three are a FastAPI app mounted into the service (`accounts_api`, class views
  over the same `Handlers`): the same middlewares (auth, limits, metrics) apply.
* BentoML's own ``/healthz``, ``/livez``, ``/readyz`` (503 until the models and the store
  are loaded and reachable: `HealthService.__is_ready__`), ``/metrics`` (Prometheus, with
  ``cshealth_batch_requests`` and ``cshealth_unknown_accounts_total`` added), and the
  docs ``/`` + OpenAPI ``/docs.json``.

Status codes: 200; 400 malformed JSON or a body not matching the schema (BentoML's
validation: ``{"error", "detail": [{"loc", "msg", "type"}]}``, loc naming the field);
401 missing or wrong API key; 413 more ids/rows than ``serving.max_ids_per_request`` /
``max_rows_per_request``, or a body over ``serving.max_body_bytes`` (refused before it
is read; `serving.middleware`); 404 an account without a stored score (GET paths);
422 a top-level field the endpoint does not take (loc ``[field]``), feature rows failing
the models' metadata (loc ``["rows", i, field]``) or invalid GET parameters (loc
``["query" | "path", name]``); 503 while not loaded or when the store is unreachable.
/docs.json documents all of them per operation, and the bearer scheme
(`serving.openapi.complete_openapi`, installed by `serving.bentoml_fixes`). Each
rejected request is logged as one WARNING line (method, path, status, reason; control
characters escaped), never with a traceback or the client's input.

Hardening (see `serving.bentoml_fixes`, `serving.middleware`, `serving.process`):
the HTTP metrics are labelled by route (the account paths by their template, unknown
paths share one label), the access log
escapes control characters, answers carry ``X-CSHealth-Instance`` (the per-start id
``cshealth serve`` checks readiness against), and the worker stops when its parent dies.

Settings: the environment is read once, at import, into `cshealth.settings.Settings`
(`SETTINGS`; the README's settings table): the API key (required; a blank key is
refused; only ``cshealth serve --no-auth`` can run without one, see `serving.auth`:
otherwise importing this module prints one ``error:`` line and ``bentoml serve`` exits
with status 2), the params file, the MLflow registry and the store, the worker count,
the load retry interval and the batching knobs. The params file's ``serving:``,
``health:`` and ``explanations:`` sections are read when the models load.

Batching, measured (benchmarks/bench_serving.py, 2 cores, results/serving*.json): the
`MicroBatcher` in `Handlers` against one thread hop per request: single-account /score
at 8 clients 1,184 vs 427 req/s (p99 10 vs 36 ms), at 32 clients 1,467 vs 511 req/s
(p99 32 vs 103 ms); single-row /score_features at 8 clients 168 vs 21 req/s (one Scorer
call costs ~25 ms whatever the row count, so coalescing is what makes it scale). Two
workers on 2 cores: 952 req/s at 8 clients, below one worker. BentoML's adaptive
batching does not fit these endpoints (see `serving.batching`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from typing import TYPE_CHECKING, Annotated, Any, Literal

import bentoml
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response

from cshealth.config import ConfigError, load_config
from cshealth.errors import UserError, one_line
from cshealth.files import withhold
from cshealth.settings import Settings
from serving import bentoml_fixes as fixes
from serving.auth import (
    AuthConfigError,
    AuthSettings,
    BearerAuthMiddleware,
    auth_settings,
    log_rejected,
)
from serving.errors import LoadError, NotReady, ServiceError
from serving.middleware import BodyLimitMiddleware, InstanceMiddleware
from serving.openapi import complete_openapi
from serving.process import ParentWatchdog
from serving.schemas import (
    MAX_ID_LENGTH,
    MAX_OFFSET,
    AccountHistory,
    AccountIds,
    AccountList,
    ErrorBody,
    FeatureRows,
    ModelInfo,
    ModelInfoRequest,
    ScoreFeaturesRequest,
    ScoreRequest,
    ScoreResponse,
)
from serving.settings import ServingParams

if TYPE_CHECKING:  # the handlers (models, LightGBM) load in the worker, not at import
    from serving.handlers import Handlers

log = logging.getLogger("cshealth.service")


def _settings_or_exit() -> tuple[Settings, AuthSettings]:
    """The settings and the auth they give, or one `error:` line on stderr and exit 2."""
    try:
        settings = Settings.from_env()
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        return settings, auth_settings(key, settings.no_auth, settings.instance)
    except (UserError, AuthConfigError) as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


#: read at import: `bentoml serve` exits with this error instead of serving unprotected
SETTINGS, AUTH = _settings_or_exit()
REQUEST_TIMEOUT_S = 30

_metrics: dict[str, Any] = {}


def _serving_params() -> ServingParams:
    """The `serving:` parameters for the middlewares (defaults if the file is unusable:
    the loader then reports the problem and readiness stays 503)."""
    try:
        return load_config(SETTINGS.params_file).serving
    except (ConfigError, OSError) as err:
        log.warning("serving parameters: %s (using the defaults)", one_line(str(err)))
        return ServingParams()


def load_handlers(settings: Settings) -> Handlers:
    """The handlers over the champions and the store, with the params file's sections."""
    from serving.handlers import Handlers

    try:
        cfg = load_config(settings.params_file)
    except ConfigError as err:
        raise LoadError(str(err)) from err
    return Handlers.load(cfg.health, cfg.explanations, cfg.serving, settings)


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


def _error(err: ServiceError, path: str, method: str = "POST") -> JSONResponse:
    if err.status < 500:
        log_rejected({"method": method, "path": path}, err.status, err.message)
    headers = {"Retry-After": "5"} if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


# ----- the account endpoints (GET): a FastAPI app mounted into the service ---------------------
#: their routes (Starlette syntax: an account id may hold a slash)
HISTORY_ROUTE = "/accounts/{account_id:path}/history"
SVG_ROUTE = "/accounts/{account_id:path}/explanation.svg"
ACCOUNT_ROUTES = ("/accounts", HISTORY_ROUTE, SVG_ROUTE)

accounts_api = FastAPI(
    title="cshealth accounts", docs_url=None, redoc_url=None, openapi_url=None,
)  # fmt: skip

_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
PathId = Annotated[str, PathParam(
    min_length=1, max_length=MAX_ID_LENGTH, pattern=_ID_PATTERN,
    description="The account id (1..128 characters, no control characters).",
)]  # fmt: skip
CsmQuery = Annotated[str | None, Query(
    min_length=1, max_length=MAX_ID_LENGTH, pattern=_ID_PATTERN,
    description="Only this CSM's accounts.",
)]  # fmt: skip
SegmentQuery = Annotated[str | None, Query(
    min_length=1, max_length=MAX_ID_LENGTH, pattern=_ID_PATTERN,
    description="Only accounts of this segment (e.g. smb, mid_market, enterprise).",
)]  # fmt: skip
BandQuery = Annotated[Literal["red", "yellow", "green"] | None, Query(
    description="Only accounts in this band.",
)]  # fmt: skip
LimitQuery = Annotated[int | None, Query(
    ge=1, description="Page size: 1..serving.max_ids_per_request (413 beyond); default "
    "100, or max_ids_per_request when lower.",
)]  # fmt: skip
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Accounts to skip.")]
_ERROR_422 = {422: {"model": ErrorBody, "description": "Invalid parameters (naming them)."}}


class SVGResponse(Response):
    media_type = "image/svg+xml"


def _json(model: Any) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


@accounts_api.exception_handler(RequestValidationError)
async def _invalid_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in the API's own shape (`ErrorBody`), logged in one line."""
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in exc.errors()]  # fmt: skip
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    where = ".".join(str(x) for x in first["loc"])
    message = f"invalid request: {where}: {first['msg']}{more}"
    log_rejected(request.scope, 422, message)
    return JSONResponse({"error": message, "detail": detail}, status_code=422)


@bentoml.asgi_app(accounts_api, path="/")
@bentoml.service(
    name="cshealth",
    workers=SETTINGS.workers,
    traffic={"timeout": REQUEST_TIMEOUT_S},
)
class HealthService:
    """Churn / expansion scores, health and explanations over HTTP (see the module doc)."""

    def __init__(self) -> None:
        if AUTH.disabled:
            log.warning("authentication is OFF (cshealth serve --no-auth): anyone who can "
                        "reach the port can score")  # fmt: skip
        # This runs in the worker: stop it when bentoml serve dies (see serving.process).
        self._watchdog = ParentWatchdog().start()
        withhold(SETTINGS.umask)  # what the worker writes (logs, stores) stays private
        self.load_retry_s = SETTINGS.load_retry_s
        self.microbatch = SETTINGS.microbatch
        self.app: Handlers | None = None
        self.load_error = "loading the models and the score store"
        self._stop = threading.Event()
        self._loader = threading.Thread(target=self._load, name="cshealth-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        """Load in the background (readiness fails meanwhile); retry until it works."""
        while not self._stop.is_set():
            try:
                app = load_handlers(SETTINGS)
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

    def _require(self) -> Handlers:
        app = self.app
        if app is None:
            raise NotReady(f"not ready: {self.load_error}")
        return app

    @bentoml.api(route="/score", input_spec=ScoreRequest)
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
            return _error(err, "/score")  # type: ignore[return-value]
        if res.errors:
            _prometheus()["unknown"].inc(len(res.errors))
        return res

    @bentoml.api(route="/score_features", input_spec=ScoreFeaturesRequest)
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
            return _error(err, "/score_features")  # type: ignore[return-value]

    @bentoml.api(route="/model_info", input_spec=ModelInfoRequest)
    async def model_info(self) -> ModelInfo:
        """The loaded champion models, their features and test metrics."""
        try:
            app = self._require()
        except ServiceError as err:
            return _error(err, "/model_info")  # type: ignore[return-value]
        return await asyncio.to_thread(app.model_info)

    # ----- GET /accounts... (FastAPI class views: `self` is the service instance) -----------
    async def _accounts_call(self, route: str, fn: Any, *args: Any) -> Response:
        """`fn(app, *args)` in a thread; a ServiceError as its JSON error body."""
        try:
            app = self._require()
            return await asyncio.to_thread(fn, app, *args)
        except ServiceError as err:
            return _error(err, route, "GET")

    @accounts_api.get(
        "/accounts", response_model=AccountList, operation_id="cshealth__list_accounts",
        responses=_ERROR_422, tags=["Service APIs"],
    )  # fmt: skip
    async def list_accounts(
        self,
        csm_id: CsmQuery = None,
        band: BandQuery = None,
        segment: SegmentQuery = None,
        limit: LimitQuery = None,
        offset: OffsetQuery = 0,
    ) -> Any:
        """The newest scoring run's accounts, lowest health first, filtered by CSM, band
        and segment (e.g. a CSM's red accounts); `total` counts every match."""
        return await self._accounts_call(
            "/accounts", lambda app: _json(app.list_accounts(csm_id, band, segment, limit,
                                                             offset)),
        )  # fmt: skip

    @accounts_api.get(
        HISTORY_ROUTE, response_model=AccountHistory, operation_id="cshealth__account_history",
        responses=_ERROR_422, tags=["Service APIs"],
    )  # fmt: skip
    async def account_history(self, account_id: PathId) -> Any:
        """Every stored scoring of one account, oldest first: health, band, probabilities,
        change and churn reasons per run."""
        return await self._accounts_call(
            "/accounts/{account_id}/history", lambda app: _json(app.account_history(account_id))
        )

    @accounts_api.get(
        SVG_ROUTE, response_class=SVGResponse, operation_id="cshealth__explanation_svg",
        responses={**_ERROR_422, 200: {
            "description": "The waterfall picture (SVG).",
            "content": {"image/svg+xml": {"schema": {"type": "string"}}}}},
        tags=["Service APIs"],
    )  # fmt: skip
    async def explanation_svg(self, account_id: PathId) -> Any:
        """The waterfall of the account's latest health: the average account's health, the
        points each feature family adds or takes away, the score (image/svg+xml)."""
        return await self._accounts_call(
            "/accounts/{account_id}/explanation.svg",
            lambda app: SVGResponse(app.explanation_svg(account_id)),
        )


# BentoML's defects, worked around (serving/bentoml_fixes.py says why, each)
if SETTINGS.bentoml_timer_fix:
    fixes.fix_timeout_timer()
fixes.escape_access_log()
fixes.quiet_client_errors()
fixes.unknown_fields_are_422()
fixes.document_openapi(complete_openapi)
fixes.label_metrics_by_route([*(api.route for api in HealthService.apis.values()),
                              *ACCOUNT_ROUTES])  # fmt: skip
# outermost first: every answer names its instance; auth before the body is read
HealthService.add_asgi_middleware(InstanceMiddleware, instance=SETTINGS.instance)
HealthService.add_asgi_middleware(BearerAuthMiddleware, settings=AUTH)
HealthService.add_asgi_middleware(BodyLimitMiddleware, limit=_serving_params().body_limit())
