"""Subscription end dates: which convention a source uses, and one meaning inside.

Billing sources differ: some write a term's last day of service (`inclusive`),
others the first day without service, i.e. the next term's start (`exclusive`,
Stripe-style). The convention is detected from the data (or set in params.yaml)
and normalised once at load time to inclusive, so that the population, the
labels and the commercial features read `end_date` one way only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Literal

import pandas as pd

from features.contract import Col

log = logging.getLogger(__name__)

INCLUSIVE: Final = "inclusive"
EXCLUSIVE: Final = "exclusive"
AUTO: Final = "auto"
EndDateConvention = Literal["inclusive", "exclusive"]
#: what params.yaml may say: a convention, or "auto" to detect it
EndDateSetting = Literal["auto", "inclusive", "exclusive"]
_ONE_DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Votes:
    """How many terms point to each convention, out of how many compared."""

    exclusive: int
    inclusive: int
    compared: int

    @property
    def winner(self) -> EndDateConvention | None:
        """The strict majority, None on a tie or without votes."""
        if self.exclusive == self.inclusive:
            return None
        return EXCLUSIVE if self.exclusive > self.inclusive else INCLUSIVE


def _days(later: pd.Series, earlier: pd.Series) -> pd.Series:
    """Whole calendar days from `earlier` to `later`."""
    return (later.dt.normalize() - earlier.dt.normalize()).dt.days


def consecutive_votes(subs: pd.DataFrame) -> Votes:
    """Consecutive terms of one account: touching (gap 0) is exclusive, a 1-day gap inclusive."""
    terms = subs[[Col.ACCOUNT_ID, Col.START_DATE, Col.END_DATE]].dropna(
        subset=[Col.ACCOUNT_ID, Col.START_DATE]
    )
    terms = terms.sort_values([Col.ACCOUNT_ID, Col.START_DATE], kind="stable")
    next_start = terms.groupby(Col.ACCOUNT_ID, sort=False)[Col.START_DATE].shift(-1)
    pair = terms[Col.END_DATE].notna() & next_start.notna()
    gap = _days(next_start[pair], terms.loc[pair, Col.END_DATE])
    # Other gaps (a lapse, overlapping add-ons) say nothing about the convention.
    return Votes(int((gap == 0).sum()), int((gap == 1).sum()), int(pair.sum()))


def day_of_month_votes(subs: pd.DataFrame) -> Votes:
    """Ended terms: ending on the start's day of month is exclusive, the day before inclusive."""
    terms = subs[[Col.START_DATE, Col.END_DATE]].dropna()
    start, end = terms[Col.START_DATE].dt.normalize(), terms[Col.END_DATE].dt.normalize()
    longer = end > start  # a one-day (or inverted) term ends on its own start day: no vote
    same_day = longer & (end.dt.day == start.dt.day)
    day_before = longer & ((end + _ONE_DAY).dt.day == start.dt.day)
    return Votes(int(same_day.sum()), int(day_before.sum()), int(longer.sum()))


def _consecutive_sentence(votes: Votes) -> str:
    conv = votes.winner
    if conv == EXCLUSIVE:
        other = f", {votes.inclusive} start a day later" if votes.inclusive else ""
        return (
            f"exclusive: {votes.exclusive} of {votes.compared} consecutive terms touch "
            f"(end = next start){other}"
        )
    other = f", {votes.exclusive} touch" if votes.exclusive else ""
    return (
        f"inclusive: {votes.inclusive} of {votes.compared} consecutive terms start the day "
        f"after the previous end{other}"
    )


def _why_no_pairs(votes: Votes) -> str:
    """Why consecutive terms did not decide (no pairs, no telling gaps, or a tie)."""
    if votes.compared == 0:
        return "no consecutive terms to compare"
    if votes.winner is None and votes.exclusive:
        return (
            f"consecutive terms are split ({votes.exclusive} touch, {votes.inclusive} start "
            f"a day later)"
        )
    return f"none of {votes.compared} consecutive terms touch or start a day later"


def _detect(subs: pd.DataFrame) -> tuple[EndDateConvention, str, bool]:
    """Convention, evidence sentence, and whether the data decided it (False: assumed)."""
    pairs = consecutive_votes(subs)
    if pairs.winner is not None:
        return pairs.winner, _consecutive_sentence(pairs), True
    days = day_of_month_votes(subs)
    why = _why_no_pairs(pairs)
    if days.winner == EXCLUSIVE:
        ends = f"{days.exclusive} of {days.compared} ended terms end on their start's day of month"
        return EXCLUSIVE, f"exclusive: {why}; {ends}", True
    if days.winner == INCLUSIVE:
        ends = (
            f"{days.inclusive} of {days.compared} ended terms end the day before their "
            f"start's day of month"
        )
        return INCLUSIVE, f"inclusive: {why}; {ends}", True
    ends = "no majority of ended terms ends on or the day before their start's day of month"
    return INCLUSIVE, f"inclusive (assumed): {why}, and {ends}", False


def detect_end_date_convention(subs: pd.DataFrame) -> tuple[EndDateConvention, str]:
    """The end-date convention of `subs` by majority vote, and one sentence of evidence.

    Consecutive terms of one account (sorted by start_date) vote first: end = next
    start is exclusive, next start = end + 1 day inclusive. Without a majority there,
    ended terms vote by day of month (2024-03-15 -> 2025-03-15 exclusive, -> 2025-03-14
    inclusive). Without any evidence: inclusive, marked "(assumed)".
    """
    convention, evidence, _ = _detect(subs)
    return convention, evidence


def resolve_end_date_convention(
    subs: pd.DataFrame, setting: EndDateSetting
) -> tuple[EndDateConvention, str]:
    """The convention to use: `setting` when explicit, else detected; with its evidence."""
    detected, evidence, decided = _detect(subs)
    if setting == AUTO:
        log.info("subscriptions.end_date: %s", evidence)
        return detected, evidence
    if decided and detected != setting:
        # An explicit setting wins, but a contradiction is worth a look.
        log.warning(
            "subscriptions.end_date is set to %s in params.yaml, but the data suggests %s",
            setting, evidence,
        )  # fmt: skip
    return setting, f"{setting}: set in params.yaml (features.end_date_convention)"


def to_inclusive(subs: pd.DataFrame, convention: EndDateConvention) -> pd.DataFrame:
    """`subs` with end_date as the last day of service (a new frame; `subs` is untouched)."""
    if convention == INCLUSIVE:
        return subs
    return subs.assign(**{Col.END_DATE: subs[Col.END_DATE] - _ONE_DAY})
