"""Point-in-time feature pipeline: hand-computed values, labels, censoring, metadata.

Hand computations use the data set of `features_data` (see its docstring) at
X = 2024-04-01; windows 7/30/90 days, key event type `workflow_run`. A window of
w days at as_of is [as_of - w days, as_of): records at as_of itself never count.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from pathlib import Path

import duckdb
import features_data as hb
import numpy as np
import pandas as pd
import pytest

from features.calendar import scoring_date, snapshot_dates
from features.contract import Col, T
from features.io import load_table
from features.labels import LABEL_FUNCTIONS, label_columns, label_frame
from features.meta import Family
from features.outcomes import outcomes_features
from features.pipeline import build_snapshots
from features.sentiment import sentiment_features
from features.settings import FeatureParams, Windows
from features.snapshots import DESCRIPTOR_COLUMNS, KEY_COLUMNS, META_KEYS, SnapshotTable
from features.support import support_features
from features.targets import TARGET_NAMES, TARGETS
from features.usage import USAGE_RAW, usage_steps

X = hb.X


@pytest.fixture(scope="module")
def hand_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-built tables; subscriptions and tickets as CSV, the rest Parquet."""
    out = tmp_path_factory.mktemp("hand") / "raw"
    return hb.write(hb.tables(), out, csv=(T.SUBSCRIPTIONS, T.SUPPORT_TICKETS))


@pytest.fixture(scope="module")
def hand(hand_dir: Path) -> SnapshotTable:
    return build_snapshots(hand_dir, hb.PARAMS)


def row(snaps: SnapshotTable, account: str, as_of: str | pd.Timestamp) -> pd.Series:
    f = snaps.frame
    hit = f[(f[Col.ACCOUNT_ID] == account) & (f[Col.AS_OF] == pd.Timestamp(as_of))]
    assert len(hit) == 1, f"expected one row for {account} at {as_of}, got {len(hit)}"
    return hit.iloc[0]


def family_columns(snaps: SnapshotTable, family: Family) -> list[str]:
    return [f.name for f in snaps.features if f.family == family]


def check(r: pd.Series, expected: dict[str, float | None]) -> None:
    """Every expected value matches (None: the feature is missing / NaN)."""
    for name, want in expected.items():
        got = r[name]
        if want is None:
            assert pd.isna(got), f"{name}: expected missing, got {got!r}"
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), f"{name}: {got!r} != {want!r}"


# --------------------------------------------------------------------------- population


def test_calendar_and_population(hand: SnapshotTable) -> None:
    f = hand.frame
    assert list(pd.DatetimeIndex(sorted(f[Col.AS_OF].unique()))) == list(hb.AS_OFS)
    members = f.groupby(Col.AS_OF)[Col.ACCOUNT_ID].apply(lambda s: "".join(sorted(s)))
    # A's only term ends 2024-02-15: present on Jan 1 and Feb 1, absent afterwards.
    assert members.to_dict() == {
        pd.Timestamp("2024-01-01"): "ABC",
        pd.Timestamp("2024-02-01"): "ABC",
        pd.Timestamp("2024-03-01"): "BC",
        pd.Timestamp("2024-04-01"): "BC",
        pd.Timestamp("2024-05-01"): "BC",
        pd.Timestamp("2024-06-01"): "BC",
        pd.Timestamp("2024-06-21"): "BC",
    }
    assert not f.duplicated(list(KEY_COLUMNS)).any()
    assert hand.cutoff == pd.Timestamp(hb.CUTOFF)


# --------------------------------------------------------------------------- families by hand


def test_usage_features_by_hand(hand: SnapshotTable) -> None:
    r = row(hand, "C", X)
    expected = {
        # u1, u8 (X-7, first day of the window); u9 at X-8 is outside
        "active_users_7d": 2,
        # + u9, u2, u3 (X-30, first day); u4 at X-31 is outside
        "active_users_30d": 5,
        # + u4, u5 (X-90, first day); u6 at X-91 outside; u1 at X and u7 later ignored
        "active_users_90d": 7,
        "active_users_ratio_30d_90d": 5 / 7,
        # u1 x2, u8, u9, u2 x2 (identical repeat counts), u3
        "events_30d": 7,
        "events_per_active_user_30d": 7 / 5,
        # days Mar 31, 29, 25, 24, 12, 2
        "active_days_30d": 6,
        # one user on each of those 6 days: mean DAU 6/30 over MAU 5
        "stickiness_dau_mau_30d": 6 / 30 / 5,
        # workflow_run, login, report (export at X-90 is outside 30 d)
        "event_types_30d": 3,
        # u1 ran a workflow at X-1; u4's workflow_run at X-31 is outside
        "key_feature_user_share_30d": 1 / 5,
        # prior 30 d = [X-60, X-30): u4 at X-31 and u2 at X-51: 2 events -> 7/2 - 1
        "events_trend_30d": 7 / 2 - 1,
        # user-days 6 vs 2
        "user_days_trend_30d": 6 / 2 - 1,
        # last usage on Mar 31 (the event at X 00:00 does not count)
        "days_since_last_activity": 1,
    }
    assert sorted(expected) == sorted(family_columns(hand, Family.USAGE))
    check(r, expected)


def test_usage_for_the_other_accounts_and_dates(hand: SnapshotTable) -> None:
    # B at X: b1 on X-12, b2 on X-4 (a report).
    check(
        row(hand, "B", X),
        {"active_users_7d": 1, "active_users_30d": 2, "events_30d": 2,
         "key_feature_user_share_30d": 0.0, "days_since_last_activity": 4,
         "events_trend_30d": None},  # nothing in the prior 30 days
    )  # fmt: skip
    # C on Feb 1: u5 (Jan 2, 30 days before) and u6 (Jan 1, 31 days before, still in 90 d).
    check(
        row(hand, "C", "2024-02-01"),
        {"active_users_7d": 0, "active_users_30d": 1, "active_users_90d": 2,
         "days_since_last_activity": 30},
    )  # fmt: skip
    # C on Jan 1: no usage yet.
    check(
        row(hand, "C", "2024-01-01"),
        {"active_users_90d": 0, "events_30d": 0, "events_per_active_user_30d": None,
         "stickiness_dau_mau_30d": None, "days_since_last_activity": None},
    )  # fmt: skip


