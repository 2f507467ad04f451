"""Training: time split, reproducibility, behaviour, SHAP agreement, explanations, plots.

One small simulated snapshot table is built per module (400 accounts over 20
months, about 4.7 k rows) and trained on with the repository's params.yaml.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cshealth.config import Config, load_config
from cshealth.simulator import generate, write_dataset
from features.contract import Col
from features.labels import MRR_COLUMN
from features.meta import Family, by_name
from features.pipeline import build_snapshots, write_snapshots
from features.settings import FeatureParams
from training.explain import explain, missing_sentence, rank_reasons
from training.metrics import (
    equal_frequency_bins,
    evaluate,
    expected_calibration_error,
    top_decile,
)
from training.model import BIAS, HealthModel
from training.plots import PLOT_NAMES, decile_lift, plot_paths, rows_of_test_slice, write_plots
from training.split import time_split
from training.train import CHURN, EXPANSION, SnapshotTable, TrainResult, read_truth, train

#: shap's own import-time and LightGBM-output notices, not ours
SHAP_NOISE = (
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:LightGBM binary classifier:UserWarning"),
)
REPO = Path(__file__).resolve().parent.parent
KEYS = [Col.ACCOUNT_ID, Col.AS_OF]


# ----- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(REPO / "params.yaml")


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(snapshot table, truth file) from a small simulation."""
    root = tmp_path_factory.mktemp("training")
    sim = generate(accounts=400, months=20, seed=11, start=dt.date(2024, 1, 1), truth_samples=10)
    write_dataset(sim, root / "raw", root / "truth.parquet")
    params = FeatureParams(key_event_types=("workflow_run", "integration_sync", "api_call"))
    write_snapshots(build_snapshots(root / "raw", params), root / "snapshots.parquet")
    return root / "snapshots.parquet", root / "truth.parquet"


@pytest.fixture(scope="module")
def snaps(sim_files: tuple[Path, Path]) -> SnapshotTable:
    return SnapshotTable.read(sim_files[0])


@pytest.fixture(scope="module")
def truth(sim_files: tuple[Path, Path]) -> pd.DataFrame:
    return read_truth(sim_files[1])


@pytest.fixture(scope="module")
def result(snaps: SnapshotTable, cfg: Config, truth: pd.DataFrame) -> TrainResult:
    return train(snaps, cfg.train, list(cfg.rules), truth)


@pytest.fixture(scope="module")
def holdout(result: TrainResult, snaps: SnapshotTable) -> pd.DataFrame:
    """The snapshot rows of the churn test slice (the same dates serve both targets)."""
    return rows_of_test_slice(result.targets[CHURN], snaps)


def _with_frame(snaps: SnapshotTable, frame: pd.DataFrame) -> SnapshotTable:
    return SnapshotTable(frame, snaps.features, snaps.labels, snaps.horizon_days)


# ----- time split ----------------------------------------------------------------------------
@pytest.mark.parametrize("target", [CHURN, EXPANSION])
def test_time_split_orders_slices_and_purges_label_windows(
    snaps: SnapshotTable, cfg: Config, target: str
) -> None:
    df, label, p = snaps.frame, snaps.labels[target], cfg.train
    split = time_split(df, label, p.valid_periods, p.test_periods, snaps.horizon_days, p.purge)
    as_of, horizon = df[Col.AS_OF], pd.Timedelta(days=snaps.horizon_days)
    tr, va, te = split.train, split.valid, split.test
    assert tr.any() and va.any() and te.any()
    assert not (tr & va).any() and not (tr & te).any() and not (va & te).any()
    assert df.loc[tr | va | te, label].notna().all()  # unlabelled rows are in no slice
    assert as_of[tr].max() < split.valid_start <= as_of[va].min()
    assert as_of[va].max() < split.test_start <= as_of[te].min()
    # Purge: no label window of a slice reaches into the next one.
    assert (as_of[tr] + horizon <= split.valid_start).all()
    assert (as_of[va] + horizon <= split.test_start).all()
    # The test slice is exactly the latest `test_periods` labelled dates.
    labelled = sorted(df.loc[df[label].notna(), Col.AS_OF].unique())
    assert sorted(as_of[te].unique()) == labelled[-p.test_periods :]
    assert split.describe()["test_rows"] == int(te.sum())


