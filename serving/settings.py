"""Parameters of scoring and serving (the `health:` and `serving:` sections of params.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.meta import Family


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HealthParams(_Frozen):
    """How churn probability maps to the 0–100 health score and its bands."""

    # health = 100 / (1 + odds(p) / odds(midpoint)): 50 at the midpoint, monotone in p.
    midpoint_churn_probability: float = Field(0.15, gt=0, lt=1)
    red_below: float = Field(52.0, ge=0, le=100)
    yellow_below: float = Field(72.0, ge=0, le=100)

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


class PlayCondition(_Frozen):
    """When a play applies regardless of feature contributions (e.g. renewal soon and red)."""

    feature: str
    at_most: float | None = None
    at_least: float | None = None
    bands: tuple[Literal["red", "yellow", "green"], ...] = ()


class Play(_Frozen):
    """A recommended action and the signals it answers (feature globs first, then families)."""

    play: str = Field(min_length=1, max_length=80)
    description: str = Field(min_length=1, max_length=400)
    families: tuple[str, ...] = ()
    features: tuple[str, ...] = ()  # fnmatch patterns of feature names, e.g. "escalations_*"
    when: PlayCondition | None = None

    @model_validator(mode="after")
    def _targets(self) -> Play:
        if not (self.families or self.features or self.when):
            raise ValueError(f"play {self.play!r} names no families, features or condition")
        unknown = sorted(set(self.families) - {f.value for f in Family})
        if unknown:
            raise ValueError(f"play {self.play!r}: unknown families {unknown}; "
                             f"expected some of {[f.value for f in Family]}")  # fmt: skip
        return self


DEFAULT_PLAYBOOK = (
    Play(play="Escalation review",
         description="Review open, severe and escalated tickets with support leadership and "
                     "agree a fix date with the customer.",
         features=("open_tickets", "escalations_*", "severe_ticket_share_*",
                   "median_resolution_hours_*", "csat_mean_*")),
    Play(play="Adoption workshop",
         description="Run a workshop with the customer's team on the workflows they stopped "
                     "using; re-onboard inactive seats.",
         families=("usage",)),
    Play(play="Executive sponsor call",
         description="Have an executive sponsor call the customer's decision maker to hear "
                     "the detractors' concerns first-hand.",
         families=("sentiment",)),
    Play(play="Success-plan review",
         description="Revisit the success plan: re-baseline goals that are off track and "
                     "agree the next milestones.",
         families=("outcomes",)),
    Play(play="Support health check",
         description="Look at the account's recent tickets for recurring problems and "
                     "proactively share fixes or training.",
         families=("support",)),
    Play(play="Renewal risk review",
         description="Renewal is near and the account is red: build a renewal plan with the "
                     "account executive now.",
         when=PlayCondition(feature="days_to_renewal", at_most=90, bands=("red",))),
)  # fmt: skip


class ExplainParams(_Frozen):
    """What each score explains: reasons, context, peer comparison and plays."""

    top_reasons: int = Field(3, ge=0, le=20)
    top_context: int = Field(3, ge=0, le=20)
    top_plays: int = Field(3, ge=0, le=20)
    top_changes: int = Field(3, ge=0, le=20)
    #: healthy accounts a segment needs before its own median is the peer value
    min_peers: int = Field(5, ge=1)
    playbook: tuple[Play, ...] = DEFAULT_PLAYBOOK


class DriftParams(_Frozen):
    """When `cshealth monitor` calls the newest run drifted (exit code 1)."""

    #: reference of the drift comparison: the champion's training snapshots, or the run before
    reference: Literal["training", "previous"] = "training"
    #: population stability index bins (quantiles of the reference)
    bins: int = Field(10, ge=2, le=100)
    #: PSI at or above which a feature or a probability counts as drifted (0.25: a big shift)
    psi_alert: float = Field(0.25, gt=0)
    #: PSI shown as a warning in the report (0.1: a moderate shift)
    psi_warn: float = Field(0.1, gt=0)
    #: rise of a feature's share of missing values (absolute) that counts as drift
    missing_increase: float = Field(0.2, gt=0, le=1)
    #: share of rows holding categories the reference never had that counts as drift
    new_category_share: float = Field(0.05, gt=0, le=1)
    #: features listed in the summary line and the report
    top_features: int = Field(10, ge=1, le=100)


class RealisedParams(_Frozen):
    """How past scoring runs are checked against what happened."""

    #: a run is evaluated once its as_of + features.horizon_days is within the data, and
    #: counted when this many of its accounts have a known outcome
    min_accounts: int = Field(20, ge=1)
    #: the "flagged" bands of the churned-ARR share
    flagged_bands: tuple[Literal["red", "yellow", "green"], ...] = ("red", "yellow")
    #: `cshealth replay`: past as_of dates it scores (the newest ones with a known outcome)
    replay_runs: int = Field(3, ge=1, le=60)


class MonitorParams(_Frozen):
    """`cshealth monitor`: drift of the newest run and realised accuracy of past ones."""

    out: Path = Path("reports/monitor.json")
    drift: DriftParams = DriftParams()
    realised: RealisedParams = RealisedParams()


class AlertParams(_Frozen):
    """Alerts after `cshealth score`: which accounts, how they are sent.

    The webhook URLs and the signing secret are settings (`CSHEALTH_ALERT_WEBHOOKS`,
    `CSHEALTH_ALERT_SECRET`): a Slack webhook URL is itself a secret.
    """

    #: alert an account whose band got worse than in the previous run
    on_band_worsened: bool = True
    #: alert an account whose churn probability crossed this (upwards); None: off
    churn_probability_above: float | None = Field(0.3, gt=0, lt=1)
    #: "json" (the alert as JSON) or "slack" (a Slack-compatible text + blocks message)
    format: Literal["json", "slack"] = "json"
    timeout_s: float = Field(5.0, gt=0, le=120)
    #: attempts per alert and webhook (retries on 5xx, 429, timeouts, refused connections)
    max_attempts: int = Field(4, ge=1, le=10)
    #: first retry delay; doubled each time
    backoff_s: float = Field(0.5, ge=0, le=60)
    #: at most this many alerts per run (the most at-risk first); the rest are counted
    max_alerts: int = Field(200, ge=0)
