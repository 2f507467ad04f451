"""Simulator tier: determinism, contract conformance, stated rates, segment behaviour."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from cshealth.simulator import HORIZON_DAYS, SimResult, generate
from features.contract import TABLES, TRUTH, Col, T
from features.io import coerce_frame


@pytest.fixture(scope="module")
def medium() -> SimResult:
    """Large enough for stable rates, small enough for a second or two."""
    return generate(accounts=500, months=18, seed=11, start=dt.date(2024, 1, 1), truth_samples=30)


def _mrr_on(subs: pd.DataFrame, day: pd.Timestamp) -> pd.Series:
    active = (subs[Col.START_DATE] <= day) & (
        subs[Col.END_DATE].isna() | (subs[Col.END_DATE] >= day)
    )
    return subs[active].groupby(Col.ACCOUNT_ID)[Col.MRR].sum()


def _realised_rates(sim: SimResult, months: int, start: str) -> tuple[float, float]:
    """90-day churn / expansion among accounts active at each fully observed month start."""
    subs = sim.tables[T.SUBSCRIPTIONS]
    churn, expand = [], []
    for as_of in pd.date_range(start, periods=months - 3, freq="MS")[1:]:
        mrr0 = _mrr_on(subs, as_of)
        mrr_h = _mrr_on(subs, as_of + pd.Timedelta(days=HORIZON_DAYS)).reindex(mrr0.index)
        mrr_h = mrr_h.fillna(0.0)
        churn.append((mrr_h == 0).mean())
        expand.append((mrr_h >= 1.10 * mrr0).mean())
    return float(np.mean(churn)), float(np.mean(expand))


def test_same_seed_same_data(generated: SimResult) -> None:
    again = generate(accounts=80, months=10, seed=3, start=dt.date(2023, 3, 1), truth_samples=20)
    for name, df in generated.tables.items():
        pd.testing.assert_frame_equal(df, again.tables[name], obj=name)
    pd.testing.assert_frame_equal(generated.truth, again.truth)


def test_other_seed_other_data(generated: SimResult) -> None:
    other = generate(accounts=80, months=10, seed=4, start=dt.date(2023, 3, 1), truth_samples=20)
    assert not generated.tables[T.USAGE_EVENTS].equals(other.tables[T.USAGE_EVENTS])


def test_tables_meet_the_contract(generated: SimResult) -> None:
    assert set(generated.tables) == set(TABLES)
    for name, df in generated.tables.items():
        assert list(df.columns) == TABLES[name].column_names, name
        _, issues = coerce_frame(df, TABLES[name])
        assert issues == [], name
        assert len(df) > 0, name
    assert list(generated.truth.columns) == TRUTH.column_names


def test_stated_rates(medium: SimResult) -> None:
    """README: 90-day churn 3–15 %, expansion 5–20 % among active accounts."""
    churn, expand = _realised_rates(medium, 18, "2024-01-01")
    assert 0.03 <= churn <= 0.15
    assert 0.05 <= expand <= 0.20
    truth = medium.truth
    assert 0.03 <= truth[Col.TRUE_CHURN_PROBABILITY].mean() <= 0.15
    assert 0.05 <= truth[Col.TRUE_EXPANSION_PROBABILITY].mean() <= 0.20
    # The truth is the probability of what the tables show: means agree.
    assert abs(truth[Col.TRUE_CHURN_PROBABILITY].mean() - churn) < 0.02


def test_truth_ranks_realised_churn(medium: SimResult) -> None:
    """Accounts with a high true probability churn more often than those with a low one."""
    subs = medium.tables[T.SUBSCRIPTIONS]
    as_of = pd.Timestamp("2024-06-01")
    mrr0 = _mrr_on(subs, as_of)
    gone = _mrr_on(subs, as_of + pd.Timedelta(days=HORIZON_DAYS)).reindex(mrr0.index).isna()
    truth = medium.truth[medium.truth[Col.AS_OF] == as_of].set_index(Col.ACCOUNT_ID)
    p = truth[Col.TRUE_CHURN_PROBABILITY].reindex(mrr0.index)
    assert gone[p >= p.quantile(0.8)].mean() > 2 * gone[p <= p.quantile(0.5)].mean()


def test_truth_covers_active_accounts(generated: SimResult) -> None:
    subs = generated.tables[T.SUBSCRIPTIONS]
    truth = generated.truth
    for as_of in pd.date_range("2023-04-01", periods=9, freq="MS"):
        active = set(_mrr_on(subs, as_of).index)
        assert set(truth.loc[truth[Col.AS_OF] == as_of, Col.ACCOUNT_ID]) == active
    assert (
        truth[[Col.TRUE_CHURN_PROBABILITY, Col.TRUE_EXPANSION_PROBABILITY]]
        .stack()
        .between(0, 1)
        .all()
    )
    assert not truth.duplicated([Col.ACCOUNT_ID, Col.AS_OF]).any()


def test_observations_stay_inside_the_data_window(generated: SimResult) -> None:
    cutoff = pd.Timestamp("2024-01-01")
    t = generated.tables
    assert t[T.USAGE_EVENTS][Col.EVENT_TIME].max() < cutoff
    assert t[T.SUPPORT_TICKETS][Col.CREATED_AT].max() < cutoff
    assert (t[T.SUPPORT_TICKETS][Col.RESOLVED_AT].dropna() < cutoff).all()
    assert t[T.NPS_RESPONSES][Col.RESPONDED_AT].max() < cutoff
    assert t[T.OUTCOME_MEASUREMENTS][Col.MEASURED_AT].max() < cutoff
    # Only the cutoff day itself may see a (renewal) subscription start.
    assert t[T.SUBSCRIPTIONS][Col.START_DATE].max() <= cutoff


def test_usage_only_while_subscribed(generated: SimResult) -> None:
    subs = generated.tables[T.SUBSCRIPTIONS]
    ev = generated.tables[T.USAGE_EVENTS]
    first = subs.groupby(Col.ACCOUNT_ID)[Col.START_DATE].min()
    last_end = subs.groupby(Col.ACCOUNT_ID)[Col.END_DATE].agg(
        lambda s: pd.NaT if s.isna().any() else s.max()
    )
    span = ev.groupby(Col.ACCOUNT_ID, observed=True)[Col.EVENT_TIME].agg(["min", "max"])
    assert (span["min"] >= first.reindex(span.index)).all()
    ended = last_end.reindex(span.index).dropna()
    assert (span.loc[ended.index, "max"] < ended + pd.Timedelta(days=1)).all()


def test_segments_behave_differently(medium: SimResult) -> None:
    acc = medium.tables[T.ACCOUNTS].set_index(Col.ACCOUNT_ID)[Col.SEGMENT]
    subs = medium.tables[T.SUBSCRIPTIONS]
    seats = subs.groupby(Col.ACCOUNT_ID)[Col.SEATS].first().groupby(acc).median()
    assert seats["enterprise"] > seats["mid_market"] > seats["smb"]
    # Tech-touch: most SMB accounts have no CSM, every enterprise account has one.
    csm = (
        medium.tables[T.ACCOUNTS].groupby(Col.SEGMENT)[Col.CSM_ID].apply(lambda s: s.isna().mean())
    )
    assert csm["smb"] > 0.4
    assert csm["enterprise"] == 0.0
    truth = medium.truth.join(acc, on=Col.ACCOUNT_ID)
    by_seg = truth.groupby(Col.SEGMENT)[Col.TRUE_CHURN_PROBABILITY].mean()
    assert by_seg["smb"] > by_seg["enterprise"]


def test_no_single_column_gives_the_answer(medium: SimResult) -> None:
    """Engaged accounts file tickets too: ticket volume alone does not mean churn."""
    tk = medium.tables[T.SUPPORT_TICKETS]
    cats = tk.groupby(Col.CATEGORY).size()
    assert {"how_to", "feature_request", "bug"} <= set(cats.index)
    by_cat = tk.groupby(Col.CATEGORY)[Col.PRIORITY].apply(
        lambda s: s.isin(["high", "urgent"]).mean()
    )
    assert by_cat["bug"] > by_cat["how_to"]


def test_nps_and_goals_look_like_surveys(generated: SimResult) -> None:
    nps = generated.tables[T.NPS_RESPONSES]
    assert nps[Col.SCORE].between(0, 10).all()
    assert 0.2 < nps[Col.COMMENT].notna().mean() < 0.6
    out = generated.tables[T.OUTCOMES]
    assert (out[Col.DUE_DATE] > out[Col.START_DATE]).all()
    meas = generated.tables[T.OUTCOME_MEASUREMENTS]
    assert set(meas[Col.OUTCOME_ID]) <= set(out[Col.OUTCOME_ID])
    assert not meas.duplicated([Col.OUTCOME_ID, Col.MEASURED_AT]).any()