def test_time_split_without_purge_keeps_the_boundary_rows(snaps: SnapshotTable) -> None:
    df, label = snaps.frame, snaps.labels[CHURN]
    purged = time_split(df, label, 3, 3, snaps.horizon_days, purge=True)
    kept = time_split(df, label, 3, 3, snaps.horizon_days, purge=False)
    assert kept.train.sum() > purged.train.sum()
    assert df.loc[kept.valid, Col.AS_OF].max() < kept.test_start
    # Without purge, validation directly precedes the test slice.
    dates = sorted(df.loc[df[label].notna(), Col.AS_OF].unique())
    assert kept.valid_start == dates[-6]


def test_time_split_errors_when_too_few_dates(snaps: SnapshotTable) -> None:
    df, label = snaps.frame, snaps.labels[CHURN]
    dates = sorted(df.loc[df[label].notna(), Col.AS_OF].unique())
    few = df[df[Col.AS_OF].isin(dates[:6])]
    with pytest.raises(ValueError, match="only 6 labelled as_of dates"):
        time_split(few, label, 3, 3, snaps.horizon_days)
    # Seven monthly dates suffice without purge, not with a 90-day purge before the test.
    seven = df[df[Col.AS_OF].isin(dates[:7])]
    time_split(seven, label, 3, 3, snaps.horizon_days, purge=False)
    with pytest.raises(ValueError, match="too few labelled dates before the test slice"):
        time_split(seven, label, 3, 3, snaps.horizon_days, purge=True)


# ----- reproducibility and invariances --------------------------------------------------------
def test_same_data_and_seed_give_identical_metrics(
    result: TrainResult, snaps: SnapshotTable, cfg: Config, truth: pd.DataFrame
) -> None:
    again = train(snaps, cfg.train, list(cfg.rules), truth)
    assert again.metrics() == result.metrics()
    for target in (CHURN, EXPANSION):
        a, b = result.targets[target], again.targets[target]
        assert a.model.booster.model_to_string() == b.model.booster.model_to_string()
        pd.testing.assert_frame_equal(a.test, b.test)


def test_shuffled_rows_change_nothing(
    result: TrainResult, snaps: SnapshotTable, cfg: Config, truth: pd.DataFrame
) -> None:
    shuffled = snaps.frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
    other = train(_with_frame(snaps, shuffled), cfg.train, list(cfg.rules),
                  truth.sample(frac=1.0, random_state=8))  # fmt: skip
    for target in (CHURN, EXPANSION):
        a, b = result.targets[target], other.targets[target]
        for contender, metrics in a.metrics.items():
            for name, value in metrics.items():
                assert b.metrics[contender][name] == pytest.approx(value, abs=1e-9, nan_ok=True)
        merged = a.test.merge(b.test, on=KEYS, suffixes=("", "_b"), validate="1:1")
        assert len(merged) == len(a.test)
        for contender in a.metrics:
            np.testing.assert_allclose(merged[contender], merged[f"{contender}_b"], atol=1e-12)


def test_identifiers_dates_labels_and_mrr_are_never_features(
    result: TrainResult, snaps: SnapshotTable, holdout: pd.DataFrame
) -> None:
    forbidden = {Col.ACCOUNT_ID, Col.AS_OF, MRR_COLUMN, *snaps.labels.values()}
    for res in result.targets.values():
        model = res.model
        assert not forbidden & set(model.feature_names)
        assert not forbidden & set(model.booster.feature_name())
        # Scrambling (or dropping) those columns changes no prediction.
        p = model.predict_proba(holdout)
        scrambled = holdout.assign(
            **{Col.ACCOUNT_ID: "someone-else", Col.AS_OF: pd.Timestamp("1999-01-01"),
               MRR_COLUMN: 1.0, **dict.fromkeys(snaps.labels.values(), 1.0)}
        )  # fmt: skip
        np.testing.assert_array_equal(model.predict_proba(scrambled), p)
        np.testing.assert_array_equal(model.predict_proba(holdout.drop(columns=list(forbidden))), p)


