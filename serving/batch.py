"""Batch scoring: score every account active at the newest as_of and store the results."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Col
from serving.predictor import Scorer
from serving.store import ScoreStore, as_date

log = logging.getLogger(__name__)

#: the scoring rows -> the calibrated probability per target, aligned to the rows (Spark)
Probabilities = Callable[[pd.DataFrame], Mapping[str, np.ndarray]]


def newest_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest as_of (the scoring snapshot)."""
    if frame.empty:
        raise ValueError("the snapshot table is empty: nothing to score")
    return frame[frame[Col.AS_OF] == frame[Col.AS_OF].max()].reset_index(drop=True)


def rows_on(frame: pd.DataFrame, as_of: dt.date | None) -> pd.DataFrame:
    """The rows of one as_of (None: the newest); ValueError lists the dates there are."""
    if as_of is None:
        return newest_rows(frame)
    dates = pd.to_datetime(frame[Col.AS_OF])
    rows = frame[dates == pd.Timestamp(as_of)].reset_index(drop=True)
    if rows.empty:
        have = sorted({d.date().isoformat() for d in dates})
        shown = ", ".join(have[-12:]) if have else "none"
        raise ValueError(f"the snapshot table has no rows at as_of {as_of}; its as_of dates "
                         f"({len(have)}) end with: {shown}")  # fmt: skip
    return rows


def models_cutoff(scorer: Scorer) -> dt.date | None:
    """The newest data cutoff any of the scorer's models was trained on (None: unknown)."""
    cutoffs = [m.info.get("data_cutoff") for _, m, _ in scorer.models.by_target()]
    if any(c is None for c in cutoffs):
        return None
    return max(pd.Timestamp(c).date() for c in cutoffs)


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
    frame: pd.DataFrame,
    scorer: Scorer,
    store: ScoreStore,
    scored_at: dt.datetime | None = None,
    as_of: dt.date | None = None,
    backfill: bool | None = None,
    probabilities: Probabilities | None = None,
) -> dict[str, Any]:
    """Score the newest snapshot (or the one at `as_of`), append it to the store; a summary.

    `probabilities`: computes the probabilities of the rows to score elsewhere (on Spark:
    `serving.spark_scoring.spark_probabilities`); `Scorer.score_batch` uses them and still
    explains each score on this machine with the same model versions.

    `scored_at` defaults to the time the store commits the run (after concurrent runs).
    A run at an `as_of` earlier than the served run's is a *backfill* run: history for
    realised accuracy, never served, compared with nothing (`serving.store`); `backfill`
    True makes any run one (`cshealth replay`).
    """
    t0 = time.perf_counter()
    asked = as_of is not None  # only a date asked for may be a backfill (not other data)
    rows = rows_on(frame, as_of)
    log.info("scoring %d accounts at %s", len(rows), rows[Col.AS_OF].iloc[0])
    given = probabilities(rows) if probabilities is not None else None
    batch = scorer.score_batch(rows, probabilities=given)
    items = batch.items
    as_of = pd.Timestamp(rows[Col.AS_OF].iloc[0]).date()
    served = store.latest_run()
    if backfill is None:
        backfill = asked and served is not None and as_of < as_date(served["as_of"])
    run = {
        "run_id": uuid.uuid4().hex,
        "scored_at": scored_at,  # made naive UTC and ordered by the store, under its lock
        "as_of": as_of,
        "churn_model_version": scorer.models.churn_version,
        "expansion_model_version": scorer.models.expansion_version,
        "peers": batch.peers,
        "base_health": scorer.base_health,
        "backfill": backfill,
        "models_cutoff": models_cutoff(scorer),
    }
    payloads = feature_payloads(rows, scorer.models.feature_names)
    # What changed is worked out under the store's lock, against the run committed last.
    n = store.write_run(
        run,
        items,
        payloads,
        annotate=lambda its, prev_run, prev: scorer.describe_changes(its, prev_run, prev, payloads),
    )
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
        "backfill": backfill,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("scored %d accounts at %s: %s", n, summary["as_of"], dict(bands))
    return summary
