"""Realised accuracy: outcomes of past runs, backfill runs in the store, `cshealth replay`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from features.contract import Col
from features.settings import FeatureParams
from features.snapshots import SnapshotTable
from serving.realised import (
    STATUS_TEXT,
    outcomes,
    realised,
    replay_dates,
    status_of,
    summary_line,
)
from serving.settings import RealisedParams
from serving.store import ScoreStore
from tests.serving_data import ServingSetup, serving_setup
from tests.test_store import _item, _run, store  # noqa: F401 (the store fixture)

H = 90
LABELS = FeatureParams(horizon_days=H)
D = pd.Timestamp


def _subs(rows: list[tuple[str, str, str | None, float]]) -> pd.DataFrame:
    """Subscriptions (inclusive end dates): account, start, end, MRR."""
    return pd.DataFrame({
        Col.ACCOUNT_ID: [r[0] for r in rows], Col.START_DATE: [D(r[1]) for r in rows],
        Col.END_DATE: [D(r[2]) if r[2] else pd.NaT for r in rows], Col.MRR: [r[3] for r in rows],
    })  # fmt: skip


# A churns (term ends inside the window), B renews, C churns too, D is not active yet.
SUBS = _subs([
    ("A", "2024-01-01", "2025-02-28", 100.0),
    ("B", "2024-01-01", "2025-03-31", 200.0), ("B", "2025-04-01", "2026-03-31", 220.0),
    ("C", "2024-06-01", "2025-01-31", 300.0),
    ("D", "2025-06-01", None, 50.0),
])  # fmt: skip
CUTOFF = D("2025-12-31 23:00")


def test_outcomes_follow_the_subscriptions() -> None:
    keys = pd.DataFrame({Col.ACCOUNT_ID: list("ABCD"), Col.AS_OF: D("2025-01-15")})
    out = outcomes(keys, SUBS, CUTOFF, LABELS).set_index(Col.ACCOUNT_ID)
    assert out["active"].to_dict() == {"A": True, "B": True, "C": True, "D": False}
    assert out.loc[["A", "B", "C"], "churn_90d"].tolist() == [1, 0, 1]
    assert out.loc["B", "mrr"] == 200.0 and out.loc["A", "mrr"] == 100.0
    # the window is not over by the cutoff: no outcome, never a 0
    late = keys.assign(**{Col.AS_OF: D("2025-11-01")})
    assert outcomes(late, SUBS, CUTOFF, LABELS)["churn_90d"].isna().all()


def _stored(run_id: str, as_of: str, models_cutoff: str | None, version: str = "1") -> dict:
    return {"run_id": run_id, "as_of": as_of, "models_cutoff": models_cutoff, "backfill": False,
            "churn_model_version": version, "expansion_model_version": version}  # fmt: skip


def test_status_says_which_runs_can_count() -> None:
    assert status_of(_stored("r", "2025-01-15", "2024-12-31"), CUTOFF, H) == "evaluated"
    assert status_of(_stored("r", "2025-01-15", "2025-01-15"), CUTOFF, H) == "in_sample"
    assert status_of(_stored("r", "2025-01-15", None), CUTOFF, H) == "unknown_training"
    assert status_of(_stored("r", "2025-11-01", "2024-12-31"), CUTOFF, H) == "pending"
    assert set(STATUS_TEXT) >= {"evaluated", "pending", "in_sample", "repeat", "too_few"}


def _prediction(account: str, p: float, band: str) -> dict:
    return {Col.ACCOUNT_ID: account, "churn_probability": p, "expansion_probability": 0.1,
            "band": band}  # fmt: skip


# A and C churn; the run ranks them first, but C (the larger ARR) was left green.
PREDICTED = [_prediction("A", 0.6, "red"), _prediction("C", 0.5, "green"),
             _prediction("B", 0.1, "green"), _prediction("D", 0.9, "red")]  # fmt: skip


def test_realised_figures_per_run_and_pooled() -> None:
    runs = [
        _stored("old", "2025-01-15", "2024-12-31"),  # superseded by "again" (same models)
        _stored("again", "2025-01-15", "2024-12-31"),
        _stored("leaky", "2025-01-15", "2025-06-30", version="2"),  # champion of later data
        _stored("young", "2025-11-01", "2025-10-31"),
    ]
    asked: list[str] = []

    def predictions(run_id: str) -> list[dict]:
        asked.append(run_id)
        return PREDICTED

    rep = realised(runs, predictions, SUBS, CUTOFF, LABELS, RealisedParams(min_accounts=2))
    by_id = {r["run_id"]: r for r in rep["runs"]}
    assert [by_id[k]["status"] for k in ("old", "again", "leaky", "young")] == [
        "repeat", "evaluated", "in_sample", "pending"]  # fmt: skip
    assert "young" not in asked and "old" not in asked  # only what can be measured is read
    m = by_id["again"]["metrics"]
    assert by_id["again"]["known"] == 3  # D was not a customer at as_of: left out
    assert m["churned"] == 2 and m["roc_auc"] == 1.0
    assert m["flagged_churned_arr_share"] == pytest.approx(100 / 400)  # A's, not C's ARR
    assert m["flagged_churned_share"] == 0.5
    assert m["churned_arr"] == pytest.approx(400 * 12)
    assert m["predicted_churn_rate"] == pytest.approx(1.2 / 3)
    # pooled: the one counted run (the in-sample one is listed, never pooled)
    assert rep["pooled"]["runs"] == 1 and rep["pooled"]["known"] == 3
    assert rep["pooled"]["metrics"]["roc_auc"] == 1.0
    assert "90 days" in rep["definition"] and "red or yellow" in rep["definition"]
    assert "churn AUC 1.000" in summary_line(rep)
    json.dumps(rep)  # JSON-ready


def test_too_few_known_outcomes_are_not_counted() -> None:
    runs = [_stored("r", "2025-01-15", "2024-12-31")]
    rep = realised(runs, lambda _: PREDICTED, SUBS, CUTOFF, LABELS, RealisedParams())
    assert rep["runs"][0]["status"] == "too_few" and rep["pooled"] is None
    assert summary_line(rep).startswith("realised accuracy: no out-of-time run")


def test_replay_dates() -> None:
    grid = [D(f"2025-{m:02d}-01") for m in range(1, 13)]
    labelled = grid[:9]
    assert replay_dates(grid, labelled, 3) == grid[6:9]
    assert replay_dates(grid, labelled, 2, dt.date(2025, 3, 1)) == grid[2:4]
    with pytest.raises(ValueError, match="no snapshot at 2025-03-15"):
        replay_dates(grid, labelled, 2, dt.date(2025, 3, 15))


# ----- the store: backfill runs are history, never served ------------------------------
def _at(i: int, as_of: dt.date, **extra: object) -> dict:
    return {**_run(i), "as_of": as_of, **extra}


def test_backfill_runs_are_kept_but_not_served(store: ScoreStore) -> None:  # noqa: F811
    feats = [{"account_id": "A", "as_of": "2026-01-02", "features": {"seats": 3.0}}]
    store.write_run(_at(1, dt.date(2026, 1, 2), models_cutoff=dt.date(2026, 1, 1)),
                    [_item("A", 60.0)], feats)  # fmt: skip
    old = [{"account_id": "A", "as_of": "2025-10-01", "features": {"seats": 1.0}}]
    item = {**_item("A", 40.0), "as_of": "2025-10-01"}
    store.write_run(_at(2, dt.date(2025, 10, 1), backfill=True), [item], old)
    assert store.latest_run()["run_id"] == "run1"  # the backfill is newer, not served
    assert [r["run_id"] for r in store.recent_runs(5)] == ["run1"]
    assert store.latest_scores(["A"])["A"]["health_score"] == 60.0
    assert store.list_latest()[0] == 1 and store.features(["A"])["A"]["run_id"] == "run1"
    runs = store.all_runs()  # oldest as_of first, with what realised accuracy needs
    assert [(r["run_id"], r["backfill"]) for r in runs] == [("run2", True), ("run1", False)]
    assert runs[1]["models_cutoff"] == "2026-01-01" and runs[0]["models_cutoff"] is None
    assert [h["run_id"] for h in store.history("A")] == ["run2", "run1"]  # by as_of
    assert store.predictions("run2") == [{"account_id": "A", "churn_probability": 0.1,
                                          "expansion_probability": 0.2, "band": "yellow"}]
    # the next served run is compared with the served one, not with the backfill
    store.write_run(_at(3, dt.date(2026, 2, 1)), [_item("A", 65.0)], [])
    assert store.latest_scores(["A"])["A"]["health_change"] == 5.0


# ----- on the shared trained set-up -------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> ServingSetup:
    return serving_setup(tmp_path_factory)


@pytest.mark.slow
def test_outcomes_equal_the_snapshot_labels(shared: ServingSetup) -> None:
    """At the snapshot dates, outcomes read from the subscriptions are the training labels."""
    from cshealth.cli import _subscriptions

    snaps = SnapshotTable.read(shared.snapshots)
    label = snaps.labels["churn"]
    rows = snaps.frame[snaps.frame[Col.AS_OF] < snaps.frame[Col.AS_OF].max()]
    subs = _subscriptions(shared.root / "raw", snaps)
    got = outcomes(rows[[Col.ACCOUNT_ID, Col.AS_OF]], subs, snaps.cutoff,
                   FeatureParams(horizon_days=snaps.horizon_days))  # fmt: skip
    assert got["active"].all()
    pd.testing.assert_series_equal(got[label], rows[label], check_names=False)
    assert rows[label].notna().sum() > 100


@pytest.mark.slow
def test_known_at_hides_what_was_not_known_then(shared: ServingSetup) -> None:
    snaps = SnapshotTable.read(shared.snapshots)
    dates = sorted(snaps.frame[Col.AS_OF].unique())
    t0 = pd.Timestamp(dates[len(dates) // 2])
    known = snaps.known_at(t0)
    label = snaps.labels["churn"]
    assert known.frame[Col.AS_OF].max() == t0 and known.cutoff < t0
    seen = known.frame[known.frame[label].notna()]
    assert len(seen) and (seen[Col.AS_OF] + pd.Timedelta(days=snaps.horizon_days + 1) < t0).all()
    assert len(known.frame) < len(snaps.frame) and snaps.frame[label].notna().sum() > len(seen)


def _in_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Work in `tmp_path` (default reports/ land there) with a training metrics file."""
    from tests.test_report import METRICS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir(exist_ok=True)
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(METRICS))


