"""Training: time split, reproducibility, behaviour, SHAP agreement, explanations, plots.

One small simulated snapshot table is built per module (400 accounts over 20
months, about 4.7 k rows) and trained on with the repository's params.yaml.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cshealth.config import Config, load_config
from features.contract import Col
from features.labels import MRR_COLUMN
from features.meta import Family, by_name
from features.pipeline import build_snapshots
from features.settings import FeatureParams
from features.snapshots import SnapshotTable
from features.targets import TARGET_NAMES
from simulator import generate, write_dataset
from training.backtest import (
    HistoryTooShort,
    choose_rounds,
    closed_before,
    plan_origins,
)
from training.explain import explain, missing_sentence, rank_reasons
from training.metrics import (
    bootstrap_intervals,
    equal_frequency_bins,
    evaluate,
    expected_calibration_error,
    paired_auc_difference,
    tied_share,
    top_decile,
    weighted_metrics,
)
from training.model import BIAS, Calibrator, HealthModel, choose_calibrator
from training.plots import PLOT_NAMES, decile_lift, plot_paths, rows_of_backtest, write_plots
from training.train import TrainResult, read_truth, train

CHURN, EXPANSION = TARGET_NAMES
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
    sim = generate(400, 20, seed=11, start=dt.date(2024, 1, 1), truth_samples=10)
    write_dataset(sim, root / "raw", root / "truth.parquet")
    params = FeatureParams(key_event_types=("workflow_run", "integration_sync", "api_call"))
    build_snapshots(root / "raw", params).write(root / "snapshots.parquet")
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
    """The snapshot rows the churn backtest predicted (the same rows serve both targets)."""
    return rows_of_backtest(result.targets[CHURN], snaps)


def _with_frame(snaps: SnapshotTable, frame: pd.DataFrame) -> SnapshotTable:
    return dataclasses.replace(snaps, frame=frame)


# ----- the walk-forward backtest ----------------------------------------------------------------
@pytest.mark.parametrize("target", [CHURN, EXPANSION])
def test_every_origin_trains_only_on_labels_closed_before_it(
    result: TrainResult, snaps: SnapshotTable, cfg: Config, target: str
) -> None:
    res = result.targets[target]
    bt, horizon = res.backtest, snaps.horizon_days
    label = snaps.labels[target]
    labelled = snaps.frame[snaps.frame[label].notna()]
    dates = sorted(labelled[Col.AS_OF].unique())
    # The last K labelled dates (K from params) are the origins, each with earlier labels.
    assert bt.origins == [pd.Timestamp(d) for d in dates[-cfg.train.backtest.origins :]]
    assert len(bt.per_origin) == len(bt.origins)
    for row, origin in zip(bt.per_origin, bt.origins, strict=True):
        train_rows = labelled[closed_before(labelled[Col.AS_OF], origin, horizon)]
        assert row["train_rows"] == len(train_rows) > 0
        # No training row's label window reaches the origin.
        window_end = train_rows[Col.AS_OF] + pd.Timedelta(days=horizon + 1)
        assert (window_end <= origin).all()
        at_origin = labelled[labelled[Col.AS_OF] == origin]
        assert row["rows"] == len(at_origin)
        assert row["positives"] == int(at_origin[label].sum())
    # Every contender is scored on exactly the same pooled rows.
    pred = bt.predictions
    assert set(pred[Col.AS_OF].unique()) == set(bt.origins)
    assert len(pred) == sum(r["rows"] for r in bt.per_origin)
    for name in ("lightgbm", "logistic", "rules", "oracle"):
        assert pred[name].notna().all(), name
        assert res.metrics[name]["rows"] == len(pred)
        assert res.metrics[name]["positives"] == int(pred["y"].sum()) == bt.positives


def test_plan_origins_takes_the_last_k_and_explains_short_histories() -> None:
    months = list(pd.date_range("2024-04-01", periods=8, freq="MS"))
    origins = plan_origins(months, 90, 6, months[0], pd.Timestamp("2025-03-01"))
    # An origin needs a label window (91 days) closed before it: 2024-07-01 is the first.
    assert origins[0] == pd.Timestamp("2024-07-01")
    assert origins == months[3:]
    assert plan_origins(months, 90, 2, months[0], pd.Timestamp("2025-03-01")) == months[-2:]
    with pytest.raises(HistoryTooShort, match=r"1 of the 2 origins.*more days") as err:
        plan_origins(months[:4], 90, 6, months[0], pd.Timestamp("2024-10-01"))
    assert "history is too short" in str(err.value)
    with pytest.raises(HistoryTooShort, match="0 of the 2 origins"):
        plan_origins([], 90, 6, months[0], pd.Timestamp("2024-05-01"))


def test_choose_rounds_prefers_the_end_of_the_plateau(cfg: Config) -> None:
    p = cfg.train.lightgbm.model_copy(update={"plateau": 0.01, "min_rounds": 5})
    rising = np.minimum(np.linspace(0.6, 0.8, 100), 0.75)  # flat from tree 76 on
    noisy = rising.copy()
    noisy[19] = 0.9  # one curve's early bump
    assert choose_rounds([rising], p) == 100
    assert choose_rounds([noisy], p) == 20  # alone, a bump decides
    assert choose_rounds([noisy, rising, rising, rising], p) >= 70  # averaged away
    assert choose_rounds([], p) == max(p.default_rounds, p.min_rounds)
    floor = p.model_copy(update={"min_rounds": 150})
    assert choose_rounds([rising], floor) == 150


def test_champion_sees_the_newest_labels_and_takes_choices_from_the_backtest(
    result: TrainResult, snaps: SnapshotTable, cfg: Config
) -> None:
    for target in (CHURN, EXPANSION):
        res, label = result.targets[target], snaps.labels[target]
        labelled = snaps.frame[snaps.frame[label].notna()]
        info = res.model.info
        # Trained on every labelled row, including those after the last origin.
        assert info["train_rows"] == len(labelled)
        assert info["trained_through_as_of"] == labelled[Col.AS_OF].max().date().isoformat()
        # ...also the origins' own rows, which no backtest model saw.
        assert pd.Timestamp(info["trained_through_as_of"]) == res.backtest.origins[-1]
        assert info["train_rows"] > res.backtest.per_origin[-1]["train_rows"] + 0
        newest = labelled[Col.AS_OF].max() + pd.Timedelta(days=snaps.horizon_days)
        assert info["labels_up_to"] == newest.date().isoformat()
        assert info["trees"] == res.model.booster.num_trees()
        # The backtest's tree count, or more when fewer would tie the scored accounts.
        assert info["trees"] >= res.backtest.champion_rounds(cfg.train.lightgbm)
        # The calibrator is the one fitted on the pooled out-of-time scores.
        assert res.model.calibrator == res.backtest.calibrator
        pooled = res.backtest.predictions
        refit = Calibrator.fit(res.model.calibrator.kind, pooled["raw"].to_numpy(),
                               pooled["y"].to_numpy())  # fmt: skip
        assert refit == res.model.calibrator
        assert info["backtest_metrics"]["roc_auc"] == res.metrics["lightgbm"]["roc_auc"]


def test_report_holds_pooled_metrics_intervals_and_per_origin_table(result: TrainResult) -> None:
    doc = result.report()
    assert list(doc) == [CHURN, EXPANSION]
    for target, d in doc.items():
        res = result.targets[target]
        assert d["evaluation"].startswith("walk-forward backtest")
        assert d["positives"] == res.backtest.positives > 0
        assert d["origins"] == len(d["per_origin"]) == len(res.backtest.origins)
        assert d["trained_on_labels_up_to"] == res.model.info["labels_up_to"]
        for name, m in d["contenders"].items():
            # (ECE's bootstrap is biased upwards, like any mean of absolute gaps: not checked)
            for metric in ("roc_auc", "pr_auc", "brier"):
                lo, hi = m[f"{metric}_lo"], m[f"{metric}_hi"]
                assert lo <= m[metric] + 1e-9 and m[metric] <= hi + 1e-9, (target, name, metric)
        row = next(iter(d["per_origin"].values()))
        assert {"train_rows", "rows", "positives", "trees", "lightgbm_roc_auc"} <= set(row)


def test_lightgbm_beats_the_rule_score_and_scores_without_ties(
    result: TrainResult, snaps: SnapshotTable
) -> None:
    # (Against every baseline, on larger data of several dynamics: tests/test_presets.py.)
    churn = result.targets[CHURN]
    assert churn.metrics["lightgbm"]["roc_auc"] > churn.metrics["rules"]["roc_auc"]
    newest = snaps.frame[snaps.frame[Col.AS_OF] == snaps.frame[Col.AS_OF].max()]
    distinct = newest.drop_duplicates(subset=snaps.feature_names)
    for res in result.targets.values():
        assert tied_share(res.model.predict_proba(distinct)) <= 0.01


def test_monotone_constraints_are_off_by_default_and_never_for_expansion(
    result: TrainResult, snaps: SnapshotTable, cfg: Config
) -> None:
    assert cfg.train.monotone_constraints is False
    for res in result.targets.values():
        assert res.backtest.constrained is False
        head = res.model.booster.model_to_string().split("feature_infos")[0]
        assert "monotone_constraints" not in head
    on = cfg.train.model_copy(update={"monotone_constraints": True})
    again = train(snaps, on, list(cfg.rules))
    # Expansion declares no directions: never constrained, whatever the setting.
    assert again.targets[EXPANSION].backtest.constrained is False
    churn = again.targets[CHURN].backtest
    free, constrained = churn.constraint_aucs
    assert churn.constrained == (constrained >= free)


def test_short_history_gives_one_sentence_and_a_usable_model(cfg: Config, tmp_path: Path) -> None:
    sim = generate(150, 12, seed=5, start=dt.date(2024, 1, 1), truth_samples=2)
    write_dataset(sim, tmp_path / "raw", None)
    snaps = build_snapshots(tmp_path / "raw", cfg.features)
    res = train(snaps, cfg.train, list(cfg.rules))
    for target in (CHURN, EXPANSION):
        assert len(res.targets[target].backtest.origins) >= 2
        p = res.targets[target].model.predict_proba(snaps.frame)
        assert np.isfinite(p).all()
    # Cut further, the history cannot support a backtest: one sentence says how much more.
    first = snaps.frame[Col.AS_OF].min()
    cut = snaps.frame[snaps.frame[Col.AS_OF] <= first + pd.Timedelta(days=95)]
    short = dataclasses.replace(snaps, frame=cut, cutoff=cut[Col.AS_OF].max())
    with pytest.raises(HistoryTooShort, match=r"about \d+ more days") as err:
        train(short, cfg.train, list(cfg.rules))
    assert "\n" not in str(err.value)


def test_a_target_without_positives_still_gives_a_usable_model(
    snaps: SnapshotTable, cfg: Config
) -> None:
    label = snaps.labels[EXPANSION]
    frame = snaps.frame.assign(**{label: snaps.frame[label].where(snaps.frame[label].isna(), 0)})
    res = train(_with_frame(snaps, frame), cfg.train, list(cfg.rules))
    exp = res.targets[EXPANSION]
    assert exp.backtest.positives == 0 and not exp.backtest.origins
    assert any("0 positives" in w for w in exp.warnings)
    p = exp.model.predict_proba(snaps.frame)
    assert np.isfinite(p).all() and (p < 0.01).all()
    assert res.targets[CHURN].metrics["lightgbm"]["roc_auc"] > 0.5


def test_unseen_segment_is_scored_as_missing(result: TrainResult, holdout: pd.DataFrame) -> None:
    model = result.targets[CHURN].model
    rows = holdout.iloc[:20]
    np.testing.assert_array_equal(
        model.predict_proba(rows.assign(segment="public_sector")),
        model.predict_proba(rows.assign(segment=None)),
    )


# ----- reproducibility and invariances --------------------------------------------------------
def test_same_data_and_seed_give_identical_metrics(
    result: TrainResult, snaps: SnapshotTable, cfg: Config, truth: pd.DataFrame
) -> None:
    again = train(snaps, cfg.train, list(cfg.rules), truth)
    assert again.metrics() == result.metrics()
    for target in (CHURN, EXPANSION):
        a, b = result.targets[target], again.targets[target]
        assert a.model.booster.model_to_string() == b.model.booster.model_to_string()
        pd.testing.assert_frame_equal(a.backtest.predictions, b.backtest.predictions)


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
        pa, pb = a.backtest.predictions, b.backtest.predictions
        merged = pa.merge(pb, on=KEYS, suffixes=("", "_b"), validate="1:1")
        assert len(merged) == len(pa)
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


@pytest.mark.parametrize("change", [_more_active_users])
def test_healthier_accounts_are_not_riskier(
    result: TrainResult, holdout: pd.DataFrame, change
) -> None:
    better = change(holdout)
    assert not better.equals(holdout)
    churn, expansion = result.targets[CHURN].model, result.targets[EXPANSION].model
    c0, c1 = churn.predict_proba(holdout), churn.predict_proba(better)
    e0, e1 = expansion.predict_proba(holdout), expansion.predict_proba(better)
    # No hand-set directions: the models learnt this from the data, on average.
    assert c1.mean() < c0.mean()
    assert e1.mean() > e0.mean()


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
            else:
                assert r.value == pytest.approx(float(own))
            # the account's own value in the feature's words (tests/test_sentences.py)
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
        assert all(r.sentence.startswith("No data on ") for r in e.top)
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
    assert loaded.info == model.info


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


# ----- bootstrap, ties and calibration ---------------------------------------------------------
def _scores(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(float)
    p = np.round(np.clip(0.1 + 0.25 * y * rng.random(n) + rng.normal(0, 0.1, n), 0, 1), 2)
    return y, p, rng.random(n) * 100


def test_weighted_metrics_with_unit_weights_equal_evaluate() -> None:
    y, p, mrr = _scores()  # rounded scores: many ties
    order = np.argsort(-p, kind="stable")
    w = weighted_metrics(np.ones((1, len(y))), y[order], p[order], mrr[order],
                         equal_frequency_bins(p[order]))  # fmt: skip
    for name, value in evaluate(y, p, mrr).items():
        assert w[name][0] == pytest.approx(value, abs=1e-12), name


def test_bootstrap_intervals_hold_the_point_and_resample_accounts() -> None:
    # 200 accounts seen at 10 origins with the same outcome and score: 200 independent
    # observations, not 2000. Resampling accounts must give the wider interval.
    y, p, mrr = (np.tile(a, 10) for a in _scores(200))
    point = evaluate(y, p, mrr)
    many = bootstrap_intervals(y, p, mrr, np.arange(2000), 200, seed=1)
    few = bootstrap_intervals(y, p, mrr, np.arange(2000) % 200, 200, seed=1)
    for name in ("roc_auc", "brier", "top_decile_recall"):
        lo, hi = many[name]
        assert lo < point[name] < hi
        assert few[name][1] - few[name][0] > hi - lo  # clustered rows: wider
    assert bootstrap_intervals(y, p, mrr, np.arange(2000), 0, 1)["roc_auc"] != many["roc_auc"]


def test_paired_auc_difference_is_zero_for_the_same_scores_and_signed() -> None:
    y, p, _ = _scores(1000)
    groups = np.arange(1000) % 300
    assert paired_auc_difference(y, p, p, groups, 100, 0) == (0.0, 0.0, 0.0)
    noisy = p + np.random.default_rng(3).normal(0, 0.3, len(p))
    delta, lo, hi = paired_auc_difference(y, noisy, p, groups, 200, 0)
    assert delta < 0 and lo <= delta <= hi and hi < 0


def test_tied_share_counts_rows_sharing_a_value() -> None:
    assert tied_share(np.array([0.1, 0.2, 0.3])) == 0.0
    assert tied_share(np.array([0.1, 0.1, 0.3, 0.4])) == 0.5
    assert tied_share(np.array([])) == 0.0


def test_auto_calibration_keeps_distinct_scores() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(-2, 1, 3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-raw))).astype(int)
    groups = np.repeat(np.arange(6), 500)
    cal, evidence = choose_calibrator("auto", raw, y, groups, 0)
    # Isotonic maps ranges of scores onto plateaus: far more than 1 % tied.
    assert evidence["isotonic_tied_share"] > 0.01
    assert cal.kind == "platt"
    assert tied_share(cal(raw)) <= 0.01
    assert choose_calibrator("isotonic", raw, y, groups, 0)[0].kind == "isotonic"
    # One class only: a constant at the class rate, not an error.
    const = Calibrator.fit("platt", raw, np.zeros(3000, dtype=int))
    assert np.allclose(const(raw), const(raw)[0]) and const(raw)[0] < 0.01
