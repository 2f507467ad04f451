"""The serving logic without a server: Handlers, the micro-batcher, auth middleware.

Uses the shared small set-up of `tests/serving_data.py` (simulated accounts, models trained
with the repo's params, registered as champions, newest snapshot scored into SQLite).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cshealth.config import load_config
from cshealth.errors import UserError
from cshealth.settings import Settings
from serving.auth import (
    API_KEY_ENV,
    INSTANCE_ENV,
    NO_AUTH_ENV,
    AuthConfigError,
    AuthSettings,
    BearerAuthMiddleware,
    auth_settings,
    no_auth_marker,
)
from serving.batching import MicroBatcher
from serving.errors import LoadError, NotReady, RequestError, ServiceError
from serving.handlers import Handlers, pin_threads
from serving.health import health_score
from serving.schemas import ScoreItem
from serving.store import ScoreStore
from tests.serving_data import (
    MAX_IDS,
    MAX_ROWS,
    REPO,
    ServingSetup,
    environ,
    load_handlers,
    serving_setup,
)

pytestmark = pytest.mark.slow

ITEM_FIELDS = set(ScoreItem.model_fields)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> ServingSetup:
    return serving_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def prom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BentoML's metrics need a multiprocess folder, also in-process (one per module)."""
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def app(setup: ServingSetup) -> Handlers:
    """Handlers over the champions (loaded from the registry) and the store."""
    with environ(setup.env()):
        app = load_handlers()
    yield app
    app.close()


def _stored_rows(app: Handlers, ids: list[str]) -> list[dict[str, Any]]:
    feats = app.store.features(ids)
    return [{"account_id": a, "as_of": feats[a]["as_of"], **feats[a]["features"]} for a in ids]


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


# ----- score by id ------------------------------------------------------------------------
def test_known_ids_return_every_field(app: Handlers, setup: ServingSetup) -> None:
    ids = setup.ids[:3]
    res = app.score_ids(ids)
    assert res.errors == []
    assert [r.account_id for r in res.results] == ids
    cfg = load_config(setup.params)
    for item in res.results:
        d = item.model_dump(mode="json")
        assert set(d) == ITEM_FIELDS
        assert d["as_of"] == setup.as_of
        assert 0 <= d["churn_probability"] <= 1 and 0 <= d["expansion_probability"] <= 1
        assert 0 <= d["health_score"] <= 100
        h = d["health_score"]
        band = "red" if h < cfg.health.red_below else (
            "yellow" if h < cfg.health.yellow_below else "green")  # fmt: skip
        assert d["band"] == band
        assert d["model_version"] == {"churn": "1", "expansion": "1"}
        assert set(d["components"]) <= {"usage", "support", "sentiment", "outcomes", "commercial"}
        assert 0 < len(d["reasons"]) <= cfg.explanations.top_reasons
        assert all(r["sentence"] for r in d["reasons"])
        assert isinstance(d["missing_features"], list)
        assert d["health_change"] is None  # the store's first run
        # health is not rounded (rounding ties accounts); components are, to 4 decimals
        want = float(health_score(np.array([d["churn_probability"]]), cfg.health)[0])
        assert d["health_score"] == pytest.approx(want, rel=0, abs=1e-9)
        assert all(v == round(v, 4) for v in d["components"].values())


def test_components_add_up_to_health_minus_the_average(app: Handlers, setup: ServingSetup) -> None:
    """Every account's components sum to its health minus one baseline (up to rounding)."""
    items = [r for chunk in _chunks(setup.ids, MAX_IDS) for r in app.score_ids(chunk).results]
    base = np.array([r.health_score - sum(r.components.values()) for r in items])
    assert np.ptp(base) <= 5 * 1e-4  # at most 5 families, each rounded to 1e-4
    health = [r.health_score for r in items]
    assert len(set(health)) > 0.9 * len(health)  # unrounded: distinct accounts rarely tie


def test_unknown_id_fails_only_its_item(app: Handlers, setup: ServingSetup) -> None:
    res = app.score_ids([setup.ids[0], "no-such-account", setup.ids[1]])
    assert [r.account_id for r in res.results] == setup.ids[:2]
    assert [e.account_id for e in res.errors] == ["no-such-account"]
    assert "unknown account_id" in res.errors[0].error


def test_duplicate_ids_are_answered_once(app: Handlers, setup: ServingSetup) -> None:
    a, b = setup.ids[:2]
    res = app.score_ids([a, b, a, "nope", "nope"])
    assert [r.account_id for r in res.results] == [a, b]
    assert [e.account_id for e in res.errors] == ["nope"]


