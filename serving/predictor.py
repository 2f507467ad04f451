"""Scoring logic, testable without a server: probabilities, health, components, reasons.

`Scorer` wraps the two champion models (each one artifact holding its own
preprocessing) and turns feature rows into the response items the API returns and
the store keeps. Nothing here re-implements preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Col
from features.targets import CHURN, EXPANSION
from serving.health import band, component_points, health_score
from serving.settings import HealthParams
from training.explain import Reason, explain
from training.model import HealthModel


@dataclass(frozen=True)
class ModelPair:
    """The churn and expansion models with their registry versions."""

    churn: HealthModel
    expansion: HealthModel
    churn_version: str
    expansion_version: str

    @property
    def version(self) -> dict[str, str]:
        return {CHURN.name: self.churn_version, EXPANSION.name: self.expansion_version}

    def by_target(self) -> list[tuple[str, HealthModel, str]]:
        """(target name, model, registry version) of each model, churn first."""
        return [(CHURN.name, self.churn, self.churn_version),
                (EXPANSION.name, self.expansion, self.expansion_version)]  # fmt: skip

    @property
    def feature_names(self) -> list[str]:
        """Every feature either model reads (the union, churn's order first)."""
        names = self.churn.feature_names
        return names + [n for n in self.expansion.feature_names if n not in names]


class Scorer:
    """Feature rows in, scored items out (same order)."""

    def __init__(self, models: ModelPair, health: HealthParams) -> None:
        self.models = models
        self.health = health
        bias = models.churn.contributions(self._blank(1))["bias"].to_numpy()
        # Categorical features: the categories every model reading them knows.
        known: dict[str, set[str]] = {}
        for m in (models.churn, models.expansion):
            for name, cats in m.categories.items():
                known[name] = known[name] & set(cats) if name in known else set(cats)
        self._known_categories = known
        self._base_health = float(health_score(models.churn.calibrator(bias), health)[0])

    def _blank(self, n: int) -> pd.DataFrame:
        return pd.DataFrame({c: [np.nan] * n for c in self.models.feature_names})

    def complete(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[list[str]]]:
        """Add absent feature columns as missing; list each row's missing features.

        A category a model never saw counts as missing too (the model treats it so).
        """
        names = self.models.feature_names
        out = rows.copy()
        for c in names:
            if c not in out.columns:
                out[c] = np.nan
        missing = out[names].isna().to_numpy().copy()
        for j, c in enumerate(names):
            if c in self._known_categories:
                col = out[c]
                missing[:, j] |= (col.notna() & ~col.astype(object).isin(
                    self._known_categories[c])).to_numpy()  # fmt: skip
        flagged = [[names[j] for j in np.flatnonzero(r)] for r in missing]
        return out, flagged

    def score(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """Score rows holding account_id, as_of and (some of) the feature columns."""
        if len(rows) == 0:
            return []
        rows, missing = self.complete(rows.reset_index(drop=True))
        m, hp = self.models, self.health
        # The churn explanation carries the raw score (bias + contributions): calibrate
        # that instead of running the booster a second time on the same rows.
        expl = explain(m.churn, rows, top_k=hp.top_reasons)
        raw = np.array([e.raw_score for e in expl])
        p_churn = np.clip(m.churn.calibrator(raw), 0.0, 1.0)
        p_exp = m.expansion.predict_proba(rows)
        health = health_score(p_churn, hp)
        bands = band(health, hp)
        fams = list(expl[0].families)
        points = component_points(
            np.array([[e.families[f] for f in fams] for e in expl]), health,
            np.full(len(rows), self._base_health),
        )  # fmt: skip
        out = []
        for i, e in enumerate(expl):
            out.append(
                {
                    "account_id": str(rows[Col.ACCOUNT_ID].iloc[i]),
                    "as_of": _iso(rows[Col.AS_OF].iloc[i]) if Col.AS_OF in rows else None,
                    "churn_probability": float(p_churn[i]),
                    "expansion_probability": float(p_exp[i]),
                    # Unrounded: rounding to a display precision ties distinct accounts
                    # (clients and the report round for display).
                    "health_score": float(health[i]),
                    "band": str(bands[i]),
                    "health_change": None,
                    "components": {
                        f: round(float(v), 4) for f, v in zip(fams, points[i], strict=True)
                    },
                    "reasons": [_reason(r) for r in e.top],
                    "model_version": m.version,
                    "missing_features": missing[i],
                }
            )
        return out

    @property
    def base_health(self) -> float:
        """Health of an account at the churn model's average score."""
        return self._base_health


def _reason(r: Reason) -> dict[str, Any]:
    return {"feature": r.feature, "family": r.family, "value": r.value,
            "impact": round(float(r.contribution), 4), "sentence": r.sentence}  # fmt: skip


def _iso(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    return pd.Timestamp(value).date().isoformat()
