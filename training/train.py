"""Train every declared target: walk-forward backtest, then the champion on everything known.

Per target (`features.targets.TARGETS`):

1. the walk-forward backtest (`training.backtest`) scores LightGBM, logistic
   regression, the rule score and, given the simulator truth, the oracle on the same
   out-of-time rows, and picks the tree count and the calibrator;
2. the champion is LightGBM refitted on every snapshot whose label is observed up
   to the data cutoff, with the backtest's median tree count; its calibrator is the
   one fitted on the backtest's pooled out-of-time scores. The metrics it is judged
   by are the backtest's, labelled so.

No MLflow here (`training.tracking` logs and gates the result).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import TRUTH, Col
from features.snapshots import SnapshotTable
from features.targets import TARGETS, Target
from training.backtest import Backtest, plan_origins, run_backtest
from training.metrics import METRIC_NAMES
from training.model import (
    Calibrator,
    HealthModel,
    categories_of,
    fit_booster,
    monotone_constraints,
    prepare_frame,
)
from training.settings import RuleComponent, TrainParams

log = logging.getLogger(__name__)

#: every contender's name in the order tables print them
BASELINES = ("logistic", "rules")


@dataclass
class TargetResult:
    """One target: the champion model, its backtest and what the user should know."""

    target: Target
    model: HealthModel
    backtest: Backtest
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Pooled backtest metrics per contender (point estimates, rows, positives)."""
        return self.backtest.metrics

    def best_baseline(self) -> tuple[str, float]:
        """The baseline with the highest pooled ROC AUC, and that AUC (NaN when none)."""
        aucs = {b: self.metrics.get(b, {}).get("roc_auc", float("nan")) for b in BASELINES}
        finite = {b: a for b, a in aucs.items() if a is not None and np.isfinite(a)}
        if not finite:
            return BASELINES[0], float("nan")
        name = max(finite, key=finite.__getitem__)
        return name, finite[name]


@dataclass
class TrainResult:
    targets: dict[str, TargetResult] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict[str, dict[str, float]]]:
        """{"churn": {"lightgbm": {...}, "logistic": {...}, ...}, ...} with interval bounds."""
        out = {}
        for name, r in self.targets.items():
            out[name] = {}
            for contender, values in r.metrics.items():
                row = dict(values)
                for metric, (lo, hi) in r.backtest.intervals.get(contender, {}).items():
                    row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
                out[name][contender] = row
        return out

    def report(self) -> dict[str, Any]:
        """metrics.json: per target the pooled backtest, its intervals and the per-origin table."""
        doc: dict[str, Any] = {}
        for name, r in self.targets.items():
            bt, info = r.backtest, r.model.info
            doc[name] = {
                "evaluation": "walk-forward backtest (pooled out-of-time predictions)",
                "label": info["label"],
                "horizon_days": info["horizon_days"],
                "origins": len(bt.origins),
                "first_origin": _day(bt.origins[0]) if bt.origins else None,
                "last_origin": _day(bt.origins[-1]) if bt.origins else None,
                "rows": len(bt.predictions),
                "positives": bt.positives,
                "trained_on_labels_up_to": info["labels_up_to"],
                "champion_rows": info["train_rows"],
                "champion_positives": info["train_positives"],
                "trees": info["trees"],
                "calibration": info["calibrator"],
                "monotone_constraints": bt.constrained,
                "warnings": list(r.warnings),
                "contenders": self.metrics()[name],
                "per_origin": {row["origin"]: {k: v for k, v in row.items() if k != "origin"}
                               for row in bt.per_origin},
            }
        return doc