def test_id_limit_names_the_limit(app: Handlers) -> None:
    with pytest.raises(RequestError) as exc:
        app.score_ids([f"id-{i}" for i in range(MAX_IDS + 1)])
    assert exc.value.status == 413
    assert f"max_ids_per_request={MAX_IDS}" in exc.value.message
    assert app.score_ids([f"id-{i}" for i in range(MAX_IDS)]).results == []  # at the limit


@pytest.mark.parametrize(
    ("ids", "loc"),
    [([], ["account_ids"]), (["ok", ""], ["account_ids", 1]), (["a\x00b"], ["account_ids", 0]),
     ([1], ["account_ids", 0]), ("abc", ["account_ids"]), (["x" * 129], ["account_ids", 0])],
)  # fmt: skip
def test_invalid_ids_name_the_field(app: Handlers, ids: Any, loc: list) -> None:
    with pytest.raises(RequestError) as exc:
        app.score_ids(ids)
    assert exc.value.status == 422
    assert exc.value.detail[0]["loc"] == loc
    assert "account_ids" in exc.value.message


# ----- score explicit rows ----------------------------------------------------------------
def test_stored_features_rescore_to_the_stored_scores(app: Handlers, setup: ServingSetup) -> None:
    """HTTP-free equivalence: /score_features of the stored snapshot == the batch scores."""
    for chunk in _chunks(setup.ids, MAX_IDS):
        stored = {r.account_id: r for r in app.score_ids(chunk).results}
        rescored = app.score_rows(_stored_rows(app, chunk)).results
        assert [r.account_id for r in rescored] == chunk
        for r in rescored:
            # descriptors and changes come with a scoring run, not with feature rows
            run_only = {"health_change", "name", "csm_id", "changes"}
            want = stored[r.account_id].model_dump(exclude=run_only)
            assert r.model_dump(exclude=run_only) == want
            assert r.health_change is None and r.changes is None
            assert r.name is None and r.csm_id is None


def test_scorer_probabilities_equal_the_models(app: Handlers, setup: ServingSetup) -> None:
    """The churn probability taken from the explanation's raw score is the model's own."""
    import numpy as np
    import pandas as pd

    rows = pd.DataFrame(
        [{"account_id": r["account_id"], **r["features"]}
         for r in app.store.features(setup.ids[:20]).values()]
    )  # fmt: skip
    items = app.scorer.score(rows)
    models = app.scorer.models
    full, _ = app.scorer.complete(rows)
    got_churn = [i["churn_probability"] for i in items]
    got_exp = [i["expansion_probability"] for i in items]
    np.testing.assert_allclose(got_churn, models.churn.predict_proba(full), rtol=0, atol=1e-9)
    np.testing.assert_allclose(got_exp, models.expansion.predict_proba(full), rtol=0, atol=1e-12)


def test_missing_features_are_allowed_and_flagged(app: Handlers) -> None:
    names = app.feature_names
    numeric = next(f.name for f in app.features if not f.categorical)
    categorical = next(f.name for f in app.features if f.categorical)
    res = app.score_rows([
        {numeric: 10.0},
        {numeric: None, categorical: "a-category-never-seen"},
        {},
    ])  # fmt: skip
    assert len(res.results) == 3 and res.errors == []
    first, second, empty = res.results
    assert numeric not in first.missing_features
    assert set(first.missing_features) == set(names) - {numeric}
    assert numeric in second.missing_features and categorical in second.missing_features
    assert set(empty.missing_features) == set(names)
    assert [r.account_id for r in res.results] == ["row-0", "row-1", "row-2"]
    assert all(r.as_of is None and r.health_change is None for r in res.results)
    assert all(0 <= r.health_score <= 100 for r in res.results)


def test_row_account_id_and_as_of_are_echoed(app: Handlers) -> None:
    res = app.score_rows([{"account_id": "acme", "as_of": "2026-01-02"}])
    assert res.results[0].account_id == "acme"
    assert res.results[0].as_of.isoformat() == "2026-01-02"


