"""Per-row explanations: SHAP contributions per feature family and the top reasons.

Contributions are LightGBM's `pred_contrib` (exactly `shap.TreeExplainer`'s values,
without importing shap), in log-odds of the model's raw score, *before* calibration.
For each row `bias + sum(families.values())` equals the raw score.

Which features are the "top reasons" (`direction`):

* ``"outcome"`` (default): the features that push the score the way the row's score
  deviates from the average (the bias). An account scored above the average churn
  risk gets its risk-raising features; one scored below gets what keeps it safe.
  This explains *why this score*, which is what the service shows beside it.
* ``"up"``: features raising the model's probability (risk-raising for churn,
  expansion-raising for expansion), whatever the row's score.
* ``"down"``: features lowering it.

Within that direction features rank by |contribution|. When fewer than `top_k`
qualify, the list is filled by |contribution| with features pushing the other way,
and only then with features whose value is missing (their sentence says so). A
feature with a zero contribution is never a reason, so `top` may be shorter than
`top_k`. Ties keep the model's feature order.

Everything is vectorised: one `pred_contrib` call for all rows, ranking in NumPy,
then the small result objects; thousands of rows take well under a second beyond
the contribution call itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from features.meta import Family, Feature
from training.model import BIAS, HealthModel

Direction = Literal["outcome", "up", "down"]

#: rank tiers of a feature as a reason (lower first); _NONE is never shown
_ALIGNED, _OPPOSITE, _MISSING, _NONE = 0, 1, 2, 3


@dataclass(frozen=True)
class Reason:
    """One feature's part in a row's score, with its sentence filled from the row's value."""

    feature: str
    family: str
    value: float | str | None  # None when missing (as the model saw it)
    contribution: float  # log-odds; > 0 raises the model's probability
    sentence: str


@dataclass(frozen=True)
class Explanation:
    """A row's explanation: signed log-odds per family, the top reasons, the bias."""

    families: dict[str, float]
    top: list[Reason]
    bias: float  # the model's expected raw score (SHAP base value)

    @property
    def raw_score(self) -> float:
        """The model's raw score (log-odds, uncalibrated): bias plus the family sums."""
        return self.bias + sum(self.families.values())

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Contributions:
    """One model's SHAP contributions for rows: log-odds per feature, the bias, and the
    values as the model saw them (an unknown category is missing)."""

    features: list[Feature]
    x: pd.DataFrame  # prepared values, model feature order
    values: np.ndarray  # (rows, features) log-odds; > 0 raises the model's probability
    bias: np.ndarray  # (rows,)
    missing: np.ndarray  # (rows, features) bool

    @property
    def raw_score(self) -> np.ndarray:
        """The model's raw score per row (uncalibrated log-odds)."""
        return self.bias + self.values.sum(axis=1)

    def family_sums(self) -> tuple[list[str], np.ndarray]:
        """The families present (Family order) and the per-row sums (rows, families)."""
        fam_of = [Family(f.family).value for f in self.features]
        families = [f.value for f in Family if f.value in fam_of]
        sums = np.column_stack(
            [self.values[:, [j for j, g in enumerate(fam_of) if g == fam]].sum(axis=1)
             for fam in families]
        ) if families else np.zeros((len(self.x), 0))  # fmt: skip
        return families, sums

    def value(self, i: int, j: int) -> float | str | None:
        """Row i's value of feature j as shown to people (None when missing)."""
        if self.missing[i, j]:
            return None
        raw = self.x.iat[i, j]
        return str(raw) if self.features[j].categorical else float(raw)


def contributions(model: HealthModel, rows: pd.DataFrame) -> Contributions:
    """`model`'s contributions for `rows` (one `pred_contrib` call)."""
    x = model.prepare(rows)
    contrib = model.contributions(x, prepared=True)
    return Contributions(
        features=list(model.features), x=x[model.feature_names],
        values=contrib[model.feature_names].to_numpy(dtype=float),
        bias=contrib[BIAS].to_numpy(dtype=float), missing=x[model.feature_names].isna().to_numpy(),
    )  # fmt: skip


def missing_sentence(feature: Feature) -> str:
    """The sentence for a reason whose value is missing."""
    return feature.sentence(None)


def rank_reasons(
    contrib: np.ndarray, missing: np.ndarray, sign: np.ndarray, top_k: int
) -> np.ndarray:
    """Column indices of each row's top reasons, shape (rows, top_k), -1 where none.

    `contrib` and `missing` are (rows, features); `sign` (rows,) is +1 when the
    reasons should raise the score, -1 when they should lower it.
    """
    n, p = contrib.shape
    k = min(top_k, p)
    if n == 0 or k == 0:
        return np.full((n, max(top_k, 0)), -1, dtype=np.int64)
    aligned = contrib * sign[:, None] > 0
    tier = np.where(aligned, _ALIGNED, _OPPOSITE)
    tier = np.where(missing, _MISSING, tier)
    tier = np.where(contrib == 0, _NONE, tier)
    # Sort by |contribution| descending, then (stably) by tier: tier first, size second.
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")
    by_tier = np.argsort(np.take_along_axis(tier, order, axis=1), axis=1, kind="stable")
    order = np.take_along_axis(order, by_tier, axis=1)[:, :k]
    order = np.where(np.take_along_axis(tier, order, axis=1) == _NONE, -1, order)
    if k < top_k:
        order = np.hstack([order, np.full((n, top_k - k), -1, dtype=order.dtype)])
    return order


def explain(
    model: HealthModel, rows: pd.DataFrame, top_k: int = 3, direction: Direction = "outcome"
) -> list[Explanation]:
    """One `Explanation` per row of `rows` (same order); see the module docstring."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if direction not in ("outcome", "up", "down"):
        raise ValueError(f"direction must be 'outcome', 'up' or 'down', got {direction!r}")
    if len(rows) == 0:
        return []
    features = model.features
    x = model.prepare(rows)  # the values as the model sees them (unknown category -> missing)
    contrib_df = model.contributions(x, prepared=True)
    contrib = contrib_df[model.feature_names].to_numpy(dtype=float)
    bias = contrib_df[BIAS].to_numpy(dtype=float)
    missing = x.isna().to_numpy()
    if direction == "outcome":
        sign = np.where(contrib.sum(axis=1) >= 0, 1.0, -1.0)
    else:
        sign = np.full(len(rows), 1.0 if direction == "up" else -1.0)
    top = rank_reasons(contrib, missing, sign, top_k)

    # Family sums, in the Family enum's order (families the model has).
    fam_of = [Family(f.family).value for f in features]
    families = [f.value for f in Family if f.value in fam_of]
    fam_sums = np.column_stack(
        [contrib[:, [j for j, g in enumerate(fam_of) if g == fam]].sum(axis=1) for fam in families]
    )

    # Only the chosen cells are turned into Python objects.
    columns = {f.name: x[f.name].to_numpy(dtype=object) for f in features}
    out = []
    for i, (fam_row, idx_row, b) in enumerate(zip(fam_sums.tolist(), top.tolist(), bias.tolist(),
                                                  strict=True)):  # fmt: skip
        reasons = []
        for j in idx_row:
            if j < 0:
                break
            f = features[j]
            if missing[i, j]:
                value, sentence = None, missing_sentence(f)
            else:
                raw = columns[f.name][i]
                value = str(raw) if f.categorical else float(raw)
                sentence = f.sentence(value)
            reasons.append(Reason(f.name, fam_of[j], value, float(contrib[i, j]), sentence))
        out.append(Explanation(dict(zip(families, fam_row, strict=True)), reasons, b))
    return out