def test_support_features_by_hand(hand: SnapshotTable) -> None:
    r = row(hand, "B", X)
    expected = {
        # T1 (6.6 d ago), T2 (21.6 d), T7 (Mar 31 23:00, 1 h ago); T6 opened at X is ignored
        "tickets_30d": 3,
        # + T3 (40.7 d), T4 (89.5 d); T5 (90.7 d) is outside
        "tickets_90d": 5,
        # T2 and T7 resolved after X, T5 never: open at X whatever their age
        "open_tickets": 3,
        # T1 high, T2 urgent of 5
        "severe_ticket_share_90d": 2 / 5,
        # resolved before X: T1 24 h, T3 6 h, T4 24 h
        "median_resolution_hours_90d": 24.0,
        # T1, T4
        "escalations_90d": 2,
        # CSAT of tickets resolved before X: T1 2, T3 4 (T4 none; T2's 5 comes after X)
        "csat_mean_90d": 3.0,
        # 5 tickets / 20 seats
        "tickets_per_seat_90d": 5 / 20,
        # T7, one hour before X
        "days_since_last_ticket": 1 / 24,
    }
    assert sorted(expected) == sorted(family_columns(hand, Family.SUPPORT))
    check(r, expected)
    # C: one ticket (T8, 17 d before X) on 130 seats.
    check(row(hand, "C", X), {"tickets_90d": 1, "open_tickets": 0, "csat_mean_90d": 5.0,
                              "tickets_per_seat_90d": 1 / 130})  # fmt: skip


def test_sentiment_features_by_hand(hand: SnapshotTable) -> None:
    r = row(hand, "B", X)
    # In 365 d: R1 9 (11.5 d ago, b1), R2 4 (60 d, b2), R3 7 (244 d, b1).
    # R4 (397 d) is outside the window; R5 (after X) is ignored.
    expected = {
        "nps_last": 9,  # R1
        "nps_mean_365d": (9 + 4 + 7) / 3,
        "nps_365d": (1 / 3 - 1 / 3) * 100,  # one promoter, one detractor, one passive
        "detractor_share_365d": 1 / 3,
        "promoter_share_365d": 1 / 3,
        # last 182 d: R1, R2 -> 6.5; the 182 d before: R3 -> 7
        "nps_trend_182d": 6.5 - 7,
        "days_since_last_nps": 11.5,
        "nps_responses_365d": 3,
        # distinct respondents b1, b2 over 20 seats
        "nps_response_rate_365d": 2 / 20,
    }
    assert sorted(expected) == sorted(family_columns(hand, Family.SENTIMENT))
    check(r, expected)
    # On Feb 1, R2 (at 00:00 that day) is not yet before as_of: R3 and R4 remain.
    check(
        row(hand, "B", "2024-02-01"),
        {"nps_last": 7, "nps_responses_365d": 2, "nps_mean_365d": 8.5, "nps_trend_182d": None},
    )


def test_outcomes_features_by_hand(hand: SnapshotTable) -> None:
    r = row(hand, "B", X)
    # Goals set before X: G1..G4, G6 (G5 starts at X).
    # G1: 100 -> 200, last value before X 160 (the 250 at X is ignored): progress 0.6;
    #     elapsed 91 of 182 days = 0.5 -> on track.
    # G2: decrease 50 -> 30, value 42: progress 0.4; elapsed 122 / 183 -> behind.
    # G3: due Jan 31, value 10 = target: achieved. G4: due Feb 15, progress 0.5: overdue.
    # G6: active, never measured.
    expected = {
        "active_goals": 3,  # G1, G2, G6
        "goals_on_track_share": 1 / 2,  # measured active goals G1 (yes), G2 (no)
        "goals_achieved_share": 1 / 4,  # G3 of the measured G1..G4
        "overdue_unmet_goals": 1,  # G4
        "mean_goal_progress": (0.6 + 0.4) / 2,
        "days_since_last_measurement": 17,  # G1 on Mar 15
    }
    assert sorted(expected) == sorted(family_columns(hand, Family.OUTCOMES))
    check(r, expected)
    # A has no goals.
    check(row(hand, "A", "2024-02-01"), {"active_goals": 0, "overdue_unmet_goals": 0,
                                          "goals_on_track_share": None,
                                          "days_since_last_measurement": None})  # fmt: skip


def _family_grid() -> tuple[pd.DataFrame, pd.Series]:
    """B and C at X, B on Feb 1, on an index of their own; seats aligned with it."""
    as_of = hb.ts([str(X), str(X), "2024-02-01"]).to_numpy()
    grid = pd.DataFrame({Col.ACCOUNT_ID: ["B", "C", "B"], Col.AS_OF: as_of}, index=[10, 11, 12])
    return grid, pd.Series([20, 130, 20], index=grid.index)


def test_ties_take_the_later_input_row() -> None:
    """Equal timestamps: the latest NPS response / measurement is the row later in the input."""
    grid, seats = _family_grid()
    frames = hb.tables()
    nps = frames[T.NPS_RESPONSES]
    # Two responses of B at the same time, after R1 (Mar 20): the later row is the last one.
    extra = nps.iloc[[0, 0]].assign(
        response_id=["R8", "R9"], responded_at=hb.ts(["2024-03-25 12:00"] * 2), score=[2, 6]
    )
    tied = pd.concat([nps, extra], ignore_index=True)
    got = sentiment_features(grid, tied, seats, 365)
    assert got.loc[10, "nps_last"] == 6
    assert got.loc[10, "days_since_last_nps"] == pytest.approx(6.5)
    assert sentiment_features(grid, tied.iloc[::-1], seats, 365).loc[10, "nps_last"] == 2
    # Two measurements of G1 on Mar 20 (after Mar 15's 160): 170, then 190 -> progress 0.9.
    meas = frames[T.OUTCOME_MEASUREMENTS]
    both = pd.DataFrame(
        {Col.OUTCOME_ID: ["G1", "G1"], Col.MEASURED_AT: hb.ts(["2024-03-20"] * 2),
         Col.VALUE: [170.0, 190.0]}
    )  # fmt: skip
    goals = frames[T.OUTCOMES]
    got = outcomes_features(grid, goals, pd.concat([meas, both], ignore_index=True))
    assert got.loc[10, "mean_goal_progress"] == pytest.approx((0.9 + 0.4) / 2)  # G1, G2
    assert got.loc[10, "days_since_last_measurement"] == 12
    got = outcomes_features(grid, goals, pd.concat([meas, both.iloc[::-1]], ignore_index=True))
    assert got.loc[10, "mean_goal_progress"] == pytest.approx((0.7 + 0.4) / 2)


