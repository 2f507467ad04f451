"""Drift monitoring: PSI and friends on tiny arrays, and `cshealth monitor` end to end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import Col
from features.meta import Family, Feature, Good
from serving.drift import (
    EPSILON,
    categorical_psi,
    drift_context,
    drift_report,
    feature_drift,
    missing_share,
    new_categories,
    psi,
    sample,
    training_rows,
)
from serving.settings import DriftParams
from tests.serving_data import ServingSetup, serving_setup

RNG = np.random.default_rng(7)
PARAMS = DriftParams()


def _feature(name: str, categorical: bool = False) -> Feature:
    return Feature(name=name, family=Family.USAGE, description=f"The {name}.", unit="count",
                   good=Good.HIGHER, template="{value}", categorical=categorical)  # fmt: skip


# ----- PSI ---------------------------------------------------------------------------
def test_identical_distributions_have_psi_near_zero() -> None:
    x = RNG.normal(size=2000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert psi(x, RNG.normal(size=2000)) < 0.05


def test_shifted_distribution_has_large_psi() -> None:
    x = RNG.normal(size=2000)
    assert psi(x, x + 1.0) > 0.5
    assert psi(x, x * 0.5) > PARAMS.psi_alert


def test_psi_is_finite_when_current_fills_an_empty_bin() -> None:
    value = psi(np.arange(100.0), np.full(50, 1000.0))
    assert math.isfinite(value) and value > 5


def test_constant_reference_is_handled() -> None:
    ones = np.ones(100)
    assert psi(ones, np.ones(30)) == pytest.approx(0.0)
    assert psi(ones, np.r_[np.ones(15), np.zeros(15)]) > 1  # below the constant
    assert psi(ones, np.r_[np.ones(15), np.full(15, 2.0)]) > 1  # above it


def test_missing_values_are_left_out_of_psi_and_counted_apart() -> None:
    x = RNG.normal(size=500)
    holed = np.r_[x, np.full(500, np.nan)]
    assert psi(x, holed) == pytest.approx(0.0, abs=1e-12)
    assert missing_share(holed) == pytest.approx(0.5)
    assert missing_share([1.0, None, float("inf"), "x"]) == pytest.approx(0.75)
    assert math.isnan(psi(x, [np.nan, None]))


def test_categorical_psi_and_new_categories() -> None:
    ref = ["a", "b"] * 50
    assert categorical_psi(ref, ["b", "a"] * 10) == pytest.approx(0.0)
    cur = ["a", "b", "c", None] * 10
    assert categorical_psi(ref, cur) > 1  # "c" lands in the (new) bucket
    assert new_categories(ref, cur) == (["c"], pytest.approx(0.25))
    assert new_categories(ref, ["a", None]) == ([], 0.0)
    # smoothing: a bucket empty on one side costs about ln(1 / EPSILON) per unit of share
    assert categorical_psi(["a"] * 10, ["z"] * 10) < 2 * math.log(1 / EPSILON) + 1


def test_feature_drift_ranks_and_explains() -> None:
    n = 400
    ref = pd.DataFrame({"same": RNG.normal(size=n), "moved": RNG.normal(size=n),
                        "holes": RNG.normal(size=n), "plan": ["x", "y"] * (n // 2)})  # fmt: skip
    cur = ref.copy()
    cur["moved"] = cur["moved"] + 2
    cur.loc[: n // 2, "holes"] = np.nan
    cur.loc[: n // 10, "plan"] = "z"
    features = [_feature("same"), _feature("moved"), _feature("holes"), _feature("plan", True)]
    out = feature_drift(ref, cur, features, PARAMS)
    by_name = {d.name: d for d in out}
    assert [d.name for d in out][-1] == "same" and not by_name["same"].drifted
    assert by_name["moved"].reasons[0].startswith("PSI")
    assert by_name["holes"].reasons == ("missing 0% -> 50%",)
    assert by_name["plan"].new_categories == ("z",)
    assert "new categories" in by_name["plan"].reasons[-1]
    assert all(d.level == "alert" for d in out[:3])


def test_report_dict_is_json_safe_and_summary_names_the_worst() -> None:
    n = 300
    ref = pd.DataFrame({Col.AS_OF: pd.Timestamp("2024-01-01"), "a": RNG.normal(size=n),
                        "b": np.nan, "churn_probability": RNG.uniform(size=n),
                        "expansion_probability": RNG.uniform(size=n)})  # fmt: skip
    cur = ref.assign(**{Col.AS_OF: pd.Timestamp("2024-06-01"), "a": ref["a"] * 3})
    samples = (sample("training", ref), sample("current", cur, "run1"))
    report = drift_report(ref, cur, [_feature("a"), _feature("b")], PARAMS, samples)
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["crossed"] and d["drifted"][0]["name"] == "a"
    assert d["features"][1]["psi"] is None  # all missing on both sides
    assert d["reference"]["as_of_to"] == "2024-01-01" and d["current"]["run_id"] == "run1"
    line = report.summary_line()
    assert line.startswith("DRIFT in 1 of 4 inputs (2 features, 2 probabilities)"), line
    assert " a (PSI" in line
    ctx = drift_context(d)
    assert ctx["crossed"] and "a" in ctx["verdict"] and ctx["measured"] == 2
    calm = drift_report(ref, ref, [_feature("a")], PARAMS, samples)
    assert not calm.crossed and calm.summary_line().startswith("no drift")


def test_training_rows_are_the_labelled_rows_up_to_the_last_training_as_of() -> None:
    frame = pd.DataFrame({Col.AS_OF: pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]),
                          "y": [1.0, np.nan, 0.0]})  # fmt: skip
    info = {"labels_up_to": "2024-05-01", "horizon_days": 60}  # last as_of 2024-03-02
    assert len(training_rows(frame, info, "y")) == 2
    assert len(training_rows(frame, {"trained_through_as_of": "2024-02-01"}, None)) == 2


def test_template_renders_both_ways() -> None:
    from cshealth.report import environment

    ref = pd.DataFrame({Col.AS_OF: pd.Timestamp("2024-01-01"), "plan": ["x"] * 20})
    cur = ref.assign(plan=["<b>new</b>"] * 20)
    feats = [_feature("plan", True)]
    report = drift_report(ref, cur, feats, PARAMS, (sample("training", ref), sample("c", cur)))
    template = environment().get_template("drift.html.j2")
    html = template.render(drift=drift_context(report.to_dict()))
    assert "&lt;b&gt;new&lt;/b&gt;" in html and "drifted" in html
    assert "cshealth monitor" in template.render(drift=None)


# ----- `cshealth monitor` ------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> ServingSetup:
    return serving_setup(tmp_path_factory)


def _monitor(setup: ServingSetup, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    from cshealth.cli import main

    for k, v in setup.env().items():
        monkeypatch.setenv(k, v)
    return main(["-q", "--params", str(setup.params), "monitor", *argv])


def _rescore(setup: ServingSetup, frame: pd.DataFrame, day: int) -> None:
    """Score the newest rows of `frame` with the champions into the setup's store."""
    from cshealth.config import load_config
    from serving.batch import score_latest
    from serving.predictor import ModelPair, Scorer
    from serving.store import ScoreStore
    from tests.serving_data import environ
    from training import tracking

    cfg = load_config(setup.params)
    with environ(setup.env()):
        churn, expansion = (tracking.load_champion(t)[0] for t in ("churn", "expansion"))
    store = ScoreStore(setup.db_url)
    scorer = Scorer(ModelPair(churn, expansion, "1", "1"), cfg.health, cfg.explanations)
    score_latest(frame, scorer, store, dt.datetime(2026, 1, day, 6, 0))
    store.close()


