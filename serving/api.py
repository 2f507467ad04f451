"""The HTTP API's request and response models (pydantic v2).

Request bodies:

* `ScoreRequest` — ``{"account_ids": ["a-1", ...]}``: 1..`max_ids_per_request` ids, each a
  non-empty string of at most 128 characters without control characters. Repeated ids
  are scored once (first occurrence order).
* `ScoreFeaturesRequest` — ``{"rows": [{...}, ...]}``: 1..`max_rows_per_request` rows.
  Each row may carry ``account_id`` (default ``"row-<i>"``, i its index in the request),
  ``as_of`` (an ISO date, echoed back; default null) and feature values. The feature
  keys are checked against the serving models' metadata by `row_adapter`:

  - numeric feature: a JSON number (int or float) or null. Booleans and numeric strings
    are rejected (send 0/1), as are non-finite numbers and values outside the bounds the
    feature metadata declares (``min_value``/``max_value``);
  - categorical feature: a string (at most 200 characters) or null. A category the model
    never saw is accepted and treated as missing (listed in ``missing_features``);
  - absent or null features are allowed: the model handles missing values and the item
    lists them in ``missing_features``;
  - an unknown key is rejected, naming the key.

Every request model forbids fields it does not define: a request naming another
top-level field is answered 422 naming it (``loc: [field]``, type ``extra_forbidden``).

Responses of both scoring endpoints: `ScoreResponse` ``{"results": [ScoreItem],
"errors": [ItemError]}``; an unknown account fails its own item, not the request.
`ModelInfo` describes the models behind the scores. Errors of a whole request are
`ErrorBody` ``{"error": "...", "detail": [{"loc": [...], "msg": "...", "type": "..."}]}``
(the shape of BentoML's own validation errors); a 401 is ``{"detail": "..."}``.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, with_config
from typing_extensions import TypedDict

from features.meta import Feature

#: longest account id the store holds (scores.account_id is String(128))
MAX_ID_LENGTH = 128
#: longest accepted categorical feature value
MAX_CATEGORY_LENGTH = 200
#: keys of a feature row that are not features
ROW_KEYS = ("account_id", "as_of")

AccountId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$"),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----- requests ---------------------------------------------------------------------------
class ScoreRequest(_Model):
    """Score accounts by id from the latest scoring run in the store."""

    account_ids: list[AccountId] = Field(
        min_length=1,
        description="Account ids (1..max_ids_per_request; duplicates are scored once).",
    )


class ScoreFeaturesRequest(_Model):
    """Score explicit feature rows (what-if analysis, external systems)."""

    rows: list[dict[str, Any]] = Field(
        min_length=1,
        description=(
            "Feature rows (1..max_rows_per_request): optional account_id and as_of, and "
            "feature values keyed by name (see /model_info); absent features are missing."
        ),
    )


class ModelInfoRequest(_Model):
    """No parameters (an empty body or ``{}``)."""


# ----- responses --------------------------------------------------------------------------
class Reason(_Model):
    """One of the top reasons behind a churn score, with the account's own value."""

    feature: str
    family: str
    value: float | str | None = Field(description="The account's value (null: missing).")
    impact: float = Field(description="SHAP contribution to the churn log-odds (> 0: riskier).")
    sentence: str


class ScoreItem(_Model):
    """Scores and explanation of one account (or one feature row)."""

    account_id: str
    as_of: dt.date | None = Field(description="Snapshot date the features describe.")
    churn_probability: float = Field(ge=0, le=1)
    expansion_probability: float = Field(ge=0, le=1)
    health_score: float = Field(ge=0, le=100, description="0-100, falls as churn risk rises.")
    band: Literal["red", "yellow", "green"]
    health_change: float | None = Field(
        description="Change since the previous scoring run (null: first scoring, or an "
        "explicit feature row)."
    )
    components: dict[str, float] = Field(
        description="Health points per feature family; they sum to health minus the "
        "health of an average account."
    )
    reasons: list[Reason]
    model_version: dict[str, str] = Field(
        description='Registry versions that produced the score, e.g. {"churn": "3", '
        '"expansion": "2"}.'
    )
    missing_features: list[str] = Field(
        description="Features the model saw as missing (absent, null or an unknown category)."
    )