def _feature(app: Handlers, categorical: bool, bounded: bool = False) -> str:
    return next(f.name for f in app.features if f.categorical == categorical
                and (not bounded or f.min_value is not None))  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "value", "error_type"),
    [("numeric", "12", "float_type"), ("numeric", True, "float_type"),
     ("numeric", [1], "float_type"), ("numeric", float("nan"), "finite_number"),
     ("numeric", 10**400, "float_type"), ("bounded", -1e9, "greater_than_equal"),
     ("categorical", 3, "string_type"), ("unknown", 1, "extra_forbidden"),
     ("as_of", "2026-13-01", "date_from_datetime_parsing"), ("account_id", "", "string_too_short")],
)  # fmt: skip
def test_row_validation_names_row_and_field(
    app: Handlers, kind: str, value: Any, error_type: str
) -> None:
    field = {"numeric": _feature(app, False), "bounded": _feature(app, False, bounded=True),
             "categorical": _feature(app, True), "unknown": "not_a_feature",
             "as_of": "as_of", "account_id": "account_id"}[kind]  # fmt: skip
    with pytest.raises(RequestError) as exc:
        app.score_rows([{}, {field: value}])
    err = exc.value
    assert err.status == 422
    assert err.detail[0]["loc"] == ["rows", 1, field]
    assert err.detail[0]["type"] == error_type
    assert f"rows.1.{field}" in err.message
    if kind == "unknown":
        assert "unknown feature 'not_a_feature'" in err.detail[0]["msg"]


@pytest.mark.parametrize(("rows", "status"), [([], 422), ("x", 422), ([5], 422),
                                              ([{}] * (MAX_ROWS + 1), 413)])  # fmt: skip
def test_row_limits_and_shapes(app: Handlers, rows: Any, status: int) -> None:
    with pytest.raises(RequestError) as exc:
        app.score_rows(rows)
    assert exc.value.status == status
    if status == 413:
        assert f"max_rows_per_request={MAX_ROWS}" in exc.value.message


# ----- model info, readiness, loading ----------------------------------------------------------
def test_model_info(app: Handlers, setup: ServingSetup) -> None:
    info = app.model_info()
    assert info.model_version == {"churn": "1", "expansion": "1"}
    churn = info.models["churn"]
    assert churn.version == "1" and churn.registered_name == "cshealth-churn"
    assert churn.trained_at and churn.run_id and churn.label == "churn_90d"
    assert churn.horizon_days == 90
    for target, m in info.models.items():  # what the backtest said about each champion
        trained = setup.model_info[target]
        assert 0 < m.backtest_metrics["roc_auc"] <= 1
        assert m.backtest_metrics == pytest.approx(trained["backtest_metrics"])
        assert m.backtest_origins == trained["backtest_origins"] and len(m.backtest_origins) >= 2
        assert m.labels_up_to == trained["labels_up_to"]
        assert m.backtest_origins[-1] < m.labels_up_to <= setup.as_of
        assert m.trees == trained["trees"] >= 1
        assert m.calibrator == trained["calibrator"]
        assert m.warnings == trained["warnings"]
    assert {f.name for f in info.features} == set(app.feature_names)
    for f in info.features:
        assert f.family and f.description and f.unit is not None and f.used_by
        assert (f.categories is not None) == f.categorical
    assert info.latest_run.as_of == setup.as_of
    assert info.latest_run.accounts == len(setup.ids)
    assert info.limits == {"max_ids_per_request": MAX_IDS, "max_rows_per_request": MAX_ROWS,
                           "max_body_bytes": 2**20 + 4096 * MAX_ROWS}  # fmt: skip
    info.model_dump_json()  # JSON-safe (no NaN)


def test_unreachable_store_is_503_not_a_crash(app: Handlers, tmp_path: Path) -> None:
    store = ScoreStore(f"sqlite:///{tmp_path}/missing/dir/x.db", create=False)
    bad = Handlers(app.scorer, store, app.limits)
    try:
        assert bad.ready() is False
        with pytest.raises(NotReady) as exc:
            bad.score_ids(["a"])
        assert exc.value.status == 503
        assert bad.model_info().latest_run is None
        assert bad.score_rows([{}]).results  # explicit rows need no store
    finally:
        bad.close()


