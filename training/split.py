"""Time-based split of the snapshot table: train, validation, test (never random rows)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.contract import Col


@dataclass(frozen=True)
class TimeSplit:
    """Row masks of the three slices and the as_of dates that bound them."""

    train: pd.Series
    valid: pd.Series
    test: pd.Series
    valid_start: pd.Timestamp
    test_start: pd.Timestamp

    def describe(self) -> dict[str, int | str]:
        return {
            "train_rows": int(self.train.sum()),
            "valid_rows": int(self.valid.sum()),
            "test_rows": int(self.test.sum()),
            "valid_start": self.valid_start.date().isoformat(),
            "test_start": self.test_start.date().isoformat(),
        }


def time_split(
    df: pd.DataFrame, label: str, valid_periods: int, test_periods: int, horizon_days: int,
    purge: bool = True,
) -> TimeSplit:  # fmt: skip
    """Latest labelled as_of dates for test, the ones before for validation, the rest train.

    With `purge`, a row whose label window (as_of, as_of + horizon] reaches into
    the next slice is dropped, so no outcome seen in training is tested on.
    """
    labelled = df[label].notna()
    dates = sorted(df.loc[labelled, Col.AS_OF].unique())
    horizon = pd.Timedelta(days=horizon_days)
    if len(dates) < test_periods + valid_periods + 1:
        raise ValueError(
            f"{label}: only {len(dates)} labelled as_of dates; need more than "
            f"valid_periods + test_periods = {valid_periods + test_periods}"
        )
    test_start = pd.Timestamp(dates[-test_periods])
    before_test = [d for d in dates if (d + horizon <= test_start or not purge) and d < test_start]
    if len(before_test) < valid_periods + 1:
        raise ValueError(
            f"{label}: too few labelled dates before the test slice {test_start.date()}"
        )
    valid_start = pd.Timestamp(before_test[-valid_periods])
    as_of = df[Col.AS_OF]
    test = labelled & (as_of >= test_start)
    valid = labelled & (as_of >= valid_start) & (as_of < test_start)
    train = labelled & (as_of < valid_start)
    if purge:
        valid &= as_of + horizon <= test_start
        train &= as_of + horizon <= valid_start
    if not train.any():
        raise ValueError(f"{label}: no training rows left before {valid_start.date()}")
    return TimeSplit(train, valid, test, valid_start, test_start)
