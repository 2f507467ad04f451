"""A hand-built contract data set for the feature-pipeline tests.

Three accounts, every table, small enough that each feature can be worked out by
hand in the tests:

* A (smb, no CSM, no industry): one term 2023-07-01..2024-02-15, then churns.
* B (mid_market): annual term ending 2024-02-29, renewed 2024-03-01 for a year
  (end date after the cutoff: the contract runs on). Support, NPS and goals live here.
* C (enterprise): term 2023-09-01..2024-02-09, then +20 % MRR from 2024-02-10
  (expansion). Usage and commercial features are worked out on C.

The reference snapshot for the hand computations is X = 2024-04-01.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from features.contract import Col, T
from features.settings import FeatureParams, Windows

X = pd.Timestamp("2024-04-01")
CUTOFF = dt.datetime(2024, 6, 20, 10, 0)
AS_OFS = pd.DatetimeIndex(
    ["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01", "2024-05-01", "2024-06-01",
     "2024-06-21"]
)  # fmt: skip

#: Fixed calendar: month starts from 2024-01-01, then the scoring date (cutoff + 1 day).
PARAMS = FeatureParams(
    first_as_of=dt.date(2024, 1, 1),
    last_as_of=dt.date(2024, 6, 21),
    cutoff=CUTOFF,
    horizon_days=90,
    windows=Windows(short=7, medium=30, long=90),
    sentiment_window_days=365,
    key_event_types=("workflow_run",),
)


def ts(values: list[str | None]) -> pd.Series:
    return pd.Series(pd.to_datetime(values, format="ISO8601"), dtype="datetime64[us]")


def tables() -> dict[str, pd.DataFrame]:
    """The seven tables as DataFrames (fresh copies on every call)."""
    accounts = pd.DataFrame(
        {
            "account_id": ["A", "B", "C"],
            "name": ["Alpha", "Beta", "Gamma"],
            "segment": ["smb", "mid_market", "enterprise"],
            "industry": [None, "software", "retail"],
            "region": ["emea", "apac", "amer"],
            "created_at": ts(["2023-06-15 10:00", "2023-02-10 09:00", "2023-08-15 12:00"]),
            "csm_id": [None, "csm-1", "csm-9"],
        }
    )
    subscriptions = pd.DataFrame(
        {
            "account_id": ["A", "B", "B", "C", "C"],
            "start_date": ts(
                ["2023-07-01", "2023-03-01", "2024-03-01", "2023-09-01", "2024-02-10"]
            ),
            "end_date": ts(["2024-02-15", "2024-02-29", "2025-02-28", "2024-02-09", None]),
            "mrr": [100.0, 1000.0, 1000.0, 5000.0, 6000.0],
            "seats": [5, 20, 20, 100, 130],
            "plan": ["starter", "growth", "growth", "enterprise", "enterprise"],
        }
    )
    ev = [
        # account C, relative to X = 2024-04-01
        ("C", "u1", "2024-03-31 23:30", "workflow_run"),
        ("C", "u1", "2024-03-29 10:00", "login"),
        ("C", "u8", "2024-03-25 08:00", "report"),  # first day of the 7-day window
        ("C", "u9", "2024-03-24 23:59", "login"),  # outside 7 d, inside 30 d
        ("C", "u2", "2024-03-12 09:00", "report"),
        ("C", "u2", "2024-03-12 09:00", "report"),  # X-20, identical repeat
        ("C", "u3", "2024-03-02 00:00", "login"),  # first day of the 30-day window
        ("C", "u4", "2024-03-01 12:00", "workflow_run"),  # prior 30 d
        ("C", "u2", "2024-02-10 15:00", "login"),  # prior 30 d
        ("C", "u5", "2024-01-02 06:00", "export"),  # first day of the 90-day window
        ("C", "u6", "2024-01-01 09:00", "login"),  # outside every window
        ("C", "u1", "2024-04-01 00:00", "login"),  # at X: not before X
        ("C", "u7", "2024-04-02 10:00", "workflow_run"),  # after X
        ("C", "u1", "2024-06-10 11:00", "login"),
        # accounts A and B
        ("A", "a1", "2024-01-10 09:00", "login"),
        ("A", "a1", "2024-02-05 14:00", "workflow_run"),
        ("B", "b1", "2024-03-20 10:00", "login"),
        ("B", "b2", "2024-03-28 16:00", "report"),
        ("B", "b1", "2024-05-15 09:00", "workflow_run"),
        ("B", "b1", "2024-06-18 09:00", "login"),
    ]
    usage = pd.DataFrame(ev, columns=["account_id", "user_id", "event_time", "event_type"])
    usage["event_time"] = ts(usage["event_time"].tolist())  # no quantity: default 1

    tk = [
        # id, account, created, resolved, priority, csat, escalated
        ("T1", "B", "2024-03-25 09:00", "2024-03-26 09:00", "high", 2, True),
        ("T2", "B", "2024-03-10 10:00", "2024-04-03 10:00", "urgent", 5, False),
        ("T3", "B", "2024-02-20 08:00", "2024-02-20 14:00", "low", 4, False),
        ("T4", "B", "2024-01-02 12:00", "2024-01-03 12:00", "normal", None, True),
        ("T5", "B", "2024-01-01 08:00", None, "urgent", None, False),
        ("T6", "B", "2024-04-01 00:00", "2024-04-01 05:00", "urgent", 1, True),
        ("T7", "B", "2024-03-31 23:00", "2024-04-01 01:00", "normal", None, False),
        ("T8", "C", "2024-03-15 10:00", "2024-03-15 12:00", "normal", 5, False),
        ("T9", "A", "2024-01-20 10:00", None, "low", None, False),
    ]
    tickets = pd.DataFrame(
        {
            "ticket_id": [t[0] for t in tk],
            "account_id": [t[1] for t in tk],
            "created_at": ts([t[2] for t in tk]),
            "resolved_at": ts([t[3] for t in tk]),
            "priority": [t[4] for t in tk],
            "category": "bug",
            "csat": pd.array([t[5] for t in tk], dtype="Int64"),
            "escalated": [t[6] for t in tk],
        }
    )
    nr = [
        ("R1", "B", "b1", "2024-03-20 12:00", 9),
        ("R2", "B", "b2", "2024-02-01 00:00", 4),
        ("R3", "B", "b1", "2023-08-01 00:00", 7),
        ("R4", "B", "b3", "2023-03-01 00:00", 10),
        ("R5", "B", "b2", "2024-04-01 08:00", 0),
        ("R6", "C", "u1", "2024-03-10 10:00", 8),
    ]
    nps = pd.DataFrame(
        {
            "response_id": [r[0] for r in nr],
            "account_id": [r[1] for r in nr],
            "user_id": [r[2] for r in nr],
            "responded_at": ts([r[3] for r in nr]),
            "score": [r[4] for r in nr],
            "comment": [None, "slow", None, None, None, "ok"],
        }
    )
    gl = [
        # id, account, direction, baseline, target, start, due
        ("G1", "B", "increase", 100.0, 200.0, "2024-01-01", "2024-07-01"),
        ("G2", "B", "decrease", 50.0, 30.0, "2023-12-01", "2024-06-01"),
        ("G3", "B", "increase", 0.0, 10.0, "2023-06-01", "2024-01-31"),
        ("G4", "B", "increase", 0.0, 10.0, "2023-06-01", "2024-02-15"),
        ("G5", "B", "increase", 0.0, 10.0, "2024-04-01", "2024-12-31"),
        ("G6", "B", "increase", 0.0, 10.0, "2024-03-01", "2024-09-01"),
        ("G7", "C", "increase", 0.0, 100.0, "2024-01-01", "2024-12-31"),
    ]
    outcomes = pd.DataFrame(
        {
            "outcome_id": [g[0] for g in gl],
            "account_id": [g[1] for g in gl],
            "kpi": "kpi",
            "baseline": [g[3] for g in gl],
            "target": [g[4] for g in gl],
            "direction": [g[2] for g in gl],
            "start_date": ts([g[5] for g in gl]),
            "due_date": ts([g[6] for g in gl]),
        }
    )
    ms = [
        ("G1", "2024-02-01", 130.0),
        ("G1", "2024-03-15", 160.0),
        ("G1", "2024-04-01 00:00", 250.0),  # at X: not before X
        ("G2", "2024-03-01", 42.0),
        ("G3", "2024-01-15", 10.0),
        ("G4", "2023-12-01", 5.0),
        ("G7", "2024-03-20", 20.0),
    ]
    measurements = pd.DataFrame(
        {
            "outcome_id": [m[0] for m in ms],
            "measured_at": ts([m[1] for m in ms]),
            "value": [m[2] for m in ms],
        }
    )
    return {
        T.ACCOUNTS: accounts,
        T.SUBSCRIPTIONS: subscriptions,
        T.USAGE_EVENTS: usage,
        T.SUPPORT_TICKETS: tickets,
        T.NPS_RESPONSES: nps,
        T.OUTCOMES: outcomes,
        T.OUTCOME_MEASUREMENTS: measurements,
    }


def write(frames: dict[str, pd.DataFrame], out: Path, csv: tuple[str, ...] = ()) -> Path:
    """Write tables into `out` as Parquet (CSV for the names in `csv`)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        if name in csv:
            df.to_csv(out / f"{name}.csv", index=False)
        else:
            df.to_parquet(out / f"{name}.parquet", index=False)
    return out


def with_exclusive_end_dates(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The same history written the exclusive way: end_date = first day without service."""
    subs = frames[T.SUBSCRIPTIONS]
    return {
        **frames,
        T.SUBSCRIPTIONS: subs.assign(**{Col.END_DATE: subs[Col.END_DATE] + pd.Timedelta(days=1)}),
    }