def test_families_run_with_or_without_a_connection(hand: SnapshotTable) -> None:
    """A passed DuckDB connection gives the same values and is left without our views."""
    grid, seats = _family_grid()
    frames = hb.tables()
    w = hb.PARAMS.windows
    calls = {
        Family.SUPPORT: lambda con: support_features(
            grid, frames[T.SUPPORT_TICKETS], seats, w, con=con
        ),
        Family.SENTIMENT: lambda con: sentiment_features(
            grid, frames[T.NPS_RESPONSES], seats, 365, con=con
        ),
        Family.OUTCOMES: lambda con: outcomes_features(
            grid, frames[T.OUTCOMES], frames[T.OUTCOME_MEASUREMENTS], con=con
        ),
    }
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE grid AS SELECT 1 AS x")  # as the usage family leaves it
    for family, call in calls.items():
        alone, shared = call(None), call(con)
        pd.testing.assert_frame_equal(alone, shared)
        assert list(alone.index) == [10, 11, 12]
        assert list(alone.columns) == family_columns(hand, family)
        assert (alone.dtypes == "float64").all()
        for i, (account, as_of) in zip(grid.index, grid.itertuples(index=False), strict=True):
            pd.testing.assert_series_equal(
                alone.loc[i], row(hand, account, as_of)[alone.columns].astype("float64"),
                check_names=False,
            )  # fmt: skip
    views = con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    assert views == []


def test_commercial_features_by_hand(hand: SnapshotTable) -> None:
    r = row(hand, "C", X)
    expected = {
        # created 2023-08-15 12:00 (before the first term, 2023-09-01)
        "tenure_days": 229.5,
        # on Mar 31 the 2024-02-10 term covers: 6000 USD, 130 seats
        "mrr_usd": 6000.0,
        "seats": 130,
        # 90 days before Mar 31 is Jan 1: the first term, 5000 USD, 100 seats
        "mrr_change_90d": 6000 / 5000 - 1,
        "seat_change_90d": 130 / 100 - 1,
        # first term started 2023-09-01: Apr 1 -> Sep 1 = 30 + 31 + 30 + 31 + 31
        "days_to_renewal": 153,
        # terms started 2023-09-01 and 2024-02-10
        "subscription_changes_365d": 2,
        "has_csm": 1.0,
    }
    categorical = {"plan": "enterprise", "segment": "enterprise", "industry": "retail",
                   "region": "amer"}  # fmt: skip
    assert sorted([*expected, *categorical]) == sorted(family_columns(hand, Family.COMMERCIAL))
    check(r, expected)
    for name, want in categorical.items():
        assert r[name] == want
    # A on Feb 1: no CSM, no industry, one unchanged term of 100 USD.
    a = row(hand, "A", "2024-02-01")
    check(a, {"mrr_usd": 100.0, "mrr_change_90d": 0.0, "has_csm": 0.0, "seats": 5,
              "days_to_renewal": 151})  # 2024-02-01 -> 2024-07-01  # fmt: skip
    assert pd.isna(a["industry"])
    assert a["segment"] == "smb"
    # B on Mar 1: the renewal starts that day, so it is not yet known; Feb 29 is covered.
    # 365 days before 2024-03-01 is 2023-03-02 (leap year): the first term (2023-03-01)
    # started just outside the last year.
    check(row(hand, "B", "2024-03-01"), {"mrr_usd": 1000.0, "subscription_changes_365d": 0})
    check(row(hand, "B", "2024-04-01"), {"mrr_usd": 1000.0, "subscription_changes_365d": 1})


# --------------------------------------------------------------------------- labels


def test_labels_by_hand(hand: SnapshotTable) -> None:
    churn, expansion = hand.labels["churn"], hand.labels["expansion"]
    assert (churn, expansion) == ("churn_90d", "expansion_90d")
    want = {
        # A's only term ends 2024-02-15: nothing covers Mar 31 or May 1.
        ("A", "2024-01-01"): (1, 0),
        ("A", "2024-02-01"): (1, 0),
        # B renews on the day after its term ends: never churns, same MRR.
        ("B", "2024-01-01"): (0, 0),
        ("B", "2024-02-01"): (0, 0),
        ("B", "2024-03-01"): (0, 0),
        # C: 5000 -> 6000 on 2024-02-10 (+20 %), seen from Jan 1 and Feb 1, not from Mar 1.
        ("C", "2024-01-01"): (0, 1),
        ("C", "2024-02-01"): (0, 1),
        ("C", "2024-03-01"): (0, 0),
    }
    for (account, as_of), (c, e) in want.items():
        r = row(hand, account, as_of)
        assert (r[churn], r[expansion]) == (c, e), (account, as_of)
    assert row(hand, "C", "2024-02-01")[Col.MRR] == 5000.0
    # as_of + 90 d after the cutoff (2024-06-20 10:00) from Apr 1 on: censored.
    late = hand.frame[hand.frame[Col.AS_OF] >= X]
    assert len(late) == 8
    assert late[churn].isna().all() and late[expansion].isna().all()


def test_expansion_threshold_is_inclusive() -> None:
    """MRR exactly +10 % is an expansion (1.1 * 100 > 110 in floating point)."""
    subs = pd.DataFrame(
        {
            Col.ACCOUNT_ID: ["p", "p", "q", "q"],
            Col.START_DATE: hb.ts(["2023-01-01", "2023-03-01", "2023-01-01", "2023-03-01"]),
            Col.END_DATE: hb.ts(["2023-02-28", None, "2023-02-28", None]),
            Col.MRR: [100.0, 110.0, 100.0, 109.99],
        }
    )
    grid = pd.DataFrame({Col.ACCOUNT_ID: ["p", "q"], Col.AS_OF: hb.ts(["2023-02-01"] * 2)})
    labels = label_frame(grid, subs, pd.Timestamp("2024-01-01"), FeatureParams())
    assert labels["expansion_90d"].tolist() == [1, 0]
    assert labels["churn_90d"].tolist() == [0, 0]


