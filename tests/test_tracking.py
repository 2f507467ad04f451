"""MLflow tracking and the registry: `cshealth train / models / promote` in a temp directory.

One small simulated data set and one MLflow store (SQLite in a temp folder) per module;
the first `train` runs in the fixture, the tests below read what it left and build on it
(in file order: the worse-model test moves the alias and puts it back).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

import training.train
from cshealth.cli import main
from cshealth.simulator import generate, write_dataset
from features.pipeline import build_snapshots, write_snapshots
from features.settings import FeatureParams
from training import tracking
from training.metrics import METRIC_NAMES
from training.settings import Gates
from training.train import SnapshotTable, TrainResult

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: relaxed absolute gates for a small data set: the worse model must lose on the
#: champion comparison, not only on min_auc
GATES = {"min_auc": 0.6, "max_ece": 0.1, "tolerance": 0.01}
WORSE = {"n_estimators": 1, "num_leaves": 2}  # one stump: AUC far below the champion


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


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    sim = generate(accounts=250, months=24, seed=7, start=dt.date(2023, 1, 1), truth_samples=20)
    write_dataset(sim, root / "raw", root / "truth.parquet")
    snapshots = root / "data" / "features" / "snapshots.parquet"
    write_snapshots(build_snapshots(root / "raw", FeatureParams()), snapshots)
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


def test_train_writes_metrics_and_registers_both_champions(store: Store) -> None:
    metrics = json.loads((store.reports / "metrics.json").read_text())
    assert set(metrics) == {"churn", "expansion"}
    for target in metrics.values():
        assert set(target) == {"lightgbm", "logistic", "rules", "oracle"}
        for values in target.values():
            assert set(METRIC_NAMES) <= set(values)
    assert "churn: v1 promoted to champion" in store.first_out
    assert "expansion: v1 promoted to champion" in store.first_out
    rows = tracking.list_models()
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        ("cshealth-churn", 1, ["champion"]),
        ("cshealth-expansion", 1, ["champion"]),
    ]
    churn = next(r for r in rows if r["target"] == "churn")
    assert churn["roc_auc"] == pytest.approx(metrics["churn"]["lightgbm"]["roc_auc"], abs=1e-3)
    assert (store.root / "mlartifacts").is_dir()  # artifacts beside the SQLite db


def test_champion_loads_as_the_trained_model(store: Store) -> None:
    import mlflow

    snaps = SnapshotTable.read(store.snapshots)
    result = store.results[0]  # the in-process models of the first `cshealth train`
    for target in ("churn", "expansion"):
        res = result.targets[target]
        rows = snaps.frame[res.split.test.to_numpy()]
        model, version = tracking.load_champion(target)
        assert version == 1
        assert model.feature_names == res.model.feature_names
        np.testing.assert_allclose(model.predict_proba(rows), res.model.predict_proba(rows),
                                   rtol=0, atol=1e-12)  # fmt: skip
    # The pyfunc returns calibrated probabilities (not labels) in a `probability` column.
    from training.pyfunc import model_input

    res = result.targets["churn"]
    rows = snaps.frame[res.split.test.to_numpy()]
    pyfunc = mlflow.pyfunc.load_model("models:/cshealth-churn@champion")
    out = pyfunc.predict(model_input(res.model, rows))
    assert list(out.columns) == ["probability"]
    np.testing.assert_allclose(out["probability"].to_numpy(), res.model.predict_proba(rows),
                               rtol=0, atol=1e-12)  # fmt: skip
    # A champion whose features the new table lacks (an optional table gone) is still
    # compared: it scores those features as missing, as the service would.
    from sklearn.metrics import roc_auc_score

    fewer = rows.drop(columns=["nps_365d"])
    auc, why = tracking._score_champion(tracking.client(), "churn", 1, fewer, rows["churn_90d"])
    y = rows["churn_90d"].astype(int)
    want = roc_auc_score(y, res.model.predict_proba(rows.assign(nps_365d=np.nan)))
    assert why is None and auc == pytest.approx(want)


def test_run_logs_params_fingerprint_commit_and_artifacts(store: Store) -> None:
    c = tracking.client()
    run = c.get_run(c.get_model_version("cshealth-churn", "1").run_id)
    params, tags = run.data.params, run.data.tags
    assert params["train.lightgbm.n_estimators"] == "800"
    assert params["train.gates.min_auc"] == "0.6"
    assert params["rules.0.feature"] == "active_users_ratio_30d_90d"
    assert params["features.windows.short"] == "7"
    assert tags["snapshot_sha256"] == tracking.file_sha256(store.snapshots)
    assert params["snapshot_sha256"] == tags["snapshot_sha256"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert tags["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert tags["promotion.churn"] == "champion"
    assert run.data.metrics["churn.lightgbm.roc_auc"] > 0.5
    assert "churn.oracle.roc_auc" in run.data.metrics
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"features.json", "metrics.json", "params.yaml", "data"} <= names
    plots = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "plots")}
    assert plots == {p.name for p in (store.reports / "plots").glob("*.png")}
    features = json.loads(Path(c.download_artifacts(run.info.run_id, "features.json",
                                                    str(store.root))).read_text())  # fmt: skip
    assert "account_id" not in {f["name"] for f in features["features"]}


def test_worse_model_keeps_the_champion_until_promoted_by_hand(store: Store) -> None:
    rc, out, err = _run(["--params", str(store.worse_params), "train", "--features",
                         str(store.snapshots), "--reports", str(store.root / "worse")])  # fmt: skip
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("churn: v2"))
    assert "not promoted" in line and "champion v1's" in line and "champion stays v1" in line
    assert "expansion: v2 not promoted" in out

    rc, out, _ = _run(["models"])
    assert rc == 0
    listed = [x.split()[:3] for x in out.splitlines()[1:]]
    assert listed == [["cshealth-churn", "1", "champion"], ["cshealth-churn", "2", "-"],
                      ["cshealth-expansion", "1", "champion"],
                      ["cshealth-expansion", "2", "-"]]  # fmt: skip
    mv = tracking.client().get_model_version("cshealth-churn", "2")
    assert mv.tags["promotion"] == "rejected" and "champion stays v1" in mv.tags["promotion_reason"]

    rc, out, _ = _run(["promote", "2", "--model", "churn"])
    assert rc == 0 and "cshealth-churn: champion v1 -> v2" in out
    aliases = {(r["name"], r["version"]): r["aliases"] for r in tracking.list_models()}
    assert aliases[("cshealth-churn", 2)] == ["champion"]
    assert aliases[("cshealth-churn", 1)] == []
    assert aliases[("cshealth-expansion", 1)] == ["champion"]
    _, out, _ = _run(["models"])
    assert ["cshealth-churn", "2", "champion"] in [x.split()[:3] for x in out.splitlines()]

    rc, _, err = _run(["promote", "9", "--model", "churn"])
    assert rc == 2 and "has no version 9 (versions: 1, 2)" in err
    rc, out, _ = _run(["promote", "1"])  # both models, back to the first run
    assert rc == 0 and "cshealth-churn: champion v2 -> v1" in out
    assert tracking.load_champion("churn")[1] == 1


def test_missing_snapshots_and_unreachable_server_are_clear_errors(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, err = _run(["train", "--features", str(tmp_path / "missing.parquet")])
    assert rc == 2 and "cshealth features" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for argv in (["models"], ["train", "--features", str(store.snapshots)]):
        rc, _, err = _run(argv)
        assert rc == 2 and "unreachable" in err and "MLFLOW_TRACKING_URI" in err


# ----- the gate as a pure function ---------------------------------------------------------
G = Gates(min_auc=0.7, max_ece=0.05, tolerance=0.01)


def test_gate_first_champion_and_absolute_gates() -> None:
    d = tracking.decide("churn", 1, {"roc_auc": 0.8, "ece": 0.02}, G, None, None)
    assert d.promoted and "first champion" in d.reason
    d = tracking.decide("churn", 3, {"roc_auc": 0.62, "ece": 0.02}, G, 2, 0.6)
    assert not d.promoted
    assert d.line() == "churn: v3 not promoted: roc_auc 0.620 < min_auc 0.7; champion stays v2"
    d = tracking.decide("churn", 1, {"roc_auc": 0.8, "ece": 0.09}, G, None, None)
    assert (
        not d.promoted and "ece 0.090 > max_ece 0.05" in d.reason and "no champion yet" in d.reason
    )
    d = tracking.decide("churn", 1, {"roc_auc": math.nan, "ece": 0.01}, G, None, None)
    assert not d.promoted and "roc_auc nan" in d.reason


def test_gate_compares_with_the_champion_within_tolerance() -> None:
    assert tracking.decide("churn", 4, {"roc_auc": 0.795, "ece": 0.02}, G, 3, 0.80).promoted
    d = tracking.decide("churn", 4, {"roc_auc": 0.78, "ece": 0.02}, G, 3, 0.80)
    assert not d.promoted and "champion v3's 0.800 - tolerance 0.01" in d.reason
    # Incomparable champion (e.g. it cannot be loaded): the absolute gates decide.
    d = tracking.decide("churn", 4, {"roc_auc": 0.75, "ece": 0.02}, G, 3, None,
                        incomparable="its features ['x'] are missing")  # fmt: skip
    assert d.promoted and "not comparable" in d.reason


def test_flatten_params_and_metrics() -> None:
    flat = tracking.flatten_params({"a": {"b": 1, "c": [1, 2]}, "r": [{"f": "x"}], "n": None,
                                    "long": "y" * 7000})  # fmt: skip
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "r.0.f": "x", "n": "null", "long": "y" * 6000}
    m = tracking.flatten_metrics({"churn": {"rules": {"roc_auc": 0.6, "pr_auc": math.nan}}})
    assert m == {"churn.rules.roc_auc": 0.6}


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
    assert "scored" in out and "churn v" in out
    snaps = SnapshotTable.read(store.snapshots)
    newest = snaps.frame[snaps.frame["as_of"] == snaps.frame["as_of"].max()]
    db = ScoreStore(url)
    assert db.count_runs() == 2
    got = db.latest_scores(newest["account_id"].tolist())
    assert set(got) == set(newest["account_id"])
    champion = {t: str(tracking.load_champion(t)[1]) for t in ("churn", "expansion")}
    one = next(iter(got.values()))
    assert one["model_version"] == champion
    assert one["health_change"] == 0.0  # same data, same model: unchanged since last run
    assert 0 <= one["health_score"] <= 100 and one["band"] in {"red", "yellow", "green"}


def test_serve_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSHEALTH_API_KEY", raising=False)
    rc, _, err = _run(["serve"])
    assert rc == 2 and "CSHEALTH_API_KEY" in err and "--no-auth" in err


def test_score_with_a_family_missing_flags_it(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An optional table gone since training: scoring still works and says what is missing."""
    import pandas as pd

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
