"""Walk-forward backtest: the evaluation every contender, the calibrator and the gate rely on.

For each of the last K labelled monthly origins T, every contender is trained only on
snapshots whose label window had closed before T (as_of + horizon + 1 day <= T) and
predicts the snapshots at T. The out-of-time predictions of all origins are pooled:
metrics with 95 % intervals (accounts resampled), positive counts, a per-origin
table. LightGBM's tree count at T is chosen only on data before T: validation curves on
the latest dates of each earlier origin's own training rows (the rows whose labels
reach into them purged), averaged.

Nothing here touches MLflow or files; `training.train` wires it to the champion fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.contract import Col
from features.labels import MRR_COLUMN
from features.meta import Feature
from training.baselines import (
    fit_logistic,
    fit_rule_calibrator,
    predict_logistic,
    rule_health,
)
from training.metrics import bootstrap_intervals, evaluate
from training.model import (
    Calibrator,
    categories_of,
    choose_calibrator,
    cross_calibrate,
    fit_booster,
    fit_curve,
    prepare_frame,
)
from training.settings import BacktestParams, LightGBMParams, RuleComponent

log = logging.getLogger(__name__)

#: a backtest needs at least this many origins (fewer: the history is too short)
MIN_ORIGINS = 2
CONTENDERS = ("lightgbm", "logistic", "rules", "oracle")


class HistoryTooShort(ValueError):
    """The snapshot table cannot support a walk-forward backtest (says how much more data)."""


def closed_before(as_of: pd.Series, origin: pd.Timestamp, horizon_days: int) -> pd.Series:
    """Rows whose label window (as_of, as_of + horizon] was fully observed before `origin`."""
    return as_of + pd.Timedelta(days=horizon_days + 1) <= origin


def _step(dates: list[pd.Timestamp]) -> pd.Timedelta:
    """The calendar's spacing (median gap between as_of dates; a month when unknown)."""
    if len(dates) < 2:
        return pd.Timedelta(days=30)
    return pd.Series(dates).diff().dropna().median()


def plan_origins(
    labelled_dates: list[pd.Timestamp],
    horizon_days: int,
    k: int,
    first_as_of: pd.Timestamp,
    cutoff: pd.Timestamp,
) -> list[pd.Timestamp]:
    """The last `k` labelled dates that have training rows before them (at least 2)."""
    dates = sorted(pd.Timestamp(d) for d in labelled_dates)
    window = pd.Timedelta(days=horizon_days + 1)
    candidates = [t for t in dates if dates and dates[0] + window <= t]
    if len(candidates) >= MIN_ORIGINS:
        return candidates[-k:]
    # Two origins need: a first labelled snapshot, a second one a label window later,
    # one more calendar step, and that last snapshot's own label window observed.
    step = _step(dates)
    needed = pd.Timestamp(first_as_of) + 2 * window + step
    short = max((needed - pd.Timestamp(cutoff)).days, int(step.days))
    raise HistoryTooShort(
        f"the history is too short for a walk-forward backtest: snapshots from "
        f"{pd.Timestamp(first_as_of).date()} with data to {pd.Timestamp(cutoff).date()} give "
        f"{len(candidates)} of the {MIN_ORIGINS} origins it needs (each needs labels closed "
        f"{horizon_days + 1} days before it); about {short} more days "
        f"(~{short / 30.4:.0f} months) of data are needed"
    )


@dataclass
class Backtest:
    """Pooled out-of-time predictions and what was measured on them."""

    #: account_id, as_of (= origin), y, mrr, raw (LightGBM log-odds) and one probability
    #: column per contender, sorted by (as_of, account_id)
    predictions: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, tuple[float, float]]]
    per_origin: list[dict]
    origins: list[pd.Timestamp]
    #: LightGBM trees used at each origin (chosen on validation curves before the origin)
    rounds: list[int]
    #: the validation curves of all origins: the champion's tree count maximises their mean
    curves: list[np.ndarray] = field(default_factory=list)
    calibrator: Calibrator = field(default_factory=lambda: Calibrator.fit("platt", [], []))
    calibration_evidence: dict[str, float] = field(default_factory=dict)
    constrained: bool = False
    #: pooled LightGBM AUC (without, with) the target's monotone constraints, when tried
    constraint_aucs: tuple[float, float] | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def positives(self) -> int:
        return int(self.predictions["y"].sum())

    def champion_rounds(self, params: LightGBMParams) -> int:
        """The tree count of the champion refit, chosen on all the validation curves."""
        return choose_rounds(self.curves, params)