def test_load_without_champion(tmp_path: Path, setup: ServingSetup) -> None:
    env = {**setup.env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/empty-mlflow.db"}
    with environ(env), pytest.raises(LoadError, match="champion"):
        load_handlers()


def test_load_without_scoring_run(tmp_path: Path, setup: ServingSetup) -> None:
    env = {**setup.env(), "CSHEALTH_DB_URL": f"sqlite:///{tmp_path}/empty.db"}
    with environ(env), pytest.raises(LoadError, match="cshealth score"):
        load_handlers()


def test_load_bad_params(tmp_path: Path, setup: ServingSetup) -> None:
    with environ({**setup.env(), "CSHEALTH_PARAMS": str(tmp_path / "nope.yaml")}), \
            pytest.raises(LoadError, match="not found"):  # fmt: skip
        load_handlers()


def test_pinned_models_predict_the_same(app: Handlers, setup: ServingSetup) -> None:
    import pandas as pd

    frame = pd.read_parquet(setup.snapshots).head(50)
    model = app.scorer.models.churn  # pinned by from_env
    calls: list[dict] = []
    real = model.booster._booster

    class Spy:
        def predict(self, *a: Any, **kw: Any) -> Any:
            calls.append(kw)
            return real.predict(*a, **kw)

    spied = pin_threads(dataclasses.replace(model, booster=Spy()), 1)
    assert (spied.predict_proba(frame) == model.predict_proba(frame)).all()
    assert calls and all(kw.get("num_threads") == 1 for kw in calls)
    plain = dataclasses.replace(model, booster=real)
    assert (plain.predict_proba(frame) == model.predict_proba(frame)).all()


# ----- micro-batching ---------------------------------------------------------------------
def test_concurrent_requests_are_batched(app: Handlers, setup: ServingSetup) -> None:
    app_b = Handlers(app.scorer, app.store, app.limits)  # fresh batch counters

    async def burst() -> list[Any]:
        calls = [app_b.ascore_ids([a]) for a in setup.ids[:20]]
        calls.append(app_b.ascore_ids([]))  # one bad request among them
        calls.append(app_b.ascore_ids(["nope"]))
        calls += [app_b.ascore_rows([{"account_id": f"r{i}"}]) for i in range(10)]
        return await asyncio.gather(*calls, return_exceptions=True)

    out = asyncio.run(burst())
    assert [r.results[0].account_id for r in out[:20]] == setup.ids[:20]
    assert isinstance(out[20], RequestError)
    assert out[21].results == [] and out[21].errors[0].account_id == "nope"
    assert [r.results[0].account_id for r in out[22:]] == [f"r{i}" for i in range(10)]
    assert app_b.id_batcher.calls == 22 and app_b.id_batcher.batches < 22
    assert app_b.row_batcher.calls == 10 and app_b.row_batcher.batches < 10
    # same answers as one at a time
    assert out[0] == app.score_ids([setup.ids[0]])
    app_b.id_batcher.close()
    app_b.row_batcher.close()


def test_a_failing_request_does_not_fail_its_batch(app: Handlers) -> None:
    class Flaky:
        models = app.scorer.models

        def score(self, frame: Any, **kw: Any) -> Any:
            if "boom" in set(frame["account_id"]):
                raise RuntimeError("kaboom")
            return app.scorer.score(frame, **kw)

    flaky = Handlers(app.scorer, app.store, app.limits)
    flaky.scorer = Flaky()  # type: ignore[assignment]
    ok, bad = flaky.score_rows_batch([[{"account_id": "ok"}], [{"account_id": "boom"}]])
    assert ok.results[0].account_id == "ok"
    assert isinstance(bad, ServiceError) and bad.status == 500 and "kaboom" in bad.message


def test_micro_batcher_respects_max_items_and_isolates_failures() -> None:
    seen: list[list[int]] = []

    def fn(payloads: list[list[int]]) -> list[Any]:
        seen.append([len(p) for p in payloads])
        if any(p == [13] for p in payloads) and len(payloads) == 1:
            raise RuntimeError("boom")
        return [ValueError("bad") if p == [7] else sum(p) for p in payloads]

    b: MicroBatcher[list[int], int] = MicroBatcher(fn, size=len, max_items=4)

    async def run() -> list[Any]:
        return await asyncio.gather(*(b.submit([i]) for i in range(10)), b.submit([1] * 9),
                                    return_exceptions=True)  # fmt: skip

    out = asyncio.run(run())
    assert out[:7] == [0, 1, 2, 3, 4, 5, 6] and isinstance(out[7], ValueError)
    assert out[8:] == [8, 9, 9]
    assert all(sum(batch) <= 4 or len(batch) == 1 for batch in seen)
    assert seen[0] == [1, 1, 1, 1]  # submitted together: batched up to max_items
    with pytest.raises(RuntimeError, match="boom"):  # fn failing as a whole; new event loop
        asyncio.run(asyncio.wait_for(b.submit([13]), 5))
    assert asyncio.run(b.submit([2, 3])) == 5
    b.close()


# ----- auth middleware on a tiny app --------------------------------------------------------------
def _tiny(settings: AuthSettings, **kw: Any) -> TestClient:
    async def ok(_: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def text(_: Any) -> PlainTextResponse:
        return PlainTextResponse("open")

    routes = [Route("/score", ok, methods=["POST"]), Route("/readyz", text),
              Route("/metrics", text), Route("/healthz", text), Route("/livez", text),
              Route("/docs.json", text)]  # fmt: skip
    star = Starlette(routes=routes)
    return TestClient(BearerAuthMiddleware(star, settings=settings, **kw))


def test_auth_requires_the_bearer_key(caplog: pytest.LogCaptureFixture) -> None:
    key = "s3cret-key-value"
    client = _tiny(AuthSettings(key))
    caplog.set_level(logging.DEBUG)
    for headers, why in [({}, "missing API key"),
                         ({"Authorization": "Bearer wrong"}, "invalid API key"),
                         ({"Authorization": f"Basic {key}"}, "malformed"),
                         ({"Authorization": "Bearer"}, "malformed"),
                         ({"Authorization": f"Bearer {key}x"}, "invalid API key")]:  # fmt: skip
        r = client.post("/score", headers=headers)
        assert r.status_code == 401, headers
        assert why in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/json"
    assert client.post("/score", headers={"Authorization": f"Bearer {key}"}).json() == {"ok": True}
    assert client.post("/score", headers={"authorization": f"bearer  {key} "}).status_code == 200
    assert client.get("/unknown").status_code == 401  # unknown paths are not open
    for path in ("/readyz", "/metrics", "/healthz", "/livez", "/docs.json"):
        assert client.get(path).status_code == 200, path
    assert key not in caplog.text
    assert key not in repr(AuthSettings(key)) and key not in repr(client.app.settings)


def test_auth_docs_can_be_closed() -> None:
    client = _tiny(AuthSettings("k"), open_docs=False)
    assert client.get("/docs.json").status_code == 401
    assert client.get("/readyz").status_code == 200


def _auth_from_env(env: dict[str, str]) -> AuthSettings:
    """As the service does: the settings of `env`, then the auth they give."""
    s = Settings.from_env(env)
    key = s.api_key.get_secret_value() if s.api_key is not None else None
    return auth_settings(key, s.no_auth, s.instance)


def test_auth_settings_from_env() -> None:
    marker = {INSTANCE_ENV: "i-1", NO_AUTH_ENV: no_auth_marker("i-1")}
    assert _auth_from_env({API_KEY_ENV: "k"}) == AuthSettings("k")
    assert _auth_from_env(marker).disabled  # only the marker of `cshealth serve --no-auth`
    for env, why in [({}, API_KEY_ENV), ({API_KEY_ENV: "  "}, "blank"),
                     ({NO_AUTH_ENV: "1"}, "only `cshealth serve --no-auth`"),
                     ({NO_AUTH_ENV: "yes", API_KEY_ENV: "k"}, "only `cshealth serve --no-auth`"),
                     ({NO_AUTH_ENV: no_auth_marker("i-1")}, "only"),  # without its instance
                     ({**marker, INSTANCE_ENV: "i-2"}, "only"),
                     ({**marker, API_KEY_ENV: "k"}, "ambiguous")]:  # fmt: skip
        with pytest.raises((AuthConfigError, UserError), match=re.escape(why)):
            _auth_from_env(env)
    client = _tiny(AuthSettings(None, disabled=True))
    assert client.post("/score").status_code == 200


def _bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, NO_AUTH_ENV)}
    return {**env, "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true", **extra}


