"""Sentiment family: NPS level, mix, trend, recency and response rate."""

from __future__ import annotations

import pandas as pd

from features.calendar import days_between, per_snapshot, records_before
from features.contract import Col
from features.meta import Family, Feature, Good

PROMOTER_MIN = 9
DETRACTOR_MAX = 6


def sentiment_features_meta(days: int) -> list[Feature]:
    """The sentiment features over the configured window."""
    s = Family.SENTIMENT
    half = days // 2
    return [
        Feature("nps_last", s, "Score of the latest NPS response.", "score 0-10", Good.HIGHER,
                "Latest NPS response scored {value:.0f} / 10", min_value=0, max_value=10),
        Feature(f"nps_mean_{days}d", s, f"Mean NPS score over {days} days.", "score 0-10",
                Good.HIGHER, f"NPS responses average {{value:.1f}} / 10 over {days} days",
                min_value=0, max_value=10),
        Feature(f"nps_{days}d", s, f"Net Promoter Score over {days} days (promoters - detractors).",
                "NPS points", Good.HIGHER, "Net Promoter Score is {value:+.0f}",
                min_value=-100, max_value=100),
        Feature(f"detractor_share_{days}d", s, f"Share of detractors (0-6) over {days} days.",
                "ratio", Good.LOWER, "{value:.0%} of survey respondents are detractors",
                min_value=0, max_value=1),
        Feature(f"promoter_share_{days}d", s, f"Share of promoters (9-10) over {days} days.",
                "ratio", Good.HIGHER, "{value:.0%} of survey respondents are promoters",
                min_value=0, max_value=1),
        Feature(f"nps_trend_{half}d", s,
                f"Mean score of the last {half} days minus the {half} days before.", "points",
                Good.HIGHER, f"NPS moved {{value:+.1f}} points over the last {half} days",
                min_value=-10, max_value=10),
        Feature("days_since_last_nps", s, "Days since the latest NPS response.", "days",
                Good.LOWER, "No NPS response for {value:.0f} days", min_value=0),
        Feature(f"nps_responses_{days}d", s, f"NPS responses over {days} days.", "responses",
                Good.HIGHER, f"{{value:.0f}} NPS responses in {days} days", min_value=0),
        Feature(f"nps_response_rate_{days}d", s,
                f"Distinct respondents over {days} days per seat.", "ratio", Good.HIGHER,
                "Only {value:.0%} of seats answered NPS surveys", min_value=0),
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
