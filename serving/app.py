"""The service's logic as plain classes, testable without a server.

`HealthApp` holds the champion models (as a `Scorer`), the score store and the request
limits, and answers the three API calls:

* `score_ids(ids)`: the newest scoring run's stored scores (scores and explanations are
  computed at batch time, `cshealth score`); an id absent from that run fails its own
  item (`errors`), the others succeed; a repeated id is answered once, in first-seen
  order.
* `score_rows(rows)`: scores explicit feature rows with the loaded champions (what-if,
  external systems); rows are validated against the models' feature metadata
  (`serving.api.row_adapter`); ``health_change`` is null (no previous scoring).
* `model_info()`: versions, training time, backtest metrics, features, newest store run.

Errors of a whole request are `ServiceError`s carrying their HTTP status: 422 invalid
input (naming the field, for rows ``["rows", <index>, <field>]``), 413 beyond
`max_ids_per_request` / `max_rows_per_request`, 503 when the store is unreachable or
the app is not loaded. Nothing else escapes as an exception from the scoring calls.

Concurrency: the async variants (`ascore_ids`, `ascore_rows`) go through a
`MicroBatcher` each. Concurrent requests that arrive while a batch is being scored are
coalesced into the next batch: one store query (or one Scorer call) for all of them,
run in a worker thread. A request arriving when nothing runs is dispatched at once, so
batching adds no latency when idle. (BentoML's adaptive batching does not fit: the
response is not one item per input element, and an internal batchable endpoint
cannot be called through ``self``.)

LightGBM prediction runs single-threaded (`pin_threads`): with a handful of rows per
call, OpenMP threads only add contention (see STACK_NOTES). The model artifacts are
not changed: the booster is wrapped at load time.

`HealthApp.from_env()` builds everything from the environment: `CSHEALTH_PARAMS`
(params file, default ./params.yaml), `MLFLOW_TRACKING_URI` (the registry holding the
``champion`` aliases) and `CSHEALTH_DB_URL` (the store; default ``serving.db_file``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
from pydantic import ValidationError

from features.contract import Col
from features.meta import Feature
from features.targets import CHURN, EXPANSION, TARGET_NAMES
from serving.api import (
    FeatureInfo,
    ItemError,
    ModelInfo,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    StoreRunInfo,
    TargetModelInfo,
    finite_or_none,
    row_adapter,
)
from serving.predictor import ModelPair, Scorer
from serving.settings import ServingParams
from serving.store import ScoreStore, db_url
from training.model import HealthModel

log = logging.getLogger(__name__)

PARAMS_ENV = "CSHEALTH_PARAMS"
TARGETS = TARGET_NAMES

P = TypeVar("P")
R = TypeVar("R")


# ----- errors -------------------------------------------------------------------------------
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


class LoadError(RuntimeError):
    """`HealthApp.from_env` cannot build the app (no champion, no scoring run, ...)."""


def _validation_detail(err: ValidationError, prefix: Sequence[str | int]) -> list[dict]:
    out = []
    for e in err.errors(include_url=False, include_input=False, include_context=False):
        loc = [*prefix, *e["loc"]]
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            msg = f"unknown feature {loc[-1]!r} (see /model_info for the feature names)"
        out.append({"loc": loc, "msg": msg, "type": e["type"]})
    return out


def _summary(detail: list[dict], what: str) -> str:
    first = detail[0]
    where = ".".join(str(x) for x in first["loc"])
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return f"invalid {what}: {where}: {first['msg']}{more}"


# ----- LightGBM threads -----------------------------------------------------------------------
class _PinnedBooster:
    """A LightGBM booster whose predictions use `num_threads` threads (unless told)."""

    def __init__(self, booster: Any, num_threads: int) -> None:
        self._booster = booster
        self._num_threads = num_threads

    def predict(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("num_threads", self._num_threads)
        return self._booster.predict(data, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._booster, name)


def pin_threads(model: HealthModel, num_threads: int = 1) -> HealthModel:
    """A copy of `model` predicting with `num_threads` LightGBM threads (artifact unchanged)."""
    booster = getattr(model.booster, "_booster", model.booster)
    return dataclasses.replace(model, booster=_PinnedBooster(booster, num_threads))


# ----- micro-batching -------------------------------------------------------------------------
def _count(payload: Any) -> int:
    """Items in a request's payload (a list); anything else counts as one."""
    return len(payload) if isinstance(payload, list | tuple) else 1