def test_service_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import serving.service"], cwd=REPO,
                          env=_bare_env(BENTOML_HOME=str(tmp_path)), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: refusing to start without an API key: set {API_KEY_ENV}")
    assert "Traceback" not in proc.stderr


# ----- the BentoML service class in-process -----------------------------------------------------
def _service_client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The BentoML service class as an in-process ASGI app (env set by the caller).

    The module reads the settings once, at import (maybe earlier in this process):
    the worker here gets the caller's.
    """
    import serving.service as svc

    monkeypatch.setattr(svc, "SETTINGS", Settings.from_env())
    return TestClient(svc.HealthService.to_asgi())


def test_service_in_process(setup: ServingSetup, tmp_path: Path, prom_dir: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The BentoML class in-process: not ready until the store holds a run, then serving.

    (BentoML registers its metrics once per process: one in-process app per session.)
    """
    import shutil

    store = tmp_path / "scores.db"  # no scoring run yet
    env = {**setup.env(), API_KEY_ENV: "k", "BENTOML_HOME": str(tmp_path / "bento"),
           "CSHEALTH_DB_URL": f"sqlite:///{store}", "CSHEALTH_LOAD_RETRY_S": "0.2",
           "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # gc.freeze() suits a server process; in the test process it would keep every object
    # alive until exit (and extension modules then report them as leaks).
    monkeypatch.setattr("serving.service.gc.freeze", lambda: None)
    import serving.service as svc

    # the middleware holds the key of the module's first import in this process
    h = {"Authorization": f"Bearer {svc.AUTH.key}"}
    with _service_client(monkeypatch) as client:
        time.sleep(0.5)
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 503
        r = client.post("/score", json={"account_ids": ["a"]}, headers=h)
        assert r.status_code == 503
        assert r.json()["error"].startswith("not ready") and "cshealth score" in r.json()["error"]

        shutil.copy(setup.store_db, store)  # `cshealth score` ran
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready in 60 s"
            time.sleep(0.1)
        assert client.post("/score", json={"account_ids": setup.ids[:2]}).status_code == 401
        r = client.post("/score", json={"account_ids": [*setup.ids[:2], "nope"]}, headers=h)
        assert r.status_code == 200
        body = r.json()
        assert [x["account_id"] for x in body["results"]] == setup.ids[:2]
        assert [e["account_id"] for e in body["errors"]] == ["nope"]
        r = client.post("/score_features", json={"rows": [{"x": 1}]}, headers=h)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["rows", 0, "x"]
        r = client.post("/score", json={"account_ids": "a"}, headers=h)
        assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["account_ids"]
        assert client.post("/model_info", headers=h).json()["model_version"] == {
            "churn": "1", "expansion": "1"}  # fmt: skip

        # the account endpoints (a FastAPI app mounted into the service): same auth
        ids = setup.ids
        assert client.get("/accounts").status_code == 401
        assert client.get(f"/accounts/{ids[0]}/history").status_code == 401
        page = client.get("/accounts", params={"limit": 5}, headers=h).json()
        assert len(page["results"]) == 5 and page["total"] == len(ids)
        health = [x["health_score"] for x in page["results"]]
        assert health == sorted(health)
        r = client.get(f"/accounts/{ids[0]}/history", headers=h)
        assert r.status_code == 200 and r.json()["runs"][0]["run_id"]
        r = client.get("/accounts/ghost/history", headers=h)
        assert r.status_code == 404 and r.json()["error"].startswith("unknown account_id")
        r = client.get(f"/accounts/{ids[0]}/explanation.svg", headers=h)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
        r = client.get("/accounts", params={"band": "blue"}, headers=h)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "band"]


