"""Build the point-in-time snapshot table from a contract-shaped data folder.

Thin wiring over the pure family functions: load tables, read subscription end
dates one way (`features.subscriptions`), derive the cutoff and calendar, take the
population, compute each family present, attach labels. The result is a
`features.snapshots.SnapshotTable`, which also writes and reads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from pathlib import Path

import duckdb
import pandas as pd

from features.calendar import observed_range, population, snapshot_dates
from features.commercial import SEATS, commercial_features, commercial_features_meta
from features.contract import TABLES, Col, T, run_bound
from features.engine import DuckDBEngine, Engine, duckdb_connection, spark_events_view
from features.io import ContractError, Issue, find_source, load_table
from features.labels import MRR_COLUMN, label_columns, label_frame
from features.location import DataLocation, Source, locate
from features.meta import Feature, by_name
from features.outcomes import outcomes_features, outcomes_features_meta
from features.rules import frame_issues
from features.sentiment import sentiment_features, sentiment_features_meta
from features.settings import FeatureParams
from features.snapshots import DESCRIPTOR_COLUMNS, KEY_COLUMNS, SnapshotTable
from features.subscriptions import resolve_end_date_convention, to_inclusive
from features.support import support_features, support_features_meta
from features.usage import (
    EventsChecked,
    check_events,
    events_relation,
    reading_events,
    usage_features,
    usage_features_meta,
)

log = logging.getLogger(__name__)


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


def _load(
    data_dir: DataLocation | Path | str, bound: dt.datetime | None
) -> tuple[dict[str, pd.DataFrame], Source | None, list[Issue]]:
    """Every present table except usage events (coerced), the events source (a Path when
    local, else its DataLocation), and the issues."""
    folder = locate(data_dir)
    if not folder.is_dir():
        raise ContractError([Issue(str(data_dir), None, "data folder does not exist")])
    frames: dict[str, pd.DataFrame] = {}
    issues: list[Issue] = []
    for name in (T.ACCOUNTS, T.SUBSCRIPTIONS, T.SUPPORT_TICKETS, T.NPS_RESPONSES, T.OUTCOMES,
                 T.OUTCOME_MEASUREMENTS):  # fmt: skip
        try:
            lt = load_table(folder, name)
        except ContractError as err:  # unreadable or ambiguous: report it with the rest
            issues += err.issues
            continue
        if lt is None:
            if TABLES[name].required:
                issues.append(Issue(name, None, "missing required table"))
            continue
        issues += lt.issues or frame_issues(lt.table, lt.frame, bound)
        frames[name] = lt.frame
    try:
        events = find_source(folder, T.USAGE_EVENTS)
    except ContractError as err:
        return frames, None, issues + err.issues
    if events is None:
        issues.append(Issue(T.USAGE_EVENTS, None, "missing required table"))
    return frames, events, issues


def _open_events(sql: Engine, source: Source | None, bound: dt.datetime | None) -> EventsChecked:
    """Register view `events` over the usage events on `sql` and check them."""
    if source is None:
        return EventsChecked([], None)
    try:
        with reading_events(source):
            if isinstance(sql, DuckDBEngine):
                events_relation(sql.con, source)
            else:  # validated where the features run: the events may not fit one machine
                spark_events_view(sql, source)  # type: ignore[arg-type]
            return check_events(sql, bound)
    except ContractError as err:
        return EventsChecked(err.issues, None)


def descriptors(grid: pd.DataFrame, accounts: pd.DataFrame) -> pd.DataFrame:
    """Each grid row's account name and CSM (null: tech-touch), for the score store."""
    info = accounts.drop_duplicates(Col.ACCOUNT_ID).set_index(Col.ACCOUNT_ID)
    info = info.reindex(grid[Col.ACCOUNT_ID]).set_index(grid.index)
    # "str": the dtype a Parquet round trip gives back (missing stays missing)
    cols = {c: info[c].astype("str").where(info[c].notna()) for c in DESCRIPTOR_COLUMNS}
    return pd.DataFrame(cols, index=grid.index)


def _activity_end(
    frames: dict[str, pd.DataFrame], ev_range: tuple[pd.Timestamp, pd.Timestamp] | None
) -> pd.Timestamp | None:
    """The newest activity record (events and the other timestamp columns); None: none."""
    ends = [ev_range[1]] if ev_range is not None else []
    with contextlib.suppress(ValueError):  # no activity table besides the events
        ends.append(observed_range(frames, activity=True)[1])
    return max(ends) if ends else None