def test_churn_on_the_last_day_of_the_window() -> None:
    """A last term ending exactly on as_of + 90 is churn within 90 days; a renewal the
    next day is not (end_date is the last day of service)."""
    subs = pd.DataFrame(
        {
            Col.ACCOUNT_ID: ["gone", "renews", "renews", "later"],
            Col.START_DATE: hb.ts(["2023-01-01", "2023-01-01", "2023-06-01", "2023-01-01"]),
            Col.END_DATE: hb.ts(["2023-05-31", "2023-05-31", None, "2023-06-01"]),
            Col.MRR: [100.0, 100.0, 100.0, 100.0],
        }
    )
    as_of = pd.Timestamp("2023-03-02")  # + 90 days = 2023-05-31
    grid = pd.DataFrame({Col.ACCOUNT_ID: ["gone", "renews", "later"], Col.AS_OF: [as_of] * 3})
    labels = label_frame(grid, subs, pd.Timestamp("2024-01-01"), FeatureParams())
    assert labels["churn_90d"].tolist() == [1, 0, 0]
    # The day after the window must be observed before churn is known.
    censored = label_frame(grid, subs, pd.Timestamp("2023-05-31 23:00"), FeatureParams())
    assert censored["churn_90d"].isna().all()


# --------------------------------------------------------------------------- censoring


def test_censoring_with_derived_cutoff(hand_dir: Path) -> None:
    """No explicit cutoff: it is the newest observed record; the day after is scored."""
    params = hb.PARAMS.model_copy(update={"cutoff": None, "last_as_of": None})
    snaps = build_snapshots(hand_dir, params)
    # the newest observed record: B's login on 2024-06-18 09:00
    assert snaps.cutoff == pd.Timestamp("2024-06-18 09:00")
    f = snaps.frame
    newest = f[Col.AS_OF].max()
    assert newest == pd.Timestamp("2024-06-19")
    scoring = f[f[Col.AS_OF] == newest]
    assert sorted(scoring[Col.ACCOUNT_ID]) == ["B", "C"]
    labelled = f[Col.AS_OF] + pd.Timedelta(days=91) <= snaps.cutoff
    for col in snaps.labels.values():
        assert f.loc[~labelled, col].isna().all()
        assert f.loc[labelled, col].notna().all()
    assert labelled.sum() == 8  # Jan 1 (A, B, C), Feb 1 (A, B, C), Mar 1 (B, C)
    # The scoring snapshot sees the latest data: B's login the day before.
    assert row(snaps, "B", newest)["days_since_last_activity"] == 1


def test_censoring_boundary_is_inclusive(hand_dir: Path) -> None:
    """as_of + horizon + 1 day == cutoff is observed; one second less is not.

    (A term's end_date is its last day: churn within 90 days shows on day 91.)
    """
    exact = hb.PARAMS.model_copy(update={"cutoff": dt.datetime(2024, 5, 31)})  # Mar 1 + 91 d
    r = row(build_snapshots(hand_dir, exact), "C", "2024-03-01")
    assert (r["churn_90d"], r["expansion_90d"]) == (0, 0)
    early = hb.PARAMS.model_copy(update={"cutoff": dt.datetime(2024, 5, 30, 23, 59, 59)})
    r = row(build_snapshots(hand_dir, early), "C", "2024-03-01")
    assert pd.isna(r["churn_90d"]) and pd.isna(r["expansion_90d"])


def test_censoring_on_generated(generated_dir: Path) -> None:
    snaps = build_snapshots(generated_dir, FeatureParams(key_event_types=("workflow_run",)))
    f = snaps.frame
    cutoff = snaps.cutoff
    # the scoring date follows the newest activity (a renewal may start after it)
    assert f[Col.AS_OF].max() == scoring_date(_activity_end(generated_dir))
    assert f[Col.AS_OF].max() <= cutoff.normalize() + pd.Timedelta(days=1)
    late = f[Col.AS_OF] + pd.Timedelta(days=91) > cutoff
    assert late.any() and (~late).any()
    for col in snaps.labels.values():
        assert f.loc[late, col].isna().all()
        assert f.loc[~late, col].notna().all()
        assert set(f.loc[~late, col].astype(int)) <= {0, 1}
    assert (f.loc[~late, "churn_90d"] == 1).any()
    assert (f.loc[~late, "expansion_90d"] == 1).any()


def _activity_end(data: Path) -> pd.Timestamp:
    """The newest record of the tables' activity timestamps, read directly."""
    columns = {
        T.USAGE_EVENTS: Col.EVENT_TIME, T.SUPPORT_TICKETS: Col.CREATED_AT,
        T.NPS_RESPONSES: Col.RESPONDED_AT, T.OUTCOME_MEASUREMENTS: Col.MEASURED_AT,
    }  # fmt: skip
    ends = []
    for table, col in columns.items():
        lt = load_table(data, table)
        if lt is not None:
            ends.append(lt.frame[col].max())
    return max(ends)


def test_scoring_date_follows_activity_not_a_booked_renewal() -> None:
    """A term starting after the activity data must not open empty days at scoring."""
    start, params = pd.Timestamp("2024-01-01"), FeatureParams(min_history_days=0)
    renewal, active = pd.Timestamp("2025-01-01"), pd.Timestamp("2024-12-31 18:00")
    assert snapshot_dates(start, renewal, params)[-1] == pd.Timestamp("2025-01-02")
    assert snapshot_dates(start, renewal, params, active)[-1] == pd.Timestamp("2025-01-01")
    # activity after the cutoff (an explicit earlier cutoff) does not move it later
    early = pd.Timestamp("2024-11-15 12:00")
    assert snapshot_dates(start, early, params, active)[-1] == pd.Timestamp("2024-11-16")