# ----- accounts: history, lists, the explanation picture (hand-made store rows) ------------------
def _score_row(account: str, health: float, band: str, csm: str | None, segment: str | None,
               **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "account_id": account, "as_of": "2026-01-02", "churn_probability": 0.5 - health / 250,
        "expansion_probability": 0.2, "health_score": health, "band": band,
        "health_change": None, "components": {"usage": -3.5, "support": 1.25},
        "reasons": [{"feature": "active_users_30d", "family": "usage", "value": 12.0,
                     "impact": 0.42, "sentence": "12 active users; healthy peers: 31",
                     "peer_value": 31.0, "peer_group": "healthy mid-market accounts"}],
        "model_version": {"churn": "1", "expansion": "1"}, "missing_features": [],
        "name": f"Account {account}", "segment": segment, "csm_id": csm,
        "expansion_reasons": [], "context": [], "plays": [], "changes": None, **extra,
    }  # fmt: skip


def _run_row(i: int, **extra: Any) -> dict[str, Any]:
    return {"run_id": f"run{i}", "scored_at": dt.datetime(2026, 1, 2, 3, i),
            "as_of": dt.date(2026, 1, i + 1), "churn_model_version": "1",
            "expansion_model_version": "1", **extra}  # fmt: skip


@pytest.fixture
def hand(app: Handlers, tmp_path: Path) -> Handlers:
    """A Handlers over the module's models and a store of two hand-made runs.

    run0: a (health 70), b (40); run1 (newest, base_health 55, a peer table): a (45, red,
    csm-1), b (80, green, csm-1), c (20, red, csm-2), d (35, red, csm-1, enterprise),
    e (60, yellow, csm-1) whose list fields are null (a store written before they existed).
    """
    store = ScoreStore(f"sqlite:///{tmp_path / 'hand.db'}")
    old = "2026-01-01"
    store.write_run(_run_row(0), [_score_row("a", 70.0, "green", "csm-1", "smb", as_of=old),
                                  _score_row("b", 40.0, "red", "csm-1", "smb", as_of=old)],
                    [])  # fmt: skip
    legacy = {k: None for k in ("expansion_reasons", "context", "plays", "name")}
    store.write_run(
        _run_row(1, base_health=55.0, peers={"healthy": {"active_users_30d": 31.0}}),
        [_score_row("a", 45.0, "red", "csm-1", "smb"),
         _score_row("b", 80.0, "green", "csm-1", "smb"),
         _score_row("c", 20.0, "red", "csm-2", "smb"),
         _score_row("d", 35.0, "red", "csm-1", "enterprise"),
         _score_row("e", 60.0, "yellow", "csm-1", None, **legacy)], [],
    )  # fmt: skip
    hand = Handlers(app.scorer, store, app.limits)
    yield hand
    hand.close()


