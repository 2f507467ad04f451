"""Point-in-time property: nothing at or after as_of changes a snapshot's features.

Two angles: (1) hypothesis appends arbitrary later records to the hand-built data
set; (2) the simulated data set is cut at a date (everything at or after it
removed, later resolutions and end dates forgotten) and the snapshots up to that
date must not notice. The calendar and cutoff are explicit, so they do not move;
labels look forward and may change, so only feature columns are compared.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import features_data as hb
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import TABLES, Col, T
from features.pipeline import build_snapshots
from features.settings import FeatureParams
from features.snapshots import KEY_COLUMNS, SnapshotTable
from simulator import SimResult

KEYS = list(KEY_COLUMNS)
#: The end-date convention is a property of the billing source, detected on the whole
#: history: appended terms could tip the vote. The point-in-time property is about
#: one fixed convention, so it is set here.
PARAMS = hb.PARAMS.model_copy(update={"end_date_convention": "inclusive"})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> SnapshotTable:
    return build_snapshots(hb.write(hb.tables(), tmp_path_factory.mktemp("base")), PARAMS)


def assert_features_unchanged(
    before: SnapshotTable, after: SnapshotTable, upto: pd.Timestamp
) -> None:
    """Rows with as_of <= upto: same rows (but new accounts at upto), same features."""
    assert before.feature_names == after.feature_names
    cols = KEYS + before.feature_names
    old = before.frame.loc[before.frame[Col.AS_OF] <= upto, cols]
    new = after.frame.loc[after.frame[Col.AS_OF] <= upto, cols]
    merged = old[KEYS].merge(new[KEYS], how="outer", indicator=True)
    assert (merged["_merge"] != "left_only").all(), "a snapshot row disappeared"
    # A term starting exactly at `upto` makes its account active there; nothing earlier.
    extra = merged[merged["_merge"] == "right_only"]
    assert (extra[Col.AS_OF] == upto).all(), extra
    new = old[KEYS].merge(new, on=KEYS, how="left")
    pd.testing.assert_frame_equal(
        old.reset_index(drop=True), new.reset_index(drop=True), check_dtype=True
    )


# --------------------------------------------------------------------------- hypothesis

ACCOUNTS = ["A", "B", "C", "N"]  # N: an account created later
USERS = ["u1", "u2", "b1", "a1", "zz"]
EVENT_TYPES = ["login", "workflow_run", "report", "brand_new_type"]
GOALS = ["G1", "G2", "G3", "G4", "G5", "G6", "G7"]
PRIORITIES = ["low", "normal", "high", "urgent"]
HORIZON_MIN = 200 * 24 * 60  # appended records fall within 200 days after as_of


def _later(as_of: pd.Timestamp) -> st.SearchStrategy[pd.Timestamp]:
    # Weighted towards the boundary: exactly as_of, and the as_of day itself.
    minutes = st.one_of(st.just(0), st.integers(0, 24 * 60), st.integers(0, HORIZON_MIN))
    return minutes.map(lambda m: as_of + pd.Timedelta(minutes=m))


def _later_day(as_of: pd.Timestamp) -> st.SearchStrategy[pd.Timestamp]:
    days = st.one_of(st.just(0), st.integers(0, 200))
    return days.map(lambda d: as_of + pd.Timedelta(days=d))


@st.composite
def later_records(draw: st.DrawFn) -> tuple[pd.Timestamp, list[tuple[str, dict]]]:
    """An as_of and a list of (table, row) all timestamped at or after it."""
    as_of = draw(st.sampled_from(list(hb.AS_OFS[1:-1])))
    at = _later(as_of)
    day = _later_day(as_of)
    event = st.fixed_dictionaries(
        {"account_id": st.sampled_from(ACCOUNTS), "user_id": st.sampled_from(USERS),
         "event_time": at, "event_type": st.sampled_from(EVENT_TYPES)}
    ).map(lambda r: (T.USAGE_EVENTS, r))  # fmt: skip

    @st.composite
    def ticket(draw: st.DrawFn) -> tuple[str, dict]:
        created = draw(at)
        resolved = draw(st.one_of(st.none(), st.integers(0, 60 * 24 * 60)))
        return T.SUPPORT_TICKETS, {
            "account_id": draw(st.sampled_from(ACCOUNTS)),
            "created_at": created,
            "resolved_at": None if resolved is None else created + pd.Timedelta(minutes=resolved),
            "priority": draw(st.sampled_from(PRIORITIES)),
            "category": "bug",
            "csat": draw(st.one_of(st.none(), st.integers(1, 5))),
            "escalated": draw(st.booleans()),
        }

    nps = st.fixed_dictionaries(
        {"account_id": st.sampled_from(ACCOUNTS), "user_id": st.sampled_from(USERS),
         "responded_at": at, "score": st.integers(0, 10), "comment": st.none()}
    ).map(lambda r: (T.NPS_RESPONSES, r))  # fmt: skip
    measurement = st.fixed_dictionaries(
        {"outcome_id": st.sampled_from(GOALS), "measured_at": at,
         "value": st.floats(-500, 500, allow_nan=False)}
    ).map(lambda r: (T.OUTCOME_MEASUREMENTS, r))  # fmt: skip

    @st.composite
    def goal(draw: st.DrawFn) -> tuple[str, dict]:
        start = draw(day)
        return T.OUTCOMES, {
            "account_id": draw(st.sampled_from(ACCOUNTS)),
            "kpi": "kpi",
            "baseline": 0.0,
            "target": draw(st.sampled_from([10.0, -10.0])),
            "direction": "increase",
            "start_date": start,
            "due_date": start + pd.Timedelta(days=draw(st.integers(0, 365))),
            "_value": draw(st.floats(-20, 20, allow_nan=False)),  # measured when set
        }

    @st.composite
    def subscription(draw: st.DrawFn) -> tuple[str, dict]:
        start = draw(day)
        end = draw(st.one_of(st.none(), st.integers(0, 400)))
        return T.SUBSCRIPTIONS, {
            "account_id": draw(st.sampled_from(ACCOUNTS)),
            "start_date": start,
            "end_date": None if end is None else start + pd.Timedelta(days=end),
            "mrr": draw(st.floats(0, 20_000, allow_nan=False)),
            "seats": draw(st.integers(0, 500)),
            "plan": draw(st.sampled_from(["starter", "growth", "brand_new_plan"])),
        }

    # An open-ended term cancelled later: its end date is written at or after as_of.
    cancel = day.map(lambda d: ("cancel", {"end_date": d}))
    kinds = st.one_of(event, ticket(), nps, measurement, goal(), subscription(), cancel)
    return as_of, draw(st.lists(kinds, min_size=1, max_size=12))


def _apply(as_of: pd.Timestamp, records: list[tuple[str, dict]]) -> dict[str, pd.DataFrame]:
    frames = hb.tables()
    new: dict[str, list[dict]] = {}
    for i, (table, rec) in enumerate(records):
        rec = dict(rec)
        if table == "cancel":
            subs = frames[T.SUBSCRIPTIONS]
            subs.loc[subs["end_date"].isna(), "end_date"] = rec["end_date"]
            continue
        if table == T.SUPPORT_TICKETS:
            rec["ticket_id"] = f"NT{i}"
        elif table == T.NPS_RESPONSES:
            rec["response_id"] = f"NR{i}"
        elif table == T.OUTCOMES:
            rec["outcome_id"] = f"NG{i}"
            new.setdefault(T.OUTCOME_MEASUREMENTS, []).append(
                {"outcome_id": f"NG{i}", "measured_at": rec["start_date"],
                 "value": rec.pop("_value")}
            )  # fmt: skip
        new.setdefault(table, []).append(rec)
    for table, rows in new.items():
        add = pd.DataFrame(rows)
        frames[table] = pd.concat([frames[table], add], ignore_index=True)
        for col in frames[table].columns:
            if col.endswith(("_at", "_date", "_time")):
                frames[table][col] = pd.to_datetime(frames[table][col]).astype("datetime64[us]")
        if table == T.SUPPORT_TICKETS:
            frames[table]["csat"] = frames[table]["csat"].astype("Int64")
        key = list(TABLES[table].key)
        if key:  # a record repeating a key breaks the contract: keep the first
            frames[table] = frames[table].drop_duplicates(key, ignore_index=True)
    accounts = frames[T.ACCOUNTS]
    later_account = {
        "account_id": "N", "name": "Newco", "segment": "smb", "industry": "media",
        "region": "emea", "created_at": as_of + pd.Timedelta(hours=1), "csm_id": None,
    }  # fmt: skip
    frames[T.ACCOUNTS] = pd.concat([accounts, pd.DataFrame([later_account])], ignore_index=True)
    frames[T.ACCOUNTS]["created_at"] = frames[T.ACCOUNTS]["created_at"].astype("datetime64[us]")
    return frames


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=later_records())
def test_later_records_do_not_change_features(
    base: SnapshotTable, case: tuple[pd.Timestamp, list[tuple[str, dict]]]
) -> None:
    as_of, records = case
    with tempfile.TemporaryDirectory() as tmp:
        data = hb.write(_apply(as_of, records), Path(tmp) / "raw")
        after = build_snapshots(data, PARAMS)
    assert_features_unchanged(base, after, as_of)


def test_leakage_harness_detects_a_change(base: SnapshotTable, tmp_path: Path) -> None:
    """Sanity check of the harness: a record one minute before as_of is noticed."""
    frames = hb.tables()
    extra = pd.DataFrame(
        {"account_id": ["B"], "user_id": ["b9"], "event_time": hb.ts(["2024-03-31 23:59"]),
         "event_type": ["login"]}
    )  # fmt: skip
    frames[T.USAGE_EVENTS] = pd.concat([frames[T.USAGE_EVENTS], extra], ignore_index=True)
    after = build_snapshots(hb.write(frames, tmp_path / "raw"), PARAMS)
    with pytest.raises(AssertionError):
        assert_features_unchanged(base, after, hb.X)
    # ... and is invisible to every earlier snapshot.
    assert_features_unchanged(base, after, pd.Timestamp("2024-03-01"))


# --------------------------------------------------------------------------- truncation

CUT = pd.Timestamp("2023-10-01")
GEN_PARAMS = FeatureParams(
    first_as_of=dt.date(2023, 6, 1),
    last_as_of=dt.date(2024, 1, 2),
    cutoff=dt.datetime(2024, 1, 1),
    key_event_types=("workflow_run", "api_call"),
)


def truncate(tables: dict[str, pd.DataFrame], cut: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """The data as it stood just before `cut`: later records gone, later facts unknown."""
    out = {k: v.copy() for k, v in tables.items()}
    ev = out[T.USAGE_EVENTS]
    out[T.USAGE_EVENTS] = ev[ev[Col.EVENT_TIME] < cut]
    tk = out[T.SUPPORT_TICKETS]
    tk = tk[tk[Col.CREATED_AT] < cut].copy()
    unresolved = tk[Col.RESOLVED_AT] >= cut
    tk.loc[unresolved, Col.RESOLVED_AT] = pd.NaT
    tk[Col.CSAT] = tk[Col.CSAT].astype("Int64").mask(unresolved)
    out[T.SUPPORT_TICKETS] = tk
    nps = out[T.NPS_RESPONSES]
    out[T.NPS_RESPONSES] = nps[nps[Col.RESPONDED_AT] < cut]
    goals = out[T.OUTCOMES]
    goals = goals[goals[Col.START_DATE] < cut]
    out[T.OUTCOMES] = goals
    ms = out[T.OUTCOME_MEASUREMENTS]
    out[T.OUTCOME_MEASUREMENTS] = ms[
        (ms[Col.MEASURED_AT] < cut) & ms[Col.OUTCOME_ID].isin(goals[Col.OUTCOME_ID])
    ]
    subs = out[T.SUBSCRIPTIONS]
    # A term starting on the cut date itself is signed by then: it makes its account
    # part of the population at `cut` (its MRR is only used from the next day on).
    subs = subs[subs[Col.START_DATE] <= cut].copy()
    subs.loc[subs[Col.END_DATE] >= cut, Col.END_DATE] = pd.NaT  # not yet cancelled
    out[T.SUBSCRIPTIONS] = subs
    return out


def test_truncated_history_gives_the_same_features(generated: SimResult, tmp_path: Path) -> None:
    full_dir = tmp_path / "full"
    hb.write(dict(generated.tables), full_dir)
    cut_tables = truncate(generated.tables, CUT)
    cut_dir = hb.write(cut_tables, tmp_path / "cut")
    full = build_snapshots(full_dir, GEN_PARAMS)
    cut = build_snapshots(cut_dir, GEN_PARAMS)
    # The cut really removed data that later snapshots use.
    assert len(cut_tables[T.USAGE_EVENTS]) < len(generated.tables[T.USAGE_EVENTS]) * 0.8
    assert (cut_tables[T.SUBSCRIPTIONS][Col.END_DATE].isna().sum()
            > generated.tables[T.SUBSCRIPTIONS][Col.END_DATE].isna().sum())  # fmt: skip
    later = full.frame[Col.AS_OF] > CUT
    assert not full.frame.loc[later, full.feature_names].equals(
        cut.frame.loc[cut.frame[Col.AS_OF] > CUT, full.feature_names]
    )
    n_rows = (full.frame[Col.AS_OF] <= CUT).sum()
    assert n_rows > 200
    assert_features_unchanged(full, cut, CUT)
    assert (cut.frame[Col.AS_OF] <= CUT).sum() == n_rows
