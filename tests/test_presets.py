"""Model-behaviour tier: the whole product on data of other dynamics and history lengths.

Each simulator preset changes what drives churn (usage, support, outcomes, renewals only)
or how much history there is (12 and 15 months). On every one, run as a new user would
on a fresh MLflow store — generate, features, train, score through the CLI — and check
behaviour, not tuned numbers: training succeeds, every target has a champion, LightGBM
beats the best baseline on the pooled backtest, and scores do not tie.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from cshealth.cli import main
from features.contract import Col
from features.snapshots import SnapshotTable
from features.targets import TARGET_NAMES
from simulator import preset_names
from training import tracking
from training.metrics import tied_share

REPO = Path(__file__).resolve().parents[1]
#: large enough for a backtest with a few hundred positives, small enough for CI
ACCOUNTS = 600
#: history of the presets that do not set their own (short_12 and short_15 do)
MONTHS = 20


def _run(*argv: str) -> None:
    assert main(["-q", *argv]) == 0, argv


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_trains_a_champion_that_beats_the_baselines(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("CSHEALTH_DB_URL", raising=False)
    months = [] if preset.startswith("short_") else ["--months", str(MONTHS)]
    _run("generate", "--preset", preset, "--accounts", str(ACCOUNTS), "--seed", "7",
         "--truth-samples", "5", *months)  # fmt: skip
    _run("features")
    _run("train")
    out = capsys.readouterr().out
    _run("score")

    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    for target in TARGET_NAMES:
        assert "promoted to champion" in out, out
        model, version = tracking.load_champion(target)
        assert version == 1 and model.info["labels_up_to"] == metrics[target][
            "trained_on_labels_up_to"]  # fmt: skip
        assert metrics[target]["origins"] >= 2
    churn = metrics["churn"]["contenders"]
    best_baseline = max(churn["logistic"]["roc_auc"], churn["rules"]["roc_auc"])
    assert churn["lightgbm"]["roc_auc"] > best_baseline, (preset, churn)

    # Ties among accounts with different features, in what the store serves.
    snaps = SnapshotTable.read(Path("data/features/snapshots.parquet"))
    newest = snaps.frame[snaps.frame[Col.AS_OF] == snaps.frame[Col.AS_OF].max()]
    distinct = newest.drop_duplicates(subset=snaps.feature_names)[Col.ACCOUNT_ID]
    with sqlite3.connect(tmp_path / "data" / "scores.db") as con:
        scores = pd.read_sql("SELECT account_id, churn_probability, health_score FROM scores", con)
    scores = scores[scores[Col.ACCOUNT_ID].isin(distinct)]
    assert len(scores) == len(distinct) > 50
    assert tied_share(scores["churn_probability"].to_numpy()) <= 0.01
    assert tied_share(scores["health_score"].to_numpy()) <= 0.01