def _more_active_users(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in rows.columns if re.fullmatch(r"active_users_\d+d", c)]
    assert len(cols) == 3
    return rows.assign(**{c: rows[c] * 1.5 for c in cols})


def _goals_on_track(rows: pd.DataFrame) -> pd.DataFrame:
    share = rows["goals_on_track_share"]
    return rows.assign(goals_on_track_share=share.where(share.isna(), 1.0))


@pytest.mark.parametrize("change", [_more_active_users, _goals_on_track])
def test_healthier_accounts_are_not_riskier(
    result: TrainResult, holdout: pd.DataFrame, change
) -> None:
    better = change(holdout)
    assert not better.equals(holdout)
    churn, expansion = result.targets[CHURN].model, result.targets[EXPANSION].model
    c0, c1 = churn.predict_proba(holdout), churn.predict_proba(better)
    e0, e1 = expansion.predict_proba(holdout), expansion.predict_proba(better)
    assert c1.mean() <= c0.mean() + 1e-12
    assert e1.mean() >= e0.mean() - 1e-12
    # Monotone constraints and a monotone calibrator make it hold row by row as well.
    assert (c1 <= c0 + 1e-12).all()
    assert (e1 >= e0 - 1e-12).all()


# ----- SHAP ----------------------------------------------------------------------------------
@SHAP_NOISE[0]
@SHAP_NOISE[1]
@pytest.mark.parametrize("target", [CHURN, EXPANSION])
def test_pred_contrib_agrees_with_tree_explainer(
    result: TrainResult, holdout: pd.DataFrame, target: str
) -> None:
    import shap

    model = result.targets[target].model
    rows = holdout.iloc[:300]
    contrib = model.contributions(rows)
    explainer = shap.TreeExplainer(model.booster)
    values = np.asarray(explainer.shap_values(model.prepare(rows)))
    if values.ndim == 3:  # some versions return one matrix per class
        values = values[-1]
    assert values.shape == (len(rows), len(model.feature_names))
    assert np.abs(values - contrib[model.feature_names].to_numpy()).max() < 1e-6
    base = np.ravel(explainer.expected_value)[-1]
    assert np.abs(contrib[BIAS].to_numpy() - base).max() < 1e-6
    # Contributions plus bias add up to the raw score.
    np.testing.assert_allclose(contrib.sum(axis=1), model.raw_score(rows), atol=1e-9)


# ----- explanations ----------------------------------------------------------------------------
_SPEC = re.compile(r"\{value(?::([^}]*))?\}")


@pytest.mark.parametrize("target", [CHURN, EXPANSION])
def test_explain_sums_to_raw_score_and_fills_sentences(
    result: TrainResult, holdout: pd.DataFrame, target: str
) -> None:
    model = result.targets[target].model
    rows = holdout.iloc[:400]
    out = explain(model, rows, top_k=3)
    assert len(out) == len(rows)
    raw = model.raw_score(rows)
    meta = by_name(model.features)
    order = [f.value for f in Family if f.value in {m.family for m in model.features}]
    for i, e in enumerate(out):
        assert list(e.families) == order
        assert e.raw_score == pytest.approx(raw[i], abs=1e-9)
        assert 1 <= len(e.top) <= 3
        for r in e.top:
            f = meta[r.feature]
            assert r.family == f.family
            own = rows.iloc[i][r.feature]
            if r.value is None:
                assert pd.isna(own) or f.categorical
                assert r.sentence == missing_sentence(f)
                continue
            if f.categorical:
                assert r.value == own
                assert str(own) in r.sentence
            else:
                assert r.value == pytest.approx(float(own))
                spec = _SPEC.search(f.template).group(1) or ""
                assert format(float(own), spec) in r.sentence
            assert r.sentence == f.sentence(r.value)
        # Reasons pushing towards the row's own outcome come first, largest first.
        sign = 1.0 if e.raw_score >= e.bias else -1.0
        aligned = [r.contribution * sign > 0 and r.value is not None for r in e.top]
        assert aligned == sorted(aligned, reverse=True)
        sizes = [abs(r.contribution) for r, a in zip(e.top, aligned, strict=True) if a]
        assert sizes == sorted(sizes, reverse=True)