def validation_curve(
    x: pd.DataFrame, y: np.ndarray, as_of: pd.Series, horizon_days: int,
    params: LightGBMParams, periods: int, seed: int, constraints: list[int] | None,
) -> np.ndarray | None:  # fmt: skip
    """Validation AUC after each tree, validating on the latest `periods` dates of these rows.

    The rows whose labels reach into the validation dates are purged from the fit.
    None when there is too little data (no dates left to fit on, or a single class).
    """
    dates = sorted(as_of.unique())
    if len(dates) <= periods:
        return None
    valid_start = pd.Timestamp(dates[-periods])
    valid = (as_of >= valid_start).to_numpy()
    inner = closed_before(as_of, valid_start, horizon_days).to_numpy()
    if len(np.unique(y[inner])) < 2 or len(np.unique(y[valid])) < 2:
        return None
    return fit_curve(x[inner], y[inner], x[valid], y[valid], params, seed, constraints)


def choose_rounds(curves: list[np.ndarray], params: LightGBMParams) -> int:
    """The most trees whose mean validation score is within `plateau` of the best.

    One noisy curve misleads, so curves are averaged. On small validation sets the
    curve rises quickly and then lies flat; its exact maximum is noise, and a model
    stopped at the first bump is under-fitted: its scores bunch near the base rate
    and tie accounts. The end of the plateau ranks as well and spreads scores.
    `min_rounds` is a floor for the same reason: a few trees have few distinct leaf
    paths, so accounts tie.
    """
    if not curves:
        return max(params.default_rounds, params.min_rounds)
    n = min(len(c) for c in curves)
    mean = np.mean([c[:n] for c in curves], axis=0)
    near = np.flatnonzero(mean >= np.nanmax(mean) - params.plateau)
    return max(int(near.max()) + 1, params.min_rounds)


@dataclass(frozen=True)
class _Origin:
    date: pd.Timestamp
    train: np.ndarray  # boolean masks over the labelled rows
    test: np.ndarray


def _lightgbm_raw(
    frame: pd.DataFrame, y: np.ndarray, features: list[Feature], origins: list[_Origin],
    horizon_days: int, params: LightGBMParams, bt: BacktestParams, seed: int,
    constraints: list[int] | None,
) -> tuple[np.ndarray, list[int], list[np.ndarray]]:  # fmt: skip
    """LightGBM's out-of-time raw scores (all origins, in order), trees per origin, curves.

    The trees at origin T maximise the mean validation curve of the origins up to T:
    each curve was measured on data before its own origin, so none looks past T.
    """
    curves: list[np.ndarray] = []
    raw, rounds = [], []
    for o in origins:
        tr, te = frame[o.train], frame[o.test]
        cats = categories_of(features, tr)
        x = prepare_frame(features, cats, tr)
        curve = validation_curve(x, y[o.train], tr[Col.AS_OF], horizon_days, params,
                                 bt.validation_periods, seed, constraints)  # fmt: skip
        if curve is not None:
            curves.append(curve)
        r = choose_rounds(curves, params)
        # No tie guard here: the backtest measures the chosen tree count itself; only
        # the champion adds trees when the scores a CSM sees would tie.
        booster, r = fit_booster(x, y[o.train], params, seed, r, constraints)
        raw.append(booster.predict(prepare_frame(features, cats, te), raw_score=True))
        rounds.append(r)
    return np.concatenate(raw) if raw else np.zeros(0), rounds, curves