def test_booked_renewal_keeps_the_scoring_date_and_moves_the_cutoff(tmp_path: Path) -> None:
    frames = hb.tables()
    subs = frames[T.SUBSCRIPTIONS]
    ahead = subs[subs[Col.ACCOUNT_ID] == "B"].tail(1).assign(
        **{Col.START_DATE: hb.ts(["2024-09-01"]).to_numpy(), Col.END_DATE: pd.NaT})
    frames[T.SUBSCRIPTIONS] = pd.concat([subs, ahead], ignore_index=True)
    data = hb.write(frames, tmp_path / "raw")
    params = hb.PARAMS.model_copy(update={"last_as_of": None, "cutoff": None})
    snaps = build_snapshots(data, params)
    assert snaps.cutoff == pd.Timestamp("2024-09-01")
    assert snaps.frame[Col.AS_OF].max() == scoring_date(_activity_end(data))


# --------------------------------------------------------------------------- churn and return


def test_account_that_churns_and_comes_back(tmp_path: Path) -> None:
    frames = hb.tables()
    back = pd.DataFrame(
        {"account_id": ["A"], "start_date": hb.ts(["2024-04-10"]), "end_date": hb.ts([None]),
         "mrr": [80.0], "seats": [4], "plan": ["starter"]}
    )  # fmt: skip
    frames[T.SUBSCRIPTIONS] = pd.concat([frames[T.SUBSCRIPTIONS], back], ignore_index=True)
    snaps = build_snapshots(hb.write(frames, tmp_path / "raw"), hb.PARAMS)
    f = snaps.frame
    present = sorted(f.loc[f[Col.ACCOUNT_ID] == "A", Col.AS_OF].dt.strftime("%Y-%m-%d"))
    # ended 2024-02-15, back from 2024-04-10: absent on Mar 1 and Apr 1
    assert present == ["2024-01-01", "2024-02-01", "2024-05-01", "2024-06-01", "2024-06-21"]
    # Jan 1 + 90 d = Mar 31: the gap -> churn. Feb 1 + 90 d = May 1: back by then -> no churn.
    assert row(snaps, "A", "2024-01-01")["churn_90d"] == 1
    assert row(snaps, "A", "2024-02-01")["churn_90d"] == 0
    # 100 -> 80: not an expansion.
    assert row(snaps, "A", "2024-02-01")["expansion_90d"] == 0
    back_row = row(snaps, "A", "2024-05-01")
    assert back_row["mrr_usd"] == 80.0
    assert back_row["subscription_changes_365d"] == 2
    # The returning account's history is kept: its last usage (Feb 5) is 86 days old.
    assert back_row["days_since_last_activity"] == 86
    # Everything else is unchanged by A's return.
    base = build_snapshots(hb.write(hb.tables(), tmp_path / "base"), hb.PARAMS).frame
    others = f[f[Col.ACCOUNT_ID] != "A"].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, base[base[Col.ACCOUNT_ID] != "A"].reset_index(drop=True))


# --------------------------------------------------------------------------- optional tables

FAMILY_TABLES = {
    Family.SUPPORT: (T.SUPPORT_TICKETS,),
    Family.SENTIMENT: (T.NPS_RESPONSES,),
    Family.OUTCOMES: (T.OUTCOMES, T.OUTCOME_MEASUREMENTS),
}

_GEN_PARAMS = FeatureParams(
    first_as_of=dt.date(2023, 6, 1),
    last_as_of=dt.date(2024, 1, 2),
    cutoff=dt.datetime(2024, 1, 1),
    key_event_types=("workflow_run", "api_call"),
)


@pytest.fixture(scope="module")
def generated_full(generated_dir: Path) -> SnapshotTable:
    return build_snapshots(generated_dir, _GEN_PARAMS)


def meta_matches_frame(snaps: SnapshotTable) -> None:
    other = (*KEY_COLUMNS, *DESCRIPTOR_COLUMNS, Col.MRR, *snaps.labels.values())
    cols = [c for c in snaps.frame.columns if c not in other]
    assert snaps.feature_names == cols


@pytest.mark.parametrize(
    "removed",
    [
        (T.SUPPORT_TICKETS,),
        (T.NPS_RESPONSES,),
        (T.OUTCOMES, T.OUTCOME_MEASUREMENTS),
        (T.OUTCOME_MEASUREMENTS,),  # goals without measurements: no outcome features
        (T.SUPPORT_TICKETS, T.NPS_RESPONSES, T.OUTCOMES, T.OUTCOME_MEASUREMENTS),
    ],
)
def test_optional_tables_absent(
    removed: tuple[str, ...], generated_dir: Path, generated_full: SnapshotTable, tmp_path: Path
) -> None:
    data = tmp_path / "raw"
    shutil.copytree(generated_dir, data)
    for name in removed:
        (data / f"{name}.parquet").unlink()
    snaps = build_snapshots(data, _GEN_PARAMS)
    meta_matches_frame(snaps)
    gone = {fam for fam, names in FAMILY_TABLES.items() if set(names) & set(removed)}
    assert {f.family for f in snaps.features} == set(Family) - gone
    for fam in gone:
        absent = family_columns(generated_full, fam)
        assert absent and not set(absent) & set(snaps.frame.columns)
    # Every other column (keys, remaining features, labels) is exactly as with all tables.
    full = generated_full.frame
    pd.testing.assert_frame_equal(snaps.frame, full[list(snaps.frame.columns)])


def test_only_required_tables_with_derived_calendar(tmp_path: Path) -> None:
    frames = hb.tables()
    required = {n: frames[n] for n in (T.ACCOUNTS, T.SUBSCRIPTIONS, T.USAGE_EVENTS)}
    data = hb.write(required, tmp_path / "raw")
    snaps = build_snapshots(data, FeatureParams(min_history_days=30))
    meta_matches_frame(snaps)
    assert {f.family for f in snaps.features} == {Family.USAGE, Family.COMMERCIAL}
    # Without key event types there is no key-feature share.
    assert not any(n.startswith("key_feature") for n in snaps.feature_names)
    # cutoff = B's login 2024-06-18 09:00 (the newest event; no other observed table is later)
    assert snaps.cutoff == pd.Timestamp("2024-06-18 09:00")
    # first as_of: the first month start >= first event (2024-01-01 09:00 -> Jan 1) + 30 days
    assert snaps.frame[Col.AS_OF].min() == pd.Timestamp("2024-02-01")


