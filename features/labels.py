"""Labels: one function per declared target, censored where the window is not observed.

Subscriptions arrive here normalised to inclusive end dates (`features.subscriptions`):
a term's end_date is its last day of service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.calendar import covering
from features.contract import Col
from features.settings import FeatureParams
from features.targets import CHURN, EXPANSION, TARGETS

MRR_COLUMN = Col.MRR  # MRR at as_of, kept beside the labels for ARR weighting


def mrr_on(subs: pd.DataFrame, keys: pd.DataFrame, date_col: str) -> pd.DataFrame:
    """MRR and coverage of each (account_id, date) row of `keys` (0 / False when none)."""
    pairs = (
        keys[[Col.ACCOUNT_ID, date_col]]
        .drop_duplicates()
        .merge(subs[[Col.ACCOUNT_ID, Col.START_DATE, Col.END_DATE, Col.MRR]], on=Col.ACCOUNT_ID)
    )
    pairs = pairs[covering(pairs, pairs[date_col])]
    agg = pairs.groupby([Col.ACCOUNT_ID, date_col])[Col.MRR].agg(["sum", "size"])
    out = keys[[Col.ACCOUNT_ID, date_col]].join(agg, on=[Col.ACCOUNT_ID, date_col])
    return pd.DataFrame(
        {"mrr": out["sum"].fillna(0.0).to_numpy(), "covered": out["size"].notna().to_numpy()},
        index=keys.index,
    )


def is_expansion(mrr_later: np.ndarray, mrr_now: np.ndarray, threshold: float) -> np.ndarray:
    """MRR grew by at least `threshold` (relative) from a positive base."""
    # A relative tolerance so that exactly +threshold counts (1.1 * 100 > 110 in floats).
    target = (1 + threshold) * mrr_now
    return (mrr_later >= target * (1 - 1e-9)) & (mrr_now > 0)


def label_observed(as_of: pd.Series, cutoff: pd.Timestamp, horizon_days: int) -> pd.Series:
    """Whether a row's label window is fully observed.

    A term's end_date is its last day of service, so churn "within the horizon"
    is decided by coverage on the day after the window: the data must reach the
    start of as_of + horizon + 1 day (a renewal row starting then must be visible).
    """
    return as_of + pd.Timedelta(days=horizon_days + 1) <= cutoff


def label_columns(horizon_days: int) -> dict[str, str]:
    """Target name -> label column at `horizon_days`, for every declared target."""
    return {t.name: t.label(horizon_days) for t in TARGETS}


@dataclass(frozen=True)
class LabelWindow:
    """MRR and coverage of each grid row at as_of, at as_of + horizon and the day after."""

    now: pd.DataFrame
    end: pd.DataFrame
    after: pd.DataFrame


def churn_label(window: LabelWindow, params: FeatureParams) -> np.ndarray:
    """No subscription covers the day after the window (all active terms ended within it)."""
    return ~window.after["covered"].to_numpy()


def expansion_label(window: LabelWindow, params: FeatureParams) -> np.ndarray:
    """MRR at as_of + horizon >= (1 + expansion_threshold) x MRR at as_of."""
    return is_expansion(
        window.end["mrr"].to_numpy(), window.now["mrr"].to_numpy(), params.expansion_threshold
    )


LabelFunction = Callable[[LabelWindow, FeatureParams], np.ndarray]
#: target name -> its label function; a new target in `features.targets` needs one here
LABEL_FUNCTIONS: dict[str, LabelFunction] = {
    CHURN.name: churn_label,
    EXPANSION.name: expansion_label,
}


def label_window(grid: pd.DataFrame, subs: pd.DataFrame, horizon_days: int) -> LabelWindow:
    """MRR and coverage of each grid row on the three days every label reads."""
    keys = grid[[Col.ACCOUNT_ID, Col.AS_OF]].copy()
    keys["_end"] = keys[Col.AS_OF] + pd.Timedelta(days=horizon_days)
    keys["_after"] = keys["_end"] + pd.Timedelta(days=1)
    return LabelWindow(
        mrr_on(subs, keys, Col.AS_OF), mrr_on(subs, keys, "_end"), mrr_on(subs, keys, "_after")
    )


def labels_of(
    window: LabelWindow, observed: np.ndarray, params: FeatureParams, index: pd.Index
) -> pd.DataFrame:
    """`mrr` at as_of plus one label column per declared target (null where not observed)."""
    missing = [t.name for t in TARGETS if t.name not in LABEL_FUNCTIONS]
    if missing:
        raise ValueError(f"no label function for target(s) {', '.join(missing)}")
    out = {MRR_COLUMN: window.now["mrr"].to_numpy()}
    for t in TARGETS:
        values = pd.array(LABEL_FUNCTIONS[t.name](window, params).astype("int8"), dtype="Int8")
        values[~observed] = pd.NA
        out[t.label(params.horizon_days)] = values
    return pd.DataFrame(out, index=index)


def label_frame(
    grid: pd.DataFrame, subs: pd.DataFrame, cutoff: pd.Timestamp, params: FeatureParams
) -> pd.DataFrame:
    """`mrr` at as_of plus one label column per declared target for each grid row.

    Each target's function in `LABEL_FUNCTIONS` gives 0/1; rows whose window is
    not fully observed (`label_observed`) get null labels, never 0.
    """
    window = label_window(grid, subs, params.horizon_days)
    observed = label_observed(grid[Col.AS_OF], cutoff, params.horizon_days).to_numpy()
    return labels_of(window, observed, params, grid.index)
