"""Sentiment family: NPS level, mix, trend, recency and response rate.

Aggregated in DuckDB SQL: each snapshot (account_id, as_of) is joined with the
account's responses strictly before as_of and reduced there, so pandas only sees
one row per snapshot. The latest response is the last by (responded_at, input row).
"""

from __future__ import annotations

import duckdb
import pandas as pd

from features.contract import Col
from features.engine import Engine
from features.meta import Family, Feature, Good, last_days
from features.sql import aligned, days_between_sql, numbered, registered, snapshot_rows

PROMOTER_MIN = 9
DETRACTOR_MAX = 6
_NPS_COLUMNS = (Col.ACCOUNT_ID, Col.USER_ID, Col.RESPONDED_AT, Col.SCORE)


def sentiment_features_meta(days: int) -> list[Feature]:
    """The sentiment features over the configured window."""
    s = Family.SENTIMENT
    half = days // 2
    ld, lh = last_days(days), last_days(half)
    return [
        Feature("nps_last", s, "Score of the latest NPS response.", "score 0-10", Good.HIGHER,
                "Latest NPS response scored {value}", min_value=0, max_value=10,
                label="latest NPS score"),
        Feature(f"nps_mean_{days}d", s, f"Mean NPS score over {days} days.", "score 0-10",
                Good.HIGHER, f"NPS responses average {{value}} over {ld}",
                min_value=0, max_value=10, label=f"mean NPS score over {ld}", decimals=1),
        Feature(f"nps_{days}d", s, f"Net Promoter Score over {days} days (promoters - detractors).",
                "NPS points", Good.HIGHER, f"Net Promoter Score is {{value}} over {ld}",
                min_value=-100, max_value=100, label=f"Net Promoter Score over {ld}"),
        Feature(f"detractor_share_{days}d", s, f"Share of detractors (0-6) over {days} days.",
                "ratio", Good.LOWER, f"{{value}} of survey respondents in {ld} are detractors",
                min_value=0, max_value=1, label=f"share of detractors over {ld}"),
        Feature(f"promoter_share_{days}d", s, f"Share of promoters (9-10) over {days} days.",
                "ratio", Good.HIGHER, f"{{value}} of survey respondents in {ld} are promoters",
                min_value=0, max_value=1, label=f"share of promoters over {ld}"),
        Feature(f"nps_trend_{half}d", s,
                f"Mean score of the last {half} days minus the {half} days before.", "points",
                Good.HIGHER, f"Mean NPS score {{trend}} over {lh}",
                min_value=-10, max_value=10, label=f"mean NPS score change over {lh}",
                noun="point", decimals=1),
        Feature("days_since_last_nps", s, "Days since the latest NPS response.", "days",
                Good.LOWER, "No NPS response for {amount}", min_value=0,
                label="days since the latest NPS response", noun="day"),
        Feature(f"nps_responses_{days}d", s, f"NPS responses over {days} days.", "responses",
                Good.HIGHER, f"{{amount}} in {ld}", min_value=0,
                label=f"NPS responses in {ld}", noun="NPS response"),
        Feature(f"nps_response_rate_{days}d", s,
                f"Distinct respondents over {days} days per seat.", "ratio", Good.HIGHER,
                f"{{value}} of seats answered an NPS survey in {ld}", min_value=0,
                label=f"NPS response rate per seat over {ld}"),
    ]  # fmt: skip


# `ranked` numbers each account's responses by (responded_at, input row): the latest
# response before as_of is the one with the highest number among those before it
# (pandas' stable sort: of equal timestamps, the row later in the input). {age}: days
# from responded_at to as_of.
_SQL = """
WITH snaps AS (
  SELECT DISTINCT account_id, as_of FROM sentiment_grid
), ranked AS (
  SELECT account_id, user_id, responded_at, score,
    row_number() OVER (PARTITION BY account_id ORDER BY responded_at, _row) AS rn
  FROM sentiment_nps
  WHERE responded_at IS NOT NULL
), past AS (
  SELECT s.account_id, s.as_of, r.user_id, r.score, r.rn, {age} AS age
  FROM snaps s JOIN ranked r
    ON r.account_id = s.account_id AND r.responded_at < s.as_of
), agg AS (
  SELECT account_id, as_of,
    max(CASE WHEN score IS NOT NULL THEN rn END) AS last_rn,
    avg(CASE WHEN age <= {days} THEN CAST(score AS DOUBLE) END) AS score_mean,
    avg(CASE WHEN age <= {days} THEN (CASE WHEN score <= {det} THEN 1 ELSE 0 END) END)
      AS detractors,
    avg(CASE WHEN age <= {days} THEN (CASE WHEN score >= {pro} THEN 1 ELSE 0 END) END)
      AS promoters,
    avg(CASE WHEN age <= {half} THEN CAST(score AS DOUBLE) END) AS new_mean,
    avg(CASE WHEN age <= {days} AND age > {half} THEN CAST(score AS DOUBLE) END) AS old_mean,
    min(age) AS days_since,
    sum(CASE WHEN age <= {days} THEN 1 ELSE 0 END) AS responses,
    count(DISTINCT CASE WHEN age <= {days} THEN user_id END) AS respondents
  FROM past
  GROUP BY account_id, as_of
)
SELECT g._row,
  CAST(r.score AS DOUBLE) AS nps_last,
  CAST(a.score_mean AS DOUBLE) AS score_mean,
  CAST((a.promoters - a.detractors) * 100 AS DOUBLE) AS nps,
  CAST(a.detractors AS DOUBLE) AS detractors,
  CAST(a.promoters AS DOUBLE) AS promoters,
  CAST(a.new_mean - a.old_mean AS DOUBLE) AS trend,
  CAST(a.days_since AS DOUBLE) AS days_since,
  CAST(coalesce(a.responses, 0) AS DOUBLE) AS responses,
  CAST(coalesce(a.respondents, 0) AS DOUBLE) AS respondents
FROM sentiment_grid g
LEFT JOIN agg a ON a.account_id = g.account_id AND a.as_of = g.as_of
LEFT JOIN ranked r ON r.account_id = a.account_id AND r.rn = a.last_rn
ORDER BY g._row
"""


def sentiment_sql(days: int) -> str:
    """The sentiment query over views `sentiment_grid` and `sentiment_nps`."""
    return _SQL.format(
        age=days_between_sql("s.as_of", "r.responded_at"),
        days=days,
        half=days // 2,
        det=DETRACTOR_MAX,
        pro=PROMOTER_MIN,
    )


def sentiment_features(
    grid: pd.DataFrame,
    nps: pd.DataFrame,
    seats: pd.Series,
    days: int,
    con: Engine | duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Sentiment features per grid row from responses strictly before as_of.

    Runs in DuckDB on `con` (a private connection when None).
    """
    half = days // 2
    frames = {"sentiment_grid": snapshot_rows(grid), "sentiment_nps": numbered(nps, _NPS_COLUMNS)}
    with registered(con, frames) as c:
        raw = aligned(c.frame(sentiment_sql(days)), grid)
    out = raw.rename(
        columns={
            "score_mean": f"nps_mean_{days}d",
            "nps": f"nps_{days}d",
            "detractors": f"detractor_share_{days}d",
            "promoters": f"promoter_share_{days}d",
            "trend": f"nps_trend_{half}d",
            "days_since": "days_since_last_nps",
            "responses": f"nps_responses_{days}d",
        }
    )
    out[f"nps_response_rate_{days}d"] = out["respondents"] / seats.where(seats > 0)
    return out[[f.name for f in sentiment_features_meta(days)]].astype("float64")
