"""The data cutoff, the snapshot calendar and the population at each `as_of`."""

from __future__ import annotations

import logging

import pandas as pd

from features.contract import TABLES, Col, Kind
from features.settings import FeatureParams

log = logging.getLogger(__name__)


def observed_range(
    frames: dict[str, pd.DataFrame], activity: bool = False
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Oldest and newest observed record over the contract's `observed` columns.

    With `activity`, only the timestamp columns (things that happened: events, tickets,
    responses, measurements), not contract dates such as a term's start, which may be
    booked ahead of the activity data.
    """
    lo: list[pd.Timestamp] = []
    hi: list[pd.Timestamp] = []
    for name, df in frames.items():
        for col in TABLES[name].columns:
            if activity and col.kind != Kind.TIMESTAMP:
                continue
            if col.observed and col.name in df.columns and df[col.name].notna().any():
                lo.append(df[col.name].min())
                hi.append(df[col.name].max())
    if not hi:
        raise ValueError("no observed records: cannot derive the data cutoff")
    return min(lo), max(hi)


def scoring_date(cutoff: pd.Timestamp) -> pd.Timestamp:
    """The first midnight after the cutoff: a snapshot there sees every record."""
    return pd.Timestamp(cutoff).normalize() + pd.Timedelta(days=1)


def snapshot_dates(
    data_start: pd.Timestamp,
    cutoff: pd.Timestamp,
    params: FeatureParams,
    activity_end: pd.Timestamp | None = None,
) -> pd.DatetimeIndex:
    """Regular `as_of` dates from the first with enough history to the scoring date.

    The scoring date (the day after the cutoff) is always the last one, so the
    newest snapshot sees all data; its labels are censored. With `activity_end` (the
    newest activity record) before the cutoff, the scoring date follows that instead:
    a contract date later than the activity data (a renewal starting next day) would
    otherwise open empty days in every usage window at scoring, which no training row has.
    """
    end = cutoff if activity_end is None else min(pd.Timestamp(activity_end), cutoff)
    last = pd.Timestamp(params.last_as_of) if params.last_as_of else scoring_date(end)
    earliest = pd.Timestamp(data_start).normalize() + pd.Timedelta(days=params.min_history_days)
    first = pd.Timestamp(params.first_as_of) if params.first_as_of else earliest
    freq = "MS" if params.frequency == "monthly" else "W-MON"
    dates = pd.date_range(first, last, freq=freq)
    if params.first_as_of and (len(dates) == 0 or dates[0] != first):
        dates = dates.insert(0, first)
    if len(dates) == 0 or dates[-1] != last:
        dates = dates.append(pd.DatetimeIndex([last]))
    if first > last:
        raise ValueError(
            f"no snapshot dates: the first as_of {first.date()} is after the last {last.date()} "
            f"(data from {data_start.date()} to {cutoff}; "
            f"min_history_days={params.min_history_days})"
        )
    return pd.DatetimeIndex(dates).astype("datetime64[us]")


def covering(subs: pd.DataFrame, dates: pd.Series) -> pd.Series:
    """Mask of subscription rows (aligned with `dates`) whose term covers that date."""
    return (subs[Col.START_DATE] <= dates) & (
        subs[Col.END_DATE].isna() | (subs[Col.END_DATE] >= dates)
    )


def population(subs: pd.DataFrame, dates: pd.DatetimeIndex) -> pd.DataFrame:
    """(account_id, as_of) for every account with a subscription covering `as_of`."""
    cross = subs[[Col.ACCOUNT_ID, Col.START_DATE, Col.END_DATE]].merge(
        pd.DataFrame({Col.AS_OF: dates}), how="cross"
    )
    active = cross[covering(cross, cross[Col.AS_OF])]
    grid = active[[Col.ACCOUNT_ID, Col.AS_OF]].drop_duplicates()
    return grid.sort_values([Col.AS_OF, Col.ACCOUNT_ID], kind="stable").reset_index(drop=True)


def records_before(
    grid: pd.DataFrame, df: pd.DataFrame, time_col: str, days: int | None = None
) -> pd.DataFrame:
    """Pair each (account_id, as_of) with the account's records strictly before `as_of`.

    With `days`, only records in [as_of - days, as_of). This is the one place the
    point-in-time rule is applied for the pandas families.
    """
    pairs = grid[[Col.ACCOUNT_ID, Col.AS_OF]].merge(df, on=Col.ACCOUNT_ID, how="inner")
    keep = pairs[time_col] < pairs[Col.AS_OF]
    if days is not None:
        keep &= pairs[time_col] >= pairs[Col.AS_OF] - pd.Timedelta(days=days)
    return pairs[keep]


def days_between(later: pd.Series, earlier: pd.Series) -> pd.Series:
    """Whole and fractional days from `earlier` to `later` (float)."""
    return (later - earlier) / pd.Timedelta(days=1)


def per_snapshot(grid: pd.DataFrame, values: pd.DataFrame | pd.Series) -> pd.DataFrame:
    """Align aggregates indexed by (account_id, as_of) to the grid's rows."""
    idx = pd.MultiIndex.from_frame(grid[[Col.ACCOUNT_ID, Col.AS_OF]])
    out = values.reindex(idx)
    return out.to_frame() if isinstance(out, pd.Series) else out