def _cli(setup: ServingSetup, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    from cshealth.cli import main

    for k, v in setup.env().items():
        monkeypatch.setenv(k, v)
    return main(["-q", "--params", str(setup.params), *argv])


@pytest.mark.slow
def test_replay_then_monitor_measure_realised_accuracy(
    shared: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    setup = shared.copy_state(tmp_path / "state")
    served = ScoreStore(setup.db_url).latest_run()["run_id"]
    data = ["--features", str(setup.snapshots), "--data", str(setup.root / "raw")]
    assert _cli(setup, monkeypatch, "replay", *data, "--runs", "2") == 0
    out = capsys.readouterr().out
    assert out.count("(backfill run ") == 2 and "realised accuracy over 2 past run(s)" in out
    st = ScoreStore(setup.db_url)
    runs = st.all_runs()
    assert st.latest_run()["run_id"] == served  # replay runs are never served
    st.close()
    replayed = [r for r in runs if r["backfill"]]
    assert len(replayed) == 2 and all(r["churn_model_version"].startswith("replay-")
                                      for r in replayed)  # fmt: skip
    assert all(r["models_cutoff"] < r["as_of"] for r in replayed)  # out of time
    _in_folder(tmp_path, monkeypatch)
    _cli(setup, monkeypatch, "monitor", *data)
    rep = json.loads((tmp_path / "reports" / "monitor.json").read_text())["realised"]
    assert rep["pooled"]["runs"] == 2
    auc = rep["pooled"]["metrics"]["roc_auc"]
    assert 0.5 < auc <= 1 and not math.isnan(rep["pooled"]["metrics"]["ece"])
    statuses = {r["run_id"]: r["status"] for r in rep["runs"]}
    assert statuses[served] == "pending"  # the newest run's window is still open
    # the report shows it, with its definition next to it
    html = tmp_path / "report.html"
    assert _cli(setup, monkeypatch, "report", *data[:2], "--out", str(html)) == 0
    page = html.read_text()
    section = page[page.index('id="realised"'):page.index('id="drift"')]
    assert f"{auc:.2f}" in section and "How this is measured" in section
    assert section.count("backfill") == 2 and "outcome window not over yet" in section


@pytest.mark.slow
def test_two_successive_months_give_a_drift_section(
    shared: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    setup = dataclasses.replace(shared.copy_state(tmp_path / "state"),
                                store_db=tmp_path / "fresh.db")  # fmt: skip
    snaps = SnapshotTable.read(setup.snapshots)
    dates = sorted(snaps.frame[Col.AS_OF].unique())
    month = pd.Timestamp(dates[-2]).date().isoformat()
    feats = ["--features", str(setup.snapshots)]
    assert _cli(setup, monkeypatch, "score", *feats, "--as-of", month) == 0
    assert _cli(setup, monkeypatch, "score", *feats) == 0
    assert "backfill" not in capsys.readouterr().out  # dates in order: both served
    _in_folder(tmp_path, monkeypatch)
    code = _cli(setup, monkeypatch, "monitor", *feats, "--reference", "previous",
                "--data", str(setup.root / "raw"))  # fmt: skip
    d = json.loads((tmp_path / "reports" / "monitor.json").read_text())
    assert code == (1 if d["crossed"] else 0)
    assert d["reference"]["kind"] == "previous" and d["reference"]["as_of_to"] == month
    html = tmp_path / "report.html"
    assert _cli(setup, monkeypatch, "report", *feats, "--out", str(html)) == 0
    page = html.read_text()
    assert 'id="drift"' in page and "compared with" in page and "the previous run" in page
    assert "Not measured" not in page  # drift, and realised accuracy (nothing known yet)
    assert "No out-of-time scoring run has a known outcome yet" in page


def test_realised_template_renders_every_state() -> None:
    from cshealth.report import environment

    template = environment().get_template("realised.html.j2")
    assert "cshealth replay" in template.render(realised=None)
    assert "no subscriptions" in template.render(realised={"error": "no subscriptions"})
    runs = [_stored("r", "2025-01-15", "2024-12-31")]
    rep = realised(runs, lambda _: PREDICTED, SUBS, CUTOFF, LABELS, RealisedParams(min_accounts=1))
    html = template.render(realised=rep)
    assert "1.00" in html and "25%" in html and "How this is measured" in html


@pytest.mark.slow
def test_replay_on_a_short_history_starts_where_it_can_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """14 months of another preset: the default start leaves too little history to train;
    replay moves on to the first date it can, and says so. No registry is needed."""
    from cshealth.cli import main
    from cshealth.config import load_config
    from features.pipeline import build_snapshots
    from simulator import generate, write_dataset

    raw, table = tmp_path / "raw", tmp_path / "snapshots.parquet"
    sim = generate(300, 14, 42, dt.date(2024, 1, 1), truth_samples=2, preset="support_driven")
    write_dataset(sim, raw, None)
    build_snapshots(raw, load_config().features).write(table)
    monkeypatch.setenv("CSHEALTH_DB_URL", f"sqlite:///{tmp_path / 'scores.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'no-registry.db'}")
    assert main(["-q", "replay", "--features", str(table), "--data", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "too little history before" in out and "starting at the next date" in out
    assert "realised accuracy over 1 past run(s)" in out, out
    assert not (tmp_path / "no-registry.db").exists()  # trained in memory, nothing registered
    # an explicit start is the user's choice: no moving on, a one-line error instead
    first = out.split("too little history before ")[1][:10]
    assert main(["-q", "replay", "--features", str(table), "--data", str(raw),
                 "--start", first]) == 2  # fmt: skip
    assert "replay a later date (--start) or fewer (--runs)" in capsys.readouterr().err
