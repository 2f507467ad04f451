"""Parameters of training (the `train:` section of params.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LightGBMParams(_Frozen):
    n_estimators: int = Field(500, ge=1)  # the most trees; validation curves pick fewer
    learning_rate: float = Field(0.03, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_child_samples: int = Field(40, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    validation_metric: Literal["auc", "binary_logloss"] = "auc"
    #: the tree count is the most trees whose mean validation score is this close to the best
    plateau: float = Field(0.003, ge=0)
    #: never fewer trees: a handful of trees has few distinct leaf paths and ties accounts
    min_rounds: int = Field(50, ge=1)
    #: trees when no origin of the backtest has data to validate on (too short a history)
    default_rounds: int = Field(150, ge=1)


class BacktestParams(_Frozen):
    """The walk-forward backtest: the evaluation every contender and the gate rely on."""

    origins: int = Field(6, ge=2)  # the last K labelled as_of dates (fewer on short data, >= 2)
    #: inside each origin's training rows, the latest dates that validate the tree count
    validation_periods: int = Field(2, ge=1)
    bootstrap: int = Field(200, ge=0)  # resamples behind each 95 % interval (0: none)


class Gates(_Frozen):
    """Promotion: beat the best baseline (first model) or not be worse than the champion.

    `min_auc` and `max_ece` are floors that warn (printed and tagged on the version),
    never block: a user always ends with a champion.
    """

    min_auc: float = 0.70
    max_ece: float = 0.05
    tolerance: float = Field(0.01, ge=0)  # the challenger may trail the champion by this AUC


class TrainParams(_Frozen):
    backtest: BacktestParams = BacktestParams()
    seed: int = 42
    lightgbm: LightGBMParams = LightGBMParams()
    #: platt | isotonic | auto (Platt unless isotonic wins on held-out Brier and keeps
    #: at most 1 % of the scores tied)
    calibration: Literal["auto", "isotonic", "platt"] = "auto"
    #: use a target's declared monotone directions when the backtest shows they cost no AUC
    monotone_constraints: bool = False
    min_positives: int = Field(30, ge=1)  # below this a target's model is flagged as weak
    gates: Gates = Gates()
    reports_dir: Path = Path("reports")  # metrics.json and plots/ are written here


class RuleComponent(BaseModel):
    """One rule of a CS-platform style health score: a feature scaled 0–100 from bad to good."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    feature: str
    weight: float = Field(gt=0)
    bad: float
    good: float
