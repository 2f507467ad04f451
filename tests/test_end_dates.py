"""Subscription end dates: the convention is detected (or set), then read one way.

Unit tests of `features.subscriptions` on hand-built frames, and end to end: the
same business history written inclusive (end = last day of service) and exclusive
(end = first day without service, the next term's start) gives the same table.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import features_data as hb
import pandas as pd
import pytest
from pydantic import ValidationError

from features.contract import Col, T
from features.meta import Family
from features.pipeline import build_snapshots
from features.settings import FeatureParams
from features.subscriptions import (
    EXCLUSIVE,
    INCLUSIVE,
    detect_end_date_convention,
    resolve_end_date_convention,
    to_inclusive,
)
from simulator import generate


def subs(*terms: tuple[str, str, str | None]) -> pd.DataFrame:
    """A subscriptions frame from (account_id, start_date, end_date) triples."""
    return pd.DataFrame(
        {
            Col.ACCOUNT_ID: [t[0] for t in terms],
            Col.START_DATE: hb.ts([t[1] for t in terms]),
            Col.END_DATE: hb.ts([t[2] for t in terms]),
            Col.MRR: 100.0,
        }
    )


# --------------------------------------------------------------------------- detection


def test_touching_terms_are_exclusive() -> None:
    df = subs(
        ("a", "2024-01-01", "2024-02-01"),
        ("a", "2024-02-01", "2024-03-01"),
        ("a", "2024-03-01", None),
        ("b", "2023-06-15", "2024-06-15"),
        ("b", "2024-06-15", None),
    )
    assert detect_end_date_convention(df) == (
        EXCLUSIVE,
        "exclusive: 3 of 3 consecutive terms touch (end = next start)",
    )


def test_one_day_gaps_are_inclusive() -> None:
    df = subs(
        ("a", "2024-01-01", "2024-01-31"),
        ("a", "2024-02-01", "2024-02-29"),
        ("a", "2024-03-01", None),
        ("b", "2023-06-15", "2024-06-14"),
        ("b", "2024-06-15", None),
    )
    convention, evidence = detect_end_date_convention(df)
    assert convention == INCLUSIVE
    assert evidence.startswith("inclusive: 3 of 3 consecutive terms start the day after")


def test_the_majority_wins_and_the_sentence_gives_counts() -> None:
    df = subs(
        # three touching renewals, one 1-day gap, one lapse (no vote), given unsorted
        ("a", "2024-02-01", "2024-03-01"),
        ("a", "2024-01-01", "2024-02-01"),
        ("a", "2024-03-01", None),
        ("b", "2023-01-01", "2024-01-01"),
        ("b", "2024-01-01", "2024-06-30"),
        ("b", "2024-07-01", "2024-08-01"),
        ("b", "2024-10-01", None),  # lapsed two months: says nothing
    )
    before = df.copy()
    assert detect_end_date_convention(df) == (
        EXCLUSIVE,
        "exclusive: 3 of 5 consecutive terms touch (end = next start), 1 start a day later",
    )
    pd.testing.assert_frame_equal(df, before)  # the input is not sorted in place


def test_overlapping_terms_of_other_accounts_do_not_pair() -> None:
    """Consecutive means of the same account: a's end and b's start never vote."""
    df = subs(("a", "2024-01-01", "2024-03-07"), ("b", "2024-03-07", None))
    convention, evidence = detect_end_date_convention(df)
    assert convention == INCLUSIVE and "(assumed)" in evidence
    assert "no consecutive terms to compare" in evidence


@pytest.mark.parametrize(
    ("terms", "want", "count"),
    [
        ((("a", "2024-03-15", "2025-03-15"), ("b", "2024-01-01", "2024-02-01")), EXCLUSIVE, 2),
        ((("a", "2024-03-15", "2025-03-14"), ("b", "2024-01-01", "2024-01-31")), INCLUSIVE, 2),
        # 2 to 1 (c's end says nothing: the 20th is neither the 1st nor the day before)
        (
            (("a", "2024-03-15", "2025-03-15"), ("b", "2024-01-01", "2024-02-01"),
             ("c", "2024-01-01", "2024-06-20"), ("d", "2024-05-10", "2024-06-09")),
            EXCLUSIVE,
            2,
        ),
    ],
)  # fmt: skip
def test_without_pairs_the_day_of_month_decides(
    terms: tuple[tuple[str, str, str], ...], want: str, count: int
) -> None:
    convention, evidence = detect_end_date_convention(subs(*terms))
    assert convention == want
    assert evidence.startswith(f"{want}: no consecutive terms to compare; {count} of ")
    assert "day of month" in evidence


def test_pairs_that_do_not_vote_fall_back_to_the_day_of_month() -> None:
    df = subs(("a", "2023-01-10", "2024-01-10"), ("a", "2024-03-01", None))  # a lapse
    convention, evidence = detect_end_date_convention(df)
    assert convention == EXCLUSIVE
    assert evidence.startswith("exclusive: none of 1 consecutive terms touch or start a day later")


@pytest.mark.parametrize(
    "df",
    [
        subs(),
        subs(("a", "2024-01-01", None), ("b", "2024-02-01", None)),  # nothing ended yet
        subs(("a", "2024-01-01", "2024-01-01")),  # a one-day term
        subs(("a", "2024-01-01", "2024-06-20")),  # an end that tells nothing
    ],
)
def test_no_evidence_assumes_inclusive(df: pd.DataFrame) -> None:
    convention, evidence = detect_end_date_convention(df)
    assert convention == INCLUSIVE
    assert evidence.startswith("inclusive (assumed): ")


def test_a_tie_between_pairs_is_broken_by_the_day_of_month() -> None:
    df = subs(
        ("a", "2024-01-05", "2024-02-05"),
        ("a", "2024-02-05", None),  # touches
        ("b", "2024-01-05", "2024-02-04"),
        ("b", "2024-02-05", None),  # a day later
        ("c", "2024-03-10", "2025-03-10"),  # same day of month: exclusive
    )
    convention, evidence = detect_end_date_convention(df)
    assert convention == EXCLUSIVE
    assert "split (1 touch, 1 start a day later)" in evidence


# --------------------------------------------------------------------------- setting


def test_an_explicit_setting_overrides_detection(caplog: pytest.LogCaptureFixture) -> None:
    touching = subs(("a", "2024-01-01", "2024-02-01"), ("a", "2024-02-01", None))
    assert resolve_end_date_convention(touching, "auto")[0] == EXCLUSIVE
    with caplog.at_level(logging.WARNING, logger="features.subscriptions"):
        convention, evidence = resolve_end_date_convention(touching, "inclusive")
    assert convention == INCLUSIVE
    assert evidence == "inclusive: set in params.yaml (features.end_date_convention)"
    assert "suggests exclusive" in caplog.text  # a contradiction is worth a warning
    assert resolve_end_date_convention(subs(), "exclusive")[0] == EXCLUSIVE


def test_params_accept_only_the_three_values() -> None:
    assert FeatureParams().end_date_convention == "auto"
    assert FeatureParams(end_date_convention="exclusive").end_date_convention == EXCLUSIVE
    with pytest.raises(ValidationError, match="end_date_convention"):
        FeatureParams(end_date_convention="last_day")  # type: ignore[arg-type]


def test_to_inclusive_moves_exclusive_ends_back_a_day_on_a_copy() -> None:
    df = subs(("a", "2024-01-01", "2024-02-01"), ("a", "2024-02-01", None))
    before = df.copy()
    out = to_inclusive(df, EXCLUSIVE)
    assert out[Col.END_DATE].tolist()[0] == pd.Timestamp("2024-01-31")
    assert pd.isna(out[Col.END_DATE].iloc[1])
    assert out[Col.END_DATE].dtype == df[Col.END_DATE].dtype
    pd.testing.assert_frame_equal(df, before)
    assert to_inclusive(df, INCLUSIVE).equals(df)


# --------------------------------------------------------------------------- end to end


def history() -> dict[str, pd.DataFrame]:
    """The hand-built tables plus two accounts whose end dates fall on calendar edges.

    D (inclusive end 2024-03-31, gone): the exclusive end 2024-04-01 is both an as_of
    date and Jan 1 + 91 days, the day that decides churn of the Jan 1 snapshot.
    E (inclusive end 2024-02-28, renewed +25 % on 2024-02-29): the exclusive end is
    the day before the Mar 1 snapshot, the day the commercial features read.
    """
    frames = hb.tables()
    accounts = pd.DataFrame(
        {
            "account_id": ["D", "E"], "name": ["Delta", "Epsilon"],
            "segment": ["smb", "mid_market"], "industry": ["media", "software"],
            "region": ["emea", "amer"], "created_at": hb.ts(["2023-04-20", "2023-02-15"]),
            "csm_id": [None, "csm-3"],
        }
    )  # fmt: skip
    terms = pd.DataFrame(
        {
            "account_id": ["D", "E", "E"],
            "start_date": hb.ts(["2023-05-01", "2023-03-01", "2024-02-29"]),
            "end_date": hb.ts(["2024-03-31", "2024-02-28", None]),
            "mrr": [300.0, 400.0, 500.0], "seats": [3, 10, 12],
            "plan": ["starter", "growth", "growth"],
        }
    )  # fmt: skip
    for name, extra in ((T.ACCOUNTS, accounts), (T.SUBSCRIPTIONS, terms)):
        frames[name] = pd.concat([frames[name], extra], ignore_index=True)
    return frames


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The history written inclusive and exclusive (subscriptions as CSV, like many exports)."""
    root = tmp_path_factory.mktemp("conventions")
    csv = (T.SUBSCRIPTIONS,)
    inclusive = hb.write(history(), root / "inclusive", csv=csv)
    exclusive = hb.write(hb.with_exclusive_end_dates(history()), root / "exclusive", csv=csv)
    return inclusive, exclusive