def _timed(label: str, t0: float) -> float:
    now = time.perf_counter()
    log.info("features: %s (%.1f s)", label, now - t0)
    return now


def build_snapshots(
    data_dir: Path | str | DataLocation,
    params: FeatureParams,
    run_date: dt.date | dt.datetime | None = None,
    engine: Engine | None = None,
) -> SnapshotTable:
    """One row per (account_id, as_of) for accounts active at as_of, features and labels.

    Raises ContractError when the data break the contract; with `run_date`, any
    timestamp after it (other than a `future_ok` one) is such a break. The feature SQL
    runs on `engine` (default: DuckDB, within `params.duckdb_memory_limit`, spilling to a
    temp folder beyond); the events are validated on the same engine.
    """
    with duckdb_connection(params.duckdb_memory_limit) as con:
        return _build(data_dir, params, run_date, engine, con)


def _build(
    data_dir: Path | str | DataLocation,
    params: FeatureParams,
    run_date: dt.date | dt.datetime | None,
    engine: Engine | None,
    con: duckdb.DuckDBPyConnection,
) -> SnapshotTable:
    """`build_snapshots` on an open DuckDB connection."""
    t = time.perf_counter()
    data_dir = locate(data_dir)  # a path or a URI (file://, s3://, ...)
    bound = run_bound(run_date) if run_date is not None else None
    frames, events_src, issues = _load(data_dir, bound)
    sql = engine if engine is not None else DuckDBEngine(con)
    checked = _open_events(sql, events_src, bound)
    issues += checked.issues
    if issues:
        raise ContractError(issues)
    # Normalised once here: downstream, end_date is always the last day of service.
    convention, evidence = resolve_end_date_convention(
        frames[T.SUBSCRIPTIONS], params.end_date_convention
    )
    frames = {**frames, T.SUBSCRIPTIONS: to_inclusive(frames[T.SUBSCRIPTIONS], convention)}
    ev_range = checked.time_range
    lo, hi = observed_range(frames)
    if ev_range is not None:
        lo, hi = min(lo, ev_range[0]), max(hi, ev_range[1])
    cutoff = pd.Timestamp(params.cutoff) if params.cutoff else hi
    start = ev_range[0] if ev_range is not None else lo
    dates = snapshot_dates(start, cutoff, params, _activity_end(frames, ev_range))
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
    with reading_events(events_src):  # a part may turn out corrupt only now, when scanned
        usage = usage_features(
            events_src, grid, params.windows, params.key_event_types, con=sql, event_range=ev_range
        )
        parts.append(usage)
    t = _timed(f"usage ({sql.name})", t)
    if T.SUPPORT_TICKETS in frames:
        parts.append(
            support_features(grid, frames[T.SUPPORT_TICKETS], seats, params.windows, con=sql)
        )
        t = _timed("support", t)
    if T.NPS_RESPONSES in frames:
        parts.append(
            sentiment_features(
                grid, frames[T.NPS_RESPONSES], seats, params.sentiment_window_days, con=sql
            )
        )
        t = _timed("sentiment", t)
    if {T.OUTCOMES, T.OUTCOME_MEASUREMENTS} <= frames.keys():
        parts.append(
            outcomes_features(grid, frames[T.OUTCOMES], frames[T.OUTCOME_MEASUREMENTS], con=sql)
        )
        t = _timed("outcomes", t)
    parts.append(descriptors(grid, frames[T.ACCOUNTS]))
    parts.append(label_frame(grid, subs, cutoff, params))
    _timed("labels", t)
    frame = pd.concat(parts, axis=1)
    feats = feature_catalog(params, set(frames) | {T.USAGE_EVENTS})
    labels = label_columns(params.horizon_days)
    columns = [*KEY_COLUMNS, *[f.name for f in feats], *DESCRIPTOR_COLUMNS, MRR_COLUMN,
               *labels.values()]  # fmt: skip
    if list(frame.columns) != columns:
        raise AssertionError(f"feature columns disagree with the catalog: {list(frame.columns)}")
    return SnapshotTable(
        frame=frame, features=feats, cutoff=cutoff, horizon_days=params.horizon_days,
        labels=labels, expansion_threshold=params.expansion_threshold,
        end_date_convention=convention, end_date_evidence=evidence,
    )  # fmt: skip
