"""Realised accuracy: what past scoring runs predicted against what then happened (pure).

A stored run scored each account at its `as_of`. Once the data reach `as_of` plus the
horizon (and one day: `features.labels.label_observed`), the outcome is known from the
subscriptions: churned = no term covers the day after the window, the very label the
models learn. Per run and pooled over runs this gives

* the churn AUC (ranking), the top-decile lift (churn rate of the 10 % riskiest over
  the base rate), the expected calibration error and the mean predicted vs actual rate;
* the share of churned ARR (MRR at as_of x 12, of the accounts that churned) that the run
  had put in the flagged bands (red or yellow by default): "was it on our list?";
* the expansion AUC beside them.

Only **out-of-time** runs count: the models must have been trained on data that ended
before the run's as_of (`models_cutoff < as_of`), as a real scoring run always is. A
backfill with today's champion of a month it was trained on is listed, but not counted.
An account the subscriptions do not show active at the run's as_of is left out (its
outcome is undefined).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from features.contract import Col
from features.labels import MRR_COLUMN, label_observed, label_window, labels_of
from features.settings import FeatureParams
from features.targets import CHURN, EXPANSION
from serving.settings import RealisedParams
from serving.store import as_date
from training.metrics import evaluate

Status = Literal["evaluated", "pending", "in_sample", "unknown_training", "too_few", "repeat"]

#: the columns a run's predictions need (`ScoreStore.predictions`)
PREDICTION_COLUMNS = (Col.ACCOUNT_ID, "churn_probability", "expansion_probability", "band")
#: what each status means, for the CLI and the report
STATUS_TEXT: dict[str, str] = {
    "evaluated": "evaluated",
    "pending": "outcome window not over yet",
    "in_sample": "in sample: the models were trained on data past this as_of (not counted)",
    "unknown_training": "the models' training data are unknown (a run of an older version)",
    "too_few": "too few accounts with a known outcome",
    "repeat": "a later run scored this as_of with the same models (that one counts)",
}
DEFINITION = (
    "Each past scoring run is compared with what happened next: an account churned when no "
    "subscription covers the day after its as_of + {h} days (the label the models learn). "
    "AUC: how well the run's churn probabilities ranked the accounts that churned above those "
    "that did not (0.5 = chance). Top-decile lift: churn rate of the run's 10 % riskiest "
    "accounts over the overall rate. ECE: mean gap between predicted and actual churn rate "
    "over ten equal-size probability bins. Flagged churned ARR: of the ARR (MRR at as_of x "
    "12) of the accounts that churned, the share the run had put in {bands} (and the share of "
    "the churned accounts, unweighted). Only out-of-time "
    "runs count (models trained on data that ended before the run's as_of); pooled = every "
    "counted run's accounts together."
)


@dataclass(frozen=True)
class RunResult:
    """One past run: its status and, when evaluated, its figures."""

    run: dict[str, Any]
    status: Status
    accounts: int = 0
    known: int = 0
    metrics: dict[str, float | int] | None = None

    def to_dict(self) -> dict[str, Any]:
        r = self.run
        return {
            "run_id": r["run_id"], "as_of": str(r["as_of"])[:10],
            "backfill": bool(r.get("backfill")),
            "models": {"churn": r.get("churn_model_version"),
                       "expansion": r.get("expansion_model_version")},
            "models_cutoff": str(r["models_cutoff"])[:10] if r.get("models_cutoff") else None,
            "status": self.status, "status_text": STATUS_TEXT[self.status],
            "accounts": self.accounts, "known": self.known, "metrics": self.metrics,
        }  # fmt: skip


def outcomes(
    keys: pd.DataFrame, subs: pd.DataFrame, cutoff: pd.Timestamp, params: FeatureParams
) -> pd.DataFrame:
    """Per (account_id, as_of) of `keys`: `mrr`, `active` at as_of and each target's label.

    `subs` have inclusive end dates (`features.subscriptions.to_inclusive`); labels are
    null where the window is not observed by `cutoff`.
    """
    window = label_window(keys, subs, params.horizon_days)
    observed = label_observed(keys[Col.AS_OF], cutoff, params.horizon_days).to_numpy()
    out = labels_of(window, observed, params, keys.index)
    out.insert(0, "active", window.now["covered"].to_numpy())
    return pd.concat([keys[[Col.ACCOUNT_ID, Col.AS_OF]], out], axis=1)


def status_of(run: dict[str, Any], cutoff: pd.Timestamp, horizon_days: int) -> Status:
    """Whether a run can be evaluated yet, and whether it would count (before any data)."""
    as_of = pd.Timestamp(as_date(run["as_of"]))
    if not label_observed(pd.Series([as_of]), cutoff, horizon_days).iloc[0]:
        return "pending"
    if not run.get("models_cutoff"):
        return "unknown_training"
    if as_date(run["models_cutoff"]) >= as_of.date():
        return "in_sample"
    return "evaluated"


def joined(
    predictions: Sequence[dict[str, Any]], as_of: Any, subs: pd.DataFrame,
    cutoff: pd.Timestamp, params: FeatureParams,
) -> pd.DataFrame:  # fmt: skip
    """A run's predictions with each account's outcome (accounts active at as_of only)."""
    pred = pd.DataFrame(list(predictions), columns=list(PREDICTION_COLUMNS))
    pred[Col.ACCOUNT_ID] = pred[Col.ACCOUNT_ID].astype(str)
    keys = pd.DataFrame({Col.ACCOUNT_ID: pred[Col.ACCOUNT_ID],
                         Col.AS_OF: pd.Timestamp(as_date(as_of))})  # fmt: skip
    subs = subs.astype({Col.ACCOUNT_ID: str})
    found = outcomes(keys, subs, cutoff, params).drop(columns=[Col.ACCOUNT_ID, Col.AS_OF])
    return pd.concat([pred, found], axis=1)[found["active"].to_numpy()]


def figures(rows: pd.DataFrame, horizon_days: int, flagged: Sequence[str]) -> dict[str, Any]:
    """The realised figures of rows holding predictions, `mrr` and observed labels."""
    y = rows[CHURN.label(horizon_days)].to_numpy(dtype=float)
    p = rows["churn_probability"].to_numpy(dtype=float)
    arr = rows[MRR_COLUMN].to_numpy(dtype=float) * 12
    m = evaluate(y, p, arr)
    churned_arr = float((arr * y).sum())
    flagged_rows = rows["band"].isin(list(flagged)).to_numpy()
    caught = float((arr * y)[flagged_rows].sum())
    churned = float(y.sum())
    ye = rows[EXPANSION.label(horizon_days)].to_numpy(dtype=float)
    pe = rows["expansion_probability"].to_numpy(dtype=float)
    return {
        "churned": int(y.sum()),
        "churn_rate": float(y.mean()),
        "predicted_churn_rate": float(p.mean()),
        "roc_auc": m["roc_auc"],
        "top_decile_lift": m["top_decile_lift"],
        "ece": m["ece"],
        "brier": m["brier"],
        "churned_arr": churned_arr,
        "flagged_churned_arr_share": caught / churned_arr if churned_arr > 0 else float("nan"),
        "flagged_churned_share": float(y[flagged_rows].sum()) / churned if churned else math.nan,
        "expansions": int(ye.sum()),
        "expansion_roc_auc": evaluate(ye, pe, arr)["roc_auc"],
    }


def realised(
    runs: Sequence[dict[str, Any]],
    predictions: Callable[[str], Sequence[dict[str, Any]]],
    subs: pd.DataFrame,
    cutoff: pd.Timestamp,
    label_params: FeatureParams,
    params: RealisedParams,
) -> dict[str, Any]:
    """Every run's status and figures, and the pooled figures of the counted runs.

    `predictions(run_id)` gives a run's `PREDICTION_COLUMNS`; it is only called for runs
    whose outcome window is over. `label_params` carry the horizon and expansion threshold
    the models were trained for (the snapshot table's).
    """
    h = label_params.horizon_days
    results, counted = [], []
    last = {_key(r): r["run_id"] for r in runs}  # runs come in scoring order: the last wins
    for run in runs:
        status = status_of(run, cutoff, h)
        if status != "pending" and last[_key(run)] != run["run_id"]:
            results.append(RunResult(run, "repeat"))
            continue
        if status == "pending":
            results.append(RunResult(run, status))
            continue
        rows = joined(predictions(run["run_id"]), run["as_of"], subs, cutoff, label_params)
        known = rows[rows[CHURN.label(h)].notna()]
        n = len(known)
        if status == "evaluated" and n < params.min_accounts:
            status = "too_few"
        metrics = figures(known, h, params.flagged_bands) if n else None
        results.append(RunResult(run, status, len(rows), n, metrics))
        if status == "evaluated":
            counted.append(known)
    pooled = None
    if counted:
        rows = pd.concat(counted, ignore_index=True)
        pooled = {"runs": len(counted), "known": len(rows),
                  "metrics": figures(rows, h, params.flagged_bands)}  # fmt: skip
    return {
        "definition": DEFINITION.format(h=h, bands=" or ".join(params.flagged_bands)),
        "horizon_days": h,
        "data_cutoff": pd.Timestamp(cutoff).isoformat(),
        "flagged_bands": list(params.flagged_bands),
        "min_accounts": params.min_accounts,
        "runs": [r.to_dict() for r in results],
        "pooled": pooled,
    }


def _key(run: dict[str, Any]) -> tuple[str, str, str]:
    """Runs with the same key made the same predictions: counted once."""
    return (str(run["as_of"])[:10], str(run.get("churn_model_version")),
            str(run.get("expansion_model_version")))  # fmt: skip


def summary_line(report: dict[str, Any]) -> str:
    """One line: the pooled realised AUC and flagged share, or why there is none."""
    pooled = report.get("pooled")
    if not pooled:
        pending = sum(r["status"] == "pending" for r in report["runs"])
        return (f"realised accuracy: no out-of-time run with a known outcome yet "
                f"({len(report['runs'])} runs, {pending} still within their "
                f"{report['horizon_days']}-day window)")  # fmt: skip
    m = pooled["metrics"]
    return (f"realised accuracy over {pooled['runs']} past run(s), {pooled['known']:,} accounts: "
            f"churn AUC {_fmt(m['roc_auc'])}, top-decile lift {_fmt(m['top_decile_lift'], 1)}, "
            f"ECE {_fmt(m['ece'])}, {_pct(m['flagged_churned_arr_share'])} of churned ARR was "
            f"{'/'.join(report['flagged_bands'])}")  # fmt: skip


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.0%}"


def replay_dates(as_ofs: Sequence[Any], labelled: Sequence[Any], runs: int,
                 start: dt.date | None = None) -> list[pd.Timestamp]:  # fmt: skip
    """The as_of dates a replay scores: from `start` (default: the `runs`-th newest
    labelled one), every labelled date on, at most `runs` of them.

    `labelled`: the as_of dates whose outcome the data already show.
    """
    dates = sorted(pd.Timestamp(d) for d in set(labelled))
    if start is not None:
        if pd.Timestamp(start) not in {pd.Timestamp(d) for d in as_ofs}:
            have = ", ".join(d.date().isoformat() for d in dates[-12:])
            raise ValueError(f"no snapshot at {start}; dates with known outcomes end: {have}")
        dates = [d for d in dates if d >= pd.Timestamp(start)]
    return dates[-runs:] if start is None else dates[:runs]
