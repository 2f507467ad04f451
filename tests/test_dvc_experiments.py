"""`dvc exp run` end to end on a throwaway git repo holding the pipeline (issue 12).

The repo gets the working tree's `dvc.yaml`, `params.yaml` (small simulator settings),
DVC config and every source path a stage depends on, so uncommitted changes are what
is tested; the stages run the `cshealth` of this venv. MLflow and the score store live
in the temporary folder. One test, in order: two experiments complete (a fresh
registry, then a challenger the gate rejects: scoring says it kept the champion), a
manual promote reruns score on `dvc repro` while an unchanged repro skips it, an
experiment on other data, and a repeat of the first experiment against a fresh MLflow
store (DVC's run cache must not skip train: its models go to MLflow, not to DVC). Then
`dvc exp show` lists each experiment's backtest metrics and `dvc plots` finds the CSVs.
A fast test checks that the plots `dvc.yaml` declares are the files train writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from training.plots import CONTENDERS, plot_data_paths, plot_paths, write_plot_data

REPO = Path(__file__).resolve().parents[1]
#: what a DVC repo needs besides the source paths the stages depend on
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", ".dvc/config",
                  ".dvc/.gitignore")  # fmt: skip
#: small and fast, with history enough for the walk-forward backtest (6 origins)
SMALL = {"simulator": {"accounts": 150, "months": 20, "seed": 11, "truth_samples": 5},
         "train": {"backtest": {"bootstrap": 50}}}  # fmt: skip
#: a one-stump LightGBM: registered, and rejected by the gate against the champion
STUMP = ["-S", "train.lightgbm.n_estimators=1", "-S", "train.lightgbm.num_leaves=2",
         "-S", "train.lightgbm.min_rounds=1"]  # fmt: skip
PLOT_IDS = [f"{t} {kind}" for t in ("churn", "expansion")
            for kind in ("ROC", "calibration", "lift", "backtest AUC")]  # fmt: skip


def _source_paths(dvc_yaml: dict) -> list[str]:
    """The dependencies of the stages that no stage produces: the code and its folders."""
    stages = dvc_yaml["stages"].values()
    outs = {next(iter(o)) if isinstance(o, dict) else o
            for s in stages for key in ("outs", "metrics", "plots") for o in s.get(key, [])}
    return sorted({d for s in stages for d in s.get("deps", []) if d not in outs})


def _make_repo(root: Path) -> Path:
    """A git repo with the pipeline files and sources of the working tree, committed."""
    repo = root / "repo"
    repo.mkdir()
    for name in PIPELINE_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, repo / name)
    for path in _source_paths(yaml.safe_load((REPO / "dvc.yaml").read_text())):
        src, dst = REPO / path, repo / path
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in SMALL.items():
        _merge(params[section], values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "cshealth test"],
                ["git", "config", "user.email", "test@example.invalid"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):  # fmt: skip
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    return repo


def _merge(into: dict, values: dict) -> None:
    for k, v in values.items():
        if isinstance(v, dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _env(root: Path, repo: Path, store: str = "mlflow") -> dict[str, str]:
    """This venv first on PATH; MLflow and the score store in `root`; no telemetry."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CSHEALTH_", "MLFLOW_", "DVC_"))}  # fmt: skip
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / store / 'mlflow.db'}",
        "CSHEALTH_DB_URL": f"sqlite:///{repo / 'data' / 'scores.db'}",  # the score stage's out
        "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true",
    }  # fmt: skip
    return env


def _run(repo: Path, env: dict[str, str], *cmd: str) -> str:
    """Run `cmd` in `repo`; its output (stdout + stderr); fail with the output's end."""
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def _reset_params(repo: Path) -> None:
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)


def _exp_metrics(shown: list[dict]) -> dict[str, dict]:
    """Experiment name -> its reports/metrics.json as `dvc exp show --json` read it."""
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                metrics = (rev["data"].get("metrics") or {}).get("reports/metrics.json", {})
                found[rev["name"]] = metrics.get("data") or metrics
    return found


