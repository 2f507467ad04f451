"""The real HTTP service: `bentoml serve serving.service:HealthService` on 127.0.0.1.

One server per module (restarted once, for the retrain -> promote test at the end) over a
private copy of the shared set-up's registry and store (`tests/serving_data.py`).
Checks auth, open probe paths, limits, validation messages, per-item errors, that HTTP
answers equal in-process `Handlers` answers, a bounded schemathesis run without any
5xx, and that a promoted retrained model is what the restarted service answers with.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.handlers import Handlers
from tests.http_server import AUTH, KEY, READY_TIMEOUT_S, Server
from tests.http_server import free_port as _free_port
from tests.serving_data import (
    MAX_IDS,
    MAX_ROWS,
    REPO,
    WORSE_LIGHTGBM,
    ServingSetup,
    environ,
    load_handlers,
    serving_setup,
    write_params,
)

pytestmark = pytest.mark.slow


@dataclass
class State:
    setup: ServingSetup  # the module's private copy of registry and store
    server: Server
    app: Handlers  # in-process, over the same registry and store


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    shared = serving_setup(tmp_path_factory)
    root = tmp_path_factory.mktemp("http")
    setup = shared.copy_state(root / "state")
    env = {**os.environ, **setup.env(), "CSHEALTH_API_KEY": KEY,
           "BENTOML_HOME": str(root / "bentoml"), "PROMETHEUS_MULTIPROC_DIR": str(root / "prom"),
           "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1",
           "CSHEALTH_LOAD_RETRY_S": "1"}  # fmt: skip
    env.pop("CSHEALTH_NO_AUTH", None)
    (root / "prom").mkdir()
    server = Server(env, root / "server.log")
    with environ(setup.env()):
        app = load_handlers()
    try:
        server.start()
        yield State(setup, server, app)
    finally:
        server.stop()
        app.close()


# ----- auth and open paths ------------------------------------------------------------------
def test_scoring_needs_the_key(state: State) -> None:
    srv, body = state.server, {"account_ids": state.setup.ids[:1]}
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = srv.post("/score", body, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert set(r.json()) == {"detail"}
    for path in ("/score_features", "/model_info"):
        assert srv.post(path, {}, headers=None).status_code == 401
    assert srv.post("/score", body).status_code == 200
    assert KEY not in state.server.tail(10**7)  # never logged


def test_probes_metrics_and_docs_are_open(state: State) -> None:
    url = state.server.url
    for path in ("/readyz", "/livez", "/healthz", "/docs.json"):
        assert httpx.get(url + path).status_code == 200, path
    state.server.post("/score", {"account_ids": state.setup.ids[:1]})
    metrics = httpx.get(url + "/metrics").text
    assert "bentoml_service_request_total" in metrics
    assert 'cshealth_batch_requests_count{endpoint="score"}' in metrics


# ----- limits and validation ------------------------------------------------------------------
def test_limits_give_413_naming_the_limit(state: State) -> None:
    srv = state.server
    r = srv.post("/score", {"account_ids": [f"a{i}" for i in range(MAX_IDS + 1)]})
    assert r.status_code == 413 and f"max_ids_per_request={MAX_IDS}" in r.json()["error"]
    r = srv.post("/score_features", {"rows": [{}] * (MAX_ROWS + 1)})
    assert r.status_code == 413 and f"max_rows_per_request={MAX_ROWS}" in r.json()["error"]
    assert srv.post("/score", {"account_ids": [f"a{i}" for i in range(MAX_IDS)]}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [("/score", b'{"account_ids": ["a"', []), ("/score", b"[1, 2]", []),
     ("/score", {}, ["account_ids"]), ("/score", {"account_ids": "a"}, ["account_ids"]),
     ("/score", {"account_ids": []}, ["account_ids"]),
     ("/score", {"account_ids": ["a", 7]}, ["account_ids", 1]),
     ("/score", {"account_ids": [""]}, ["account_ids", 0]),
     ("/score_features", {"rows": {"a": 1}}, ["rows"]),
     ("/score_features", {"rows": [1]}, ["rows", 0])],
)  # fmt: skip
def test_malformed_bodies_are_4xx_naming_the_field(state: State, path: str, body: Any,
                                                   loc: list) -> None:  # fmt: skip
    if isinstance(body, bytes):
        r = state.server.post(
            path, content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
    else:
        r = state.server.post(path, body)
    assert 400 <= r.status_code < 500
    data = r.json()
    assert data["error"] and data["detail"][0]["loc"] == loc, data


def test_wrongly_typed_feature_is_422_naming_it(state: State) -> None:
    feats = state.app.features
    numeric = next(f.name for f in feats if not f.categorical)
    categorical = next(f.name for f in feats if f.categorical)
    rows = [{numeric: 1.0}, {numeric: "high", categorical: 3, "no_such_feature": 1}]
    r = state.server.post("/score_features", {"rows": rows})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert {tuple(d["loc"]) for d in detail} == {
        ("rows", 1, numeric),
        ("rows", 1, categorical),
        ("rows", 1, "no_such_feature"),
    }
    assert "rows.1." in r.json()["error"]
    assert any("unknown feature 'no_such_feature'" in d["msg"] for d in detail)


def test_unknown_account_fails_only_its_item(state: State) -> None:
    ids = state.setup.ids
    r = state.server.post("/score", {"account_ids": [ids[0], "ghost-1", ids[1], ids[0]]})
    assert r.status_code == 200
    body = r.json()
    assert [x["account_id"] for x in body["results"]] == ids[:2]
    assert [e["account_id"] for e in body["errors"]] == ["ghost-1"]
    for item in body["results"]:
        assert set(item) >= {"account_id", "as_of", "churn_probability", "expansion_probability",
                             "health_score", "band", "health_change", "components", "reasons",
                             "model_version", "missing_features"}  # fmt: skip


# ----- HTTP == in-process ---------------------------------------------------------------------
def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def test_http_equals_in_process(state: State) -> None:
    app, srv = state.app, state.server
    for chunk in _chunks([*state.setup.ids, "ghost"], MAX_IDS):
        r = srv.post("/score", {"account_ids": chunk})
        assert r.status_code == 200
        assert r.json() == app.score_ids(chunk).model_dump(mode="json")
    for chunk in _chunks(state.setup.ids, MAX_ROWS):
        feats = app.store.features(chunk)
        rows = [{"account_id": a, "as_of": feats[a]["as_of"], **feats[a]["features"]}
                for a in chunk]  # fmt: skip
        r = srv.post("/score_features", {"rows": rows})
        assert r.status_code == 200
        assert r.json() == app.score_rows(rows).model_dump(mode="json")
    r = srv.post("/model_info", {})
    assert r.json() == app.model_info().model_dump(mode="json")


# ----- the account endpoints (GET) ----------------------------------------------------------
def _get(state: State, path: str, headers: dict | None = AUTH, **params: Any) -> httpx.Response:
    return httpx.get(f"{state.server.url}{path}", params=params, headers=headers, timeout=30)


def test_account_endpoints_need_the_key(state: State) -> None:
    a = state.setup.ids[0]
    paths = ("/accounts", f"/accounts/{a}/history", f"/accounts/{a}/explanation.svg")
    for path in paths:
        for headers in (None, {"Authorization": "Bearer wrong"}):
            r = _get(state, path, headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert set(r.json()) == {"detail"}
        assert _get(state, path).status_code == 200, path


def test_account_endpoints_answer_like_the_app(state: State) -> None:
    app, ids = state.app, state.setup.ids
    r = _get(state, "/accounts", band="red", limit=MAX_IDS)
    assert r.status_code == 200
    assert r.json() == app.list_accounts(band="red", limit=MAX_IDS).model_dump(mode="json")
    body = _get(state, "/accounts", limit=3, offset=2).json()
    assert (body["limit"], body["offset"], body["total"]) == (3, 2, len(ids))
    health = [x["health_score"] for x in _get(state, "/accounts", limit=10).json()["results"]]
    assert health == sorted(health)
    r = _get(state, f"/accounts/{ids[0]}/history")
    assert r.json() == app.account_history(ids[0]).model_dump(mode="json")
    r = _get(state, f"/accounts/{ids[0]}/explanation.svg")
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert r.text == app.explanation_svg(ids[0])
    for path in ("/accounts/ghost/history", "/accounts/ghost/explanation.svg"):
        r = _get(state, path)
        assert r.status_code == 404 and r.json()["error"].startswith("unknown account_id"), path
    r = _get(state, "/accounts", limit=MAX_IDS + 1)
    assert r.status_code == 413 and f"max_ids_per_request={MAX_IDS}" in r.json()["error"]
    for params, loc in (({"band": "blue"}, ["query", "band"]), ({"limit": 0}, ["query", "limit"]),
                        ({"offset": "x"}, ["query", "offset"])):  # fmt: skip
        r = _get(state, "/accounts", **params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, params
    r = _get(state, "/accounts/" + "x" * 129 + "/history")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "account_id"]
    # the metrics name the routes, not the ids
    metrics = httpx.get(f"{state.server.url}/metrics").text
    endpoints = set(re.findall(r'endpoint="([^"]*)"', metrics))
    assert {"/accounts", "/accounts/{account_id}/history",
            "/accounts/{account_id}/explanation.svg"} <= endpoints  # fmt: skip
    assert not [e for e in endpoints if "ghost" in e or ids[0] in e]


def test_openapi_documents_auth_and_errors(state: State) -> None:
    spec = httpx.get(f"{state.server.url}/docs.json").json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert spec["security"] == [{"bearerAuth": []}]
    paths = spec["paths"]
    assert {"/accounts", "/accounts/{account_id}/history",
            "/accounts/{account_id}/explanation.svg"} <= set(paths)  # fmt: skip
    schemas = spec["components"]["schemas"]
    assert {"ErrorBody", "Unauthorized", "ScoreItem", "AccountList", "AccountHistory"} <= set(
        schemas
    )
    assert {"peer_value", "peer_group"} <= set(schemas["Reason"]["properties"])
    assert {"expansion_reasons", "context", "plays", "changes", "name", "segment",
            "csm_id"} <= set(schemas["ScoreItem"]["properties"])  # fmt: skip
    ops = 0
    for path, item in paths.items():
        for method, op in item.items():
            if path in ("/healthz", "/livez", "/readyz", "/metrics"):
                assert op["security"] == [], path  # open
                continue
            ops += 1
            codes = set(op["responses"])
            assert {"200", "401", "422", "503"} <= codes, (method, path, codes)
            ref = op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/Unauthorized")
            if "{account_id}" in path:
                assert "404" in codes, path
            if method == "post" or path == "/accounts":
                assert "413" in codes, path
    assert ops == 6


# ----- no input gives a 5xx -------------------------------------------------------------------
def test_schemathesis_finds_no_server_error(state: State) -> None:
    """Positive and negative cases from the OpenAPI schema, 20 per operation and mode."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{state.server.url}/docs.json")
    failures: list[str] = []
    calls = 0
    statuses: list[tuple[str, int]] = []
    ops = [r.ok() for r in schema.get_all_operations()]
    ops = [op for op in ops if op.path not in ("/healthz", "/livez", "/readyz", "/metrics")]
    assert {op.path for op in ops} >= {"/score", "/score_features", "/model_info", "/accounts",
                                       "/accounts/{account_id}/history",
                                       "/accounts/{account_id}/explanation.svg"}  # fmt: skip
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=20, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                nonlocal calls
                calls += 1
                r = case.call(base_url=state.server.url, headers=AUTH, timeout=30)
                statuses.append((case.path, r.status_code))
                if r.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {r.status_code} "
                                    f"{r.text[:300]} for {str(case.body)[:300]}")  # fmt: skip

            check()
    assert calls >= 120
    ok = {path for path, status in statuses if status == 200}
    # the key was sent: real work
    assert ok >= {"/score", "/score_features", "/model_info", "/accounts"}
    assert not failures, "\n".join(failures[:10])


