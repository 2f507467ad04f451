"""What a score says to a CSM: reasons with healthy peers, context, plays, what changed.

Everything here works on SHAP contributions (`training.explain.Contributions`, log-odds
of the model's raw score) and the features' metadata (`features.meta.Feature`):

* **reasons**: actionable features (`Role.ACTIONABLE`) whose contribution raises the
  model's probability (churn risk; for `expansion_reasons` the expansion chance), largest
  first; a missing value is never a reason (it is listed in ``missing_features``). Each
  sentence carries the account's value and the typical value of healthy peers.
* **context**: descriptors no CSM can change (`Role.CONTEXT`) with the largest |churn
  contribution|.
* **peers**: per feature, the median over the run's green accounts of the account's
  segment when it has at least `min_peers` of them, else over all green accounts (when at
  least `min_peers`), else over every account scored. User counts marked `per_seat` are
  compared per seat (the peer median of users/seat times the account's seats).
* **plays**: the playbook (`explanations.playbook`) assigns each feature to the first play
  whose patterns match its name, else to the first play listing its family; a play's
  impact is the churn risk (positive contributions) of its features; a conditional play
  (`when`) weighs the account's whole risk.
* **what changed**: the change of each actionable feature's churn contribution between the
  previous run's features and today's, under today's model: the features that moved
  health most, in the direction it moved.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.commercial import SEATS
from features.meta import Feature, Good, Role, humanise
from serving.settings import Play
from training.explain import Contributions

#: suffix of a per-seat peer value in the peer table
PER_SEAT = "/seat"
#: the segment feature (peer groups) and the `segment` key of a score item
SEGMENT = "segment"
#: the most features a play lists (its strongest)
MAX_PLAY_FEATURES = 5
#: a peer table: {"all" | "healthy": group, "segments": {segment: group}}, group =
#: {"accounts": n, "values": {feature (or feature + PER_SEAT): median or None}}
PeerTable = dict[str, Any]


def _round(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def _float(value: Any) -> float | None:
    """A finite float, or None (missing, text, non-finite)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# ----- peers ----------------------------------------------------------------------------------
def _group(frame: pd.DataFrame, mask: np.ndarray) -> dict[str, Any]:
    part = frame[mask]
    medians = part.median(skipna=True) if len(part) else pd.Series(np.nan, index=frame.columns)
    return {"accounts": int(mask.sum()),
            "values": {k: _float(v) for k, v in medians.items()}}  # fmt: skip


