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
A `ScoreItem` carries the account's descriptors (name, segment, CSM), its
probabilities, health and band, and the explanation a CSM acts on: `reasons` (actionable
features raising churn risk, each with the peer group's typical value), `expansion_reasons`,
`context` (what the account cannot change), `plays` and `changes` since the previous
scoring. Keys added after the first release have defaults, and null lists of rows
written by an older version read as ``[]``.

The GET endpoints answer `AccountList` (a page of the newest run's accounts) and
`AccountHistory` (every scoring of one account). `ModelInfo` describes the models
behind the scores. Errors of a whole request are
`ErrorBody` ``{"error": "...", "detail": [{"loc": [...], "msg": "...", "type": "..."}]}``
(the shape of BentoML's own validation errors); a 401 is ``{"detail": "..."}``.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    with_config,
)
from typing_extensions import TypedDict

from features.contract import MAX_ID_LENGTH, Col
from features.meta import Feature

#: longest accepted categorical feature value
MAX_CATEGORY_LENGTH = 200
#: the largest `GET /accounts` offset (the store's OFFSET is a 32/64-bit integer)
MAX_OFFSET = 10**9

AccountId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$"),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----- requests ---------------------------------------------------------------------------
#: the body fields, declared once: the request models and the service's method signatures
AccountIds = Annotated[
    list[AccountId],
    Field(min_length=1, description="Account ids to look up in the newest scoring run (at "
          "most serving.max_ids_per_request; repeated ids are answered once)."),
]  # fmt: skip
FeatureRows = Annotated[
    list[dict[str, Any]],
    Field(min_length=1, description="Feature rows: optional account_id and as_of, feature "
          "values by name (see /model_info); absent or null features are missing. At most "
          "serving.max_rows_per_request rows."),
]  # fmt: skip


class ScoreRequest(_Model):
    """Score accounts by id from the latest scoring run in the store."""

    account_ids: AccountIds


class ScoreFeaturesRequest(_Model):
    """Score explicit feature rows (what-if analysis, external systems)."""

    rows: FeatureRows


class ModelInfoRequest(_Model):
    """No parameters (an empty body or ``{}``)."""


# ----- responses --------------------------------------------------------------------------
Value = float | str | None

#: the list fields an older store (written before these keys existed) holds as null
_LIST_FIELDS = ("reasons", "expansion_reasons", "context", "plays", "missing_features")


class Reason(_Model):
    """A feature the account can act on, with its value and what its peers look like."""

    feature: str = Field(description="Feature name (see /model_info).")
    family: str = Field(description="Feature family: usage, support, sentiment, ...")
    value: Value = Field(description="The account's value (null: missing).")
    impact: float = Field(
        description="SHAP contribution to the log-odds (churn reasons: > 0 raises churn "
        "risk; expansion reasons: > 0 raises the expansion probability)."
    )
    sentence: str = Field(description="The account's value and how its peers compare.")
    peer_value: Value = Field(
        None, description="Typical value of the peer group, in the account's units (null: "
        "no peer table)."
    )  # fmt: skip
    peer_group: str | None = Field(
        None, description='The peers compared with, e.g. "healthy mid-market accounts".'
    )


class ContextItem(_Model):
    """A feature the account cannot act on (size, tenure, ...) that moves its score."""

    feature: str = Field(description="Feature name (see /model_info).")
    family: str = Field(description="Feature family.")
    value: Value = Field(description="The account's value (null: missing).")
    impact: float = Field(description="SHAP contribution to the churn log-odds (either sign).")
    sentence: str = Field(description="The value in words.")


class Play(_Model):
    """A recommended customer-success play addressing some of the churn reasons."""

    play: str = Field(description="Short name of the play.")
    description: str = Field(description="What the CSM does.")
    impact: float = Field(
        description="Churn risk (log-odds) of the reasons the play addresses (> 0)."
    )
    features: list[str] = Field(description="The reason features the play addresses.")


class FeatureChange(_Model):
    """How one feature moved since the previous scoring, and what it did to the risk."""

    feature: str = Field(description="Feature name.")
    before: Value = Field(description="Value at the previous scoring.")
    after: Value = Field(description="Value now.")
    impact: float = Field(
        description="Change of the feature's churn contribution (log-odds; > 0 raised risk)."
    )
    sentence: str = Field(description="The change in words.")


class Changes(_Model):
    """What changed since the account's previous scoring."""

    previous_run_id: str = Field(description="The previous scoring run.")
    previous_as_of: dt.date | None = Field(description="Snapshot date of the previous scoring.")
    health_before: float = Field(description="Health at the previous scoring.")
    health_after: float = Field(description="Health now.")
    band_before: str = Field(description="Band at the previous scoring (red, yellow, green).")
    sentence: str = Field(
        description='E.g. "Health 72 → 48: active users in the last 30 days fell from 31 '
        'to 12; open tickets rose from 0 to 2".'
    )
    components: dict[str, float] = Field(
        default_factory=dict, description="Change of health points per feature family."
    )
    features: list[FeatureChange] = Field(
        default_factory=list, description="The features that moved the risk most (at most 3)."
    )


class ScoreItem(_Model):
    """Scores and explanation of one account (or one feature row)."""

    account_id: str
    name: str | None = Field(None, description="Account name (from the scoring run's snapshot).")
    segment: str | None = Field(None, description="Segment, e.g. smb, mid_market, enterprise.")
    csm_id: str | None = Field(None, description="The account's customer-success manager.")
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
    reasons: list[Reason] = Field(
        default_factory=list,
        description="Actionable features raising churn risk, largest first "
        "(at most explanations.top_reasons).",
    )
    expansion_reasons: list[Reason] = Field(
        default_factory=list,
        description="Actionable features raising the expansion probability, largest first.",
    )
    context: list[ContextItem] = Field(
        default_factory=list,
        description="Features the account cannot act on with the largest effect on churn "
        "risk (at most explanations.top_context).",
    )
    plays: list[Play] = Field(
        default_factory=list, description="Recommended plays, largest churn risk addressed first."
    )
    changes: Changes | None = Field(
        None, description="What changed since the previous scoring (null: first scoring of "
        "the account, or an explicit feature row)."
    )  # fmt: skip
    model_version: dict[str, str] = Field(
        description='Registry versions that produced the score, e.g. {"churn": "3", '
        '"expansion": "2"}.'
    )
    missing_features: list[str] = Field(
        default_factory=list,
        description="Features the model saw as missing (absent, null or an unknown category).",
    )

    @field_validator(*_LIST_FIELDS, mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return [] if v is None else v


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

    error: str = Field(description="What went wrong, in one line.")
    detail: list[ErrorDetail] = Field(
        default_factory=list, description="Per field: where (loc), what (msg) and its type."
    )


class Unauthorized(_Model):
    """401: no, a malformed or a wrong API key (``Authorization: Bearer <key>``)."""

    detail: str = Field(description="Why the request was refused.")


class HistoryEntry(_Model):
    """One scoring of the account."""

    run_id: str = Field(description="The scoring run.")
    scored_at: str = Field(description="When the run was written (UTC, ISO 8601).")
    as_of: dt.date | None = Field(description="Snapshot date the features describe.")
    health_score: float = Field(description="Health 0-100.")
    band: Literal["red", "yellow", "green"]
    churn_probability: float
    expansion_probability: float
    health_change: float | None = Field(description="Change since the previous scoring.")
    reasons: list[Reason] = Field(
        default_factory=list, description="The churn reasons of that scoring."
    )

    @field_validator("reasons", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return [] if v is None else v


class AccountHistory(_Model):
    """Every stored scoring of one account, oldest first."""

    account_id: str
    runs: list[HistoryEntry]


class AccountList(_Model):
    """A page of the newest scoring run's accounts, lowest health first."""

    run_id: str = Field(description="The scoring run listed (the newest).")
    as_of: dt.date | None = Field(description="Its snapshot date.")
    total: int = Field(description="Accounts matching the filters.")
    limit: int = Field(description="Page size asked for.")
    offset: int = Field(description="Accounts skipped.")
    results: list[ScoreItem]


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
    fields: dict[str, Any] = {  # the row keys that are not features
        str(Col.ACCOUNT_ID): AccountId,
        str(Col.AS_OF): Annotated[dt.date | None, Field(strict=False)],
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
