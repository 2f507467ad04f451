"""Build the point-in-time snapshot table from a contract-shaped data folder.

Thin wiring over the pure family functions: load tables, derive the cutoff and
calendar, take the population, compute each family present, attach labels.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from features.calendar import observed_range, population, snapshot_dates
from features.commercial import SEATS, commercial_features, commercial_features_meta
from features.contract import Col, T
from features.io import ContractError, Issue, find_source, load_table, write_parquet, write_text
from features.labels import MRR_COLUMN, label_frame
from features.meta import Feature, by_name, to_dict
from features.outcomes import outcomes_features, outcomes_features_meta
from features.sentiment import sentiment_features, sentiment_features_meta
from features.settings import FeatureParams
from features.support import support_features, support_features_meta
from features.usage import event_time_range, events_relation, usage_features, usage_features_meta

log = logging.getLogger(__name__)

KEY_COLUMNS = (Col.ACCOUNT_ID, Col.AS_OF)


@dataclass(frozen=True)
class Snapshots:
    """The snapshot table and what describes it."""

    frame: pd.DataFrame
    features: list[Feature]
    cutoff: pd.Timestamp
    label_columns: tuple[str, str]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def feature_catalog(params: FeatureParams, tables: set[str]) -> list[Feature]:
    """Every feature the pipeline produces when `tables` are present, in column order."""
    feats = commercial_features_meta() + usage_features_meta(params.windows, params.key_event_types)
    if T.SUPPORT_TICKETS in tables:
        feats += support_features_meta(params.windows)
    if T.NPS_RESPONSES in tables:
        feats += sentiment_features_meta(params.sentiment_window_days)
    if {T.OUTCOMES, T.OUTCOME_MEASUREMENTS} <= tables:
        feats += outcomes_features_meta()
    by_name(feats)  # raises on a duplicate name
    return feats


def _load(data_dir: Path) -> tuple[dict[str, pd.DataFrame], Path]:
    """Every present table except usage events (coerced), plus the events source path."""
    if not Path(data_dir).is_dir():
        raise ContractError([Issue(str(data_dir), None, "data folder does not exist")])
    frames: dict[str, pd.DataFrame] = {}
    issues: list[Issue] = []
    for name in (T.ACCOUNTS, T.SUBSCRIPTIONS, T.SUPPORT_TICKETS, T.NPS_RESPONSES, T.OUTCOMES,
                 T.OUTCOME_MEASUREMENTS):  # fmt: skip
        lt = load_table(data_dir, name)
        if lt is None:
            if name in (T.ACCOUNTS, T.SUBSCRIPTIONS):
                issues.append(Issue(name, None, "missing required table"))
            continue
        issues += lt.issues
        frames[name] = lt.frame
    events = find_source(data_dir, T.USAGE_EVENTS)
    if events is None:
        issues.append(Issue(T.USAGE_EVENTS, None, "missing required table"))
    if issues:
        raise ContractError(issues)
    return frames, events  # type: ignore[return-value]


def _timed(label: str, t0: float) -> float:
    now = time.perf_counter()
    log.info("features: %s (%.1f s)", label, now - t0)
    return now


def build_snapshots(data_dir: Path, params: FeatureParams) -> Snapshots:
    """One row per (account_id, as_of) for accounts active at as_of, features and labels."""
    t = time.perf_counter()
    data_dir = Path(data_dir)
    frames, events_src = _load(data_dir)
    con = duckdb.connect()
    events_relation(con, events_src)
    ev_range = event_time_range(con)
    lo, hi = observed_range(frames)
    if ev_range is not None:
        lo, hi = min(lo, ev_range[0]), max(hi, ev_range[1])
    cutoff = pd.Timestamp(params.cutoff) if params.cutoff else hi
    start = ev_range[0] if ev_range is not None else lo
    dates = snapshot_dates(start, cutoff, params)
    subs = frames[T.SUBSCRIPTIONS]
    grid = population(subs, dates)
    log.info(
        "features: cutoff %s; %d as_of dates %s..%s; %d snapshot rows",
        cutoff, len(dates), dates[0].date(), dates[-1].date(), len(grid),
    )  # fmt: skip
    t = _timed("loaded tables and calendar", t)
    parts = [grid, commercial_features(grid, subs, frames[T.ACCOUNTS])]
    seats = parts[1][SEATS]
    t = _timed("commercial", t)
    parts.append(usage_features(events_src, grid, params.windows, params.key_event_types, con=con))
    t = _timed("usage (DuckDB)", t)
    if T.SUPPORT_TICKETS in frames:
        parts.append(support_features(grid, frames[T.SUPPORT_TICKETS], seats, params.windows))
        t = _timed("support", t)
    if T.NPS_RESPONSES in frames:
        parts.append(
            sentiment_features(grid, frames[T.NPS_RESPONSES], seats, params.sentiment_window_days)
        )
        t = _timed("sentiment", t)
    if {T.OUTCOMES, T.OUTCOME_MEASUREMENTS} <= frames.keys():
        parts.append(outcomes_features(grid, frames[T.OUTCOMES], frames[T.OUTCOME_MEASUREMENTS]))
        t = _timed("outcomes", t)
    parts.append(label_frame(grid, subs, cutoff, params))
    _timed("labels", t)
    frame = pd.concat(parts, axis=1)
    feats = feature_catalog(params, set(frames) | {T.USAGE_EVENTS})
    columns = [*KEY_COLUMNS, *[f.name for f in feats], MRR_COLUMN, params.churn_label,
               params.expansion_label]  # fmt: skip
    if list(frame.columns) != columns:
        raise AssertionError(f"feature columns disagree with the catalog: {list(frame.columns)}")
    return Snapshots(frame, feats, cutoff, (params.churn_label, params.expansion_label))


def metadata(snaps: Snapshots) -> dict:
    """JSON-serialisable description of a snapshot table (written beside it)."""
    df = snaps.frame
    return {
        "cutoff": snaps.cutoff.isoformat(),
        "rows": len(df),
        "as_of": [d.date().isoformat() for d in sorted(df[Col.AS_OF].unique())],
        "labels": list(snaps.label_columns),
        "mrr_column": MRR_COLUMN,
        "features": [to_dict(f) for f in snaps.features],
    }


def write_snapshots(snaps: Snapshots, out: Path) -> None:
    """Write the table (Parquet) and its metadata (`<stem>.meta.json`), each atomically."""
    out = Path(out)
    write_parquet(snaps.frame, out)
    write_text(json.dumps(metadata(snaps), indent=2, default=str), out.with_suffix(".meta.json"))
