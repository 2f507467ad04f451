"""Commercial family: tenure, MRR and seats and their change, renewal timing, firmographics.

Only subscription rows that started strictly before as_of are used, and terms are
read on the day before as_of. End dates are not used for renewal timing: an
evergreen subscription's end_date is written when it is cancelled, so using it
would leak the future. `days_to_renewal` assumes the common annual cycle from the
account's first subscription start.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.calendar import covering, days_between, per_snapshot, records_before
from features.contract import Col
from features.meta import Family, Feature, Good, Role

SEATS = "seats"


def commercial_features_meta() -> list[Feature]:
    """The commercial features (all context: they describe the account, a CSM cannot act)."""
    c, ctx = Family.COMMERCIAL, Role.CONTEXT
    return [
        Feature("tenure_days", c, "Days since the account was created or first subscribed.",
                "days", Good.HIGHER, "Customer for {amount}", min_value=0, role=ctx,
                label="days as a customer", noun="day"),
        Feature("mrr_usd", c, "Monthly recurring revenue on the day before as_of.", "USD/month",
                Good.HIGHER, "MRR is {value} a month", min_value=0, role=ctx, label="MRR"),
        Feature("mrr_change_90d", c, "Relative MRR change over the last 90 days.", "ratio",
                Good.HIGHER, "MRR {trend} over the last 90 days", min_value=-1, role=ctx,
                label="MRR change over the last 90 days"),
        Feature(SEATS, c, "Licensed seats on the day before as_of.", "seats", Good.HIGHER,
                "{amount}", min_value=0, role=ctx, label="licensed seats", noun="licensed seat"),
        Feature("seat_change_90d", c, "Relative seat change over the last 90 days.", "ratio",
                Good.HIGHER, "Licensed seats {trend} over the last 90 days", min_value=-1,
                role=ctx, label="seat change over the last 90 days"),
        Feature("days_to_renewal", c, "Days to the next anniversary of the first subscription.",
                "days", Good.NEUTRAL, "Renewal in {amount}", min_value=0, max_value=366,
                role=ctx, label="days to renewal", noun="day"),
        Feature("subscription_changes_365d", c, "Subscription rows started in the last year.",
                "changes", Good.NEUTRAL, "{amount} in the last year", min_value=0, role=ctx,
                label="contract changes in the last year", noun="contract change"),
        Feature("has_csm", c, "Whether a CSM is assigned (1) or the account is tech-touch (0).",
                "flag", Good.NEUTRAL, "{A CSM is assigned|No CSM assigned (tech-touch)}",
                min_value=0, max_value=1, role=ctx, label="CSM assigned"),
        Feature("plan", c, "Plan of the current subscription.", "category", Good.NEUTRAL,
                "On the {value} plan", categorical=True, role=ctx, label="plan"),
        Feature("segment", c, "Go-to-market segment.", "category", Good.NEUTRAL,
                "In the {value} segment", categorical=True, role=ctx, label="segment"),
        Feature("industry", c, "Industry vertical.", "category", Good.NEUTRAL,
                "Industry: {value}", categorical=True, role=ctx, label="industry"),
        Feature("region", c, "Sales region.", "category", Good.NEUTRAL, "Region: {value}",
                categorical=True, role=ctx, label="region"),
    ]  # fmt: skip


def _terms_on(known: pd.DataFrame, day: pd.Series) -> pd.DataFrame:
    keys = [Col.ACCOUNT_ID, Col.AS_OF]
    rows = known[covering(known, day)]
    return (
        rows.sort_values(Col.START_DATE, kind="stable")
        .groupby(keys)
        .agg(mrr=(Col.MRR, "sum"), seats=(Col.SEATS, "sum"), plan=(Col.PLAN, "last"))
    )


def _next_anniversary(first: pd.Series, as_of: pd.Series) -> pd.Series:
    """Days from as_of to the next anniversary (same month, day capped at 28) of `first`."""
    ok = first.notna()
    parts = pd.DataFrame(
        {"year": as_of.dt.year, "month": first.dt.month.fillna(1).astype(int),
         "day": first.dt.day.fillna(1).clip(upper=28).astype(int)}
    )  # fmt: skip
    ann = pd.to_datetime(parts)
    ann = ann.where(ann >= as_of, ann + pd.DateOffset(years=1))
    return days_between(ann, as_of).where(ok)


def commercial_features(
    grid: pd.DataFrame, subs: pd.DataFrame, accounts: pd.DataFrame
) -> pd.DataFrame:
    """Commercial features per grid row."""
    keys = [Col.ACCOUNT_ID, Col.AS_OF]
    known = records_before(grid, subs, Col.START_DATE)
    day_before = known[Col.AS_OF] - pd.Timedelta(days=1)
    now = _terms_on(known, day_before)
    then = _terms_on(known, day_before - pd.Timedelta(days=90))
    g = known.groupby(keys)
    recent = known[known[Col.START_DATE] >= known[Col.AS_OF] - pd.Timedelta(days=365)]
    agg = pd.DataFrame(
        {
            "mrr_usd": now["mrr"],
            "mrr_then": then["mrr"],
            SEATS: now["seats"],
            "seats_then": then["seats"],
            "plan": now["plan"],
            "first_start": g[Col.START_DATE].min(),
            "changes": recent.groupby(keys).size(),
        }
    )
    out = per_snapshot(grid, agg).set_index(grid.index)
    acc = accounts.set_index(Col.ACCOUNT_ID)
    info = acc.reindex(grid[Col.ACCOUNT_ID]).set_index(grid.index)
    as_of = grid[Col.AS_OF]
    start = pd.concat([out["first_start"], info[Col.CREATED_AT]], axis=1).min(axis=1)
    start = start.where(start < as_of)
    res = pd.DataFrame(index=grid.index)
    res["tenure_days"] = days_between(as_of, start)
    res["mrr_usd"] = out["mrr_usd"].astype(float)
    res["mrr_change_90d"] = out["mrr_usd"] / out["mrr_then"].where(out["mrr_then"] > 0) - 1
    res[SEATS] = out[SEATS].astype(float)
    res["seat_change_90d"] = out[SEATS] / out["seats_then"].where(out["seats_then"] > 0) - 1
    res["days_to_renewal"] = _next_anniversary(out["first_start"], as_of)
    res["subscription_changes_365d"] = out["changes"].fillna(0).astype(float)
    res["has_csm"] = info[Col.CSM_ID].notna().astype(float)
    res["plan"] = out["plan"].astype("str").where(out["plan"].notna())
    for col, src in (("segment", Col.SEGMENT), ("industry", Col.INDUSTRY), ("region", Col.REGION)):
        res[col] = info[src].astype("str").where(info[src].notna())
    floats = [f.name for f in commercial_features_meta() if not f.categorical]
    res[floats] = res[floats].astype("float64").replace([np.inf, -np.inf], np.nan)
    return res[[f.name for f in commercial_features_meta()]]
