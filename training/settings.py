"""Parameters of training (the `train:` section of params.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LightGBMParams(_Frozen):
    n_estimators: int = Field(800, ge=1)
    learning_rate: float = Field(0.03, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_child_samples: int = Field(40, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    early_stopping_rounds: int = Field(60, ge=1)
    early_stopping_metric: Literal["auc", "binary_logloss"] = "auc"


class Gates(_Frozen):
    """A new model becomes champion only if it passes these on the test slice."""

    min_auc: float = 0.70
    max_ece: float = 0.05
    tolerance: float = Field(0.01, ge=0)  # may be this much worse (AUC) than the champion


class TrainParams(_Frozen):
    test_periods: int = Field(3, ge=1)
    valid_periods: int = Field(3, ge=1)
    purge: bool = True  # drop rows whose label window crosses into the next slice
    seed: int = 42
    lightgbm: LightGBMParams = LightGBMParams()
    calibration: Literal["auto", "isotonic", "platt"] = "auto"
    monotone_from_metadata: bool = True
    gates: Gates = Gates()
    reports_dir: Path = Path("reports")  # metrics.json and plots/ are written here
