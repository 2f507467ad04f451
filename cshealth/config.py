"""Typed, frozen configuration loaded once from `params.yaml` at the entry point."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.settings import FeatureParams
from serving.settings import (
    AlertParams,
    ExplainParams,
    HealthParams,
    MonitorParams,
    ServingParams,
)
from simulator import EndDateConvention, preset_names
from training.settings import RuleComponent, TrainParams

DEFAULT_PARAMS = Path("params.yaml")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataParams(_Frozen):
    raw_dir: str = "data/raw"  # a path or a URI (file://, s3://, gs://, ...)
    truth_file: Path = Path("data/truth.parquet")


class SimulatorParams(_Frozen):
    accounts: int = Field(600, ge=1)
    months: int = Field(24, ge=1, le=240)
    seed: int = 42
    start: dt.date = dt.date(2024, 1, 1)
    truth_samples: int = Field(200, ge=1)
    preset: str = "default"
    #: how subscription end dates are written: last day of service, or the next term's start
    end_date_convention: EndDateConvention = "inclusive"

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        names = preset_names()
        if value not in names:
            raise ValueError(f"unknown preset {value!r}; choose one of: {', '.join(names)}")
        return value


class CheckParams(_Frozen):
    reports_dir: Path = Path("reports/checks")
    snapshot_report: Path = Path("reports/features/snapshot_checks.json")
    label_prevalence: tuple[float, float] = (0.001, 0.5)


DEFAULT_RULES = (
    # A CS-platform style health score: feature scaled 0-100 between `bad` and `good`.
    RuleComponent(feature="active_users_ratio_30d_90d", weight=0.20, bad=0.3, good=0.9),
    RuleComponent(feature="events_trend_30d", weight=0.15, bad=-0.5, good=0.2),
    RuleComponent(feature="days_since_last_activity", weight=0.10, bad=30, good=1),
    RuleComponent(feature="severe_ticket_share_90d", weight=0.10, bad=0.6, good=0.0),
    RuleComponent(feature="csat_mean_90d", weight=0.05, bad=2.5, good=4.5),
    RuleComponent(feature="nps_365d", weight=0.20, bad=-50, good=50),
    RuleComponent(feature="goals_on_track_share", weight=0.20, bad=0.0, good=1.0),
)


class ReportParams(_Frozen):
    out: Path = Path("reports/risk_report.html")


class Config(_Frozen):
    data: DataParams = DataParams()
    simulator: SimulatorParams = SimulatorParams()
    checks: CheckParams = CheckParams()
    features: FeatureParams = FeatureParams()
    train: TrainParams = TrainParams()
    rules: tuple[RuleComponent, ...] = DEFAULT_RULES
    health: HealthParams = HealthParams()
    explanations: ExplainParams = ExplainParams()
    serving: ServingParams = ServingParams()
    monitor: MonitorParams = MonitorParams()
    alerts: AlertParams = AlertParams()
    report: ReportParams = ReportParams()


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or does not match the schema."""


def load_config(path: Path | None = None) -> Config:
    """Load `path` (default ./params.yaml; built-in defaults when that is absent)."""
    if path is None:
        if not DEFAULT_PARAMS.exists():
            return Config()
        path = DEFAULT_PARAMS
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"params file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path} does not match the expected parameters:\n{err}") from err
