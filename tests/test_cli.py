"""CLI tier: the console command wires config, simulator and checks together."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cshealth.cli import main
from cshealth.config import ConfigError, load_config
from features.contract import TABLES, T


def test_generate_writes_every_table_and_truth(tmp_path: Path, capsys) -> None:
    out, truth = tmp_path / "raw", tmp_path / "truth.parquet"
    argv = ["generate", "--out", str(out), "--truth", str(truth), "--accounts", "25",
            "--months", "4", "--seed", "5", "--truth-samples", "5"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.stem for p in out.glob("*.parquet")) == sorted(TABLES)
    assert len(pd.read_parquet(truth)) > 0
    printed = capsys.readouterr().out
    assert "usage_events" in printed and "rows" in printed
    # No temporary folders are left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "truth.parquet"]


def test_generate_replaces_a_stale_csv(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / f"{T.ACCOUNTS}.csv").write_text("account_id\nx\n")
    argv = ["generate", "--out", str(out), "--truth", str(tmp_path / "t.parquet"),
            "--accounts", "10", "--months", "3", "--truth-samples", "2"]  # fmt: skip
    assert main(argv) == 0
    assert not (out / f"{T.ACCOUNTS}.csv").exists()


def test_check_exit_codes(generated_dir: Path, tmp_path: Path, capsys) -> None:
    reports = tmp_path / "checks"
    assert main(["check", str(generated_dir), "--reports", str(reports)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("OK")
    assert "subscriptions.end_date convention: inclusive: " in printed
    bad = tmp_path / "bad"
    shutil.copytree(generated_dir, bad)
    (bad / f"{T.SUBSCRIPTIONS}.parquet").unlink()
    assert main(["check", str(bad), "--reports", str(reports)]) == 1
    err = capsys.readouterr().err
    assert "subscriptions" in err and "FAILED" in err
    assert (reports / "summary.json").exists()


def test_bad_params_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("simulator:\n  accounts: -3\n")
    assert main(["--params", str(params), "generate"]) == 2
    err = capsys.readouterr().err
    assert "simulator.accounts" in err and str(params) in err
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_repo_params_file_loads() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    assert cfg.simulator.months >= 1
    with pytest.raises(Exception):  # noqa: B017 - frozen config
        cfg.simulator.months = 2  # type: ignore[misc]


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("cshealth")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "generate" in out.stdout and "check" in out.stdout


def test_features_stage_writes_checked_snapshots(
    generated_dir: Path, tmp_path: Path, capsys
) -> None:
    import json

    out = tmp_path / "snap" / "snapshots.parquet"
    params = tmp_path / "params.yaml"
    report = tmp_path / "checks" / "snap.json"
    params.write_text(f"checks:\n  snapshot_report: {report}\n")
    argv = ["--params", str(params), "features", "--data", str(generated_dir), "--out", str(out)]
    assert main(argv) == 0
    df = pd.read_parquet(out)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    names = [f["name"] for f in meta["features"]]
    assert len(names) >= 40 and set(names) <= set(df.columns)
    assert meta["labels"] == {"churn": "churn_90d", "expansion": "expansion_90d"}
    assert meta["horizon_days"] == 90 and meta["end_date_convention"] == "inclusive"
    printed = capsys.readouterr().out
    assert "snapshots x" in printed
    assert "subscriptions.end_date convention: inclusive: " in printed
    assert json.loads(report.read_text())["success"]


def test_features_stage_writes_nothing_when_the_suite_fails(
    generated_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "snapshots.parquet"
    params = tmp_path / "params.yaml"
    # No real data set has 90 % churn: the prevalence check must stop the stage.
    params.write_text(
        f"checks:\n  snapshot_report: {tmp_path / 's.json'}\n  label_prevalence: [0.9, 1.0]\n"
    )
    argv = ["--params", str(params), "features", "--data", str(generated_dir), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "churn_90d" in err and "prevalence" in err and "nothing written" in err
    assert not out.exists()