def _row(frame: pd.DataFrame, account: str, as_of: str) -> pd.DataFrame:
    return frame[(frame[Col.ACCOUNT_ID] == account) & (frame[Col.AS_OF] == as_of)]


def test_both_conventions_give_the_same_snapshot_table(both: tuple[Path, Path]) -> None:
    inc = build_snapshots(both[0], hb.PARAMS)
    exc = build_snapshots(both[1], hb.PARAMS)
    assert (inc.end_date_convention, exc.end_date_convention) == (INCLUSIVE, EXCLUSIVE)
    assert exc.end_date_evidence == "exclusive: 3 of 3 consecutive terms touch (end = next start)"
    assert inc.end_date_evidence.startswith("inclusive: 3 of 3 consecutive terms")
    keys, labels = [Col.ACCOUNT_ID, Col.AS_OF], list(inc.labels.values())
    commercial = [f.name for f in inc.features if f.family == Family.COMMERCIAL]
    # membership, labels, commercial and renewal features, and everything else
    pd.testing.assert_frame_equal(inc.frame[keys], exc.frame[keys])
    pd.testing.assert_frame_equal(inc.frame[[Col.MRR, *labels]], exc.frame[[Col.MRR, *labels]])
    pd.testing.assert_frame_equal(inc.frame[commercial], exc.frame[commercial])
    pd.testing.assert_frame_equal(inc.frame, exc.frame)
    # D leaves after 2024-03-31: churn from every labelled snapshot, absent on Apr 1.
    assert _row(inc.frame, "D", "2024-01-01")["churn_90d"].item() == 1
    assert _row(inc.frame, "D", "2024-04-01").empty
    # E renewed on Feb 29: Mar 1 sees only the new term.
    assert _row(inc.frame, "E", "2024-03-01")["mrr_usd"].item() == 500.0


