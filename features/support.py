"""Support family: ticket volume, backlog, severity, resolution speed and CSAT.

Aggregated in DuckDB SQL: each snapshot (account_id, as_of) is joined with the
account's tickets created strictly before as_of and reduced there, so pandas only
sees one row per snapshot.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from features.contract import Col, Priority
from features.engine import Engine
from features.meta import Family, Feature, Good, last_days
from features.settings import Windows
from features.sql import aligned, days_between_sql, numbered, registered, snapshot_rows

_SEVERE = (Priority.HIGH.value, Priority.URGENT.value)
_TICKET_COLUMNS = (Col.ACCOUNT_ID, Col.CREATED_AT, Col.RESOLVED_AT, Col.PRIORITY, Col.CSAT,
                   Col.ESCALATED)  # fmt: skip


def support_features_meta(w: Windows) -> list[Feature]:
    """The support features for the configured windows."""
    m, lg = w.medium, w.long
    lm, ll = last_days(m), last_days(lg)
    s = Family.SUPPORT
    return [
        Feature(f"tickets_{m}d", s, f"Tickets opened in the last {m} days.", "tickets",
                Good.NEUTRAL, f"{{amount}} opened in {lm}", min_value=0,
                label=f"tickets opened in {lm}", noun="support ticket"),
        Feature(f"tickets_{lg}d", s, f"Tickets opened in the last {lg} days.", "tickets",
                Good.NEUTRAL, f"{{amount}} opened in {ll}", min_value=0,
                label=f"tickets opened in {ll}", noun="support ticket"),
        Feature("open_tickets", s, "Tickets open at as_of (any age).", "tickets", Good.LOWER,
                "{amount} still open", min_value=0, label="open tickets", noun="support ticket"),
        Feature(f"severe_ticket_share_{lg}d", s,
                f"Share of high/urgent tickets among those opened in the last {lg} days.",
                "ratio", Good.LOWER, f"{{value}} of tickets opened in {ll} were high or urgent",
                min_value=0, max_value=1, label=f"share of high or urgent tickets in {ll}"),
        Feature(f"median_resolution_hours_{lg}d", s,
                f"Median hours to resolve tickets opened in the last {lg} days.", "hours",
                Good.LOWER, f"Tickets opened in {ll} took a median {{amount}} to resolve",
                min_value=0, label=f"median hours to resolve a ticket in {ll}", noun="hour"),
        Feature(f"escalations_{lg}d", s, f"Escalated tickets opened in the last {lg} days.",
                "tickets", Good.LOWER, f"{{amount}} in {ll}", min_value=0,
                label=f"escalated tickets in {ll}", noun="escalated ticket"),
        Feature(f"csat_mean_{lg}d", s, f"Mean CSAT of tickets opened in the last {lg} days.",
                "score 1-5", Good.HIGHER, f"CSAT averages {{value}} over {ll}",
                min_value=1, max_value=5, label=f"mean CSAT over {ll}", decimals=1),
        Feature(f"tickets_per_seat_{lg}d", s, f"Tickets in the last {lg} days per seat.",
                "tickets/seat", Good.NEUTRAL, f"{{amount}} in {ll}", min_value=0,
                label=f"tickets per seat in {ll}", noun="ticket per seat",
                plural="tickets per seat", decimals=2),
        Feature("days_since_last_ticket", s, "Days since the last ticket was opened.", "days",
                Good.NEUTRAL, "Last support ticket opened {amount} ago", min_value=0,
                label="days since the last ticket", noun="day"),
    ]  # fmt: skip


# {age}: days from created_at to as_of; {hours}: hours from created_at to resolved_at.
# A ticket counts in the long window when age <= long, as it did in pandas.
_SQL = """
WITH snaps AS (
  SELECT DISTINCT account_id, as_of FROM support_grid
), past AS (
  SELECT s.account_id, s.as_of, t.resolved_at, t.priority, t.csat, t.escalated,
         {age} AS age, {hours} AS hours
  FROM snaps s JOIN support_tickets t
    ON t.account_id = s.account_id AND t.created_at < s.as_of
), agg AS (
  SELECT account_id, as_of,
    sum(CASE WHEN age <= {medium} THEN 1 ELSE 0 END) AS tickets_medium,
    sum(CASE WHEN age <= {long} THEN 1 ELSE 0 END) AS tickets_long,
    sum(CASE WHEN resolved_at IS NULL OR resolved_at >= as_of THEN 1 ELSE 0 END) AS open_tickets,
    avg(CASE WHEN age <= {long} THEN (CASE WHEN priority IN ({severe}) THEN 1 ELSE 0 END) END)
      AS severe_share,
    median(CASE WHEN age <= {long} AND resolved_at < as_of THEN hours END) AS median_hours,
    sum(CASE WHEN age <= {long} THEN (CASE WHEN escalated THEN 1 ELSE 0 END) END) AS escalations,
    avg(CASE WHEN age <= {long} AND resolved_at < as_of THEN CAST(csat AS DOUBLE) END)
      AS csat_mean,
    min(age) AS days_since
  FROM past
  GROUP BY account_id, as_of
)
SELECT g._row,
  CAST(coalesce(a.tickets_medium, 0) AS DOUBLE) AS tickets_medium,
  CAST(coalesce(a.tickets_long, 0) AS DOUBLE) AS tickets_long,
  CAST(coalesce(a.open_tickets, 0) AS DOUBLE) AS open_tickets,
  CAST(a.severe_share AS DOUBLE) AS severe_share,
  CAST(a.median_hours AS DOUBLE) AS median_hours,
  CAST(coalesce(a.escalations, 0) AS DOUBLE) AS escalations,
  CAST(a.csat_mean AS DOUBLE) AS csat_mean,
  CAST(a.days_since AS DOUBLE) AS days_since
FROM support_grid g
LEFT JOIN agg a ON a.account_id = g.account_id AND a.as_of = g.as_of
ORDER BY g._row
"""


def support_sql(w: Windows) -> str:
    """The support query over views `support_grid` and `support_tickets`."""
    return _SQL.format(
        age=days_between_sql("s.as_of", "t.created_at"),
        hours=f"{days_between_sql('t.resolved_at', 't.created_at')} * 24",
        medium=w.medium,
        long=w.long,
        severe=", ".join(f"'{p}'" for p in _SEVERE),
    )


def support_features(
    grid: pd.DataFrame,
    tickets: pd.DataFrame,
    seats: pd.Series,
    w: Windows,
    con: Engine | duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Support features per grid row; `seats` (aligned with grid) scales the volume.

    Runs in DuckDB on `con` (a private connection when None).
    """
    m, lg = w.medium, w.long
    frames = {"support_grid": snapshot_rows(grid),
              "support_tickets": numbered(tickets, _TICKET_COLUMNS)}  # fmt: skip
    with registered(con, frames) as c:
        raw = aligned(c.frame(support_sql(w)), grid)
    out = raw.rename(
        columns={
            "tickets_medium": f"tickets_{m}d",
            "tickets_long": f"tickets_{lg}d",
            "severe_share": f"severe_ticket_share_{lg}d",
            "median_hours": f"median_resolution_hours_{lg}d",
            "escalations": f"escalations_{lg}d",
            "csat_mean": f"csat_mean_{lg}d",
            "days_since": "days_since_last_ticket",
        }
    )
    out[f"tickets_per_seat_{lg}d"] = out[f"tickets_{lg}d"] / seats.where(seats > 0)
    return out[[f.name for f in support_features_meta(w)]].astype("float64")