def test_explain_top_k_and_directions(result: TrainResult, holdout: pd.DataFrame) -> None:
    model = result.targets[CHURN].model
    rows = holdout.iloc[:200]
    five = explain(model, rows, top_k=5)
    for k in (0, 1, 3):
        for short, long in zip(explain(model, rows, top_k=k), five, strict=True):
            assert len(short.top) <= k
            assert short.top == long.top[: len(short.top)]
            assert short.families == long.families
    up = explain(model, rows, top_k=3, direction="up")
    down = explain(model, rows, top_k=3, direction="down")
    # With ~50 features every row has three risk-raising and three risk-lowering ones.
    assert sum(all(r.contribution > 0 for r in e.top) for e in up) >= 0.9 * len(rows)
    assert sum(all(r.contribution < 0 for r in e.top) for e in down) >= 0.9 * len(rows)
    assert explain(model, rows.iloc[:0]) == []
    with pytest.raises(ValueError):
        explain(model, rows, top_k=-1)


def test_explain_skips_missing_values_unless_nothing_else(
    result: TrainResult, holdout: pd.DataFrame
) -> None:
    model = result.targets[CHURN].model
    empty = holdout.iloc[:2].copy()
    for f in model.features:
        empty[f.name] = None if f.categorical else np.nan
    out = explain(model, empty, top_k=3)
    for e in out:
        assert e.top and all(r.value is None for r in e.top)
        assert all(r.sentence.endswith(": no data") for r in e.top)
        assert e.raw_score == pytest.approx(model.raw_score(empty)[0], abs=1e-9)


def test_rank_reasons_on_a_hand_made_matrix() -> None:
    contrib = np.array([[0.5, -2.0, 0.1, 0.0, 3.0], [0.5, -2.0, 0.1, 0.0, 3.0]])
    missing = np.array([[False, False, False, False, True]] * 2)
    up_down = np.array([1.0, -1.0])
    # Aligned (by size), then the other way (by size), then missing values; zero never.
    np.testing.assert_array_equal(
        rank_reasons(contrib, missing, up_down, 6), [[0, 2, 1, 4, -1, -1], [1, 0, 2, 4, -1, -1]]
    )
    np.testing.assert_array_equal(rank_reasons(contrib, missing, up_down, 1), [[0], [1]])
    assert rank_reasons(contrib[:0], missing[:0], up_down[:0], 3).shape == (0, 3)


# ----- the artifact ------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [CHURN, EXPANSION])
def test_save_load_round_trip(
    result: TrainResult, holdout: pd.DataFrame, tmp_path: Path, target: str
) -> None:
    model = result.targets[target].model
    model.save(tmp_path / target)
    loaded = HealthModel.load(tmp_path / target)
    np.testing.assert_array_equal(loaded.predict_proba(holdout), model.predict_proba(holdout))
    pd.testing.assert_frame_equal(loaded.contributions(holdout), model.contributions(holdout))
    assert loaded.features == model.features
    assert loaded.categories == model.categories
    assert loaded.calibrator == model.calibrator
    assert loaded.info["best_iteration"] == model.info["best_iteration"]


def test_unknown_categories_and_missing_values(result: TrainResult, holdout: pd.DataFrame) -> None:
    model = result.targets[CHURN].model
    rows = holdout.iloc[:50]
    unknown = rows.assign(plan="platinum-unknown", region=7)
    as_missing = rows.assign(plan=None, region=None)
    np.testing.assert_array_equal(model.predict_proba(unknown), model.predict_proba(as_missing))
    blank = rows.copy()
    for f in model.features:
        blank[f.name] = None if f.categorical else np.nan
    p = model.predict_proba(blank)
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    # Extra columns and column order do not matter; a missing feature column is an error.
    shuffled_cols = rows[rows.columns[::-1]].assign(extra="x")
    np.testing.assert_array_equal(model.predict_proba(shuffled_cols), model.predict_proba(rows))
    with pytest.raises(KeyError, match="missing feature columns"):
        model.predict_proba(rows.drop(columns=["plan"]))