def test_setting_the_convention_explicitly(both: tuple[Path, Path]) -> None:
    auto = build_snapshots(both[1], hb.PARAMS).frame
    told = build_snapshots(
        both[1], hb.PARAMS.model_copy(update={"end_date_convention": "exclusive"})
    )
    assert told.end_date_evidence == "exclusive: set in params.yaml (features.end_date_convention)"
    pd.testing.assert_frame_equal(told.frame, auto)
    # Reading exclusive data as inclusive is the bug the detection prevents:
    wrong = build_snapshots(
        both[1], hb.PARAMS.model_copy(update={"end_date_convention": "inclusive"})
    )
    f = wrong.frame
    assert len(_row(f, "D", "2024-04-01")) == 1  # a snapshot on the day service ended
    assert _row(f, "D", "2024-01-01")["churn_90d"].item() == 0  # churn missed
    assert _row(f, "E", "2024-03-01")["mrr_usd"].item() == 900.0  # both terms counted
    assert _row(f, "B", "2024-03-01")[Col.MRR].item() == 2000.0


def test_simulator_data_in_both_conventions(tmp_path: Path) -> None:
    """The simulator writes one history either way; the snapshot tables are identical."""
    start = dt.date(2023, 3, 1)
    written = {
        convention: generate(80, 10, 3, start, 2, end_date_convention=convention)
        for convention in (INCLUSIVE, EXCLUSIVE)
    }
    inc_subs, exc_subs = (written[c].tables[T.SUBSCRIPTIONS] for c in (INCLUSIVE, EXCLUSIVE))
    shift = (exc_subs[Col.END_DATE] - inc_subs[Col.END_DATE]).dropna()
    assert len(shift) > 20 and (shift == pd.Timedelta(days=1)).all()  # really written apart
    params = FeatureParams(
        first_as_of=dt.date(2023, 6, 1), last_as_of=dt.date(2024, 1, 2),
        cutoff=dt.datetime(2024, 1, 1), key_event_types=("workflow_run", "api_call"),
    )  # fmt: skip
    inc, exc = (
        build_snapshots(hb.write(dict(written[c].tables), tmp_path / c), params)
        for c in (INCLUSIVE, EXCLUSIVE)
    )
    assert (inc.end_date_convention, exc.end_date_convention) == (INCLUSIVE, EXCLUSIVE)
    assert "(assumed)" not in inc.end_date_evidence + exc.end_date_evidence
    pd.testing.assert_frame_equal(inc.frame, exc.frame)
    assert inc.frame["churn_90d"].eq(1).any() and inc.frame["expansion_90d"].eq(1).any()