class ItemError(_Model):
    """An item that could not be scored; the rest of the request still is."""

    account_id: str
    error: str


class ScoreResponse(_Model):
    results: list[ScoreItem]
    errors: list[ItemError] = Field(default_factory=list)


class ErrorDetail(_Model):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(_Model):
    """A whole request failed (4xx, or 503 while the service cannot score)."""

    error: str
    detail: list[ErrorDetail] = Field(default_factory=list)


class FeatureInfo(_Model):
    name: str
    family: str
    description: str
    unit: str
    good: str = Field(description="Healthy direction: higher, lower or neutral.")
    categorical: bool
    categories: list[str] | None = Field(None, description="Known categories (categorical).")
    min_value: float | None = None
    max_value: float | None = None
    used_by: list[str] = Field(description="The models that read the feature.")


class TargetModelInfo(_Model):
    target: str
    registered_name: str | None = None
    version: str
    trained_at: str | None = Field(None, description="Registration time (UTC, ISO 8601).")
    run_id: str | None = None
    label: str | None = None
    horizon_days: int | None = None
    trees: int | None = Field(None, description="Trees in the booster (from the backtest).")
    calibrator: str
    labels_up_to: str | None = Field(
        None, description="The newest outcome the model was trained on (as_of + horizon)."
    )
    backtest_origins: list[str] = Field(
        default_factory=list, description="Origins of the walk-forward backtest (ISO dates)."
    )
    backtest_metrics: dict[str, float | None] = Field(
        description="Pooled out-of-time metrics of the walk-forward backtest."
    )
    warnings: list[str] = Field(default_factory=list, description="What to keep in mind.")


class StoreRunInfo(_Model):
    run_id: str
    scored_at: str
    as_of: str
    accounts: int
    model_version: dict[str, str]


class ModelInfo(_Model):
    """What answers: the loaded models, their features, the newest scoring run, limits."""

    model_version: dict[str, str] = Field(description="The loaded champions (score_features).")
    models: dict[str, TargetModelInfo]
    features: list[FeatureInfo]
    latest_run: StoreRunInfo | None = Field(
        description="The store's newest scoring run (what /score returns); its model "
        "versions may trail the loaded champions until the next batch scoring."
    )
    limits: dict[str, int]


# ----- feature-row validation -------------------------------------------------------------
def _feature_type(f: Feature) -> Any:
    if f.categorical:
        return Annotated[str | None, Field(strict=True, max_length=MAX_CATEGORY_LENGTH)]
    bounds: dict[str, Any] = {}
    if f.min_value is not None:
        bounds["ge"] = f.min_value
    if f.max_value is not None:
        bounds["le"] = f.max_value
    return Annotated[float | None, Field(strict=True, allow_inf_nan=False, **bounds)]


def row_adapter(features: list[Feature]) -> TypeAdapter[list[dict[str, Any]]]:
    """A validator of a list of feature rows for `features` (see the module docstring).

    Validated rows are plain dicts holding only the keys the request gave.
    """
    fields: dict[str, Any] = {
        "account_id": AccountId,
        "as_of": Annotated[dt.date | None, Field(strict=False)],
    }
    for f in features:
        if f.name in fields:
            raise ValueError(f"feature name {f.name!r} clashes with a row key")
        fields[f.name] = _feature_type(f)
    row = TypedDict("FeatureRow", fields, total=False)  # type: ignore[misc]
    row = with_config(ConfigDict(extra="forbid", strict=True))(row)
    return TypeAdapter(list[row])


def finite_or_none(value: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN), recursively through dicts."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