def _day(ts: Any) -> str:
    return pd.Timestamp(ts).date().isoformat()


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by (as_of, account_id): the same result whatever the table's row order.

    LightGBM's bagging and bin sampling and the calibrator's folds depend on row
    positions, so the input order must not matter.
    """
    return df.sort_values([Col.AS_OF, Col.ACCOUNT_ID], kind="stable").reset_index(drop=True)


def fit_champion(
    labelled: pd.DataFrame,
    label: str,
    features: list,
    target: Target,
    bt: Backtest,
    params: TrainParams,
    constraints: list[int] | None,
    scoring: pd.DataFrame,
) -> HealthModel:
    """LightGBM on every labelled row, with the backtest's trees and calibrator.

    `scoring` (the newest snapshot, what the champion will score first) only guards
    against tied scores (see `fit_booster`).
    """
    y = labelled[label].astype(int).to_numpy()
    cats = categories_of(features, labelled)
    x = prepare_frame(features, cats, labelled)
    single = len(np.unique(y)) < 2
    # One class only: a single-tree constant model and the class rate (a usable baseline).
    rounds = 1 if single else bt.champion_rounds(params.lightgbm)
    booster, trees = fit_booster(x, y, params.lightgbm, params.seed, rounds,
                                 constraints if bt.constrained else None,
                                 scored=prepare_frame(features, cats, scoring))  # fmt: skip
    calibrator = Calibrator.fit("platt", np.zeros(len(y)), y) if single else bt.calibrator
    model = HealthModel(target.name, features, cats, booster, calibrator)
    last = pd.Timestamp(labelled[Col.AS_OF].max())
    model.info = {
        "label": label,
        "train_rows": len(labelled),
        "train_positives": int(y.sum()),
        "trained_through_as_of": _day(last),
        "trees": int(trees),
        "calibrator": calibrator.kind,
        "monotone_constraints": bt.constrained,
    }
    return model


def _warnings(r: TargetResult, params: TrainParams) -> list[str]:
    """What a user should know about this target's model (printed, tagged, in metrics.json)."""
    out = list(r.backtest.skipped)
    info, name = r.model.info, r.target.name
    if info["train_positives"] < params.min_positives:
        out.append(f"only {info['train_positives']} positives in {info['train_rows']:,} labelled "
                   f"rows (< {params.min_positives}): treat {name} probabilities as a rough "
                   "baseline until more outcomes are observed")  # fmt: skip
    if r.backtest.positives == 0:
        out.append("the backtest holds no positive: its metrics are undefined")
    lgbm = r.metrics.get("lightgbm", {})
    auc, ece = lgbm.get("roc_auc", float("nan")), lgbm.get("ece", float("nan"))
    gates = params.gates
    if np.isfinite(auc) and auc < gates.min_auc:
        out.append(f"backtest roc_auc {auc:.3f} is below the floor min_auc {gates.min_auc:g}")
    if np.isfinite(ece) and ece > gates.max_ece:
        out.append(f"backtest ece {ece:.3f} is above the ceiling max_ece {gates.max_ece:g}")
    base, base_auc = r.best_baseline()
    if np.isfinite(auc) and np.isfinite(base_auc) and auc <= base_auc:
        out.append(f"LightGBM ({auc:.3f}) does not beat the {base} baseline ({base_auc:.3f}) "
                   "on the backtest")  # fmt: skip
    return out


def _truth_for(
    truth: pd.DataFrame | None, target: Target, horizon_days: int
) -> pd.DataFrame | None:
    """The truth column of `target` as `oracle`, or None when absent or for another horizon."""
    if truth is None:
        return None
    horizons = set(truth[Col.HORIZON_DAYS].dropna().astype(int).unique())
    if horizons and horizons != {horizon_days}:
        log.warning("the truth file is for a %s-day horizon, the snapshot table for %d days: "
                    "no oracle", sorted(horizons), horizon_days)  # fmt: skip
        return None
    return truth[[Col.ACCOUNT_ID, Col.AS_OF, target.truth_column]].rename(
        columns={target.truth_column: "oracle"}
    )


