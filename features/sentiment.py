"""Sentiment family: NPS level, mix, trend, recency and response rate."""

from __future__ import annotations

import pandas as pd

from features.calendar import days_between, per_snapshot, records_before
from features.contract import Col
from features.meta import Family, Feature, Good, last_days

PROMOTER_MIN = 9
DETRACTOR_MAX = 6


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


def sentiment_features(
    grid: pd.DataFrame, nps: pd.DataFrame, seats: pd.Series, days: int
) -> pd.DataFrame:
    """Sentiment features per grid row from responses strictly before as_of."""
    keys = [Col.ACCOUNT_ID, Col.AS_OF]
    half = days // 2
    past = records_before(grid, nps, Col.RESPONDED_AT)
    age = days_between(past[Col.AS_OF], past[Col.RESPONDED_AT])
    last = past.sort_values(Col.RESPONDED_AT, kind="stable").groupby(keys)[Col.SCORE].last()
    win = past[age <= days].assign(age=age)
    score = win[Col.SCORE].astype(float)
    w = win.assign(
        det=(score <= DETRACTOR_MAX).astype(float),
        pro=(score >= PROMOTER_MIN).astype(float),
        new=score.where(win["age"] <= half),
        old=score.where(win["age"] > half),
        score=score,
    ).groupby(keys)
    agg = pd.DataFrame(
        {
            "nps_last": last.astype(float),
            f"nps_mean_{days}d": w["score"].mean(),
            f"nps_{days}d": (w["pro"].mean() - w["det"].mean()) * 100,
            f"detractor_share_{days}d": w["det"].mean(),
            f"promoter_share_{days}d": w["pro"].mean(),
            f"nps_trend_{half}d": w["new"].mean() - w["old"].mean(),
            "days_since_last_nps": age.groupby([past[k] for k in keys]).min(),
            f"nps_responses_{days}d": w.size(),
            "_respondents": w[Col.USER_ID].nunique(),
        }
    )
    out = per_snapshot(grid, agg).set_index(grid.index)
    out[f"nps_responses_{days}d"] = out[f"nps_responses_{days}d"].fillna(0)
    out[f"nps_response_rate_{days}d"] = out["_respondents"].fillna(0) / seats.where(seats > 0)
    return out[[f.name for f in sentiment_features_meta(days)]].astype("float64")
