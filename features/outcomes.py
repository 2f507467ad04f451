"""Outcomes family: are the customer's stated goals on track, achieved, overdue?

Progress of a goal = (last measured value - baseline) / (target - baseline), using
the last measurement strictly before as_of; it works for both directions since
target - baseline carries the sign. On track = progress >= share of the goal's
time elapsed.

Aggregated in DuckDB SQL: each snapshot (account_id, as_of) is joined with the
account's goals set before as_of, each goal with its last measurement before as_of
(by measured_at, then input row), and reduced there; pandas sees one row per snapshot.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from features.contract import Col
from features.engine import Engine
from features.meta import Family, Feature, Good
from features.sql import aligned, days_between_sql, numbered, registered, snapshot_rows

_GOAL_COLUMNS = (Col.OUTCOME_ID, Col.ACCOUNT_ID, Col.BASELINE, Col.TARGET, Col.START_DATE,
                 Col.DUE_DATE)  # fmt: skip
_MEASUREMENT_COLUMNS = (Col.OUTCOME_ID, Col.MEASURED_AT, Col.VALUE)


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


# A measurement is a goal's latest before as_of when measured_at < as_of <= the time
# of the goal's next measurement (ordered by measured_at, then input row): one per goal,
# and of equal timestamps the row later in the input, as pandas' merge_asof picked.
# Spans of zero give no progress / elapsed share (NULL), as NaN did in pandas.
_SQL = """
WITH snaps AS (
  SELECT DISTINCT account_id, as_of FROM outcomes_grid
), meas AS (
  SELECT outcome_id, measured_at, value,
    lead(measured_at) OVER (PARTITION BY outcome_id ORDER BY measured_at, _row) AS next_at
  FROM outcomes_measurements
  WHERE measured_at IS NOT NULL
), goals AS (
  SELECT s.account_id, s.as_of, o.outcome_id, o.baseline, o.target, o.start_date, o.due_date
  FROM snaps s JOIN outcomes_goals o
    ON o.account_id = s.account_id AND o.start_date < s.as_of
), measured AS (
  SELECT g.account_id, g.as_of, g.due_date, m.measured_at,
    (m.value - g.baseline) / NULLIF(g.target - g.baseline, 0) AS progress,
    {elapsed} / NULLIF({duration}, 0) AS elapsed,
    CASE WHEN g.due_date >= g.as_of THEN 1 ELSE 0 END AS active
  FROM goals g LEFT JOIN meas m
    ON m.outcome_id = g.outcome_id AND m.measured_at < g.as_of
   AND (m.next_at IS NULL OR m.next_at >= g.as_of)
), scored AS (
  SELECT account_id, as_of, measured_at, progress, active,
    CASE WHEN elapsed < 0 THEN 0 WHEN elapsed > 1 THEN 1 ELSE elapsed END AS elapsed
  FROM measured
), agg AS (
  SELECT account_id, as_of,
    sum(active) AS active_goals,
    avg(CASE WHEN active = 1 AND progress IS NOT NULL
             THEN (CASE WHEN progress >= elapsed THEN 1 ELSE 0 END) END) AS on_track,
    avg(CASE WHEN progress IS NOT NULL THEN (CASE WHEN progress >= 1 THEN 1 ELSE 0 END) END)
      AS achieved,
    sum(CASE WHEN active = 1 THEN 0 WHEN progress >= 1 THEN 0 ELSE 1 END) AS overdue,
    avg(CASE WHEN active = 1 THEN progress END) AS mean_progress,
    min({since}) AS days_since
  FROM scored
  GROUP BY account_id, as_of
)
SELECT g._row,
  CAST(coalesce(a.active_goals, 0) AS DOUBLE) AS active_goals,
  CAST(a.on_track AS DOUBLE) AS goals_on_track_share,
  CAST(a.achieved AS DOUBLE) AS goals_achieved_share,
  CAST(coalesce(a.overdue, 0) AS DOUBLE) AS overdue_unmet_goals,
  CAST(a.mean_progress AS DOUBLE) AS mean_goal_progress,
  CAST(a.days_since AS DOUBLE) AS days_since_last_measurement
FROM outcomes_grid g
LEFT JOIN agg a ON a.account_id = g.account_id AND a.as_of = g.as_of
ORDER BY g._row
"""


def outcomes_sql() -> str:
    """The outcomes query over views `outcomes_grid`, `outcomes_goals`, `outcomes_measurements`."""
    return _SQL.format(
        elapsed=days_between_sql("g.as_of", "g.start_date"),
        duration=days_between_sql("g.due_date", "g.start_date"),
        since=days_between_sql("as_of", "measured_at"),
    )


def outcomes_features(
    grid: pd.DataFrame,
    outcomes: pd.DataFrame,
    measurements: pd.DataFrame,
    con: Engine | duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Outcome features per grid row, from goals set and measured before as_of.

    Runs in DuckDB on `con` (a private connection when None).
    """
    frames = {
        "outcomes_grid": snapshot_rows(grid),
        "outcomes_goals": numbered(outcomes, _GOAL_COLUMNS),
        "outcomes_measurements": numbered(measurements, _MEASUREMENT_COLUMNS),
    }
    with registered(con, frames) as c:
        out = aligned(c.frame(outcomes_sql()), grid)
    return out[[f.name for f in outcomes_features_meta()]].astype("float64")
