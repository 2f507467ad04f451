"""Batch scoring: score every account active at the newest as_of and store the results."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections import Counter
from typing import Any

import pandas as pd

from features.contract import Col
from serving.predictor import Scorer
from serving.store import ScoreStore

log = logging.getLogger(__name__)


def newest_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest as_of (the scoring snapshot)."""
    if frame.empty:
        raise ValueError("the snapshot table is empty: nothing to score")
    return frame[frame[Col.AS_OF] == frame[Col.AS_OF].max()].reset_index(drop=True)


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        v = v.item()
    return v


def feature_payloads(rows: pd.DataFrame, names: list[str]) -> list[dict[str, Any]]:
    """Per row: account_id, as_of and the feature values as JSON-safe {name: value}."""
    # Absent families (an optional table missing this time) are stored as null.
    records = rows.reindex(columns=names).astype(object).to_dict("records")
    return [
        {"account_id": str(a), "as_of": pd.Timestamp(t).date().isoformat(),
         "features": {k: _json_value(v) for k, v in rec.items()}}
        for a, t, rec in zip(rows[Col.ACCOUNT_ID], rows[Col.AS_OF], records, strict=True)
    ]  # fmt: skip


def score_latest(
    frame: pd.DataFrame, scorer: Scorer, store: ScoreStore, scored_at: dt.datetime | None = None
) -> dict[str, Any]:
    """Score the newest snapshot, append it to the store; return a summary.

    `scored_at` defaults to the time the store commits the run (after concurrent runs).
    """
    t0 = time.perf_counter()
    rows = newest_rows(frame)
    log.info("scoring %d accounts at %s", len(rows), rows[Col.AS_OF].iloc[0])
    batch = scorer.score_batch(rows)
    items = batch.items
    as_of = rows[Col.AS_OF].iloc[0]
    run = {
        "run_id": uuid.uuid4().hex,
        "scored_at": scored_at,  # made naive UTC and ordered by the store, under its lock
        "as_of": pd.Timestamp(as_of).date(),
        "churn_model_version": scorer.models.churn_version,
        "expansion_model_version": scorer.models.expansion_version,
        "peers": batch.peers,
        "base_health": scorer.base_health,
    }
    payloads = feature_payloads(rows, scorer.models.feature_names)
    # What changed is worked out under the store's lock, against the run committed last.
    n = store.write_run(run, items, payloads, annotate=lambda its, prev_run, prev: (
        scorer.describe_changes(its, prev_run, prev, payloads)))
    bands = Counter(i["band"] for i in items)
    changes = [i["health_change"] for i in items if i["health_change"] is not None]
    summary = {
        "run_id": run["run_id"],
        "as_of": run["as_of"].isoformat(),
        "scored_at": run["scored_at"].isoformat(),
        "accounts": n,
        "bands": dict(bands),
        "mean_health": round(sum(i["health_score"] for i in items) / max(n, 1), 1),
        "compared_with_previous": len(changes),
        "model_version": scorer.models.version,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("scored %d accounts at %s: %s", n, summary["as_of"], dict(bands))
    return summary
