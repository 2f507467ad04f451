"""Simulator tier: determinism, contract conformance, stated rates, segments, presets, options."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from cshealth.cli import main
from cshealth.config import ConfigError, SimulatorParams, load_config
from features.contract import TABLES, TRUTH, Col, T
from features.io import coerce_frame
from simulator import PRESETS, SimResult, Simulator, generate, get_preset, preset_names
from simulator.core import churn_terms

HORIZON_DAYS = 90  # the label default, which generate() takes when given none
START = dt.date(2024, 1, 1)


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


# ----- the default preset is today's behaviour ----------------------------------------------
def test_default_preset_fingerprint(generated: SimResult) -> None:
    """Pinned figures of the shared fixture: the default dynamics must not drift silently."""
    rows = {name: len(df) for name, df in generated.tables.items()}
    assert rows == {
        T.ACCOUNTS: 80, T.SUBSCRIPTIONS: 118, T.USAGE_EVENTS: 215_558, T.SUPPORT_TICKETS: 381,
        T.NPS_RESPONSES: 294, T.OUTCOMES: 156, T.OUTCOME_MEASUREMENTS: 452,
    }  # fmt: skip
    assert generated.tables[T.SUBSCRIPTIONS][Col.MRR].sum() == pytest.approx(422_539.22)
    assert generated.truth[Col.TRUE_CHURN_PROBABILITY].mean() == pytest.approx(0.0791925, abs=1e-6)
    assert (generated.truth[Col.HORIZON_DAYS] == HORIZON_DAYS).all()


# ----- presets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", preset_names())
def test_every_preset_has_sane_rates(name: str) -> None:
    """Each preset keeps 90-day churn within 3-15 % and expansion within 3-20 %."""
    months = get_preset(name).months or 14
    sim = generate(150, months, 1, START, truth_samples=3, preset=name)
    churn, expand = _realised_rates(sim, months, START.isoformat())
    assert 0.03 <= churn <= 0.15, churn
    assert 0.03 <= expand <= 0.20, expand
    assert sim.truth[Col.AS_OF].nunique() == months + 1


def _driver_shares(name: str) -> pd.Series:
    """Variance share of each behavioural term of the churn log-odds, at the data cutoff."""
    sim = Simulator(400, 12, 2, START, truth_samples=1, dynamics=get_preset(name))
    sim.run()
    st = sim.state.take(np.flatnonzero(sim.state.alive))
    terms = churn_terms(st, sim.months, sim.dyn)
    var = pd.Series({k: float(np.var(v)) for k, v in terms.items() if k != "base"})
    return var / var.sum()


@pytest.mark.parametrize(
    ("name", "driver"),
    [("usage_driven", "engagement"), ("support_driven", "friction"),
     ("outcome_driven", "attainment")],
)  # fmt: skip
def test_single_driver_presets_are_dominated_by_their_driver(name: str, driver: str) -> None:
    shares = _driver_shares(name)
    assert shares.idxmax() == driver
    assert shares[driver] > 0.8, shares.round(3).to_dict()


def test_default_preset_mixes_drivers() -> None:
    shares = _driver_shares("default")
    assert shares.max() < 0.7
    assert (shares[["engagement", "attainment"]] > 0.15).all(), shares.round(3).to_dict()


def test_renewal_only_changes_only_at_yearly_renewals() -> None:
    sim = generate(150, 14, 5, START, truth_samples=2, preset="renewal_only")
    subs = sim.tables[T.SUBSCRIPTIONS]
    # Every row is one annual term: any change (churn, expansion, contraction) ends it.
    assert subs[Col.END_DATE].notna().all()
    one_year = subs[Col.START_DATE] + pd.DateOffset(years=1) - pd.Timedelta(days=1)
    assert (subs[Col.END_DATE] == one_year).all()
    assert subs[Col.END_DATE].dt.month.nunique() == 12  # renewals spread over the year
    mrr_change = subs.groupby(Col.ACCOUNT_ID)[Col.MRR].diff().dropna()
    assert (mrr_change > 0).any() and (mrr_change < 0).any()


def test_preset_months_and_explicit_months() -> None:
    short = generate(20, None, 1, START, truth_samples=1, preset="short_12")
    assert short.truth[Col.AS_OF].max() == pd.Timestamp("2025-01-01")
    longer = generate(20, 13, 1, START, truth_samples=1, preset=PRESETS["short_12"])
    assert longer.truth[Col.AS_OF].max() == pd.Timestamp("2025-02-01")
    with pytest.raises(ValueError, match="pass months"):
        generate(20, None, 1, START, preset="default")


def test_unknown_preset_lists_the_names() -> None:
    with pytest.raises(ValueError, match="renewal_only, usage_driven"):
        generate(20, 3, 1, START, preset="nope")
    with pytest.raises(ValueError, match="default, renewal_only"):
        SimulatorParams(preset="nope")


# ----- end-date convention, horizon --------------------------------------------------------
def _next_start(subs: pd.DataFrame) -> pd.Series:
    return subs.groupby(Col.ACCOUNT_ID)[Col.START_DATE].shift(-1)


def test_end_date_conventions() -> None:
    args = (60, 10, 2, START)
    inc = generate(*args, truth_samples=2, end_date_convention="inclusive")
    exc = generate(*args, truth_samples=2, end_date_convention="exclusive")
    s_inc, s_exc = inc.tables[T.SUBSCRIPTIONS], exc.tables[T.SUBSCRIPTIONS]
    nxt = _next_start(s_inc)
    consecutive = nxt.notna()
    assert consecutive.sum() > 10
    assert (s_inc.loc[consecutive, Col.END_DATE] == nxt[consecutive] - pd.Timedelta(days=1)).all()
    assert (s_exc.loc[consecutive, Col.END_DATE] == nxt[consecutive]).all()
    # e.g. a January-December term: 2024-12-31 inclusive, 2025-01-01 exclusive
    assert (s_inc[Col.END_DATE].dt.is_month_end | s_inc[Col.END_DATE].isna()).all()
    assert (s_exc[Col.END_DATE].dt.is_month_start | s_exc[Col.END_DATE].isna()).all()
    shifted = s_inc[Col.END_DATE] + pd.Timedelta(days=1)
    pd.testing.assert_series_equal(shifted, s_exc[Col.END_DATE])
    for name in TABLES:
        if name != T.SUBSCRIPTIONS:
            pd.testing.assert_frame_equal(inc.tables[name], exc.tables[name], obj=name)
    pd.testing.assert_frame_equal(inc.truth, exc.truth)
    with pytest.raises(ValueError, match="end_date_convention"):
        generate(*args, end_date_convention="last_day")  # type: ignore[arg-type]


def test_horizon_and_threshold_reach_the_truth() -> None:
    args = (80, 8, 4, START)
    base = generate(*args, truth_samples=20)
    short = generate(*args, truth_samples=20, horizon_days=30, expansion_threshold=0.5)
    assert (short.truth[Col.HORIZON_DAYS] == 30).all()
    # The tables do not depend on the horizon; the probabilities shrink with it.
    for name in TABLES:
        pd.testing.assert_frame_equal(base.tables[name], short.tables[name], obj=name)
    for col in (Col.TRUE_CHURN_PROBABILITY, Col.TRUE_EXPANSION_PROBABILITY):
        assert short.truth[col].mean() < 0.7 * base.truth[col].mean(), col
    with pytest.raises(ValueError, match="horizon_days"):
        generate(*args, horizon_days=0)


# ----- configuration and CLI --------------------------------------------------------------------
def test_cli_preset_and_convention_options(tmp_path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "simulator:\n  preset: short_15\n  end_date_convention: exclusive\n"
        "features:\n  horizon_days: 60\n"
    )
    cfg = load_config(params)
    assert (cfg.simulator.preset, cfg.simulator.end_date_convention) == ("short_15", "exclusive")
    out, truth = tmp_path / "raw", tmp_path / "truth.parquet"
    argv = ["--params", str(params), "generate", "--out", str(out), "--truth", str(truth),
            "--accounts", "20", "--truth-samples", "2", "--preset", "short_12"]  # fmt: skip
    assert main(argv) == 0
    assert "preset short_12" in capsys.readouterr().out
    tr = pd.read_parquet(truth)
    assert tr[Col.AS_OF].nunique() == 13 and (tr[Col.HORIZON_DAYS] == 60).all()
    subs = pd.read_parquet(out / "subscriptions.parquet")
    assert subs[Col.END_DATE].dropna().dt.is_month_start.all()  # exclusive, from params
    assert main([*argv, "--months", "4", "--end-date-convention", "inclusive"]) == 0
    assert pd.read_parquet(truth)[Col.AS_OF].nunique() == 5
    subs = pd.read_parquet(out / "subscriptions.parquet")
    assert subs[Col.END_DATE].dropna().dt.is_month_end.all()


def test_cli_lists_presets_and_rejects_unknown_ones(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in preset_names())
    with pytest.raises(SystemExit):
        main(["generate", "--preset", "nope"])
    assert "invalid choice" in capsys.readouterr().err
    params = tmp_path / "params.yaml"
    params.write_text("simulator:\n  preset: nope\n")
    with pytest.raises(ConfigError, match="choose one of: default"):
        load_config(params)