# --------------------------------------------------------------------------- metadata


def test_metadata_on_full_data(generated_full: SnapshotTable) -> None:
    feats = generated_full.features
    meta_matches_frame(generated_full)
    assert len(feats) >= 40
    assert {f.family for f in feats} == set(Family)
    assert len({f.name for f in feats}) == len(feats)
    frame = generated_full.frame
    for f in feats:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", f.name), f.name
        assert isinstance(f.family, Family)
        assert f.description.strip() and f.unit.strip() and "{" in f.template, f.name
        if f.categorical:
            assert f.sentence("starter") and "starter" in f.sentence("starter")
            assert frame[f.name].dropna().map(type).eq(str).all(), f.name
            continue
        assert frame[f.name].dtype == np.float64, f.name
        text = f.sentence(0.25)
        assert "{" not in text and text != f.template, f.name
        nan_text = f.sentence(float("nan"))
        assert "{" not in nan_text and nan_text.startswith("No data on "), f.name
        # The values lie within the declared bounds.
        values = frame[f.name].dropna()
        if f.min_value is not None:
            assert (values >= f.min_value - 1e-9).all(), f.name
        if f.max_value is not None:
            assert (values <= f.max_value + 1e-9).all(), f.name
        assert not np.isinf(values).any(), f.name


def _windows_in(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"(\d+) days", text)}


def test_feature_names_carry_windows_and_units(generated_full: SnapshotTable) -> None:
    """A window in the description is in the name as `_{N}d` and vice versa; units show."""
    for f in generated_full.features:
        in_name = {int(n) for n in re.findall(r"_(\d+)d(?=_|$)", f.name)}
        in_text = _windows_in(f.description)
        if "last year" in f.description:
            in_text.add(365)
        assert in_name == in_text, (f.name, f.description)
        if f.unit == "days":
            assert "days" in f.name, f.name
        if f.unit == "hours":
            assert "hours" in f.name, f.name
        if f.unit.startswith("USD"):
            assert f.name.endswith("_usd"), f.name
        if f.unit == "ratio":
            assert re.search(r"share|ratio|trend|change|stickiness|rate|progress", f.name), f.name
        assert (
            in_name
            or f.categorical
            or re.search(r"days|hours|usd|seats|tickets|goals|share|progress|nps|has_", f.name)
        ), f.name


def test_configured_windows_rename_and_recompute(hand_dir: Path) -> None:
    params = hb.PARAMS.model_copy(
        update={"windows": Windows(short=3, medium=20, long=60), "sentiment_window_days": 100}
    )
    snaps = build_snapshots(hand_dir, params)
    meta_matches_frame(snaps)
    names = set(snaps.feature_names)
    for n in ("active_users_3d", "active_users_20d", "active_users_60d", "events_20d",
              "tickets_20d", "tickets_60d", "nps_mean_100d", "nps_trend_50d"):  # fmt: skip
        assert n in names
    assert not {"active_users_7d", "tickets_90d", "nps_mean_365d"} & names
    # C at X, 3 d: u1; 20 d: + u8, u9, u2; 60 d: + u3, u4, u2 (Feb 10)
    check(row(snaps, "C", X), {"active_users_3d": 1, "active_users_20d": 4,
                                "active_users_60d": 6})  # fmt: skip
    # B at X, 20 d: T1, T7 and T2 (21.6 d) is out; 60 d: + T2, T3
    check(row(snaps, "B", X), {"tickets_20d": 2, "tickets_60d": 4, "nps_responses_100d": 2})


# --------------------------------------------------------------------------- event sources


def test_usage_sources_csv_and_parquet_folder_agree(hand: SnapshotTable, tmp_path: Path) -> None:
    frames = hb.tables()
    events = frames.pop(T.USAGE_EVENTS)

    csv_dir = hb.write(frames, tmp_path / "csv")
    text = events.copy()
    stamps = events["event_time"].dt.strftime("%Y-%m-%d %H:%M:%S")
    # Same instants written with offsets: X-1 23:30 UTC as +02:00 is already "Apr 1" locally.
    stamps.iloc[0] = "2024-04-01 01:30:00+02:00"
    stamps.iloc[1] = "2024-03-29T10:00:00Z"
    text["event_time"] = stamps
    text["quantity"] = 1.0
    text.to_csv(csv_dir / f"{T.USAGE_EVENTS}.csv", index=False)

    folder_dir = hb.write(frames, tmp_path / "folder")
    parts = folder_dir / T.USAGE_EVENTS
    (parts / "nested").mkdir(parents=True)
    for i, (account, part) in enumerate(events.groupby("account_id")):
        where = parts / "nested" if i == 0 else parts
        part.to_parquet(where / f"part-{account}.parquet", index=False)

    for data in (csv_dir, folder_dir):
        got = build_snapshots(data, hb.PARAMS)
        pd.testing.assert_frame_equal(got.frame, hand.frame)


def test_sentence_with_missing_value(generated_full: SnapshotTable) -> None:
    f = next(f for f in generated_full.features if f.name == "active_users_30d")
    assert f.sentence(12.0) == "12 users active in the last 30 days"
    assert f.sentence(math.nan) == "No data on active users in the last 30 days"
    assert f.sentence(None) == "No data on active users in the last 30 days"


# --------------------------------------------------------------------------- calendar choices


def test_weekly_calendar_gives_the_same_rows_on_shared_dates(
    hand: SnapshotTable, hand_dir: Path
) -> None:
    """Features at an as_of do not depend on the other snapshot dates (usage buckets)."""
    weekly = build_snapshots(hand_dir, hb.PARAMS.model_copy(update={"frequency": "weekly"}))
    dates = pd.DatetimeIndex(sorted(weekly.frame[Col.AS_OF].unique()))
    assert len(dates) == 26 and (dates[:-1].dayofweek == 0).all()  # Mondays, then Jun 21
    keys = list(KEY_COLUMNS)
    monthly = hand.frame.merge(weekly.frame[keys], on=keys)
    # 2024-01-01 and 2024-04-01 are Mondays; 2024-06-21 is the last as_of of both
    assert sorted(monthly[Col.AS_OF].dt.strftime("%m-%d").unique()) == ["01-01", "04-01", "06-21"]
    pd.testing.assert_frame_equal(
        monthly.reset_index(drop=True),
        weekly.frame.merge(hand.frame[keys], on=keys).reset_index(drop=True),
    )


