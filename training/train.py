"""Train and evaluate the churn and expansion models against the baselines (no MLflow here)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import TRUTH, Col
from features.labels import MRR_COLUMN
from features.meta import Feature, from_dict
from training.baselines import (
    RuleComponent,
    fit_logistic,
    fit_rule_calibrator,
    predict_logistic,
    rule_health,
)
from training.metrics import evaluate
from training.model import HealthModel, fit_model
from training.settings import TrainParams
from training.split import TimeSplit, time_split

log = logging.getLogger(__name__)

CHURN, EXPANSION = "churn", "expansion"
#: truth column per target
_TRUTH = {CHURN: Col.TRUE_CHURN_PROBABILITY, EXPANSION: Col.TRUE_EXPANSION_PROBABILITY}


@dataclass
class SnapshotTable:
    """The snapshot table with its metadata (as written by `cshealth features`)."""

    frame: pd.DataFrame
    features: list[Feature]
    labels: dict[str, str]  # target -> label column
    horizon_days: int

    @classmethod
    def read(cls, path: Path) -> SnapshotTable:
        path = Path(path)
        meta_path = path.with_suffix(".meta.json")
        if not path.exists() or not meta_path.exists():
            raise FileNotFoundError(
                f"{path} (and {meta_path.name}) not found: run `cshealth features` first"
            )
        meta = json.loads(meta_path.read_text())
        churn, expansion = meta["labels"]
        horizon = int(churn.rsplit("_", 1)[1].rstrip("d"))
        return cls(
            pd.read_parquet(path),
            [from_dict(f) for f in meta["features"]],
            {CHURN: churn, EXPANSION: expansion},
            horizon,
        )


@dataclass
class TargetResult:
    """One target: the model, its split, metrics of every contender and test predictions."""

    model: HealthModel
    split: TimeSplit
    metrics: dict[str, dict[str, float]]
    #: account_id, as_of, y, mrr and one probability column per contender, sorted by
    #: (as_of, account_id) (join on the keys, not on positions of the split masks)
    test: pd.DataFrame
    seconds: float = 0.0


@dataclass
class TrainResult:
    targets: dict[str, TargetResult] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict[str, dict[str, float]]]:
        """{"churn": {"lightgbm": {...}, "logistic": {...}, ...}, "expansion": {...}}."""
        return {t: r.metrics for t, r in self.targets.items()}


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by (as_of, account_id): the same result whatever the table's row order."""
    return df.sort_values([Col.AS_OF, Col.ACCOUNT_ID], kind="stable")


def train_target(
    snaps: SnapshotTable,
    target: str,
    params: TrainParams,
    rules: list[RuleComponent],
    truth: pd.DataFrame | None = None,
) -> TargetResult:
    """Fit LightGBM and the baselines for one target; evaluate all on the test slice."""
    t0 = time.perf_counter()
    df, label = snaps.frame, snaps.labels[target]
    split = time_split(df, label, params.valid_periods, params.test_periods, snaps.horizon_days,
                       params.purge)  # fmt: skip
    # Canonical row order within each slice: LightGBM's bagging and bin sampling and the
    # calibrator's CV folds depend on row positions, so the input order must not matter.
    train, valid, test = (
        _canonical(df[m.to_numpy()]) for m in (split.train, split.valid, split.test)
    )
    log.info("%s: split %s", target, split.describe())
    healthy_up = target == EXPANSION
    model = fit_model(target, label, snaps.features, train, valid, params.lightgbm,
                      params.calibration, params.seed, params.monotone_from_metadata,
                      healthy_up)  # fmt: skip
    model.info |= {"label": label, "horizon_days": snaps.horizon_days, **split.describe()}
    logistic = fit_logistic(snaps.features, train, label, params.seed)
    rule_cal = fit_rule_calibrator(
        rule_health(valid, rules), valid[label].astype(int).to_numpy(), healthy_up
    )
    health_test = rule_health(test, rules)
    out = pd.DataFrame(
        {
            Col.ACCOUNT_ID: test[Col.ACCOUNT_ID].to_numpy(),
            Col.AS_OF: test[Col.AS_OF].to_numpy(),
            "y": test[label].astype(int).to_numpy(),
            MRR_COLUMN: test[MRR_COLUMN].to_numpy(),
            "lightgbm": model.predict_proba(test),
            "logistic": predict_logistic(logistic, test, snaps.features),
            "rules": rule_cal((health_test if healthy_up else 100 - health_test) / 100),
        }
    )
    contenders = ["lightgbm", "logistic", "rules"]
    if truth is not None:
        t = truth[[Col.ACCOUNT_ID, Col.AS_OF, _TRUTH[target]]].rename(
            columns={_TRUTH[target]: "oracle"}
        )
        out = out.merge(t, on=[Col.ACCOUNT_ID, Col.AS_OF], how="left", validate="1:1")
        contenders.append("oracle")
    metrics = {}
    for name in contenders:
        ok = out[name].notna().to_numpy()
        metrics[name] = evaluate(out["y"].to_numpy()[ok], out[name].to_numpy()[ok],
                                 out[MRR_COLUMN].to_numpy()[ok])  # fmt: skip
        if name == "oracle":
            metrics[name]["rows"] = int(ok.sum())
    if "oracle" in metrics and metrics["oracle"]["roc_auc"] > 0:
        metrics["lightgbm"]["auc_ratio_to_oracle"] = (
            metrics["lightgbm"]["roc_auc"] / metrics["oracle"]["roc_auc"]
        )
    model.info["test_metrics"] = metrics["lightgbm"]
    secs = time.perf_counter() - t0
    log.info("%s: lightgbm AUC %.3f (logistic %.3f, rules %.3f) in %.1f s", target,
             metrics["lightgbm"]["roc_auc"], metrics["logistic"]["roc_auc"],
             metrics["rules"]["roc_auc"], secs)  # fmt: skip
    return TargetResult(model, split, metrics, out, secs)


def read_truth(path: Path) -> pd.DataFrame:
    """The simulator's ground truth (account_id, as_of, true probabilities)."""
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
    """Both targets."""
    result = TrainResult()
    for target in (CHURN, EXPANSION):
        result.targets[target] = train_target(snaps, target, params, rules, truth)
    return result


def nan_to_none(metrics: dict) -> dict:
    """JSON-friendly metrics: NaN becomes null."""
    if isinstance(metrics, dict):
        return {k: nan_to_none(v) for k, v in metrics.items()}
    if isinstance(metrics, float) and np.isnan(metrics):
        return None  # type: ignore[return-value]
    return metrics
