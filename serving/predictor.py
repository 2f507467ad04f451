"""Scoring logic, testable without a server: probabilities, health, components, explanations.

`Scorer` wraps the two champion models (each one artifact holding its own
preprocessing) and turns feature rows into the response items the API returns and
the store keeps. Nothing here re-implements preprocessing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Col
from features.snapshots import DESCRIPTOR_COLUMNS
from features.targets import CHURN, EXPANSION
from serving.explanations import (
    SEGMENT,
    PeerTable,
    Playbook,
    change_summary,
    context,
    moved_features,
    peer_table,
    reasons,
    row_context,
)
from serving.health import band, component_points, health_score
from serving.settings import ExplainParams, HealthParams
from training.explain import Contributions, contributions
from training.model import HealthModel

log = logging.getLogger(__name__)

#: given probabilities further than this from the local models' are logged (another version?)
PROBABILITY_TOLERANCE = 1e-6


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


@dataclass(frozen=True)
class ScoredBatch:
    """Scored items (input order) and the peer table their reasons compare with."""

    items: list[dict[str, Any]]
    peers: PeerTable


class Scorer:
    """Feature rows in, scored items out (same order); see `serving.explanations`."""

    def __init__(
        self, models: ModelPair, health: HealthParams, explain: ExplainParams | None = None
    ) -> None:
        self.models = models
        self.health = health
        self.explain = explain or ExplainParams()
        self.playbook = Playbook.build(self.explain.playbook, models.churn.features)
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

    def score(
        self,
        rows: pd.DataFrame,
        peers: PeerTable | None = None,
        probabilities: Mapping[str, np.ndarray] | None = None,
    ) -> list[dict[str, Any]]:
        """Score rows holding account_id, as_of and (some of) the feature columns.

        `peers`: the table reasons compare with (default: computed from `rows`);
        `probabilities`: see `score_batch`.
        """
        return self.score_batch(rows, peers, probabilities).items

    def score_batch(
        self,
        rows: pd.DataFrame,
        peers: PeerTable | None = None,
        probabilities: Mapping[str, np.ndarray] | None = None,
    ) -> ScoredBatch:
        """`score`, also returning the peer table used (the batch's own by default).

        `probabilities`: per target name (`churn`, `expansion`) the calibrated probability
        of each row, in `rows`' order, computed elsewhere by the same model versions (on
        Spark: `serving.spark_scoring`). They replace the local models' probabilities, and
        health and bands follow from them; the explanations (reasons, components, context,
        plays) are still computed here, on the driver, from the local models'
        contributions. A probability further than `PROBABILITY_TOLERANCE` from the local
        model's is logged as a warning (explanations of another model version).
        """
        if len(rows) == 0:
            return ScoredBatch([], peers or {})
        rows, missing = self.complete(rows.reset_index(drop=True))
        m, hp, ep = self.models, self.health, self.explain
        churn = contributions(m.churn, rows)
        expansion = contributions(m.expansion, rows)
        p_churn, p_exp = self._probabilities([churn, expansion], probabilities)
        health = health_score(p_churn, hp)
        bands = band(health, hp)
        fams, sums = churn.family_sums()
        points = component_points(sums, health, np.full(len(rows), self._base_health))
        if peers is None:
            peers = peer_table(rows, m.churn.features + m.expansion.features, bands, ep.min_peers)
        values = rows[[c for c in m.feature_names if c in rows]].to_dict("records")
        descriptors = {c: rows[c].tolist() if c in rows else [None] * len(rows)
                       for c in (*DESCRIPTOR_COLUMNS, SEGMENT)}  # fmt: skip
        out = []
        for i in range(len(rows)):
            ctx = row_context(rows, i, peers)
            out.append({
                "account_id": str(rows[Col.ACCOUNT_ID].iloc[i]),
                "as_of": _iso(rows[Col.AS_OF].iloc[i]) if Col.AS_OF in rows else None,
                **{c: _text(descriptors[c][i]) for c in descriptors},
                "churn_probability": float(p_churn[i]),
                "expansion_probability": float(p_exp[i]),
                # Unrounded: rounding to a display precision ties distinct accounts
                # (clients and the report round for display).
                "health_score": float(health[i]),
                "band": str(bands[i]),
                "health_change": None,
                "components": {f: round(float(v), 4) + 0.0  # never -0.0
                               for f, v in zip(fams, points[i], strict=True)},
                "reasons": reasons(churn, i, ctx, ep.top_reasons, worse_than_peers=True),
                "expansion_reasons": reasons(expansion, i, ctx, ep.top_reasons),
                "context": context(churn, i, ctx.seats, ep.top_context),
                "plays": self.playbook.for_row(churn, i, values[i], str(bands[i]), ep.top_plays),
                "changes": None,
                "model_version": m.version,
                "missing_features": missing[i],
            })  # fmt: skip
        return ScoredBatch(out, peers)

    def _probabilities(
        self, contribs: Sequence[Contributions], given: Mapping[str, np.ndarray] | None
    ) -> list[np.ndarray]:
        """Calibrated probability per target (churn first): the local models', or `given`."""
        out = []
        for (target, model, version), c in zip(self.models.by_target(), contribs, strict=True):
            local = np.clip(model.calibrator(c.raw_score), 0.0, 1.0)
            if given is None:
                out.append(local)
                continue
            p = _checked(given, target, len(local))
            off = int(np.sum(np.abs(p - local) > PROBABILITY_TOLERANCE))
            if off:
                log.warning("%d of %d given %s probabilities differ from %s v%s's by more than "
                            "%g: the explanations may not match the scores", off, len(p),
                            target, target, version, PROBABILITY_TOLERANCE)  # fmt: skip
            out.append(p)
        return out

    def describe_changes(
        self,
        items: Sequence[dict[str, Any]],
        previous_run: dict[str, Any] | None,
        previous: dict[str, dict[str, Any]],
        current: Sequence[dict[str, Any]],
    ) -> None:
        """Fill each item's `changes` against its previous score (`ScoreStore.write_run`).

        `current`: this run's feature payloads ({account_id, features}), `previous`: the
        previous run's score fields and features per account. Today's churn model reads
        both feature sets, so a change is a change in the account, not in the model.
        """
        if previous_run is None or not previous:
            return
        now_by_id = {p["account_id"]: p["features"] for p in current}
        pairs = [(n, it) for n, it in enumerate(items)
                 if it["account_id"] in previous and it["account_id"] in now_by_id]  # fmt: skip
        if not pairs:
            return
        ids = [it["account_id"] for _, it in pairs]
        model = self.models.churn
        now = contributions(model, self._frame([now_by_id[a] for a in ids]))
        then = contributions(model, self._frame([previous[a].get("features") or {} for a in ids]))
        for k, (_, item) in enumerate(pairs):
            before = previous[item["account_id"]]
            direction = -np.sign(item["health_score"] - float(before["health_score"]))
            moved = moved_features(now, then, k, k, direction, self.explain.top_changes)
            item["changes"] = change_summary(before, item, moved, previous_run)

    def _frame(self, features: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """Stored feature values ({name: value}) as the models' input frame."""
        frame = pd.DataFrame(list(features)).reindex(columns=self.models.feature_names)
        for f in self.models.churn.features:
            if not f.categorical:
                frame[f.name] = pd.to_numeric(frame[f.name], errors="coerce").astype(float)
        return frame

    @property
    def base_health(self) -> float:
        """Health of an account at the churn model's average score."""
        return self._base_health


def _checked(given: Mapping[str, np.ndarray], target: str, n: int) -> np.ndarray:
    """`given[target]` as n probabilities in [0, 1]; ValueError otherwise."""
    if target not in given:
        raise ValueError(f"no {target} probabilities given (have: {', '.join(given) or 'none'})")
    p = np.asarray(given[target], dtype=float)
    if p.shape != (n,):
        raise ValueError(f"{target} probabilities: shape {p.shape}, expected ({n},) (one per row)")
    if not np.all((p >= 0.0) & (p <= 1.0)):  # NaN fails too
        raise ValueError(f"{target} probabilities: missing or outside [0, 1]")
    return p


def _text(value: Any) -> str | None:
    """A descriptor as text (None when missing)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _iso(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    return pd.Timestamp(value).date().isoformat()