# ----- metrics -----------------------------------------------------------------------------------
def test_expected_calibration_error_by_hand() -> None:
    y = np.array([0.0, 0.0, 1.0, 1.0])
    p = np.array([0.1, 0.2, 0.7, 0.9])
    # Bins {0.1, 0.2} and {0.7, 0.9}: 0.5 * |0 - 0.15| + 0.5 * |1 - 0.8|.
    assert expected_calibration_error(y, p, bins=2) == pytest.approx(0.175)
    # One row per bin: mean |y - p|.
    assert expected_calibration_error(y, p, bins=4) == pytest.approx((0.1 + 0.2 + 0.3 + 0.1) / 4)
    # Input order does not matter; a perfectly calibrated constant has ECE 0.
    assert expected_calibration_error(y[::-1], p[::-1], bins=2) == pytest.approx(0.175)
    assert expected_calibration_error(np.array([0.0, 1.0] * 5), np.full(10, 0.5)) == 0.0
    # Tied scores share a bin, whatever the row order: bins {0.2 x 3} and {0.6, 0.9}.
    y5, p5 = np.array([1.0, 0, 0, 1, 0]), np.array([0.2, 0.2, 0.2, 0.6, 0.9])
    assert equal_frequency_bins(p5, bins=2).tolist() == [0, 0, 0, 1, 1]
    expect = 3 / 5 * abs(1 / 3 - 0.2) + 2 / 5 * abs(0.5 - 0.75)
    for perm in ([0, 1, 2, 3, 4], [2, 1, 0, 4, 3], [1, 0, 2, 3, 4]):
        assert expected_calibration_error(y5[perm], p5[perm], bins=2) == pytest.approx(expect)


def test_top_decile_metrics_by_hand() -> None:
    # 20 rows, 4 positives; the top decile is the 2 highest scores: rows 0 (positive) and 1.
    p = np.linspace(1.0, 0.05, 20)
    y = np.zeros(20)
    y[[0, 5, 10, 15]] = 1
    mrr = np.full(20, 100.0)
    mrr[0] = 700.0
    assert top_decile(p).tolist() == [True, True] + [False] * 18
    assert top_decile(np.zeros(11)).sum() == 2  # ceil(11 / 10), ties by order
    m = evaluate(y, p, mrr)
    assert m["top_decile_lift"] == pytest.approx((1 / 2) / (4 / 20))
    assert m["top_decile_recall"] == pytest.approx(1 / 4)
    assert m["top_decile_arr_share"] == pytest.approx(700 / 1000)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert 0 < m["roc_auc"] < 1 and 0 < m["pr_auc"] <= 1
    one_class = evaluate(np.zeros(5), np.linspace(0, 1, 5), np.ones(5))
    assert np.isnan(one_class["roc_auc"]) and np.isnan(one_class["top_decile_lift"])
    # Lift by decile of the plots agrees with the top-decile metric.
    assert decile_lift(y, p)[0] == pytest.approx(m["top_decile_lift"])


# ----- plots -----------------------------------------------------------------------------------
@SHAP_NOISE[0]
def test_write_plots_writes_every_png(
    result: TrainResult, snaps: SnapshotTable, tmp_path: Path
) -> None:
    out = tmp_path / "plots"
    paths = write_plots(result, snaps, out)
    expected = plot_paths(out, [CHURN, EXPANSION])
    assert paths == expected
    assert len(expected) == 2 * len(PLOT_NAMES)
    assert {p.name for p in expected} >= {"churn_roc.png", "expansion_shap_beeswarm.png"}
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 5000, p
        assert data[:8] == b"\x89PNG\r\n\x1a\n", p
    assert sorted(out.iterdir()) == sorted(expected)  # no temporary files left


def test_importing_training_modules_loads_neither_shap_nor_pyplot() -> None:
    code = (
        "import sys, training.plots, training.explain, training.train; "
        "print(sorted(m for m in ('shap', 'matplotlib.pyplot') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"
