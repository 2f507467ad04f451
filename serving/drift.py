"""Drift of the newest scoring run against a reference (pure: no I/O, no clock).

`cshealth monitor` compares the feature rows of the newest run (and its stored churn and
expansion probabilities) with a reference: the rows the champion was trained on, or the
previous run. Per feature it measures

* the population stability index, PSI = sum((c - r) * ln(c / r)) over buckets, with `r`
  and `c` the reference and current shares. Numeric buckets are (e[i-1], e[i]] between the
  reference's quantiles (unique), plus one below the reference's minimum and one above its
  maximum, so values outside the reference's range stand out (a constant reference gets
  three buckets: below, at and above its value). Categorical buckets are the reference's
  categories plus one for every category it never had. Missing (and non-finite) values are
  left out of the PSI and counted apart; empty buckets get a share of `EPSILON`, so the
  PSI is always finite;
* the share of missing values, reference vs current;
* for categorical features, the categories the reference never had and the share of
  current rows holding one.

A feature drifted when its PSI reaches `psi_alert`, its missing share rose by at least
`missing_increase`, or its new categories hold at least `new_category_share` of the rows.
Features are ranked by `severity`: the largest of the three measures over its threshold
(1 or more: drifted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.contract import Col
from features.meta import Feature
from serving.settings import DriftParams

#: share given to an empty bucket (so ln(c / r) stays finite)
EPSILON = 1e-4
#: the bucket of categories the reference never had
NEW = "(new)"
#: new categories listed per feature (the share counts all of them)
MAX_NEW_LISTED = 10
#: the score columns of the store whose PSI is measured: (name, store column)
PROBABILITIES = (("churn", "churn_probability"), ("expansion", "expansion_probability"))

Level = Literal["alert", "warn", "ok"]


# ----- PSI ---------------------------------------------------------------------------
def _numeric(values: Any) -> np.ndarray:
    """`values` as float64 with missing, non-numeric and non-finite values as NaN."""
    s = pd.Series(values)
    if not pd.api.types.is_numeric_dtype(s):
        s = pd.to_numeric(s.astype("object"), errors="coerce")
    x = s.to_numpy(dtype="float64", na_value=np.nan, copy=True)
    x[~np.isfinite(x)] = np.nan
    return x


def _from_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    """PSI of two count vectors over the same buckets (NaN when either side is empty)."""
    if ref.sum() == 0 or cur.sum() == 0:
        return float("nan")
    r = np.maximum(ref / ref.sum(), EPSILON)
    c = np.maximum(cur / cur.sum(), EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def _buckets(x: np.ndarray, edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Bucket of each value: below `lo`, (-inf, e0], ..., (e[k-1], inf), above `hi`."""
    b = np.searchsorted(edges, x, side="left") + 1
    b[x < lo] = 0
    b[x > hi] = len(edges) + 2
    return b


def psi(reference: Any, current: Any, bins: int = 10) -> float:
    """PSI of a numeric feature; edges at the reference's quantiles; NaN if a side is empty."""
    ref, cur = _numeric(reference), _numeric(current)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if not len(ref) or not len(cur):
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    lo, hi, n = ref.min(), ref.max(), len(edges) + 3
    counts = [np.bincount(_buckets(v, edges, lo, hi), minlength=n) for v in (ref, cur)]
    return _from_shares(*counts)


def _categories(values: Any) -> pd.Series:
    """Non-missing values as strings."""
    s = pd.Series(values, dtype="object")
    return s[s.notna()].astype(str)


def categorical_psi(reference: Any, current: Any) -> float:
    """PSI over the reference's categories plus one bucket for all unseen ones."""
    ref, cur = _categories(reference), _categories(current)
    if ref.empty or cur.empty:
        return float("nan")
    known = sorted(ref.unique())
    cur = cur.where(cur.isin(known), NEW)
    order = [*known, NEW]
    counts = [s.value_counts().reindex(order, fill_value=0).to_numpy() for s in (ref, cur)]
    return _from_shares(*counts)


def missing_share(values: Any, categorical: bool = False) -> float:
    """Share of missing values (numeric: also non-numeric and non-finite); NaN if empty."""
    if not len(values):
        return float("nan")
    if categorical:
        return float(pd.Series(values, dtype="object").isna().mean())
    return float(np.isnan(_numeric(values)).mean())


def new_categories(reference: Any, current: Any) -> tuple[list[str], float]:
    """Current categories the reference never had (most frequent first), and their row share."""
    ref, cur = _categories(reference), _categories(current)
    unseen = cur[~cur.isin(set(ref))]
    share = len(unseen) / len(current) if len(current) else float("nan")
    return unseen.value_counts().index.tolist(), float(share)


