"""`cshealth weekly`: check, features, score (+ alerts) and monitor on new data, no retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cshealth.cli import main
from serving.store import ScoreStore
from tests.serving_data import ServingSetup, serving_setup

pytestmark = pytest.mark.slow

STEPS = ("check", "features", "score", "monitor")


@pytest.fixture
def setup(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
          monkeypatch: pytest.MonkeyPatch) -> ServingSetup:  # fmt: skip
    """A copy of the trained set-up's registry and store; outputs go to `tmp_path`."""
    state = serving_setup(tmp_path_factory).copy_state(tmp_path / "state")
    monkeypatch.chdir(tmp_path)  # the default report folders land here
    for k, v in state.env().items():
        monkeypatch.setenv(k, v)
    return state


def _runs(setup: ServingSetup) -> list[dict]:
    store = ScoreStore(setup.db_url, create=False)
    try:
        return store.recent_runs(10)
    finally:
        store.close()


def _versions() -> int:
    from training import tracking

    return len(tracking.list_models())


def _weekly(setup: ServingSetup, raw: Path, snaps: Path) -> int:
    return main(["--params", str(setup.params), "weekly", "--data", str(raw),
                 "--features", str(snaps)])  # fmt: skip


def test_weekly_job_scores_and_monitors_without_training(
    setup: ServingSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, versions = _runs(setup), _versions()
    snaps = tmp_path / "snapshots.parquet"
    code = _weekly(setup, setup.root / "raw", snaps)
    out = capsys.readouterr().out
    assert code in (0, 1), out  # 1: the monitor found drift, every step ran
    for i, step in enumerate(STEPS, 1):
        assert f">> weekly {i}/{len(STEPS)}: {step}" in out
    assert ("drift found" in out) == (code == 1)
    runs = _runs(setup)
    assert len(runs) == len(before) + 1 and snaps.exists()
    monitor = json.loads((tmp_path / "reports" / "monitor.json").read_text())
    assert monitor["current"]["run_id"] == runs[0]["run_id"]
    assert monitor["crossed"] == (code == 1)
    assert _versions() == versions  # no retraining: the registry is untouched


def test_weekly_job_stops_before_scoring_bad_data(
    setup: ServingSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(setup.root / "raw", raw)
    accounts = pd.read_parquet(raw / "accounts.parquet")
    pd.concat([accounts, accounts.head(3)]).to_parquet(raw / "accounts.parquet")  # dup ids
    before = _runs(setup)
    snaps = tmp_path / "snapshots.parquet"
    assert _weekly(setup, raw, snaps) == 1
    captured = capsys.readouterr()
    assert "weekly job stopped at check" in captured.err
    assert ">> weekly 2/4" not in captured.out
    assert _runs(setup) == before and not snaps.exists()
