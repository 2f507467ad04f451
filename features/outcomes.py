"""Outcomes family: are the customer's stated goals on track, achieved, overdue?

Progress of a goal = (last measured value - baseline) / (target - baseline), using
the last measurement strictly before as_of; it works for both directions since
target - baseline carries the sign. On track = progress >= share of the goal's
time elapsed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.calendar import days_between, per_snapshot, records_before
from features.contract import Col
from features.meta import Family, Feature, Good


def outcomes_features_meta() -> list[Feature]:
    """The outcome-attainment features."""
    o = Family.OUTCOMES
    return [
        Feature("active_goals", o, "Goals set and not yet due.", "goals", Good.HIGHER,
                "{amount} in progress", min_value=0, label="active customer goals",
                noun="customer goal"),
        Feature("goals_on_track_share", o,
                "Share of measured active goals whose progress keeps pace with time elapsed.",
                "ratio", Good.HIGHER, "{value} of measured active goals are on track",
                min_value=0, max_value=1, label="share of active goals on track"),
        Feature("goals_achieved_share", o, "Share of measured goals that reached target.",
                "ratio", Good.HIGHER, "{value} of measured goals have reached their target",
                min_value=0, max_value=1, label="share of goals that reached their target"),
        Feature("overdue_unmet_goals", o, "Goals past due without reaching target.", "goals",
                Good.LOWER, "{amount} {is|are} overdue and unmet", min_value=0,
                label="overdue unmet goals", noun="customer goal"),
        Feature("mean_goal_progress", o, "Mean progress towards target of active goals.",
                "ratio", Good.HIGHER, "Active goals are on average {value} of the way to target",
                label="mean progress of active goals"),
        Feature("days_since_last_measurement", o, "Days since any goal was last measured.",
                "days", Good.LOWER, "Goals not measured for {amount}", min_value=0,
                label="days since a goal was last measured", noun="day"),
    ]  # fmt: skip


def outcomes_features(
    grid: pd.DataFrame, outcomes: pd.DataFrame, measurements: pd.DataFrame
) -> pd.DataFrame:
    """Outcome features per grid row, from goals set and measured before as_of."""
    keys = [Col.ACCOUNT_ID, Col.AS_OF]
    goals = records_before(grid, outcomes, Col.START_DATE).sort_values(Col.AS_OF, kind="stable")
    meas = measurements.dropna(subset=[Col.MEASURED_AT]).sort_values(Col.MEASURED_AT)
    goals = pd.merge_asof(
        goals, meas, left_on=Col.AS_OF, right_on=Col.MEASURED_AT, by=Col.OUTCOME_ID,
        allow_exact_matches=False, direction="backward",
    )  # fmt: skip
    span = (goals[Col.TARGET] - goals[Col.BASELINE]).replace(0, np.nan)
    progress = (goals[Col.VALUE] - goals[Col.BASELINE]) / span
    duration = days_between(goals[Col.DUE_DATE], goals[Col.START_DATE]).replace(0, np.nan)
    elapsed = (days_between(goals[Col.AS_OF], goals[Col.START_DATE]) / duration).clip(0, 1)
    active = goals[Col.DUE_DATE] >= goals[Col.AS_OF]
    measured = progress.notna()
    g = goals.assign(
        active=active.astype(int),
        on_track=(progress >= elapsed).astype(float).where(active & measured),
        achieved=(progress >= 1).astype(float).where(measured),
        overdue=(~active & ~(progress >= 1)).astype(int),
        progress=progress.where(active),
        since=days_between(goals[Col.AS_OF], goals[Col.MEASURED_AT]),
    ).groupby(keys)
    agg = pd.DataFrame(
        {
            "active_goals": g["active"].sum(),
            "goals_on_track_share": g["on_track"].mean(),
            "goals_achieved_share": g["achieved"].mean(),
            "overdue_unmet_goals": g["overdue"].sum(),
            "mean_goal_progress": g["progress"].mean(),
            "days_since_last_measurement": g["since"].min(),
        }
    )
    out = per_snapshot(grid, agg).set_index(grid.index)
    out["active_goals"] = out["active_goals"].fillna(0)
    out["overdue_unmet_goals"] = out["overdue_unmet_goals"].fillna(0)
    return out[[f.name for f in outcomes_features_meta()]].astype("float64")
