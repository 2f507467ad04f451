"""Parameters of scoring and serving (the `health:` and `serving:` sections of params.yaml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HealthParams(_Frozen):
    """How churn probability maps to the 0–100 health score and its bands."""

    # health = 100 / (1 + odds(p) / odds(midpoint)): 50 at the midpoint, monotone in p.
    midpoint_churn_probability: float = Field(0.15, gt=0, lt=1)
    red_below: float = Field(52.0, ge=0, le=100)
    yellow_below: float = Field(72.0, ge=0, le=100)
    top_reasons: int = Field(3, ge=0, le=20)

    @model_validator(mode="after")
    def _ordered(self) -> HealthParams:
        if self.red_below > self.yellow_below:
            raise ValueError("health.red_below must not exceed health.yellow_below")
        return self


class ServingParams(_Frozen):
    """Request limits and defaults of the HTTP service."""

    max_ids_per_request: int = Field(1000, ge=1)
    max_rows_per_request: int = Field(1000, ge=1)
    #: largest request body accepted (413 beyond); None: derived from max_rows_per_request
    max_body_bytes: int | None = Field(None, ge=1024)
    port: int = Field(3000, ge=1, le=65535)
    db_file: Path = Path("data/scores.db")  # default store when CSHEALTH_DB_URL is unset

    def body_limit(self) -> int:
        """`max_body_bytes`, or 1 MiB plus 4 KiB per row allowed (a row's JSON is ~1-2 KiB)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return 2**20 + 4096 * self.max_rows_per_request
