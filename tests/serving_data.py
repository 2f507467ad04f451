"""A small trained set-up for the serving tests, built once per test session.

150 simulated accounts x 20 months (enough history for the repo's walk-forward backtest:
6 origins), the snapshot table, both models trained with the repo's parameters and
registered as champions v1 in a temporary MLflow registry (SQLite; a first model is
always promoted), and the newest snapshot batch-scored into a temporary SQLite store. A
params file beside it holds the repo's parameters with small request limits.

`serving_setup(tmp_path_factory)` returns the shared `ServingSetup`; treat its files as
read-only (copy the registry and store with `copy_state` before changing them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ACCOUNTS, MONTHS, SEED = 150, 20, 11
#: small limits so that the limit tests stay cheap
MAX_IDS = MAX_ROWS = 40
#: LightGBM settings of a deliberately bad model (one stump): a retrain with them is
#: registered but not promoted over the champion
WORSE_LIGHTGBM = {"n_estimators": 1, "num_leaves": 2, "min_rounds": 1}


@dataclass
class ServingSetup:
    root: Path
    params: Path  # params file: the repo's params with small request limits
    snapshots: Path
    mlflow_db: Path
    store_db: Path
    ids: list[str]  # the account ids of the newest scoring run
    as_of: str
    #: `model.info` of each target's champion v1 as trained in-process
    model_info: dict[str, dict] = field(default_factory=dict)

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.store_db}"

    def env(self) -> dict[str, str]:
        """The variables the service reads (`cshealth.settings`) to load the handlers."""
        return {"MLFLOW_TRACKING_URI": self.mlflow_uri, "CSHEALTH_DB_URL": self.db_url,
                "CSHEALTH_PARAMS": str(self.params)}  # fmt: skip

    def copy_state(self, dest: Path) -> ServingSetup:
        """A copy of registry and store in `dest` (artifacts stay shared and untouched)."""
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.mlflow_db, dest / self.mlflow_db.name)
        shutil.copy(self.store_db, dest / self.store_db.name)
        return ServingSetup(self.root, self.params, self.snapshots, dest / self.mlflow_db.name,
                            dest / self.store_db.name, self.ids, self.as_of,
                            self.model_info)  # fmt: skip


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_handlers() -> Any:
    """`serving.service.load_handlers` on this process's settings, as the service loads.

    Importing the service module needs an API key (it refuses to serve without one).
    """
    import sys

    from cshealth.settings import Settings

    if "serving.service" not in sys.modules:
        with environ({"CSHEALTH_API_KEY": "import-only"}):
            import serving.service  # noqa: F401
    return sys.modules["serving.service"].load_handlers(Settings.from_env())


def write_params(path: Path, gates: dict | None = None, lightgbm: dict | None = None) -> Path:
    """The repo's params.yaml with small limits (and other gates / LightGBM settings)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text()) or {}
    if gates:
        raw.setdefault("train", {}).setdefault("gates", {}).update(gates)
    if lightgbm:
        raw["train"].setdefault("lightgbm", {}).update(lightgbm)
    raw.setdefault("serving", {}).update(max_ids_per_request=MAX_IDS,
                                         max_rows_per_request=MAX_ROWS)  # fmt: skip
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def build(root: Path) -> ServingSetup:
    from cshealth.config import load_config
    from features.pipeline import build_snapshots
    from features.snapshots import SnapshotTable
    from serving.batch import newest_rows, score_latest
    from serving.predictor import ModelPair, Scorer
    from serving.store import ScoreStore
    from simulator import generate, write_dataset
    from training import tracking
    from training.train import train

    root.mkdir(parents=True, exist_ok=True)
    params = write_params(root / "params.yaml")
    cfg = load_config(params)
    sim = generate(ACCOUNTS, MONTHS, SEED, dt.date(2023, 1, 1), truth_samples=5)
    write_dataset(sim, root / "raw", None)
    snapshots = root / "features" / "snapshots.parquet"
    build_snapshots(root / "raw", cfg.features).write(snapshots)
    snaps = SnapshotTable.read(snapshots)  # as `cshealth train` reads it
    result = train(snaps, cfg.train, list(cfg.rules))
    setup = ServingSetup(root, params, snapshots, root / "mlflow.db", root / "scores.db", [], "")
    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        record = tracking.log_training(result, snaps, snapshots,
                                       config=cfg.model_dump(mode="json"),
                                       gates=cfg.train.gates)  # fmt: skip
    assert record.versions == {"churn": 1, "expansion": 1}, record
    # A first model is always promoted (the floors only warn).
    assert all(d.promoted and d.champion_before is None for d in record.decisions.values()), (
        record.decisions
    )
    models = ModelPair(result.targets["churn"].model, result.targets["expansion"].model, "1", "1")
    store = ScoreStore(setup.db_url)
    summary = score_latest(snaps.frame, Scorer(models, cfg.health, cfg.explanations), store,
                           dt.datetime(2026, 1, 1, 6, 0))  # fmt: skip
    setup.ids = sorted(newest_rows(snaps.frame)["account_id"].astype(str))
    setup.as_of = summary["as_of"]
    setup.model_info = {t: dict(r.model.info) for t, r in result.targets.items()}
    store.close()
    return setup


_SETUPS: dict[Path, ServingSetup] = {}


def serving_setup(tmp_path_factory: pytest.TempPathFactory) -> ServingSetup:
    """The session's shared set-up (built on first use)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _SETUPS:
        _SETUPS[base] = build(tmp_path_factory.mktemp("serving"))
    return _SETUPS[base]