# ----- results -----------------------------------------------------------------------
def _ratio(value: float, threshold: float) -> float:
    return value / threshold if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature (or one probability: no family, never categorical)."""

    name: str
    label: str
    family: str
    categorical: bool
    psi: float
    missing_reference: float
    missing_current: float
    new_categories: tuple[str, ...] = ()
    new_category_share: float = 0.0
    #: why it counts as drifted (empty: it does not)
    reasons: tuple[str, ...] = ()
    level: Level = "ok"
    severity: float = 0.0

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN as null, shares and PSI rounded to 4 decimals."""
        return {
            "name": self.name, "label": self.label, "family": self.family,
            "categorical": self.categorical, "psi": _round(self.psi),
            "missing_reference": _round(self.missing_reference),
            "missing_current": _round(self.missing_current),
            "new_categories": list(self.new_categories[:MAX_NEW_LISTED]),
            "new_category_share": _round(self.new_category_share),
            "drifted": self.drifted, "reasons": list(self.reasons), "level": self.level,
            "severity": _round(self.severity),
        }  # fmt: skip


def _round(x: float) -> float | None:
    return round(float(x), 4) if x is not None and math.isfinite(x) else None


def _judge(d: FeatureDrift, params: DriftParams) -> FeatureDrift:
    """`d` with its reasons, level and severity under `params`."""
    rise = d.missing_current - d.missing_reference
    measures = (
        (_ratio(d.psi, params.psi_alert), f"PSI {d.psi:.2f}"),
        (_ratio(rise, params.missing_increase),
         f"missing {d.missing_reference:.0%} -> {d.missing_current:.0%}"),
        (_ratio(d.new_category_share, params.new_category_share),
         f"{d.new_category_share:.0%} new categories"),
    )  # fmt: skip
    reasons = tuple(why for ratio, why in measures if ratio >= 1)
    warn = math.isfinite(d.psi) and d.psi >= params.psi_warn
    level: Level = "alert" if reasons else "warn" if warn else "ok"
    severity = max(ratio for ratio, _ in measures)
    return replace(d, reasons=reasons, level=level, severity=severity)


def _one_feature(ref: pd.Series, cur: pd.Series, f: Feature, params: DriftParams) -> FeatureDrift:
    """Drift of feature `f` between two columns."""
    if f.categorical:
        value, (unseen, share) = categorical_psi(ref, cur), new_categories(ref, cur)
    else:
        value, unseen, share = psi(ref, cur, params.bins), [], 0.0
    d = FeatureDrift(
        name=f.name, label=f.short, family=str(f.family.value), categorical=f.categorical,
        psi=value, missing_reference=missing_share(ref, f.categorical),
        missing_current=missing_share(cur, f.categorical),
        new_categories=tuple(unseen), new_category_share=share,
    )  # fmt: skip
    return _judge(d, params)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """Column `name`, or all missing when the table lacks it (counts as missing values)."""
    return frame[name] if name in frame.columns else pd.Series([None] * len(frame), dtype=object)


def _worst_first(items: Sequence[FeatureDrift]) -> list[FeatureDrift]:
    return sorted(items, key=lambda d: (-d.severity, d.name))


def feature_drift(
    reference: pd.DataFrame, current: pd.DataFrame, features: list[Feature], params: DriftParams
) -> list[FeatureDrift]:
    """Drift of every feature, worst first (a column absent from a frame counts as missing)."""
    out = [_one_feature(_column(reference, f.name), _column(current, f.name), f, params)
           for f in features]  # fmt: skip
    return _worst_first(out)


def probability_drift(name: str, reference: Any, current: Any, params: DriftParams) -> FeatureDrift:
    """PSI of one model's probabilities (drifted at `psi_alert`)."""
    d = FeatureDrift(
        name=name, label=f"{name} probability", family="", categorical=False,
        psi=psi(reference, current, params.bins),
        missing_reference=missing_share(reference), missing_current=missing_share(current),
    )  # fmt: skip
    return _judge(d, params)


@dataclass(frozen=True)
class Sample:
    """One side of the comparison: what it is, its as_of range and row count."""

    kind: str  # "training", "previous" or "current"
    as_of_from: str
    as_of_to: str
    rows: int
    run_id: str | None = None

    @property
    def span(self) -> str:
        same = self.as_of_from == self.as_of_to
        return self.as_of_to if same else f"{self.as_of_from}..{self.as_of_to}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "as_of_from": self.as_of_from, "as_of_to": self.as_of_to,
                "rows": self.rows, "run_id": self.run_id}  # fmt: skip


def sample(kind: str, frame: pd.DataFrame, run_id: str | None = None) -> Sample:
    """The description of `frame`'s rows (as_of range from `Col.AS_OF`)."""
    as_of = pd.to_datetime(frame[Col.AS_OF])
    return Sample(kind, _day(as_of.min()), _day(as_of.max()), len(frame), run_id)


def _day(t: Any) -> str:
    return "" if pd.isna(t) else pd.Timestamp(t).date().isoformat()