def test_dvc_plots_are_the_files_train_writes(tmp_path: Path) -> None:
    """Each data plot of dvc.yaml names a CSV train writes and its columns; every PNG listed."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    # no truth file: the oracle's column is written, empty
    pred = pd.DataFrame({"y": y, **{c: np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1)
                                     for c in ("lightgbm", "logistic", "rules")}})  # fmt: skip
    origins = [{"origin": f"2025-0{i}-01", "rows": 80, "positives": 9, "trees": 50,
                **{f"{c}_roc_auc": 0.7 for c in ("lightgbm", "logistic", "rules")}}
               for i in range(1, 7)]  # fmt: skip
    res = SimpleNamespace(backtest=SimpleNamespace(predictions=pred, per_origin=origins))
    result = SimpleNamespace(targets={"churn": res, "expansion": res})
    assert write_plot_data(result, tmp_path) == plot_data_paths(tmp_path, ["churn", "expansion"])

    images = set()
    for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        if isinstance(entry, str):
            images.add(Path(entry).name)
            continue
        ((plot_id, spec),) = entry.items()
        for file, fields in spec["y"].items():
            assert file.startswith("reports/plots/"), plot_id
            frame = pd.read_csv(tmp_path / Path(file).name)
            assert {spec["x"], *np.atleast_1d(fields)} <= set(frame.columns), plot_id
    assert images == {p.name for p in plot_paths(Path(), ["churn", "expansion"])}

    from sklearn.metrics import roc_auc_score

    roc = pd.read_csv(tmp_path / "churn_roc.csv")
    assert list(roc.columns) == ["fpr", *CONTENDERS] and roc["oracle"].isna().all()
    assert roc["fpr"].iloc[0] == 0 and roc["fpr"].iloc[-1] == 1 and roc["lightgbm"].iloc[-1] == 1
    assert roc["lightgbm"].is_monotonic_increasing
    area = float(np.trapezoid(roc["lightgbm"], roc["fpr"]))
    assert area == pytest.approx(roc_auc_score(y, pred["lightgbm"]), abs=0.01)
    auc = pd.read_csv(tmp_path / "expansion_backtest_auc.csv")
    assert auc["origin"].tolist() == [1, 2, 3, 4, 5, 6] and auc["as_of"].iloc[0] == "2025-01-01"


@pytest.mark.slow
def test_experiments_run_end_to_end(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path)
    env = _env(tmp_path, repo)
    champions = repo / "reports" / "champions.json"

    # 1. A first experiment on a fresh registry: every stage runs, v1 becomes champion.
    out = _run(repo, env, "dvc", "exp", "run", "-n", "leaves31",
               "-S", "train.lightgbm.num_leaves=31")  # fmt: skip
    assert "Running stage 'score'" in out and "Running stage 'report'" in out
    assert json.loads(champions.read_text())["churn"]["version"] == 1

    # 2. A worse challenger on the same data: rejected; scoring keeps v1 and says why.
    out = _run(repo, env, "dvc", "exp", "run", "-n", "stump", *STUMP,
               "-S", "health.red_below=50")  # fmt: skip
    assert "churn: v2 not promoted" in out, out[-3000:]
    assert "churn: scoring with champion v1; v2 not promoted: worse" in out, out[-3000:]
    assert json.loads(champions.read_text())["churn"]["version"] == 1

    # 3. Promoting by hand is seen by `dvc repro`: score and report rerun; then nothing does.
    run_id = json.loads((repo / "reports" / "training_run.json").read_text())["run_id"]
    _run(repo, env, "cshealth", "promote", run_id)
    out = _run(repo, env, "dvc", "repro")
    assert "Running stage 'score'" in out and "Running stage 'report'" in out, out[-3000:]
    assert "Running stage 'train'" not in out
    assert json.loads(champions.read_text())["churn"]["version"] == 2
    out = _run(repo, env, "dvc", "repro")
    assert "Running stage 'champion'" in out  # always: it reads the registry
    assert "Running stage 'score'" not in out and "Running stage 'report'" not in out, out

    # 4. Other data.
    _reset_params(repo)
    out = _run(repo, env, "dvc", "exp", "run", "-n", "accounts120",
               "-S", "simulator.accounts=120")  # fmt: skip
    assert "Running stage 'generate'" in out and "Running stage 'score'" in out

    # 5. The first experiment again, against a fresh MLflow store: DVC has train's outputs
    # in its run cache, but train must run (register, gate) or score finds no champion.
    _reset_params(repo)
    fresh = _env(tmp_path, repo, store="mlflow-fresh")
    out = _run(repo, fresh, "dvc", "exp", "run", "-n", "again",
               "-S", "train.lightgbm.num_leaves=31")  # fmt: skip
    assert "Running stage 'train'" in out and "Stage 'train' is cached" not in out
    assert "Running stage 'score'" in out
    assert json.loads(champions.read_text())["churn"]["version"] == 1

    # Every experiment's backtest metrics in `dvc exp show`.
    shown = json.loads(_run(repo, env, "dvc", "exp", "show", "--json"))
    metrics = _exp_metrics(shown)
    assert {"leaves31", "stump", "accounts120", "again"} <= set(metrics), metrics
    for name in ("leaves31", "stump", "accounts120", "again"):
        auc = metrics[name]["churn"]["contenders"]["lightgbm"]["roc_auc"]
        assert isinstance(auc, float) and 0 < auc <= 1, (name, metrics[name])
    assert metrics["stump"]["churn"]["trees"] == 1
    table = _run(repo, env, "dvc", "exp", "show", "--md")
    assert "churn.contenders.lightgbm.roc_auc" in table

    # The plot data: written, declared, and overlaid across experiments.
    plots = repo / "reports" / "plots"
    for target in ("churn", "expansion"):
        for name in ("roc", "calibration", "lift", "backtest_auc"):
            assert (plots / f"{target}_{name}.csv").stat().st_size > 0
        assert (plots / f"{target}_roc.png").exists()
    data = json.loads(_run(repo, env, "dvc", "plots", "show", "--json"))["data"]
    for plot_id in PLOT_IDS:
        assert data[plot_id][0]["type"] == "vega", plot_id
        assert data[plot_id][0]["content"]["data"]["values"], plot_id
    assert data["reports/plots/churn_roc.png"][0]["type"] == "image"
    diff = json.loads(_run(repo, env, "dvc", "plots", "diff", "leaves31", "accounts120",
                           "--json"))  # fmt: skip
    roc = diff["data"]["churn ROC"][0]
    assert set(roc["revisions"]) == {"leaves31", "accounts120"}
    assert {v["rev"] for v in roc["content"]["data"]["values"]} == {"leaves31", "accounts120"}
