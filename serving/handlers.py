"""The service's request handlers as a plain class, testable without a server.

`Handlers` holds the champion models (as a `Scorer`), the score store and the request
limits, and answers the three API calls:

* `score_ids(ids)`: the newest scoring run's stored scores (scores and explanations are
  computed at batch time, `cshealth score`); an id absent from that run fails its own
  item (`errors`), the others succeed; a repeated id is answered once, in first-seen
  order.
* `score_rows(rows)`: scores explicit feature rows with the loaded champions (what-if,
  external systems); rows are validated against the models' feature metadata
  (`serving.schemas.row_adapter`); ``health_change`` is null (no previous scoring).
* `model_info()`: versions, training time, backtest metrics, features, newest store run.
* `account_history(id)`, `list_accounts(csm_id, band, segment, limit, offset)` and
  `explanation_svg(id)`: the GET endpoints (a CSM's accounts, one account's scorings
  oldest first, the waterfall picture of its latest health); 404 (`NotFound`) for an
  account without a stored score.

`score_rows` compares reasons with the newest run's peer table (`current_peers`, read
again at most every 30 s), so that a stored account rescored from its features gets the
sentences the batch run gave it.

Errors of a whole request are `ServiceError`s carrying their HTTP status: 422 invalid
input (naming the field, for rows ``["rows", <index>, <field>]``), 413 beyond
`max_ids_per_request` / `max_rows_per_request` (also a page's `limit`), 404 unknown
account (GET calls), 503 when the store is unreachable or
the app is not loaded. Nothing else escapes as an exception from the scoring calls.

Concurrency: the async variants (`ascore_ids`, `ascore_rows`) go through a
`MicroBatcher` each (`serving.batching`, which says why not BentoML's adaptive
batching). Concurrent requests that arrive while a batch is being scored are coalesced
into the next batch: one store query (or one Scorer call) for all of them, run in a
worker thread. A request arriving when nothing runs is dispatched at once, so batching
adds no latency when idle.

LightGBM prediction runs single-threaded (`pin_threads`): with a handful of rows per
call, OpenMP threads only add contention (their spinning made single rows 10x slower
under load). The model artifacts are not changed: the booster is wrapped at load time.

`Handlers.load(health, explain, limits, settings)` loads the champions from the MLflow
registry (`training.tracking`) and opens the store the settings name (`CSHEALTH_DB_URL`,
default ``serving.db_file``); the caller (the BentoML service) reads the params file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
from pydantic import TypeAdapter, ValidationError

from features.contract import Col
from features.meta import Feature
from features.targets import CHURN, EXPANSION, TARGET_NAMES
from serving.batching import MicroBatcher, count_items
from serving.errors import (
    LoadError,
    NotFound,
    NotReady,
    RequestError,
    ServiceError,
    summary,
    validation_detail,
)
from serving.predictor import ModelPair, Scorer
from serving.schemas import (
    MAX_ID_LENGTH,
    MAX_OFFSET,
    AccountHistory,
    AccountId,
    AccountList,
    FeatureInfo,
    HistoryEntry,
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
from serving.settings import ExplainParams, HealthParams, ServingParams
from serving.store import ScoreStore, db_url
from training.model import HealthModel

if TYPE_CHECKING:
    from cshealth.settings import Settings

log = logging.getLogger(__name__)

TARGETS = TARGET_NAMES
#: the bands `list_accounts` filters on
BANDS = ("red", "yellow", "green")
#: page size of `list_accounts` when none is given (capped at max_ids_per_request)
DEFAULT_PAGE = 100
#: how often `current_peers` looks for a newer scoring run (seconds)
PEERS_REFRESH_S = 30.0

_ACCOUNT_ID: TypeAdapter[str] = TypeAdapter(AccountId)

R = TypeVar("R")


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


class Handlers:
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
        #: (monotonic time read, run_id, peers) of `current_peers`
        self._peers: tuple[float, str | None, Any] | None = None
        self.id_batcher: MicroBatcher[list[str], ScoreResponse] = MicroBatcher(
            self.score_ids_batch, size=count_items, max_items=self.limits.max_ids_per_request,
            max_wait_s=batch_wait_s, name="ids",
        )  # fmt: skip
        self.row_batcher: MicroBatcher[list[dict], ScoreResponse] = MicroBatcher(
            self.score_rows_batch, size=count_items, max_items=self.limits.max_rows_per_request,
            max_wait_s=batch_wait_s, name="rows",
        )  # fmt: skip

    # ----- construction from the environment --------------------------------------------
    @classmethod
    def load(
        cls, health: HealthParams, explain: ExplainParams, limits: ServingParams,
        settings: Settings, *, num_threads: int = 1,
    ) -> Handlers:  # fmt: skip
        """Champions from the MLflow registry, the store of `settings` (or `limits.db_file`).

        Raises `LoadError` with what to do when there is no champion, the store is
        unreachable or holds no scoring run yet.
        """
        import sqlalchemy as sa

        from training import tracking

        t0 = time.perf_counter()
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
                    meta[row["target"]] = {
                        "registered_name": row["name"],
                        "trained_at": row["created"],
                        "run_id": row["run_id"],
                    }
        except Exception as err:  # metadata only: serve without it
            log.warning("could not read registry metadata: %s", err)
        url = db_url(limits.db_file, settings.db_url_value())
        store = ScoreStore(url, create=False, timeout_s=settings.db_timeout_s)  # read-only
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
        app = cls(Scorer(pair, health, explain), store, limits, model_meta=meta,
                  batch_wait_s=settings.batch_wait_ms / 1000)  # fmt: skip
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
            detail = validation_detail(err, [])
            raise RequestError(summary(detail, "request"), detail) from None
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
            detail = validation_detail(err, ["rows"])
            raise RequestError(summary(detail, "rows"), detail) from None
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
            frame = self._frame([r for _, rows in valid for r in rows])
            items = self.scorer.score(frame, peers=self.current_peers())
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

    def current_peers(self) -> Any:
        """The newest scoring run's peer table (None if it has none), for `score_rows`.

        Read with the run and kept for `PEERS_REFRESH_S` seconds before the store is asked
        again (a new run then brings its own table); an unreachable store keeps the last.
        """
        cached, now = self._peers, time.monotonic()
        if cached is not None and now - cached[0] < PEERS_REFRESH_S:
            return cached[2]
        try:
            run = self.store.latest_run()
        except Exception as err:
            log.warning("peer table: the score store %r: %s", self.store, err)
            return None if cached is None else cached[2]
        run_id = None if run is None else run["run_id"]
        if cached is not None and cached[1] == run_id:
            peers = cached[2]
        else:
            peers = None if run is None else run.get("peers")
            if isinstance(peers, str):  # a driver returning JSON as text
                peers = json.loads(peers)
        self._peers = (now, run_id, peers)
        return peers

    # ----- accounts: history, lists, the explanation picture ---------------------------------
    @staticmethod
    def check_account_id(account_id: Any) -> str:
        """`account_id` if valid (1..128 characters, no control characters); 422 otherwise."""
        try:
            return _ACCOUNT_ID.validate_python(account_id)
        except ValidationError as err:
            detail = validation_detail(err, ["account_id"])
            raise RequestError(summary(detail, "account_id"), detail) from None

    def _read(self, what: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """A store read; 503 (logged) when the store fails."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            log.error("score store %r failed (%s): %s", self.store, what, err)
            raise NotReady("the score store is unavailable; try again later") from None

    @staticmethod
    def _unknown(account_id: str) -> NotFound:
        return NotFound(
            "unknown account_id: no stored score",
            [{"loc": ["account_id"], "msg": "no stored score for this account",
              "type": "not_found"}],
        )  # fmt: skip

    def account_history(self, account_id: str) -> AccountHistory:
        """Every stored score of one account, oldest first; 404 when there is none."""
        account_id = self.check_account_id(account_id)
        rows = self._read("history", self.store.history, account_id)
        if not rows:
            raise self._unknown(account_id)
        runs = [HistoryEntry.model_validate({k: r.get(k) for k in _HISTORY_KEYS}) for r in rows]
        return AccountHistory(account_id=account_id, runs=runs)

    def check_page(
        self, csm_id: Any, band: Any, segment: Any, limit: Any, offset: Any
    ) -> tuple[str | None, str | None, str | None, int, int]:
        """Validated `list_accounts` arguments (limit None: the default page); 413/422."""
        cap = self.limits.max_ids_per_request
        detail = []
        for name, value in (("csm_id", csm_id), ("segment", segment)):
            ok = value is None or (
                isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH
                and not any(ord(c) < 32 or ord(c) == 127 for c in value)
            )  # fmt: skip
            if not ok:
                detail.append({"loc": [name], "type": "string_pattern_mismatch",
                               "msg": f"1 to {MAX_ID_LENGTH} characters, no control "
                                      "characters"})  # fmt: skip
        if band is not None and band not in BANDS:
            detail.append({"loc": ["band"], "msg": "Input should be 'red', 'yellow' or "
                           "'green'", "type": "literal_error"})  # fmt: skip
        if limit is None:
            limit = min(DEFAULT_PAGE, cap)
        if type(limit) is not int or limit < 1:
            detail.append({"loc": ["limit"], "msg": "Input should be an integer >= 1",
                           "type": "greater_than_equal"})  # fmt: skip
        if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
            detail.append({"loc": ["offset"], "type": "int_range",
                           "msg": f"an integer from 0 to {MAX_OFFSET}"})  # fmt: skip
        if detail:
            raise RequestError(summary(detail, "request"), detail)
        if limit > cap:
            raise RequestError(
                f"limit too large: {limit} > max_ids_per_request={cap}",
                [{"loc": ["limit"], "msg": f"at most {cap} accounts per page",
                  "type": "too_long"}], status=413,
            )  # fmt: skip
        return csm_id, band, segment, limit, offset

    def list_accounts(
        self,
        csm_id: str | None = None,
        band: str | None = None,
        segment: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> AccountList:
        """The newest run's accounts matching every given filter, lowest health first
        (e.g. a CSM's red accounts); `total` counts all matches, `results` is one page."""
        csm_id, band, segment, limit, offset = self.check_page(csm_id, band, segment, limit,
                                                               offset)  # fmt: skip
        run = self._read("latest run", self.store.latest_run)
        if run is None:
            raise NotReady("the score store holds no scoring run yet")
        total, rows = self._read(
            "list", self.store.list_latest, csm_id, band, segment, limit, offset,
            run_id=run["run_id"],
        )  # fmt: skip
        return AccountList(
            run_id=run["run_id"], as_of=_iso(run["as_of"]), total=total, limit=limit,
            offset=offset, results=[ScoreItem.model_validate(r) for r in rows],
        )  # fmt: skip

    def explanation_svg(self, account_id: str) -> str:
        """The waterfall picture (SVG) of the account's latest score; 404 when unknown."""
        from serving.waterfall import waterfall_svg

        account_id = self.check_account_id(account_id)
        found = self._read("latest scores", self.store.latest_scores, [account_id])
        item = found.get(account_id)
        if item is None:
            raise self._unknown(account_id)
        run = self._read("latest run", self.store.latest_run)
        base = run.get("base_health") if run else None
        if base is None:
            base = self.scorer.base_health
        return waterfall_svg(item, float(base))

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


#: the fields of a history entry
_HISTORY_KEYS = tuple(HistoryEntry.model_fields)


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _unwrap(results: list[ScoreResponse | ServiceError]) -> ScoreResponse:
    res = results[0]
    if isinstance(res, ServiceError):
        raise res
    return res


__all__ = ["Handlers", "pin_threads"]