def _shifted(setup: ServingSetup, dest: Path) -> tuple[Path, pd.DataFrame, set[str]]:
    """The snapshot table with the usage of the largest segment halved at the newest as_of,
    written to `dest`: its path, its frame and the halved columns."""
    from features.snapshots import SnapshotTable

    snaps = SnapshotTable.read(setup.snapshots)
    frame = snaps.frame.copy()
    usage = [f.name for f in snaps.features if f.family == Family.USAGE and not f.categorical]
    segment = frame[Col.SEGMENT].value_counts().index[0]
    rows = (frame[Col.AS_OF] == frame[Col.AS_OF].max()) & (frame[Col.SEGMENT] == segment)
    frame.loc[rows, usage] = frame.loc[rows, usage] * 0.5
    path = dest / "shifted.parquet"
    dataclasses.replace(snaps, frame=frame).write(path)
    return path, frame, set(usage)


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
def test_monitor_against_training_writes_the_json(
    shared: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    setup = shared.copy_state(tmp_path / "state")
    out = tmp_path / "monitor.json"
    code = _monitor(setup, monkeypatch, "--features", str(setup.snapshots), "--out", str(out))
    last = _last_line(capsys)
    d = json.loads(out.read_text())
    # this small simulated cohort ages (tenure) between training and scoring: it may drift
    assert code == (1 if d["crossed"] else 0)
    assert last == d["summary"] and last.startswith("DRIFT" if d["crossed"] else "no drift")
    assert d["reference"]["kind"] == "training"
    assert d["reference"]["rows"] == setup.model_info["churn"]["train_rows"]
    assert d["reference"]["as_of_to"] == setup.model_info["churn"]["trained_through_as_of"]
    assert d["current"]["as_of_to"] == setup.as_of and d["current"]["rows"] == len(setup.ids)
    assert [p["name"] for p in d["probabilities"]] == ["churn", "expansion"]
    assert len(d["features"]) >= 40 and d["params"]["psi_alert"] == DriftParams().psi_alert


@pytest.mark.slow
def test_monitor_on_an_unchanged_rerun_exits_0(
    shared: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from features.snapshots import SnapshotTable

    setup = shared.copy_state(tmp_path / "state")
    _rescore(setup, SnapshotTable.read(setup.snapshots).frame, 2)
    out = tmp_path / "monitor.json"
    code = _monitor(setup, monkeypatch, "--features", str(setup.snapshots), "--out", str(out),
                    "--reference", "previous")  # fmt: skip
    last = _last_line(capsys)
    assert code == 0, last
    assert last.startswith("no drift")
    d = json.loads(out.read_text())
    assert not d["crossed"] and d["reference"]["kind"] == "previous"
    assert all(f["psi"] in (0.0, None) for f in [*d["features"], *d["probabilities"]])


@pytest.mark.slow
def test_monitor_on_shifted_data_exits_1_and_names_the_features(
    shared: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    setup = shared.copy_state(tmp_path / "state")
    out = tmp_path / "monitor.json"
    args = ["--out", str(out)]
    _monitor(setup, monkeypatch, "--features", str(setup.snapshots), *args)
    before = {x["name"] for x in json.loads(out.read_text())["drifted"]}
    table, frame, usage = _shifted(setup, tmp_path)
    _rescore(setup, frame, 2)
    capsys.readouterr()
    # against the previous run (same as_of, unshifted): only the halved features moved
    code = _monitor(setup, monkeypatch, "--features", str(table), *args, "--reference", "previous")
    last = _last_line(capsys)
    named = [x["name"] for x in json.loads(out.read_text())["drifted"]]
    assert code == 1, last
    assert named and set(named) - {"churn", "expansion"} <= usage, named
    assert last.startswith("DRIFT") and named[0] in last
    # against the training data: the halved features join what drifted before
    assert _monitor(setup, monkeypatch, "--features", str(table), *args) == 1
    after = {x["name"] for x in json.loads(out.read_text())["drifted"]}
    assert after - before and after - before <= usage | {"churn", "expansion"}, after - before


@pytest.mark.slow
def test_monitor_without_a_run_is_one_line_error(
    shared: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    empty = dataclasses.replace(shared.copy_state(tmp_path), store_db=tmp_path / "empty.db")
    code = _monitor(empty, monkeypatch, "--features", str(shared.snapshots),
                    "--out", str(tmp_path / "m.json"))  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no scoring run" in err[0], err
    assert not (tmp_path / "m.json").exists()