def train_target(
    snaps: SnapshotTable,
    target: Target,
    params: TrainParams,
    rules: list[RuleComponent],
    truth: pd.DataFrame | None = None,
) -> TargetResult:
    """Backtest every contender for one target, then fit its champion."""
    t0 = time.perf_counter()
    label, horizon = snaps.labels[target.name], snaps.horizon_days
    labelled = _canonical(snaps.frame[snaps.frame[label].notna()])
    origins = plan_origins(sorted(labelled[Col.AS_OF].unique()), horizon, params.backtest.origins,
                           snaps.frame[Col.AS_OF].min(), snaps.cutoff)  # fmt: skip
    log.info("%s: backtest at %d origins %s..%s", target.name, len(origins),
             _day(origins[0]), _day(origins[-1]))  # fmt: skip
    use_constraints = params.monotone_constraints and target.monotone_sign != 0
    constraints = monotone_constraints(snaps.features, target.monotone_sign) \
        if use_constraints else None  # fmt: skip
    bt = run_backtest(
        labelled, label, snaps.features, horizon, origins, params=params.lightgbm,
        backtest=params.backtest, calibration=params.calibration, rules=rules,
        event_is_risk=target.event_is_risk, seed=params.seed, constraints=constraints,
        truth=_truth_for(truth, target, horizon),
    )  # fmt: skip
    newest = snaps.frame[snaps.frame[Col.AS_OF] == snaps.frame[Col.AS_OF].max()]
    model = fit_champion(labelled, label, snaps.features, target, bt, params, constraints, newest)
    labels_up_to = pd.Timestamp(labelled[Col.AS_OF].max()) + pd.Timedelta(days=horizon)
    model.info |= {
        "horizon_days": horizon,
        "labels_up_to": _day(labels_up_to),
        "data_cutoff": _day(snaps.cutoff),
        "backtest_origins": [_day(o) for o in bt.origins],
        "backtest_metrics": {k: v for k, v in bt.metrics.get("lightgbm", {}).items()
                             if k in METRIC_NAMES},
        "backtest_positives": bt.positives,
    }
    result = TargetResult(target, model, bt)
    result.warnings = _warnings(result, params)
    model.info["warnings"] = result.warnings
    result.seconds = time.perf_counter() - t0
    m = bt.metrics
    log.info("%s: backtest AUC lightgbm %.3f, logistic %.3f, rules %.3f (%d positives); champion "
             "%d trees on %d rows in %.1f s", target.name, m["lightgbm"].get("roc_auc", np.nan),
             m["logistic"].get("roc_auc", np.nan), m["rules"].get("roc_auc", np.nan), bt.positives,
             model.info["trees"], model.info["train_rows"], result.seconds)  # fmt: skip
    return result


def read_truth(path: Path) -> pd.DataFrame:
    """The simulator's ground truth (account_id, as_of, horizon, true probabilities)."""
    df = pd.read_parquet(path)
    missing = [c for c in TRUTH.column_names if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a truth file: missing columns {missing}")
    return df.astype({Col.AS_OF: "datetime64[us]"})


def train(
    snaps: SnapshotTable,
    params: TrainParams,
    rules: list[RuleComponent],
    truth: pd.DataFrame | None = None,
) -> TrainResult:
    """Every declared target."""
    from threadpoolctl import threadpool_limits

    result = TrainResult()
    # Many small BLAS calls (logistic regression, calibrators): a second BLAS thread only
    # adds synchronisation, and under CPU contention it made each fit 20x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        for target in TARGETS:
            result.targets[target.name] = train_target(snaps, target, params, rules, truth)
    return result


def nan_to_none(metrics: Any) -> Any:
    """JSON-friendly metrics: NaN becomes null (recursively, through dicts and lists)."""
    if isinstance(metrics, dict):
        return {k: nan_to_none(v) for k, v in metrics.items()}
    if isinstance(metrics, list | tuple):
        return [nan_to_none(v) for v in metrics]
    if isinstance(metrics, float) and np.isnan(metrics):
        return None
    return metrics