# ----- retrain -> promote -> restart --------------------------------------------------------------
def test_retrain_promote_restart_serves_the_new_version(state: State) -> None:
    """Runs last: it changes the module's registry and store and restarts the server."""
    from cshealth.config import load_config
    from features.snapshots import SnapshotTable
    from serving.batch import score_latest
    from serving.predictor import ModelPair, Scorer
    from serving.store import ScoreStore
    from training import tracking
    from training.train import train

    setup, srv = state.setup, state.server
    # a deliberately bad model: registered as v2, not promoted (worse than the champion)
    params = write_params(setup.mlflow_db.parent / "retrain.yaml", lightgbm=WORSE_LIGHTGBM)
    cfg = load_config(params)
    snaps = SnapshotTable.read(setup.snapshots)
    with environ(setup.env()):
        record = tracking.log_training(train(snaps, cfg.train, list(cfg.rules)), snaps,
                                       setup.snapshots, config=cfg.model_dump(mode="json"),
                                       gates=cfg.train.gates)  # fmt: skip
        assert record.versions == {"churn": 2, "expansion": 2}
        for d in record.decisions.values():
            assert not d.promoted and "worse than the champion" in d.reason, d.reason
        assert tracking.load_champion("churn")[1] == 1
        assert tracking.promote_pair(2) == {"churn": 1, "expansion": 1}

    v1 = {"churn": "1", "expansion": "1"}
    v2 = {"churn": "2", "expansion": "2"}
    assert srv.post("/model_info", {}).json()["model_version"] == v1  # still the old process
    srv.stop()
    srv.start()
    assert srv.startup_s < READY_TIMEOUT_S
    info = srv.post("/model_info", {}).json()
    assert info["model_version"] == v2
    assert info["models"]["churn"]["version"] == "2"
    assert info["models"]["churn"]["trees"] == 1  # the stump
    r = srv.post("/score_features", {"rows": [{"account_id": "x"}]}).json()
    assert r["results"][0]["model_version"] == v2
    # scores by id come from the store: v1 until the next batch scoring, then v2
    ids = setup.ids[:3]
    assert {x["model_version"]["churn"] for x in srv.post("/score", {"account_ids": ids})
            .json()["results"]} == {"1"}  # fmt: skip
    with environ(setup.env()):
        churn, expansion = tracking.load_champion("churn"), tracking.load_champion("expansion")
    scorer = Scorer(ModelPair(churn[0], expansion[0], str(churn[1]), str(expansion[1])),
                    cfg.health)  # fmt: skip
    store = ScoreStore(setup.db_url)
    score_latest(snaps.frame, scorer, store, dt.datetime(2026, 1, 2, 6, 0))
    store.close()
    body = srv.post("/score", {"account_ids": ids}).json()
    assert [x["model_version"] for x in body["results"]] == [v2] * 3
    assert all(x["health_change"] is not None for x in body["results"])
    assert srv.post("/model_info", {}).json()["latest_run"]["model_version"] == v2


# ----- the `cshealth serve` wrapper -------------------------------------------------------
def test_cshealth_serve_prints_a_working_curl_and_stops_cleanly(state: State) -> None:
    """The banner `make demo` ends with: its curl answers; SIGTERM stops server and child."""
    import json
    import re

    port = _free_port()
    cli = Path(sys.executable).with_name("cshealth")
    env = {**state.server.env, "BENTOML_HOME": str(state.server.log.parent / "bentoml2")}
    proc = subprocess.Popen(
        [str(cli), "--params", str(state.setup.params), "serve", "--port", str(port),
         "--show-key"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail("cshealth serve exited:\n" + "".join(lines[-40:]))
            lines.append(line)
            if line.startswith("try:"):
                break
        curl = lines[-1]
        assert f"API key: {KEY}" in "".join(lines)
        body = json.loads(re.search(r"-d '(.*)'", curl).group(1))
        assert body["account_ids"][0] in state.setup.ids  # a real account
        r = httpx.post(f"http://127.0.0.1:{port}/score", json=body, headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["account_id"] in state.setup.ids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        with pytest.raises(httpx.HTTPError):  # the BentoML child is gone too
            httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