@dataclass(frozen=True)
class DriftReport:
    """Drift of the current run against the reference, and whether a threshold is crossed."""

    reference: Sample
    current: Sample
    params: DriftParams
    features: list[FeatureDrift] = field(default_factory=list)  # worst first
    probabilities: list[FeatureDrift] = field(default_factory=list)

    @property
    def drifted(self) -> list[FeatureDrift]:
        """Drifted probabilities, then drifted features, worst first."""
        return [*(p for p in self.probabilities if p.drifted),
                *(f for f in self.features if f.drifted)]  # fmt: skip

    @property
    def crossed(self) -> bool:
        return bool(self.drifted)

    def summary_line(self) -> str:
        """One line: drifted or not, against what, and the worst features with why."""
        ref, cur = self.reference, self.current
        where = (f"run {cur.run_id or '?'} (as_of {cur.span}, {cur.rows:,} rows) vs "
                 f"{ref.kind} (as_of {ref.span}, {ref.rows:,} rows)")  # fmt: skip
        drifted = self.drifted
        if not drifted:
            worst = self.features[0] if self.features else None
            shown = f"; largest feature PSI {worst.name} {worst.psi:.2f}" if worst else ""
            return f"no drift: {where}{shown}"
        n = self.params.top_features
        named = ", ".join(f"{d.name} ({'; '.join(d.reasons)})" for d in drifted[:n])
        more = f" and {len(drifted) - n} more" if len(drifted) > n else ""
        return f"DRIFT in {len(drifted)} of {self._measured()}: {where}: {named}{more}"

    def _measured(self) -> str:
        n, k = len(self.features), len(self.probabilities)
        return f"{n + k} inputs ({n} features, {k} probabilities)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN as null); every feature, worst first."""
        return {
            "crossed": self.crossed,
            "summary": self.summary_line(),
            "reference": self.reference.to_dict(),
            "current": self.current.to_dict(),
            "params": self.params.model_dump(mode="json"),
            "drifted": [{"name": d.name, "reasons": list(d.reasons)} for d in self.drifted],
            "probabilities": [p.to_dict() for p in self.probabilities],
            "features": [f.to_dict() for f in self.features],
        }


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[Feature],
    params: DriftParams,
    samples: tuple[Sample, Sample],
) -> DriftReport:
    """Compare two frames holding the features and the `PROBABILITIES` store columns."""
    probs = [probability_drift(name, _column(reference, col), _column(current, col), params)
             for name, col in PROBABILITIES]  # fmt: skip
    return DriftReport(samples[0], samples[1], params,
                       feature_drift(reference, current, features, params), probs)  # fmt: skip


# ----- choosing the rows -------------------------------------------------------------
def rows_at(frame: pd.DataFrame, as_of: Any) -> pd.DataFrame:
    """The snapshot rows at one as_of date."""
    return frame[pd.to_datetime(frame[Col.AS_OF]) == pd.Timestamp(as_of)]


def training_rows(frame: pd.DataFrame, info: dict[str, Any], label: str | None) -> pd.DataFrame:
    """The rows a champion was trained on: labelled, as_of up to its last training as_of.

    `info` is `HealthModel.info`: `trained_through_as_of`, else `labels_up_to` minus
    `horizon_days` (a row's label is observed `horizon_days` after its as_of).
    """
    last = info.get("trained_through_as_of")
    if last is None:
        last = pd.Timestamp(info["labels_up_to"]) - pd.Timedelta(days=int(info["horizon_days"]))
    rows = frame[pd.to_datetime(frame[Col.AS_OF]) <= pd.Timestamp(last)]
    if label and label in rows.columns:
        rows = rows[rows[label].notna()]
    return rows


def with_scores(rows: pd.DataFrame, scores: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """`rows` joined with a run's stored probabilities by account (accounts in both only)."""
    columns = [Col.ACCOUNT_ID, *(col for _, col in PROBABILITIES)]
    stored = pd.DataFrame(list(scores), columns=columns).astype({Col.ACCOUNT_ID: str})
    left = rows.drop(columns=[c for c in columns[1:] if c in rows.columns])
    left = left.astype({Col.ACCOUNT_ID: str})
    return left.merge(stored, on=Col.ACCOUNT_ID, how="inner", validate="one_to_one")


# ----- the report section ------------------------------------------------------------
def _verdict(report: dict[str, Any]) -> str:
    """One sentence for the report."""
    ref, n = report["reference"], len(report["drifted"])
    against = "the champion's training data" if ref["kind"] == "training" else "the previous run"
    if not n:
        return f"No drift against {against}: every feature and probability is within bounds."
    names = ", ".join(d["name"] for d in report["drifted"][:3])
    more = f" and {n - 3} more" if n > 3 else ""
    return f"Drift against {against} in {n} input{'s' if n > 1 else ''}: {names}{more}."


def drift_context(report: dict[str, Any]) -> dict[str, Any]:
    """What `drift.html.j2` reads, from `DriftReport.to_dict()` (e.g. monitor.json)."""
    top = int(report["params"]["top_features"])
    return {
        "crossed": bool(report["crossed"]),
        "verdict": _verdict(report),
        "reference": report["reference"],
        "current": report["current"],
        "params": report["params"],
        "probabilities": report["probabilities"],
        "features": report["features"][:top],
        "measured": len(report["features"]),
    }