def test_windows_must_be_ordered() -> None:
    # A medium window longer than the long one would be silently capped by the usage SQL.
    with pytest.raises(ValueError, match="short < medium < long"):
        Windows(short=7, medium=100, long=60)
    with pytest.raises(ValueError, match="short < medium < long"):
        Windows(short=30, medium=30, long=90)


def test_empty_usage_events(tmp_path: Path) -> None:
    """No events at all is a broken feed, not zero usage for every account."""
    from features.io import ContractError

    frames = hb.tables()
    frames[T.USAGE_EVENTS] = frames[T.USAGE_EVENTS].iloc[:0]
    with pytest.raises(ContractError, match=r"usage_events: fails 'not empty'"):
        build_snapshots(hb.write(frames, tmp_path / "raw"), hb.PARAMS)


def test_bad_usage_events_are_a_contract_error_naming_the_column(tmp_path: Path) -> None:
    """Events go to DuckDB unread by pandas: their violations are still reported, not raised raw."""
    from features.io import ContractError

    frames = hb.tables()
    events = frames.pop(T.USAGE_EVENTS).astype({"event_time": "str"})
    events["quantity"] = "1"
    events.loc[events.index[2], "event_time"] = "not a date"
    events.loc[events.index[3], "quantity"] = "lots"
    data = hb.write(frames, tmp_path / "bad")
    events.to_csv(data / f"{T.USAGE_EVENTS}.csv", index=False)
    with pytest.raises(ContractError) as err:
        build_snapshots(data, hb.PARAMS)
    text = str(err.value)
    assert "usage_events.event_time: not coercible to timestamp (1 rows) e.g. not a date" in text
    assert "usage_events.quantity: not coercible to float (1 rows) e.g. lots" in text
    events.drop(columns=[Col.USER_ID]).to_csv(data / f"{T.USAGE_EVENTS}.csv", index=False)
    with pytest.raises(ContractError, match=r"usage_events\.user_id: missing column"):
        build_snapshots(data, hb.PARAMS)


# --------------------------------------------------------------------------- targets and table


def test_every_declared_target_has_a_label_function_and_column(hand: SnapshotTable) -> None:
    assert list(LABEL_FUNCTIONS) == list(TARGET_NAMES)
    assert hand.labels == {t.name: t.label(90) for t in TARGETS}
    assert hand.labels == {"churn": "churn_90d", "expansion": "expansion_90d"}
    assert list(hand.frame.columns[-len(TARGETS) :]) == list(hand.labels.values())
    assert label_columns(30) == {"churn": "churn_30d", "expansion": "expansion_30d"}
    assert (hand.horizon_days, hand.expansion_threshold) == (90, 0.10)


def test_the_table_round_trips_with_its_metadata(hand: SnapshotTable, tmp_path: Path) -> None:
    out = tmp_path / "features" / "snapshots.parquet"
    hand.write(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "snapshots.meta.json",
        "snapshots.parquet",
    ]  # no temporary files left behind
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert set(meta) == set(META_KEYS)
    assert meta["labels"] == {"churn": "churn_90d", "expansion": "expansion_90d"}
    assert meta["horizon_days"] == 90 and meta["expansion_threshold"] == 0.10
    assert meta["rows"] == len(hand.frame) and meta["as_of"][0] == "2024-01-01"
    assert meta["mrr_column"] == Col.MRR and meta["cutoff"] == "2024-06-20T10:00:00"
    assert meta["end_date_convention"] == "inclusive"
    assert meta["end_date_evidence"].startswith("inclusive: 2 of 2 consecutive terms")
    back = SnapshotTable.read(out)
    pd.testing.assert_frame_equal(back.frame, hand.frame)
    for field in ("features", "cutoff", "horizon_days", "labels", "expansion_threshold",
                  "end_date_convention", "end_date_evidence"):  # fmt: skip
        assert getattr(back, field) == getattr(hand, field), field
    assert back.feature_names == hand.feature_names


def test_reading_a_missing_or_old_table_says_what_to_do(
    hand: SnapshotTable, tmp_path: Path
) -> None:
    out = tmp_path / "snapshots.parquet"
    with pytest.raises(FileNotFoundError, match=r"run `cshealth features` first"):
        SnapshotTable.read(out)
    hand.write(out)
    meta_file = out.with_suffix(".meta.json")
    meta = json.loads(meta_file.read_text())
    # The format before targets were data: labels as a list, no horizon or convention.
    old = {k: meta[k] for k in ("cutoff", "rows", "as_of", "mrr_column", "features")}
    meta_file.write_text(json.dumps({**old, "labels": ["churn_90d", "expansion_90d"]}))
    with pytest.raises(
        ValueError, match=r"older version.*horizon_days.*re-run `cshealth features`"
    ):
        SnapshotTable.read(out)
    meta_file.write_text(json.dumps({**meta, "labels": ["churn_90d", "expansion_90d"]}))
    with pytest.raises(ValueError, match=r"re-run `cshealth features`"):
        SnapshotTable.read(out)
    meta_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"not valid JSON.*re-run `cshealth features`"):
        SnapshotTable.read(out)


def test_usage_sql_steps_stay_portable() -> None:
    """Each usage step is one plain SELECT, free of the DuckDB-only syntax Spark lacks."""
    steps = usage_steps(Windows(short=3, medium=10, long=40))
    names = [name for name, _ in steps]
    assert len(set(names)) == len(names) and names[-1] == USAGE_RAW
    for name, sql in steps:
        assert re.match(r"\s*(SELECT|WITH)\b", sql, re.IGNORECASE), name
        for banned in (r"\bASOF\b", r"\bGROUP\s+BY\s+ALL\b", "::", r"\bCREATE\b", ";"):
            assert not re.search(banned, sql, re.IGNORECASE), (name, banned)
        assert not re.search(r"[{}]", sql), (name, "unformatted placeholder")
    # the windows are in the SQL: 40 days back for distinct users, 2 x 10 for the trend
    assert " - 40" in steps[-1][1] and " - 20" in steps[-1][1]