def peer_table(
    rows: pd.DataFrame, features: Sequence[Feature], bands: np.ndarray, min_peers: int
) -> PeerTable:
    """Medians of the numeric features over healthy (green) accounts, per segment and overall."""
    features = list({f.name: f for f in features}.values())  # both models share most
    numeric = [f.name for f in features if not f.categorical and f.name in rows]
    frame = rows[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    if SEATS in frame:
        seats = frame[SEATS].where(frame[SEATS] > 0)
        for f in features:
            if f.per_seat and f.name in frame:
                frame[f.name + PER_SEAT] = frame[f.name] / seats
    green = np.asarray(bands) == "green"
    table: PeerTable = {"min_peers": min_peers, "all": _group(frame, np.ones(len(frame), bool)),
                        "healthy": _group(frame, green), "segments": {}}  # fmt: skip
    if SEGMENT in rows:
        segments = rows[SEGMENT].astype(object)
        for seg in segments.dropna().unique():
            mask = green & (segments == seg).to_numpy()
            if mask.sum() >= min_peers:
                table["segments"][str(seg)] = _group(frame, mask)
    return table


def peer_group(table: PeerTable, segment: Any) -> tuple[dict[str, Any], str]:
    """The values an account is compared with, and their name ("healthy SMB accounts")."""
    if isinstance(segment, str) and segment in table.get("segments", {}):
        return table["segments"][segment]["values"], f"healthy {humanise(segment)} accounts"
    healthy = table.get("healthy") or {}
    if healthy.get("accounts", 0) >= table.get("min_peers", 1):
        return healthy["values"], "healthy accounts"
    return (table.get("all") or {}).get("values", {}), "all accounts"


def peer_value(f: Feature, values: dict[str, Any], seats: float | None) -> float | None:
    """The peer value of `f` in the account's units (per-seat counts scaled to its seats)."""
    per_seat = values.get(f.name + PER_SEAT) if f.per_seat else None
    if per_seat is not None and seats is not None and seats > 0:
        return float(per_seat) * seats
    return values.get(f.name)


# ----- plays ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Playbook:
    """The plays and, per feature of a model, the play that answers it (or none)."""

    plays: tuple[Play, ...]
    owner: tuple[int, ...]  # per feature: index into `plays`, -1 when none

    @classmethod
    def build(cls, plays: Sequence[Play], features: Sequence[Feature]) -> Playbook:
        owner = []
        for f in features:
            by_name = [i for i, p in enumerate(plays)
                       if any(fnmatch.fnmatchcase(f.name, pat) for pat in p.features)]  # fmt: skip
            by_family = [i for i, p in enumerate(plays) if str(f.family) in p.families]
            owner.append((by_name or by_family or [-1])[0])
        return cls(tuple(plays), tuple(owner))

    def applies(self, play: Play, values: dict[str, Any], band: str) -> bool:
        """Whether a conditional play's condition holds for an account."""
        cond = play.when
        if cond is None:
            return False
        if cond.bands and band not in cond.bands:
            return False
        value = _float(values.get(cond.feature))
        if value is None:
            return False
        return (cond.at_most is None or value <= cond.at_most) and (
            cond.at_least is None or value >= cond.at_least
        )

    def for_row(
        self, c: Contributions, i: int, values: dict[str, Any], band: str, top: int
    ) -> list[dict[str, Any]]:
        """Row i's plays, most risk addressed first (only plays addressing some risk)."""
        risk = np.where(c.values[i] > 0, c.values[i], 0.0)
        out = []
        for k, play in enumerate(self.plays):
            if play.when is not None:
                if not self.applies(play, values, band):
                    continue
                impact, names = float(risk.sum()), [play.when.feature]
            else:
                js = [j for j, o in enumerate(self.owner)
                      if o == k and risk[j] > 0 and _actionable(c, i, j)]
                js.sort(key=lambda j: -risk[j])
                impact = float(risk[js].sum())
                names = [c.features[j].name for j in js[:MAX_PLAY_FEATURES]]
            if impact > 0:
                out.append({"play": play.play, "description": play.description,
                            "impact": _round(impact), "features": names})  # fmt: skip
        out.sort(key=lambda p: -p["impact"])
        return out[:top]


# ----- per-row explanations -------------------------------------------------------------------
def _actionable(c: Contributions, i: int, j: int) -> bool:
    """Feature j is something a CSM can act on and row i has a value for it."""
    return c.features[j].role == Role.ACTIONABLE and not c.missing[i, j]


@dataclass(frozen=True)
class RowContext:
    """What the sentences of one row need besides the contributions."""

    seats: float | None
    peers: dict[str, Any]
    group: str


def row_context(rows: pd.DataFrame, i: int, table: PeerTable) -> RowContext:
    """Seats and peer group of row i."""
    seats = _float(rows[SEATS].iat[i]) if SEATS in rows else None
    segment = rows[SEGMENT].iat[i] if SEGMENT in rows else None
    values, group = peer_group(table, segment)
    return RowContext(seats, values, group)


def reasons(
    c: Contributions, i: int, ctx: RowContext, top: int, worse_than_peers: bool = False
) -> list[dict[str, Any]]:
    """Actionable, non-missing features raising the model's probability, largest first.

    With `worse_than_peers` (churn), a feature whose value is at least as good as its
    healthy peers' (by the feature's healthy direction) is not a reason: the model may
    weigh it, but telling a CSM "better than healthy accounts" as a risk misleads.
    """
    row = c.values[i]
    out = []
    for j in np.argsort(-row, kind="stable"):
        if len(out) >= top or row[j] <= 0:
            break
        f = c.features[j]
        if not _actionable(c, i, j):
            continue
        value, peer = c.value(i, j), peer_value(f, ctx.peers, ctx.seats)
        if worse_than_peers and not _worse(f, value, peer):
            continue
        own, typical = f.sentence(value, ctx.seats), f.peer_text(peer, ctx.group, ctx.seats)
        out.append({
            "feature": f.name, "family": str(f.family), "value": value,
            "impact": _round(row[j]), "sentence": f"{own}; {typical}",
            "peer_value": peer, "peer_group": ctx.group,
        })  # fmt: skip
    return out


def _worse(f: Feature, value: Any, peer: float | None) -> bool:
    """Whether `value` is on the unhealthy side of `peer` (True when it cannot tell)."""
    v = _float(value)
    if v is None or peer is None or f.good == Good.NEUTRAL:
        return True
    return v < peer if f.good == Good.HIGHER else v > peer


def context(c: Contributions, i: int, seats: float | None, top: int) -> list[dict[str, Any]]:
    """Context features (non-missing) with the largest |contribution|."""
    row = c.values[i]
    js = [j for j in np.argsort(-np.abs(row), kind="stable")
          if c.features[j].role == Role.CONTEXT and not c.missing[i, j] and row[j] != 0]
    out = []
    for j in js[:top]:
        f, value = c.features[j], c.value(i, j)
        out.append({"feature": f.name, "family": str(f.family), "value": value,
                    "impact": _round(row[j]), "sentence": f.sentence(value, seats)})  # fmt: skip
    return out


# ----- what changed ---------------------------------------------------------------------------
def change_summary(
    before: dict[str, Any],
    after: dict[str, Any],
    moved: list[dict[str, Any]],
    previous_run: dict[str, Any],
) -> dict[str, Any]:
    """The `changes` of an item: health before/after, component and feature moves."""
    h0, h1 = float(before["health_score"]), float(after["health_score"])
    comps0, comps1 = before.get("components") or {}, after.get("components") or {}
    families = list(dict.fromkeys([*comps1, *comps0]))
    # + 0.0: a rounded -0.0 reads as "-0" in JSON
    comps = {f: round(float(comps1.get(f, 0.0)) - float(comps0.get(f, 0.0)), 1) + 0.0
             for f in families}
    head = f"Health {h0:.0f} → {h1:.0f}"
    if moved:
        text = f"{head}: " + "; ".join(m["sentence"] for m in moved)
    else:
        text = f"{head}: no single signal moved it noticeably"
    return {
        "previous_run_id": previous_run.get("run_id"),
        "previous_as_of": str(before.get("as_of") or previous_run.get("as_of") or "")[:10] or None,
        "health_before": round(h0, 1), "health_after": round(h1, 1),
        "band_before": before.get("band"), "sentence": text, "components": comps,
        "features": moved,
    }  # fmt: skip


def moved_features(
    now: Contributions, then: Contributions, i: int, k: int, direction: float, top: int
) -> list[dict[str, Any]]:
    """Actionable features whose value changed, most moved first in `direction` (+1: risk up).

    `now` row i and `then` row k are the same account under the same model.
    """
    delta = now.values[i] - then.values[k]
    picked = []
    for j in np.argsort(-np.abs(delta), kind="stable"):
        f = now.features[j]
        if abs(delta[j]) < 1e-6 or f.role != Role.ACTIONABLE:
            continue
        a, b = then.value(k, j), now.value(i, j)
        if a == b:
            continue
        picked.append(j)
    # Those moving health the way it went first, then the rest; each by size.
    picked.sort(key=lambda j: (direction * delta[j] <= 0, -abs(delta[j])))
    out = []
    for j in picked[:top]:
        f = now.features[j]
        before, after = then.value(k, j), now.value(i, j)
        out.append({"feature": f.name, "before": before, "after": after, "impact": _round(delta[j]),
                    "sentence": f.change_sentence(before, after)})  # fmt: skip
    return out


__all__ = [
    "PeerTable",
    "Playbook",
    "change_summary",
    "context",
    "moved_features",
    "peer_group",
    "peer_table",
    "peer_value",
    "reasons",
    "row_context",
]