def test_history_is_oldest_first_with_reasons(hand: Handlers) -> None:
    h = hand.account_history("a")
    assert h.account_id == "a"
    assert [r.run_id for r in h.runs] == ["run0", "run1"]
    assert [r.health_score for r in h.runs] == [70.0, 45.0]
    assert [r.band for r in h.runs] == ["green", "red"]
    assert [r.health_change for r in h.runs] == [None, -25.0]
    assert [r.as_of.isoformat() for r in h.runs] == ["2026-01-01", "2026-01-02"]
    assert h.runs[0].scored_at < h.runs[1].scored_at
    reason = h.runs[1].reasons[0]
    assert reason.feature == "active_users_30d" and reason.peer_value == 31.0
    assert reason.peer_group == "healthy mid-market accounts"
    assert [r.run_id for r in hand.account_history("c").runs] == ["run1"]
    h.model_dump_json()


def test_list_accounts_by_csm_and_band(hand: Handlers) -> None:
    page = hand.list_accounts(csm_id="csm-1", band="red")
    assert page.run_id == "run1" and page.as_of.isoformat() == "2026-01-02"
    assert [r.account_id for r in page.results] == ["d", "a"]  # lowest health first
    assert page.total == 2 and page.offset == 0 and page.limit == min(100, MAX_IDS)
    assert all(r.csm_id == "csm-1" and r.band == "red" for r in page.results)
    assert page.results[0].segment == "enterprise" and page.results[0].name == "Account d"
    every = hand.list_accounts()
    assert [r.account_id for r in every.results] == ["c", "d", "a", "e", "b"]
    assert every.total == 5
    page = hand.list_accounts(csm_id="csm-1", limit=2, offset=1)
    assert [r.account_id for r in page.results] == ["a", "e"]
    assert (page.total, page.limit, page.offset) == (4, 2, 1)
    assert hand.list_accounts(csm_id="csm-1", offset=10).results == []
    assert [r.account_id for r in hand.list_accounts(segment="enterprise").results] == ["d"]
    assert hand.list_accounts(csm_id="nobody").total == 0
    assert len(hand.list_accounts(limit=MAX_IDS).results) == 5  # at the limit


def test_older_rows_with_null_lists_read_as_empty(hand: Handlers) -> None:
    item = hand.score_ids(["e"]).results[0]
    assert item.expansion_reasons == [] and item.context == [] and item.plays == []
    assert item.name is None and item.segment is None and item.changes is None
    assert item.csm_id == "csm-1"


@pytest.mark.parametrize(
    ("kwargs", "status", "loc"),
    [({"band": "blue"}, 422, ["band"]), ({"limit": 0}, 422, ["limit"]),
     ({"limit": MAX_IDS + 1}, 413, ["limit"]), ({"offset": -1}, 422, ["offset"]),
     ({"csm_id": ""}, 422, ["csm_id"]), ({"segment": "a\nb"}, 422, ["segment"])],
)  # fmt: skip
def test_list_accounts_validates(hand: Handlers, kwargs: dict, status: int, loc: list) -> None:
    with pytest.raises(RequestError) as exc:
        hand.list_accounts(**kwargs)
    assert exc.value.status == status and exc.value.detail[0]["loc"] == loc
    if status == 413:
        assert f"max_ids_per_request={MAX_IDS}" in exc.value.message