def bad_events_data(out: Path) -> Path:
    """The hand-built data with events breaking each value rule the feature stage checks."""
    frames = hb.tables()
    ev = frames[T.USAGE_EVENTS]
    ev.loc[ev.index[0], Col.USER_ID] = "u\x07bell"  # control character
    ev.loc[ev.index[[1, 2]], Col.ACCOUNT_ID] = "A" * 200  # too long (two rows, one id)
    ev.loc[ev.index[3], Col.QUANTITY] = float("-inf")
    ev.loc[ev.index[4], Col.QUANTITY] = float("inf")
    ev.loc[ev.index[5], Col.EVENT_TIME] = pd.Timestamp("2031-05-01 10:00")
    return hb.write(frames, out)


#: what `build_snapshots(bad_events_data(...), run_date=2030-01-01)` reports about the events
BAD_EVENT_ISSUES = [
    "usage_events.account_id: fails 'at most 128 characters' (2 rows)",
    "usage_events.user_id: fails 'no control characters' (1 rows) e.g. u\\x07bell",
    "usage_events.event_time: fails 'not after run date 2030-01-01 23:59:59' (1 rows)",
    "usage_events.quantity: fails 'finite' (2 rows)",
]


def test_event_value_rules_are_checked_once_per_distinct_id(tmp_path: Path) -> None:
    """Id rules run on distinct ids but count rows; every broken rule is named, with rows."""
    from features.io import ContractError

    with pytest.raises(ContractError) as err:
        build_snapshots(bad_events_data(tmp_path / "raw"), hb.PARAMS, dt.date(2030, 1, 1))
    text = str(err.value)
    for line in BAD_EVENT_ISSUES:
        assert line in text, text
    assert text.count("usage_events") == len(BAD_EVENT_ISSUES), text


def _usage_by_brute_force(
    events: pd.DataFrame, grid: pd.DataFrame, w: Windows, key_types: tuple[str, ...]
) -> pd.DataFrame:
    """The usage features straight from their definitions, one (account, as_of) at a time."""
    s, m, lg = w.short, w.medium, w.long
    ev = events.assign(day=events[Col.EVENT_TIME].dt.normalize())
    by_account = dict(tuple(ev.groupby(Col.ACCOUNT_ID)))
    rows = []
    for account, as_of in zip(grid[Col.ACCOUNT_ID], grid[Col.AS_OF], strict=True):
        e = by_account.get(account, ev.iloc[:0])
        e = e[e["day"] < as_of]
        ago = (as_of - e["day"]).dt.days  # 1 = the day before as_of

        def users(days: int, e=e, ago=ago) -> int:
            return e.loc[ago <= days, Col.USER_ID].nunique()

        recent, before = e[ago <= m], e[(ago > m) & (ago <= 2 * m)]
        ud = recent[[Col.USER_ID, "day"]].drop_duplicates().shape[0]
        ud_prev = before[[Col.USER_ID, "day"]].drop_duplicates().shape[0]
        key = recent.loc[recent[Col.EVENT_TYPE].isin(key_types), Col.USER_ID].nunique()
        au_m = users(m)

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else np.nan

        row = {
            f"active_users_{s}d": users(s), f"active_users_{m}d": au_m,
            f"active_users_{lg}d": users(lg),
            f"active_users_ratio_{m}d_{lg}d": ratio(au_m, users(lg)),
            f"events_{m}d": len(recent), f"events_per_active_user_{m}d": ratio(len(recent), au_m),
            f"active_days_{m}d": recent["day"].nunique(),
            f"stickiness_dau_mau_{m}d": ratio(ud / m, au_m),
            f"event_types_{m}d": recent[Col.EVENT_TYPE].nunique(),
            f"events_trend_{m}d": ratio(len(recent), len(before)) - 1,
            f"user_days_trend_{m}d": ratio(ud, ud_prev) - 1,
            "days_since_last_activity": ago.min() if len(e) else np.nan,
        }  # fmt: skip
        if key_types:
            row[f"key_feature_user_share_{m}d"] = ratio(key, au_m)
        rows.append(row)
    return pd.DataFrame(rows, index=grid.index).astype("float64")


#: as_of calendars relative to the first event day (the fixture's data span 10 months)
CALENDARS = {
    "weekly": lambda t0: pd.date_range(t0 + pd.Timedelta(days=120), periods=12, freq="W-MON"),
    # 91-92 days apart: buckets are cut at 62 days
    "quarterly": lambda t0: pd.date_range(t0 + pd.Timedelta(days=20), periods=4, freq="QS"),
    "irregular": lambda t0: t0 + pd.to_timedelta([2, 200, 215, 320], unit="D"),
}


@pytest.mark.parametrize("calendar", CALENDARS)
@pytest.mark.parametrize("windows", [Windows(), Windows(short=3, medium=10, long=40)],
                         ids=["7-30-90", "3-10-40"])  # fmt: skip
def test_usage_sql_equals_the_definitions(generated, calendar: str, windows: Windows) -> None:
    """Bit-mask buckets give exactly the counts of the definitions, whatever the calendar."""
    from features.usage import usage_features

    events = generated.tables[T.USAGE_EVENTS]
    ids = sorted(events[Col.ACCOUNT_ID].unique())[:25]
    events = events[events[Col.ACCOUNT_ID].isin(ids)]
    as_of_dates = CALENDARS[calendar](events[Col.EVENT_TIME].min().normalize())
    grid = pd.DataFrame([(a, d) for d in as_of_dates for a in ids],
                        columns=[Col.ACCOUNT_ID, Col.AS_OF])  # fmt: skip
    grid[Col.AS_OF] = grid[Col.AS_OF].astype("datetime64[us]")
    key_types = tuple(sorted(events[Col.EVENT_TYPE].unique())[:2])
    got = usage_features(events, grid, windows, key_types)
    want = _usage_by_brute_force(events, grid, windows, key_types)
    pd.testing.assert_frame_equal(got, want[got.columns], rtol=1e-12)
    assert (got[f"stickiness_dau_mau_{windows.medium}d"] > 0).sum() > len(grid) / 3  # not empty