def _baselines(
    frame: pd.DataFrame, y: np.ndarray, features: list[Feature], origins: list[_Origin],
    rules: list[RuleComponent], event_is_risk: bool, seed: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Logistic regression and the calibrated rule score, refitted at every origin."""
    out: dict[str, list[np.ndarray]] = {"logistic": [], "rules": []}
    for o in origins:
        tr, te = frame[o.train], frame[o.test]
        out["logistic"].append(predict_logistic(fit_logistic(features, tr, y[o.train], seed),
                                                te, features))  # fmt: skip
        # Rule health is "good" when high: risk targets read it upside down.
        cal = fit_rule_calibrator(rule_health(tr, rules), y[o.train], not event_is_risk)
        health = rule_health(te, rules)
        out["rules"].append(cal((100 - health if event_is_risk else health) / 100))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def _origins(
    frame: pd.DataFrame, y: np.ndarray, dates: list[pd.Timestamp], horizon_days: int
) -> tuple[list[_Origin], list[str]]:
    """Masks per origin; origins whose training rows hold one class are skipped (said why)."""
    as_of = frame[Col.AS_OF]
    out, skipped = [], []
    for t in dates:
        train = closed_before(as_of, t, horizon_days).to_numpy()
        test = (as_of == t).to_numpy()
        if len(np.unique(y[train])) < 2:
            skipped.append(f"origin {t.date()}: its {int(train.sum())} training rows hold "
                           f"{int(y[train].sum())} positives")  # fmt: skip
            continue
        out.append(_Origin(t, train, test))
    return out, skipped


def _per_origin(pred: pd.DataFrame, origins: list[_Origin], rounds: list[int],
                contenders: list[str]) -> list[dict]:  # fmt: skip
    """One row per origin: sizes, positives, trees and each contender's ROC AUC there."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for o, r in zip(origins, rounds, strict=True):
        part = pred[pred[Col.AS_OF] == o.date]
        y = part["y"].to_numpy()
        row = {"origin": o.date.date().isoformat(), "train_rows": int(o.train.sum()),
               "rows": len(part), "positives": int(y.sum()), "trees": int(r)}  # fmt: skip
        for name in contenders:
            ok = part[name].notna().to_numpy()
            both = len(np.unique(y[ok])) == 2
            row[f"{name}_roc_auc"] = (float(roc_auc_score(y[ok], part[name].to_numpy()[ok]))
                                      if both else float("nan"))  # fmt: skip
        rows.append(row)
    return rows


def run_backtest(
    labelled: pd.DataFrame,
    label: str,
    features: list[Feature],
    horizon_days: int,
    origin_dates: list[pd.Timestamp],
    *,
    params: LightGBMParams,
    backtest: BacktestParams,
    calibration: str,
    rules: list[RuleComponent],
    event_is_risk: bool,
    seed: int,
    constraints: list[int] | None = None,
    truth: pd.DataFrame | None = None,
) -> Backtest:
    """Every contender at every origin on the same rows; pooled metrics with intervals.

    `labelled` holds only rows with an observed label, in canonical (as_of, account_id)
    order. With `constraints`, LightGBM runs with and without them and keeps the
    constraints only when they cost no pooled AUC.
    """
    y = labelled[label].astype(int).to_numpy()
    origins, skipped = _origins(labelled, y, origin_dates, horizon_days)
    for s in skipped:
        log.warning("%s: %s; skipped", label, s)
    test = np.concatenate([np.flatnonzero(o.test) for o in origins] or [np.zeros(0, int)])
    rows = labelled.iloc[test]
    pred = pd.DataFrame({
        Col.ACCOUNT_ID: rows[Col.ACCOUNT_ID].to_numpy(),
        Col.AS_OF: rows[Col.AS_OF].to_numpy(),
        "y": y[test],
        MRR_COLUMN: rows[MRR_COLUMN].to_numpy(dtype=float),
    })  # fmt: skip
    args = (labelled, y, features, origins, horizon_days, params, backtest, seed)
    raw, rounds, curves = _lightgbm_raw(*args, None)
    constrained, constraint_aucs = False, None
    if constraints and any(constraints) and origins:
        raw_c, rounds_c, curves_c = _lightgbm_raw(*args, constraints)
        auc_free, auc_c = (evaluate(pred["y"], r, pred[MRR_COLUMN])["roc_auc"]
                           for r in (raw, raw_c))  # fmt: skip
        constrained = bool(auc_c >= auc_free)
        constraint_aucs = (auc_free, auc_c)
        log.info("%s: monotone constraints %s (pooled AUC %.3f with, %.3f without)", label,
                 "kept" if constrained else "dropped", auc_c, auc_free)  # fmt: skip
        if constrained:
            raw, rounds, curves = raw_c, rounds_c, curves_c
    groups = pred[Col.AS_OF].to_numpy()
    cal, evidence = choose_calibrator(calibration, raw, pred["y"].to_numpy(), groups, seed)
    pred["raw"] = raw
    pred["lightgbm"] = cross_calibrate(cal.kind, raw, pred["y"].to_numpy(), groups, seed) \
        if len(raw) else raw  # fmt: skip
    pred = pred.assign(**_baselines(labelled, y, features, origins, rules, event_is_risk, seed))
    contenders = ["lightgbm", "logistic", "rules"]
    if truth is not None and len(pred):
        t = truth[[Col.ACCOUNT_ID, Col.AS_OF, "oracle"]]
        pred = pred.merge(t, on=[Col.ACCOUNT_ID, Col.AS_OF], how="left", validate="1:1")
        contenders.append("oracle")
    metrics, intervals = {}, {}
    for name in contenders:
        ok = pred[name].notna().to_numpy()
        part = pred[ok]
        metrics[name] = evaluate(part["y"].to_numpy(), part[name].to_numpy(),
                                 part[MRR_COLUMN].to_numpy()) if len(part) else {}  # fmt: skip
        metrics[name] |= {"rows": len(part), "positives": int(part["y"].sum())}
        intervals[name] = bootstrap_intervals(
            part["y"].to_numpy(), part[name].to_numpy(), part[MRR_COLUMN].to_numpy(),
            part[Col.ACCOUNT_ID].to_numpy(), backtest.bootstrap, seed,
        )  # fmt: skip
    return Backtest(
        predictions=pred, metrics=metrics, intervals=intervals,
        per_origin=_per_origin(pred, origins, rounds, contenders),
        origins=[o.date for o in origins], rounds=rounds, curves=curves,
        calibrator=cal, calibration_evidence=evidence, constrained=constrained,
        constraint_aucs=constraint_aucs,
        skipped=skipped,
    )  # fmt: skip