def test_unknown_or_invalid_account_is_404_or_422(hand: Handlers) -> None:
    for call in (hand.account_history, hand.explanation_svg):
        with pytest.raises(ServiceError) as exc:
            call("no-such-account")
        assert exc.value.status == 404
        assert exc.value.body()["error"].startswith("unknown account_id")
        for bad in ("", "x" * 129, "a\x00b"):
            with pytest.raises(RequestError) as exc:
                call(bad)
            assert exc.value.status == 422 and exc.value.detail[0]["loc"] == ["account_id"]


def test_explanation_svg_is_well_formed(hand: Handlers) -> None:
    import xml.etree.ElementTree as ET

    svg = hand.explanation_svg("a")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(t.text or "" for t in root.iter() if t.text)
    assert "55" in text and "45" in text  # the run's base health and the account's health
    assert "<script" not in svg


def test_explanation_svg_without_base_health_uses_the_scorer(hand: Handlers,
                                                             tmp_path: Path) -> None:  # fmt: skip
    store = ScoreStore(f"sqlite:///{tmp_path / 'nobase.db'}")
    store.write_run(_run_row(0), [_score_row("a", 70.0, "green", "csm-1", "smb")], [])
    app = Handlers(hand.scorer, store, hand.limits)
    try:
        svg = app.explanation_svg("a")
        assert f"{hand.scorer.base_health:.0f} for an average account" in svg
    finally:
        app.close()


def test_store_failure_is_503_for_the_account_calls(app: Handlers, tmp_path: Path) -> None:
    store = ScoreStore(f"sqlite:///{tmp_path}/missing/dir/x.db", create=False)
    bad = Handlers(app.scorer, store, app.limits)
    try:
        for call in (lambda: bad.account_history("a"), lambda: bad.list_accounts(),
                     lambda: bad.explanation_svg("a")):  # fmt: skip
            with pytest.raises(NotReady):
                call()
        assert bad.current_peers() is None
    finally:
        bad.close()


def test_current_peers_follow_the_newest_run(hand: Handlers, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:  # fmt: skip
    import serving.handlers as app_module

    reads = 0
    real = hand.store.latest_run

    def counting() -> Any:
        nonlocal reads
        reads += 1
        return real()

    monkeypatch.setattr(hand.store, "latest_run", counting)
    assert hand.current_peers() == {"healthy": {"active_users_30d": 31.0}}
    assert hand.current_peers() == {"healthy": {"active_users_30d": 31.0}}
    assert reads == 1  # cached
    hand.store.write_run(_run_row(2, peers={"healthy": {"active_users_30d": 40.0}}),
                         [_score_row("a", 50.0, "yellow", "csm-1", "smb")], [])  # fmt: skip
    assert hand.current_peers()["healthy"]["active_users_30d"] == 31.0  # not yet re-read
    monkeypatch.setattr(app_module, "PEERS_REFRESH_S", 0.0)
    assert hand.current_peers()["healthy"]["active_users_30d"] == 40.0
    assert reads == 2


def test_score_rows_pass_the_peer_table(hand: Handlers) -> None:
    seen: list[Any] = []

    class Spy:
        models = hand.scorer.models
        base_health = hand.scorer.base_health

        def score(self, frame: Any, peers: Any = None) -> Any:
            seen.append(peers)
            return hand.scorer.score(frame)  # (the hand-made table is not a real one)

    spied = Handlers(hand.scorer, hand.store, hand.limits)
    spied.scorer = Spy()  # type: ignore[assignment]
    try:
        assert spied.score_rows([{"account_id": "x"}]).results[0].account_id == "x"
        assert seen == [{"healthy": {"active_users_30d": 31.0}}]
    finally:
        spied.id_batcher.close()
        spied.row_batcher.close()


def test_route_labels_bound_the_metrics() -> None:
    """Metrics label a path by its route template; anything else shares one label."""

    from serving.bentoml_fixes import UNMATCHED, RouteLabels

    route = RouteLabels(["/score", "/accounts", "/accounts/{account_id:path}/history",
                         "/accounts/{account_id:path}/explanation.svg"])  # fmt: skip
    assert route("/score") == "/score" and route("/accounts") == "/accounts"
    for a in ("ACC-1", "a/b", "x" * 300):
        assert route(f"/accounts/{a}/history") == "/accounts/{account_id}/history"
        assert route(f"/accounts/{a}/explanation.svg") == "/accounts/{account_id}/explanation.svg"
    for path in ("/accounts/x", "/accounts/x/historyx", "/accounts/x/explanation_svg", "/nope"):
        assert route(path) == UNMATCHED, path
    assert route("/metrics") == "/metrics"