class MicroBatcher(Generic[P, R]):
    """Coalesces concurrent async calls into one `fn(payloads) -> results` in a thread.

    A call made while no batch runs is dispatched at once (after `max_wait_s`, default
    0); calls made while a batch runs queue up and go together as the next batch, at
    most `max_items` items (measured by `size`) unless a single call is larger. `fn`
    returns one result per payload, in order; a result that is an exception is raised
    to its caller only. One worker thread: batches run one at a time.
    """

    def __init__(
        self,
        fn: Callable[[list[P]], list[R | BaseException]],
        *,
        size: Callable[[P], int] = lambda _: 1,
        max_items: int = 1000,
        max_wait_s: float = 0.0,
        name: str = "batch",
    ) -> None:
        self._fn = fn
        self._size = size
        self._max_items = max_items
        self._max_wait_s = max_wait_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"cshealth-{name}")
        self._pending: list[tuple[P, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # statistics: batches run and calls served
        self.calls = 0
        self.on_batch: Callable[[int, int], None] | None = None  # (calls, items) hook

    async def submit(self, payload: P) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (tests)
            self._loop, self._pending, self._task = loop, [], None
        fut: asyncio.Future = loop.create_future()
        self._pending.append((payload, fut))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await fut

    def _take(self) -> list[tuple[P, asyncio.Future]]:
        batch, items = [], 0
        while self._pending:
            n = self._size(self._pending[0][0])
            if batch and items + n > self._max_items:
                break
            batch.append(self._pending.pop(0))
            items += n
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._max_wait_s > 0:
                await asyncio.sleep(self._max_wait_s)
            while self._pending:
                batch = [(p, f) for p, f in self._take() if not f.done()]
                if not batch:
                    continue
                payloads = [p for p, _ in batch]
                self.batches += 1
                self.calls += len(batch)
                if self.on_batch is not None:
                    try:
                        self.on_batch(len(batch), sum(self._size(p) for p in payloads))
                    except Exception:  # a metrics hook must never block the callers
                        log.exception("micro-batcher: on_batch hook failed")
                try:
                    results = await loop.run_in_executor(self._pool, self._fn, payloads)
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch function returned {len(results)} results "
                                           f"for {len(batch)} calls")  # fmt: skip
                except Exception as err:  # fn failed as a whole: every caller gets it
                    results = [err] * len(batch)
                for (_, fut), res in zip(batch, results, strict=True):
                    if fut.done():  # the caller went away
                        continue
                    if isinstance(res, BaseException):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        finally:
            self._task = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ----- the app --------------------------------------------------------------------------------
def _features_used(models: ModelPair) -> tuple[list[Feature], dict[str, list[str]]]:
    """Union of both models' features (churn's order first) and which model reads each."""
    feats: dict[str, Feature] = {}
    used: dict[str, list[str]] = {}
    for target, m, _ in models.by_target():
        for f in m.features:
            feats.setdefault(f.name, f)
            used.setdefault(f.name, []).append(target)
    return list(feats.values()), used


def _categories(models: ModelPair, name: str) -> list[str] | None:
    cats = [m.categories[name] for m in (models.churn, models.expansion) if name in m.categories]
    if not cats:
        return None
    return sorted(set(cats[0]).union(*cats[1:]))


class HealthApp:
    """Scores by account id (store) and by explicit features (models); see the module doc."""

    def __init__(
        self,
        scorer: Scorer,
        store: ScoreStore,
        limits: ServingParams | None = None,
        *,
        model_meta: dict[str, dict[str, Any]] | None = None,
        batch_wait_s: float = 0.0,
    ) -> None:
        self.scorer = scorer
        self.store = store
        self.limits = limits or ServingParams()
        self.features, self._used_by = _features_used(scorer.models)
        self.feature_names = [f.name for f in self.features]
        self._rows = row_adapter(self.features)
        self._model_meta = model_meta or {}
        self._static_info = self._build_info()
        self.id_batcher: MicroBatcher[list[str], ScoreResponse] = MicroBatcher(
            self.score_ids_batch, size=_count, max_items=self.limits.max_ids_per_request,
            max_wait_s=batch_wait_s, name="ids",
        )  # fmt: skip
        self.row_batcher: MicroBatcher[list[dict], ScoreResponse] = MicroBatcher(
            self.score_rows_batch, size=_count, max_items=self.limits.max_rows_per_request,
            max_wait_s=batch_wait_s, name="rows",
        )  # fmt: skip

    # ----- construction from the environment --------------------------------------------
    @classmethod
    def from_env(
        cls, params: Path | str | None = None, *, num_threads: int = 1, batch_wait_s: float = 0.0
    ) -> HealthApp:
        """Champions from the MLflow registry, the store from `CSHEALTH_DB_URL` (or params).

        Raises `LoadError` with what to do when there is no champion, the store is
        unreachable or holds no scoring run yet.
        """
        import sqlalchemy as sa

        from cshealth.config import ConfigError, load_config
        from training import tracking

        t0 = time.perf_counter()
        path = params or os.environ.get(PARAMS_ENV)
        try:
            cfg = load_config(Path(path) if path else None)
        except ConfigError as err:
            raise LoadError(str(err)) from err
        loaded: dict[str, tuple[HealthModel, str]] = {}
        for target in TARGETS:
            try:
                model, version = tracking.load_champion(target)
            except (tracking.TrackingError, OSError, ValueError, KeyError) as err:
                raise LoadError(
                    f"cannot load the {target} champion from {tracking.tracking_uri()}: {err}"
                ) from err
            loaded[target] = (pin_threads(model, num_threads), str(version))
        meta: dict[str, dict[str, Any]] = {}
        try:
            for row in tracking.list_models():
                if str(row["version"]) == loaded[row["target"]][1]:
                    meta[row["target"]] = {"registered_name": row["name"],
                                           "trained_at": row["created"], "run_id": row["run_id"]}
        except Exception as err:  # metadata only: serve without it
            log.warning("could not read registry metadata: %s", err)
        store = ScoreStore(db_url(cfg.serving.db_file), create=False)  # read-only use
        try:
            run = store.latest_run() if sa.inspect(store.engine).has_table("scoring_runs") else None
        except sa.exc.SQLAlchemyError as err:
            store.close()
            raise LoadError(f"the score store {store!r} is unreachable: {err}") from err
        if run is None:
            store.close()
            raise LoadError(f"the score store {store!r} holds no scoring run yet: run "
                            "`cshealth score` first")  # fmt: skip
        churn, expansion = loaded[CHURN.name], loaded[EXPANSION.name]
        pair = ModelPair(churn[0], expansion[0], churn[1], expansion[1])
        app = cls(Scorer(pair, cfg.health), store, cfg.serving, model_meta=meta,
                  batch_wait_s=batch_wait_s)  # fmt: skip
        log.info("loaded champions %s and %r (latest run %s, as_of %s) in %.1f s",
                 pair.version, store, run["run_id"], run["as_of"],
                 time.perf_counter() - t0)  # fmt: skip
        return app

    def close(self) -> None:
        self.id_batcher.close()
        self.row_batcher.close()
        self.store.close()

    # ----- readiness --------------------------------------------------------------------------
    def ready(self) -> bool:
        """Models loaded (by construction) and the store reachable with a scoring run."""
        try:
            return self.store.latest_run() is not None
        except Exception as err:
            log.warning("not ready: the score store %r: %s", self.store, err)
            return False

    @property
    def model_version(self) -> dict[str, str]:
        return self.scorer.models.version

    # ----- score by id --------------------------------------------------------------------------
    def check_ids(self, ids: Any) -> list[str]:
        """Validated, de-duplicated ids (first-seen order); RequestError otherwise."""
        limit = self.limits.max_ids_per_request
        if isinstance(ids, list | tuple) and len(ids) > limit:
            raise RequestError(
                f"too many account_ids: {len(ids)} > max_ids_per_request={limit}",
                [{"loc": ["account_ids"], "msg": f"at most {limit} ids per request",
                  "type": "too_long"}], status=413,
            )  # fmt: skip
        try:
            req = ScoreRequest.model_validate({"account_ids": ids})
        except ValidationError as err:
            detail = _validation_detail(err, [])
            raise RequestError(_summary(detail, "request"), detail) from None
        return list(dict.fromkeys(req.account_ids))

    def score_ids_batch(self, requests: list[list[str]]) -> list[ScoreResponse | ServiceError]:
        """Several requests' ids in one store query; one response (or error) per request."""
        out: list[ScoreResponse | ServiceError | None] = [None] * len(requests)
        wanted: list[tuple[int, list[str]]] = []
        for i, ids in enumerate(requests):
            try:
                wanted.append((i, self.check_ids(ids)))
            except RequestError as err:
                out[i] = err
        if wanted:
            every = list(dict.fromkeys(a for _, ids in wanted for a in ids))
            try:
                found = self.store.latest_scores(every)
            except Exception as err:
                log.error("score store %r failed: %s", self.store, err)
                for i, _ in wanted:
                    out[i] = NotReady("the score store is unavailable; try again later")
            else:
                for i, ids in wanted:
                    out[i] = self._id_response(ids, found)
        return out  # type: ignore[return-value]

    @staticmethod
    def _id_response(ids: list[str], found: dict[str, dict[str, Any]]) -> ScoreResponse:
        results, errors = [], []
        for a in ids:
            item = found.get(a)
            if item is None:
                errors.append(ItemError(account_id=a, error="unknown account_id: not in the "
                                        "latest scoring run"))  # fmt: skip
            else:
                results.append(ScoreItem.model_validate(item))
        return ScoreResponse(results=results, errors=errors)

    def score_ids(self, ids: Sequence[str]) -> ScoreResponse:
        """The latest stored scores of `ids` (raises ServiceError for a bad request)."""
        return _unwrap(self.score_ids_batch([list(ids) if isinstance(ids, tuple) else ids]))

    async def ascore_ids(self, ids: list[str]) -> ScoreResponse:
        """`score_ids`, micro-batched with concurrent calls."""
        return await self.id_batcher.submit(ids)

    # ----- score explicit features ----------------------------------------------------------
    def check_rows(self, rows: Any) -> list[dict[str, Any]]:
        """Validated rows (plain dicts, with account_id filled in); RequestError otherwise."""
        limit = self.limits.max_rows_per_request
        if not isinstance(rows, list):
            raise RequestError("invalid request: rows: must be a list of objects",
                               [{"loc": ["rows"], "msg": "Input should be a valid list",
                                 "type": "list_type"}])  # fmt: skip
        if len(rows) > limit:
            raise RequestError(
                f"too many rows: {len(rows)} > max_rows_per_request={limit}",
                [{"loc": ["rows"], "msg": f"at most {limit} rows per request",
                  "type": "too_long"}], status=413,
            )  # fmt: skip
        if not rows:
            raise RequestError("invalid request: rows: at least one row is required",
                               [{"loc": ["rows"], "msg": "List should have at least 1 item",
                                 "type": "too_short"}])  # fmt: skip
        try:
            valid = self._rows.validate_python(rows)
        except ValidationError as err:
            detail = _validation_detail(err, ["rows"])
            raise RequestError(_summary(detail, "rows"), detail) from None
        for i, r in enumerate(valid):
            r.setdefault("account_id", f"row-{i}")
        return valid

    def _frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Validated rows as the Scorer's input: numeric features float64 (None -> NaN)."""
        cols: dict[str, Any] = {
            Col.ACCOUNT_ID: [r["account_id"] for r in rows],
            Col.AS_OF: [r.get("as_of") for r in rows],
        }
        for f in self.features:
            values = [r.get(f.name) for r in rows]
            cols[f.name] = values if f.categorical else np.array(values, dtype="float64")
        return pd.DataFrame(cols)

    def score_rows_batch(
        self, requests: list[list[dict[str, Any]]]
    ) -> list[ScoreResponse | ServiceError]:
        """Several requests' rows in one Scorer call; one response (or error) per request."""
        out: list[ScoreResponse | ServiceError | None] = [None] * len(requests)
        valid: list[tuple[int, list[dict[str, Any]]]] = []
        for i, rows in enumerate(requests):
            try:
                valid.append((i, self.check_rows(rows)))
            except RequestError as err:
                out[i] = err
        if not valid:
            return out  # type: ignore[return-value]
        try:
            items = self.scorer.score(self._frame([r for _, rows in valid for r in rows]))
        except Exception:
            if len(valid) == 1:
                raise
            # Should not happen (inputs are validated): keep one request's failure its own.
            log.exception("scoring a batch of %d requests failed; scoring them one by one",
                          len(valid))  # fmt: skip
            for i, rows in valid:
                try:
                    out[i] = self.score_rows_batch([rows])[0]
                except Exception as err:
                    out[i] = ServiceError(f"internal error while scoring: {err}")
            return out  # type: ignore[return-value]
        start = 0
        for i, rows in valid:
            chunk = items[start : start + len(rows)]
            start += len(rows)
            out[i] = ScoreResponse(results=[ScoreItem.model_validate(it) for it in chunk])
        return out  # type: ignore[return-value]

    def score_rows(self, rows: list[dict[str, Any]]) -> ScoreResponse:
        """Score explicit feature rows (raises ServiceError for a bad request)."""
        return _unwrap(self.score_rows_batch([rows]))

    async def ascore_rows(self, rows: list[dict[str, Any]]) -> ScoreResponse:
        """`score_rows`, micro-batched with concurrent calls."""
        return await self.row_batcher.submit(rows)

    # ----- model info -----------------------------------------------------------------------------
    def _build_info(self) -> dict[str, Any]:
        models = self.scorer.models
        targets = {}
        pairs = models.by_target()
        for target, m, version in pairs:
            info, meta = m.info or {}, self._model_meta.get(target, {})
            targets[target] = TargetModelInfo(
                target=target, version=version, registered_name=meta.get("registered_name"),
                trained_at=meta.get("trained_at") or info.get("trained_at"),
                run_id=meta.get("run_id"), label=info.get("label"),
                horizon_days=info.get("horizon_days"), trees=info.get("trees"),
                calibrator=m.calibrator.kind, labels_up_to=info.get("labels_up_to"),
                backtest_origins=list(info.get("backtest_origins") or []),
                backtest_metrics=finite_or_none(dict(info.get("backtest_metrics") or {})),
                warnings=list(info.get("warnings") or []),
            )  # fmt: skip
        features = [
            FeatureInfo(name=f.name, family=str(f.family), description=f.description,
                        unit=f.unit, good=str(f.good), categorical=f.categorical,
                        categories=_categories(models, f.name) if f.categorical else None,
                        min_value=f.min_value, max_value=f.max_value,
                        used_by=self._used_by[f.name])
            for f in self.features
        ]  # fmt: skip
        limits = {"max_ids_per_request": self.limits.max_ids_per_request,
                  "max_rows_per_request": self.limits.max_rows_per_request,
                  "max_body_bytes": self.limits.body_limit()}  # fmt: skip
        return {"model_version": models.version, "models": targets, "features": features,
                "limits": limits}  # fmt: skip

    def model_info(self) -> ModelInfo:
        """The loaded models and their features; the store's newest run (None if unreachable)."""
        latest = None
        try:
            run = self.store.latest_run()
        except Exception as err:
            log.warning("model_info: the score store %r: %s", self.store, err)
            run = None
        if run is not None:
            latest = StoreRunInfo(
                run_id=run["run_id"], scored_at=_iso(run["scored_at"]), as_of=_iso(run["as_of"]),
                accounts=int(run["accounts"]),
                model_version={CHURN.name: str(run["churn_model_version"]),
                               EXPANSION.name: str(run["expansion_model_version"])},
            )  # fmt: skip
        return ModelInfo(**self._static_info, latest_run=latest)


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _unwrap(results: list[ScoreResponse | ServiceError]) -> ScoreResponse:
    res = results[0]
    if isinstance(res, ServiceError):
        raise res
    return res


__all__ = [
    "HealthApp",
    "LoadError",
    "MicroBatcher",
    "NotReady",
    "RequestError",
    "ServiceError",
    "pin_threads",
]
