"""MLflow tracking and the registry: `cshealth train / models / promote / score` in a temp dir.

One small simulated data set and one MLflow store (SQLite in a temp folder) per module;
the first `train` runs in the fixture, the tests below read what it left and build on it
in file order: a second identical `train` (v2, promoted: not worse), a deliberately bad
one (v3, not promoted; promoted by hand and put back), then scoring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import training.train
from cshealth.cli import main
from features.pipeline import build_snapshots
from features.settings import FeatureParams
from features.snapshots import SnapshotTable
from simulator import generate, write_dataset
from training import tracking
from training.metrics import METRIC_NAMES
from training.settings import Gates, LightGBMParams
from training.train import TrainResult

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: floors only warn; min_auc differs from the default so the logged params show this file
GATES = {"min_auc": 0.72, "max_ece": 0.1, "tolerance": 0.01}
#: one stump: far below the champion on the shared backtest rows
WORSE = {"n_estimators": 1, "num_leaves": 2, "min_rounds": 1}
TARGETS = ("churn", "expansion")


@dataclass
class Store:
    root: Path
    snapshots: Path
    truth: Path
    params: Path
    worse_params: Path
    reports: Path
    first_out: str
    results: list[TrainResult]  # what each `cshealth train` of this module trained in-process


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _params(path: Path, lightgbm: dict | None = None) -> Path:
    train = {"gates": GATES, "lightgbm": lightgbm or {}}
    path.write_text(yaml.safe_dump({"train": train}))
    return path


def _train(store: Store, params: Path, reports: Path) -> tuple[int, str, str]:
    return _run(["--params", str(params), "train", "--features", str(store.snapshots),
                 "--reports", str(reports)])  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    sim = generate(accounts=250, months=24, seed=7, start=dt.date(2023, 1, 1), truth_samples=20)
    write_dataset(sim, root / "raw", root / "truth.parquet")
    snapshots = root / "data" / "features" / "snapshots.parquet"
    build_snapshots(root / "raw", FeatureParams()).write(snapshots)
    results: list[TrainResult] = []
    real_train = training.train.train

    def recording_train(*args, **kwargs) -> TrainResult:
        results.append(real_train(*args, **kwargs))
        return results[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.delenv(tracking.EXPERIMENT_ENV, raising=False)
        mp.chdir(root)
        mp.setattr(training.train, "train", recording_train)  # the CLI imports it lazily
        s = Store(root, snapshots, root / "truth.parquet", _params(root / "params.yaml"),
                  _params(root / "worse.yaml", WORSE), root / "reports", "", results)  # fmt: skip
        rc, out, err = _run(["--params", str(s.params), "train", "--features", str(snapshots),
                             "--truth", str(s.truth), "--reports", str(s.reports)])  # fmt: skip
        assert rc == 0, err
        assert len(results) == 1
        s.first_out = out
        yield s


# ----- the first `cshealth train` on a fresh store ------------------------------------------
def test_first_train_ends_with_a_champion_for_every_target(store: Store) -> None:
    result = store.results[0]
    for target in TARGETS:
        r = result.targets[target]
        line = next(x for x in store.first_out.splitlines() if x.startswith(f"{target}: v1 "))
        assert line.startswith(f"{target}: v1 promoted to champion")
        # First champion when it beats the best baseline, else provisional: never none.
        base, base_auc = r.best_baseline()
        auc = r.metrics["lightgbm"]["roc_auc"]
        assert f"vs {base} {base_auc:.3f}" in line and f"backtest AUC {auc:.3f}" in line
        assert ("first champion" if auc > base_auc else "provisional first model") in line
    assert "to make it champion anyway" not in store.first_out
    assert "walk-forward backtest, 6 monthly origins" in store.first_out
    rows = tracking.list_models()
    assert [(r["name"], r["version"], r["aliases"], r["promotion"]) for r in rows] == [
        ("cshealth-churn", 1, ["champion"], "champion"),
        ("cshealth-expansion", 1, ["champion"], "champion"),
    ]
    for row in rows:
        pooled = result.targets[row["target"]].metrics["lightgbm"]
        assert row["roc_auc"] == pytest.approx(pooled["roc_auc"], abs=1e-3)
        assert row["ece"] == pytest.approx(pooled["ece"], abs=1e-3)
    assert (store.root / "mlartifacts").is_dir()  # artifacts beside the SQLite db


def test_metrics_json_holds_the_pooled_backtest_per_target(store: Store) -> None:
    metrics = json.loads((store.reports / "metrics.json").read_text())
    snaps = SnapshotTable.read(store.snapshots)
    assert set(metrics) == set(TARGETS)
    for target, doc in metrics.items():
        bt = store.results[0].targets[target].backtest
        assert doc["evaluation"].startswith("walk-forward backtest")
        assert doc["label"] == f"{target}_90d" and doc["horizon_days"] == 90
        assert doc["origins"] == len(bt.origins) == 6
        assert doc["last_origin"] == bt.origins[-1].date().isoformat()
        assert doc["rows"] == len(bt.predictions) > 0
        assert 0 < doc["positives"] == int(bt.predictions["y"].sum())
        up_to = pd.Timestamp(doc["trained_on_labels_up_to"])
        assert pd.Timestamp(doc["last_origin"]) < up_to <= snaps.cutoff
        assert doc["champion_rows"] > doc["rows"] and doc["trees"] >= 1
        assert isinstance(doc["warnings"], list)
        contenders = doc["contenders"]
        assert set(contenders) == {"lightgbm", "logistic", "rules", "oracle"}  # --truth given
        for values in contenders.values():
            assert set(METRIC_NAMES) <= set(values)
            assert {f"{m}_lo" for m in METRIC_NAMES} <= set(values)
            assert values["roc_auc_lo"] <= values["roc_auc"] <= values["roc_auc_hi"]
            assert values["positives"] == doc["positives"] and values["rows"] == doc["rows"]
        assert contenders["oracle"]["roc_auc"] > 0.5
        per_origin = doc["per_origin"]
        assert list(per_origin) == [o.date().isoformat() for o in bt.origins]
        assert sum(o["rows"] for o in per_origin.values()) == doc["rows"]
        assert sum(o["positives"] for o in per_origin.values()) == doc["positives"]
        for o in per_origin.values():
            assert {"train_rows", "trees", "lightgbm_roc_auc", "logistic_roc_auc",
                    "rules_roc_auc", "oracle_roc_auc"} <= set(o)  # fmt: skip
            assert o["train_rows"] > 0 and o["trees"] >= 1


def test_champion_loads_as_the_trained_model(store: Store) -> None:
    import mlflow

    snaps = SnapshotTable.read(store.snapshots)
    result = store.results[0]  # the in-process models of the first `cshealth train`
    newest = snaps.frame[snaps.frame["as_of"] == snaps.frame["as_of"].max()]
    for target in TARGETS:
        res = result.targets[target]
        rows = snaps.frame[snaps.frame["as_of"].isin(res.backtest.origins)]
        rows = pd.concat([rows, newest])
        model, version = tracking.load_champion(target)
        assert version == 1
        assert model.feature_names == res.model.feature_names
        assert model.info["labels_up_to"] == res.model.info["labels_up_to"]
        assert model.info["backtest_metrics"] == pytest.approx(res.model.info["backtest_metrics"])
        np.testing.assert_allclose(model.predict_proba(rows), res.model.predict_proba(rows),
                                   rtol=0, atol=1e-12)  # fmt: skip
    # The pyfunc returns calibrated probabilities (not labels) in a `probability` column.
    from training.pyfunc import model_input

    res = result.targets["churn"]
    pyfunc = mlflow.pyfunc.load_model("models:/cshealth-churn@champion")
    out = pyfunc.predict(model_input(res.model, newest))
    assert list(out.columns) == ["probability"]
    np.testing.assert_allclose(out["probability"].to_numpy(), res.model.predict_proba(newest),
                               rtol=0, atol=1e-12)  # fmt: skip


def test_run_logs_params_fingerprint_commit_backtest_and_artifacts(store: Store) -> None:
    c = tracking.client()
    run = c.get_run(c.get_model_version("cshealth-churn", "1").run_id)
    params, tags = run.data.params, run.data.tags
    assert params["train.lightgbm.n_estimators"] == str(LightGBMParams().n_estimators)
    assert params["train.gates.min_auc"] == "0.72"
    assert params["train.backtest.origins"] == "6"
    assert params["rules.0.feature"] == "active_users_ratio_30d_90d"
    assert params["features.windows.short"] == "7"
    res = store.results[0].targets["churn"]
    assert params["model.churn.trees"] == str(res.model.info["trees"])
    assert params["backtest.churn.rows"] == str(len(res.backtest.predictions))
    assert tags["snapshot_sha256"] == tracking.file_sha256(store.snapshots)
    assert params["snapshot_sha256"] == tags["snapshot_sha256"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert tags["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert tags["evaluation"] == "walk-forward backtest"
    assert tags["promotion.churn"] == "champion" and tags["promotion.churn.version"] == "1"
    m = run.data.metrics
    assert m["churn.lightgbm.roc_auc"] > 0.5
    assert m["churn.lightgbm.roc_auc_lo"] <= m["churn.lightgbm.roc_auc"]
    assert "churn.oracle.roc_auc" in m and "expansion.rules.roc_auc_hi" in m
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"features.json", "metrics.json", "params.yaml", "data", "backtest"} <= names
    logged = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "backtest")}
    assert logged == {"churn.parquet", "expansion.parquet"}
    plots = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "plots")}
    assert plots == {p.name for p in (store.reports / "plots").iterdir()}
    assert {Path(p).suffix for p in plots} == {".png", ".csv"}
    features = json.loads(Path(c.download_artifacts(run.info.run_id, "features.json",
                                                    str(store.root))).read_text())  # fmt: skip
    assert "account_id" not in {f["name"] for f in features["features"]}
    # What `cshealth models` and a registry reader see on the version.
    mv = c.get_model_version("cshealth-churn", "1")
    assert mv.tags["backtest_roc_auc"] == f"{res.metrics['lightgbm']['roc_auc']:.3f}"
    assert mv.tags["backtest_positives"] == str(res.backtest.positives)
    assert mv.tags["labels_up_to"] == res.model.info["labels_up_to"]
    assert mv.tags["backtest_origins"] == ",".join(res.model.info["backtest_origins"])
    assert mv.tags["champion_before"] == "none" and mv.tags["promotion"] == "champion"


def test_champion_comparison_pairs_the_logged_backtest(store: Store) -> None:
    c = tracking.client()
    pred = store.results[0].targets["churn"].backtest.predictions
    cmp, why = tracking.compare_with_champion(c, "churn", 1, pred)
    assert why is None
    assert cmp.rows == len(pred) and cmp.positives == int(pred["y"].sum())
    assert cmp.delta == 0 and cmp.lo == cmp.hi == 0  # the same predictions
    # No shared rows (another time window): not comparable, and says why.
    later = pred.assign(as_of=pred["as_of"] + pd.Timedelta(days=3650))
    cmp, why = tracking.compare_with_champion(c, "churn", 1, later)
    assert cmp is None and "share 0 rows" in why
    cmp, why = tracking.compare_with_champion(c, "churn", 99, pred)  # no such version
    assert cmp is None and "could not be read" in why
    # The same ids and dates with other outcomes: other data, not comparable.
    flipped = pred.assign(y=1 - pred["y"])
    cmp, why = tracking.compare_with_champion(c, "churn", 1, flipped)
    assert cmp is None and "trained on other data" in why and "100%" in why
    # A few corrected labels (under 1 %) still pair.
    few = len(pred) // 200
    assert few >= 1, len(pred)
    fixed = pred.copy()
    fixed.loc[fixed.index[:few], "y"] = 1 - fixed["y"].iloc[:few]
    cmp, why = tracking.compare_with_champion(c, "churn", 1, fixed)
    assert why is None and cmp.rows == len(pred)


# ----- later runs ----------------------------------------------------------------------------
def test_identical_retrain_is_promoted_as_not_worse(store: Store) -> None:
    rc, out, err = _train(store, store.params, store.root / "again")
    assert rc == 0, err
    assert len(store.results) == 2
    for target in TARGETS:
        first, again = (r.targets[target] for r in store.results)
        # the same predictions (the first run also had the truth: an `oracle` column)
        pd.testing.assert_frame_equal(
            first.backtest.predictions.drop(columns="oracle"), again.backtest.predictions
        )
        line = next(x for x in out.splitlines() if x.startswith(f"{target}: v2 "))
        assert line.startswith(f"{target}: v2 promoted to champion (not worse: AUC +0.000")
        assert "vs champion v1 on" in line and "shared backtest rows" in line
        assert tracking.load_champion(target)[1] == 2
        mv = tracking.client().get_model_version(tracking.registered_name(target), "2")
        assert mv.tags["champion_before"] == "1" and float(mv.tags["champion_auc_delta"]) == 0
    assert "to make it champion anyway" not in out


def test_worse_model_is_not_promoted_until_promoted_by_hand(store: Store) -> None:
    rc, out, err = _train(store, store.worse_params, store.root / "worse")
    assert rc == 0, err
    assert store.results[-1].targets["churn"].model.info["trees"] == 1
    lines = out.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("churn: v3 "))
    line = lines[i]  # why, in one line
    assert line.startswith("churn: v3 not promoted: worse than the champion (AUC -")
    assert "vs champion v2 on" in line and "tolerance 0.01" in line
    assert line.endswith("champion stays v2")
    assert lines[i + 1] == "  to make it champion anyway: cshealth promote 3 --model churn"
    assert "expansion: v3 not promoted" in out
    assert "cshealth promote 3 --model expansion" in out
    # The floor only warns (printed), it does not decide.
    assert "churn: warning: backtest roc_auc" in out and "min_auc 0.72" in out

    c = tracking.client()
    mv = c.get_model_version("cshealth-churn", "3")
    assert mv.tags["promotion"] == "rejected" and "champion stays v2" in mv.tags["promotion_reason"]
    assert mv.tags["champion_before"] == "2" and float(mv.tags["champion_auc_delta"]) < -0.01
    assert "min_auc 0.72" in mv.tags["warnings"]
    run = c.get_run(mv.run_id)
    assert run.data.tags["promotion.churn"] == "rejected"

    rc, out, _ = _run(["models"])
    assert rc == 0
    listed = [x.split()[:3] for x in out.splitlines() if x.startswith("cshealth-")]
    assert listed == [["cshealth-churn", "1", "-"], ["cshealth-churn", "2", "champion"],
                      ["cshealth-churn", "3", "-"], ["cshealth-expansion", "1", "-"],
                      ["cshealth-expansion", "2", "champion"],
                      ["cshealth-expansion", "3", "-"]]  # fmt: skip

    rc, out, _ = _run(["promote", "3", "--model", "churn"])
    assert rc == 0 and "cshealth-churn: champion v2 -> v3" in out
    aliases = {(r["name"], r["version"]): r["aliases"] for r in tracking.list_models()}
    assert aliases[("cshealth-churn", 3)] == ["champion"]
    assert aliases[("cshealth-churn", 2)] == []
    assert aliases[("cshealth-expansion", 2)] == ["champion"]
    _, out, _ = _run(["models"])
    assert ["cshealth-churn", "3", "champion"] in [x.split()[:3] for x in out.splitlines()]

    rc, _, err = _run(["promote", "9", "--model", "churn"])
    assert rc == 2 and "has no version 9 (versions: 1, 2, 3)" in err
    rc, out, _ = _run(["promote", "2"])  # both models, back to the second run
    assert rc == 0 and "cshealth-churn: champion v3 -> v2 (run " in out
    assert "cshealth-expansion: champion v2 -> v2 (run " in out
    assert tracking.load_champion("churn")[1] == 2
    # `cshealth models` shows each version's run id and status, to copy into `promote`.
    _, out, _ = _run(["models"])
    run2 = c.get_model_version("cshealth-churn", "2").run_id
    assert [run2, "FINISHED"] == next(x.split()[-2:] for x in out.splitlines()
                                      if x.split()[:2] == ["cshealth-churn", "2"])  # fmt: skip
    rc, out, _ = _run(["promote", mv.run_id])  # the third run: both of its models
    assert rc == 0 and f"cshealth-expansion: champion v2 -> v3 (run {mv.run_id})" in out
    rc, out, _ = _run(["promote", "--run", run2])
    assert rc == 0 and "cshealth-churn: champion v3 -> v2" in out


def test_missing_snapshots_and_unreachable_server_are_clear_errors(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, err = _run(["train", "--features", str(tmp_path / "missing.parquet")])
    assert rc == 2 and "cshealth features" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for argv in (["models"], ["train", "--features", str(store.snapshots)]):
        rc, _, err = _run(argv)
        assert rc == 2 and "unreachable" in err and "MLFLOW_TRACKING_URI" in err
        assert "http://127.0.0.1:9 " in err and len(err.strip().splitlines()) == 1


# ----- the gate as a pure function ---------------------------------------------------------
G = Gates(min_auc=0.7, max_ece=0.05, tolerance=0.01)
BASE = ("logistic", 0.70)


def _cmp(delta: float, lo: float, hi: float) -> tracking.Comparison:
    return tracking.Comparison(rows=1200, positives=80, delta=delta, lo=lo, hi=hi)


def test_gate_first_champion_beating_the_baseline() -> None:
    d = tracking.decide("churn", 1, 0.80, BASE, G, None, None)
    assert d.promoted and d.champion_before is None
    assert d.line() == ("churn: v1 promoted to champion (first champion; backtest AUC 0.800 "
                        "vs logistic 0.700)")  # fmt: skip
    # No finite baseline to beat: the first model is champion, not provisional.
    d = tracking.decide("churn", 1, 0.80, ("rules", math.nan), G, None, None)
    assert d.promoted and "first champion" in d.reason


def test_gate_provisional_first_model_and_floors_never_block() -> None:
    warn = ("backtest roc_auc 0.650 is below the floor min_auc 0.7",)
    d = tracking.decide("expansion", 1, 0.65, BASE, G, None, None, warnings=warn)
    assert d.promoted and "provisional first model" in d.reason
    assert "does not beat the baseline" in d.reason and "backtest AUC 0.650" in d.reason
    assert d.warnings == warn  # kept for the console and the tags, not a reason to refuse
    d = tracking.decide("churn", 1, 0.70, BASE, G, None, None)  # a tie does not beat it
    assert d.promoted and "provisional" in d.reason
    d = tracking.decide("churn", 1, math.nan, BASE, G, None, None)
    assert d.promoted and "provisional" in d.reason and "backtest AUC nan" in d.reason


def test_gate_against_the_champion_not_worse_is_promoted() -> None:
    d = tracking.decide("churn", 4, 0.79, BASE, G, 3, _cmp(-0.005, -0.03, 0.02))
    assert d.promoted and d.champion_before == 3
    assert d.reason.startswith("v4 promoted to champion (not worse: AUC -0.005 [-0.030, +0.020]")
    assert "vs champion v3 on 1,200 shared backtest rows (80 positives)" in d.reason
    assert tracking.decide("churn", 4, 0.80, BASE, G, 3, _cmp(0.02, 0.0, 0.04)).promoted
    # at the boundary: trailing by exactly the tolerance, interval reaching exactly 0
    assert tracking.decide("churn", 4, 0.80, BASE, G, 3, _cmp(-0.01, -0.05, 0.0)).promoted
    # a challenger that does not beat the baseline may still replace an equal champion
    assert tracking.decide("churn", 4, 0.60, BASE, G, 3, _cmp(0.0, -0.01, 0.01)).promoted


def test_gate_against_the_champion_worse_is_refused() -> None:
    d = tracking.decide("churn", 4, 0.75, BASE, G, 3, _cmp(-0.05, -0.08, -0.02))
    assert not d.promoted and d.champion_before == 3
    assert d.line() == (
        "churn: v4 not promoted: worse than the champion (AUC -0.050 [-0.080, -0.020] vs "
        "champion v3 on 1,200 shared backtest rows (80 positives); tolerance 0.01); champion "
        "stays v3"
    )
    assert d.promote_command() == "cshealth promote 4 --model churn"
    assert d.run_command() is None  # a pure decision knows no run
    run = "0123456789abcdef0123456789abcdef"
    assert dataclasses.replace(d, run_id=run).run_command() == f"cshealth promote {run}"
    # within the tolerance but significantly worse: the interval lies below 0
    d = tracking.decide("churn", 4, 0.79, BASE, G, 3, _cmp(-0.005, -0.009, -0.001))
    assert not d.promoted and "champion stays v3" in d.reason
    # beating every baseline does not help against a better champion
    assert not tracking.decide("churn", 4, 0.95, BASE, G, 3, _cmp(-0.03, -0.05, 0.01)).promoted


def test_gate_champion_not_comparable_falls_back_on_the_baseline() -> None:
    why = "the two backtests share 0 rows, too few with both outcomes"
    d = tracking.decide("churn", 4, 0.75, BASE, G, 3, None, incomparable=why)
    assert d.promoted and d.champion_before == 3
    assert f"champion v3 not comparable: {why}" in d.reason
    assert "backtest AUC 0.750 vs logistic 0.700" in d.reason
    d = tracking.decide("churn", 4, 0.65, BASE, G, 3, None, incomparable=why)
    assert not d.promoted
    assert d.line().startswith("churn: v4 not promoted (champion v3 not comparable: ")
    assert d.reason.endswith("champion stays v3")
    assert d.promote_command() == "cshealth promote 4 --model churn"


def test_flatten_params_and_metrics() -> None:
    flat = tracking.flatten_params({"a": {"b": 1, "c": [1, 2]}, "r": [{"f": "x"}], "n": None,
                                    "long": "y" * 7000})  # fmt: skip
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "r.0.f": "x", "n": "null", "long": "y" * 6000}
    m = tracking.flatten_metrics({"churn": {"rules": {"roc_auc": 0.6, "pr_auc": math.nan}}})
    assert m == {"churn.rules.roc_auc": 0.6}


# ----- scoring with the champions ------------------------------------------------------------
def test_score_uses_the_champions_and_appends_history(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.store import ScoreStore

    url = f"sqlite:///{store.root / 'scores.db'}"
    monkeypatch.setenv("CSHEALTH_DB_URL", url)
    for _ in range(2):
        rc, out, err = _run(["--params", str(store.params), "score", "--features",
                             str(store.snapshots)])  # fmt: skip
        assert rc == 0, err
    assert "scored" in out and "churn v2 / expansion v2" in out
    snaps = SnapshotTable.read(store.snapshots)
    newest = snaps.frame[snaps.frame["as_of"] == snaps.frame["as_of"].max()]
    db = ScoreStore(url)
    assert db.count_runs() == 2
    got = db.latest_scores(newest["account_id"].tolist())
    assert set(got) == set(newest["account_id"])
    champion = {t: str(tracking.load_champion(t)[1]) for t in TARGETS}
    one = next(iter(got.values()))
    assert one["model_version"] == champion
    assert one["health_change"] == 0.0  # same data, same model: unchanged since last run
    assert 0 <= one["health_score"] <= 100 and one["band"] in {"red", "yellow", "green"}


def test_score_without_a_champion_names_the_promote_command(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions but no champion (alias removed in a copy of the registry): say what to run."""
    shutil.copy(store.root / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CSHEALTH_DB_URL", f"sqlite:///{tmp_path / 'scores.db'}")
    tracking.client().delete_registered_model_alias("cshealth-churn", tracking.CHAMPION)
    rc, _, err = _run(["--params", str(store.params), "score", "--features",
                       str(store.snapshots)])  # fmt: skip
    assert rc == 2
    assert "cshealth-churn has versions 1, 2, 3 but no champion" in err
    assert "`cshealth promote 2 --model churn`" in err  # v3 was rejected by the gate
    # An empty registry: train first.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    rc, _, err = _run(["--params", str(store.params), "score", "--features",
                       str(store.snapshots)])  # fmt: skip
    assert rc == 2 and "no champion version yet: run `cshealth train`" in err


def test_serve_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSHEALTH_API_KEY", raising=False)
    rc, _, err = _run(["serve"])
    assert rc == 2 and "CSHEALTH_API_KEY" in err and "--no-auth" in err


def test_score_with_a_family_missing_flags_it(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An optional table gone since training: scoring still works and says what is missing."""
    from serving.store import ScoreStore

    frame = pd.read_parquet(store.snapshots)
    nps = [c for c in frame.columns if "nps" in c]
    fewer = tmp_path / "snapshots.parquet"
    frame.drop(columns=nps).to_parquet(fewer)
    meta = store.snapshots.with_suffix(".meta.json")
    fewer.with_suffix(".meta.json").write_text(meta.read_text())
    url = f"sqlite:///{tmp_path / 'scores.db'}"
    monkeypatch.setenv("CSHEALTH_DB_URL", url)
    rc, _, err = _run(["--params", str(store.params), "score", "--features", str(fewer)])
    assert rc == 0, err
    run = ScoreStore(url).recent_runs(1)[0]
    item = ScoreStore(url).run_scores(run["run_id"])[0]
    assert set(nps) <= set(item["missing_features"])
    assert (
        ScoreStore(url).features([item["account_id"]])[item["account_id"]]["features"][nps[0]]
        is None
    )
