"""Labels: churn and expansion within the horizon, censored where it is not observed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.calendar import covering
from features.contract import Col
from features.settings import FeatureParams

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


def label_frame(
    grid: pd.DataFrame, subs: pd.DataFrame, cutoff: pd.Timestamp, params: FeatureParams
) -> pd.DataFrame:
    """`mrr` at as_of plus the churn and expansion labels for each grid row.

    churn: no subscription covers the day after the window, as_of + horizon + 1
    (every term active at as_of ended on or before as_of + horizon and nothing
    active follows). expansion: MRR at as_of + horizon >= (1 + threshold) x MRR
    at as_of. Rows whose window is not fully observed (`label_observed`) get null
    labels, never 0.
    """
    horizon = pd.Timedelta(days=params.horizon_days)
    keys = grid[[Col.ACCOUNT_ID, Col.AS_OF]].copy()
    keys["_end"] = keys[Col.AS_OF] + horizon
    keys["_after"] = keys["_end"] + pd.Timedelta(days=1)
    now = mrr_on(subs, keys, Col.AS_OF)
    later = mrr_on(subs, keys, "_end")
    after = mrr_on(subs, keys, "_after")
    observed = label_observed(keys[Col.AS_OF], cutoff, params.horizon_days).to_numpy()
    churn = pd.array((~after["covered"]).astype("int8"), dtype="Int8")
    expand = is_expansion(
        later["mrr"].to_numpy(), now["mrr"].to_numpy(), params.expansion_threshold
    )
    expand = pd.array(expand.astype("int8"), dtype="Int8")
    churn[~observed] = pd.NA
    expand[~observed] = pd.NA
    return pd.DataFrame(
        {MRR_COLUMN: now["mrr"].to_numpy(), params.churn_label: churn,
         params.expansion_label: expand},
        index=grid.index,
    )  # fmt: skip
