"""Parameters of the feature pipeline (the `features:` section of params.yaml).

Declared here rather than in `cshealth.config` so that `features` depends on no
other package; the CLI's config embeds this model.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Windows(BaseModel):
    """Look-back windows (days) of the usage and support features."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    short: int = Field(7, ge=1)
    medium: int = Field(30, ge=1)
    long: int = Field(90, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Windows:
        # The usage SQL only scans the long window for distinct users, and equal
        # windows would give two features one name.
        if not self.short < self.medium < self.long:
            raise ValueError(
                f"windows must satisfy short < medium < long, got "
                f"{self.short} / {self.medium} / {self.long}"
            )
        return self


class FeatureParams(BaseModel):
    """Calendar, windows, horizon and labels of the snapshot table."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    out: Path = Path("data/features/snapshots.parquet")
    frequency: Literal["monthly", "weekly"] = "monthly"
    first_as_of: dt.date | None = None
    last_as_of: dt.date | None = None
    cutoff: dt.datetime | None = None
    min_history_days: int = Field(90, ge=0)
    horizon_days: int = Field(90, ge=1)
    expansion_threshold: float = Field(0.10, gt=0)
    windows: Windows = Windows()
    sentiment_window_days: int = Field(365, ge=1)
    key_event_types: tuple[str, ...] = ()
    #: subscriptions.end_date is the last day of service (inclusive) or the first day
    #: without it (exclusive); auto detects it from the data (features.subscriptions)
    end_date_convention: Literal["auto", "inclusive", "exclusive"] = "auto"
    #: DuckDB's memory budget for the feature SQL; beyond it DuckDB spills to a temp folder
    duckdb_memory_limit: str = Field("3GB", pattern=r"^\d+(\.\d+)?\s*(MB|GB|MiB|GiB)$")
