"""Usage family: aggregated with DuckDB straight from the events source.

All usage SQL lives in this module. Events are never loaded whole into pandas:
DuckDB scans the Parquet/CSV source, reduces it to one row per account, user and
day, then to one row per account, user and *calendar bucket* (the days between
two consecutive `as_of` dates). Because bucket edges are `as_of` dates, a
snapshot only ever sees buckets that end at or before it — records on or after
`as_of` cannot leak in — and distinct-user counts over any window are exact
(a user is active in [as_of - w, as_of) iff its last day in some bucket ending
at or before as_of is >= as_of - w).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from features.contract import (
    CONTROL_CHARACTERS,
    MAX_ID_LENGTH,
    TABLES,
    Col,
    Column,
    Kind,
    Rule,
    T,
    future_checked,
    future_rule,
)
from features.io import (
    MAX_EXAMPLES,
    ContractError,
    Issue,
    example_values,
    rule_issue,
    source_files,
    unreadable,
)
from features.meta import Family, Feature, Good, last_days
from features.settings import Windows

log = logging.getLogger(__name__)

_SQL_TYPE = {
    Kind.STRING: "VARCHAR",
    Kind.INT: "BIGINT",
    Kind.FLOAT: "DOUBLE",
    Kind.BOOL: "BOOLEAN",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.DATE: "DATE",
}


def usage_features_meta(w: Windows, key_event_types: tuple[str, ...] = ()) -> list[Feature]:
    """The usage features for the configured windows (key-feature share needs key types)."""
    s, m, lg = w.short, w.medium, w.long
    ls, lm, ll = last_days(s), last_days(m), last_days(lg)
    u = Family.USAGE
    feats = [
        Feature(f"active_users_{s}d", u, f"Distinct users active in the last {s} days.",
                "users", Good.HIGHER, f"{{amount}} active in {ls}", min_value=0,
                label=f"active users in {ls}", per_seat=True, noun="user"),
        Feature(f"active_users_{m}d", u, f"Distinct users active in the last {m} days.",
                "users", Good.HIGHER, f"{{amount}} active in {lm}", min_value=0,
                label=f"active users in {lm}", per_seat=True, noun="user"),
        Feature(f"active_users_{lg}d", u, f"Distinct users active in the last {lg} days.",
                "users", Good.HIGHER, f"{{amount}} active in {ll}", min_value=0,
                label=f"active users in {ll}", per_seat=True, noun="user"),
        Feature(f"active_users_ratio_{m}d_{lg}d", u,
                f"Users active in {m} days over users active in {lg} days (recency of the base).",
                "ratio", Good.HIGHER, f"{{value}} of the users active in {ll} were active in {lm}",
                min_value=0, max_value=1,
                label=f"share of users active in {ll} also active in {lm}"),
        Feature(f"events_{m}d", u, f"Usage events in the last {m} days.", "events",
                Good.HIGHER, f"{{amount}} in {lm}", min_value=0,
                label=f"usage events in {lm}", noun="usage event"),
        Feature(f"events_per_active_user_{m}d", u,
                f"Events per active user in the last {m} days.", "events/user", Good.HIGHER,
                f"{{amount}} in {lm}", min_value=0, label=f"events per active user in {lm}",
                noun="event per active user", plural="events per active user", decimals=1),
        Feature(f"active_days_{m}d", u, f"Days with any usage in the last {m} days.", "days",
                Good.HIGHER, f"Product used on {{value}} of {lm}", min_value=0, max_value=m,
                label=f"days with usage in {lm}", noun="day"),
        Feature(f"stickiness_dau_mau_{m}d", u,
                f"Mean daily active users over users active in {m} days.", "ratio",
                Good.HIGHER, f"Daily active users average {{value}} of the users active in {lm}",
                min_value=0, max_value=1, label=f"DAU/MAU stickiness over {lm}"),
        Feature(f"event_types_{m}d", u, f"Distinct event types used in the last {m} days.",
                "types", Good.HIGHER, f"{{amount}} used in {lm}", min_value=0,
                label=f"product areas used in {lm}", noun="product area"),
        Feature(f"key_feature_user_share_{m}d", u,
                f"Share of active users who used a key feature in the last {m} days.", "ratio",
                Good.HIGHER, f"{{value}} of active users used a key feature in {lm}",
                min_value=0, max_value=1, label=f"share of active users on key features in {lm}"),
        Feature(f"events_trend_{m}d", u,
                f"Relative change of events, last {m} days vs the {m} days before.", "ratio",
                Good.HIGHER, f"Usage {{trend}} over {lm}", min_value=-1,
                label=f"usage change over {lm}"),
        Feature(f"user_days_trend_{m}d", u,
                f"Relative change of user-days, last {m} days vs the {m} days before.", "ratio",
                Good.HIGHER, f"Active user-days {{trend}} over {lm}", min_value=-1,
                label=f"active user-days change over {lm}"),
        Feature("days_since_last_activity", u, "Days since the last day with usage.", "days",
                Good.LOWER, "No product usage for {amount}", min_value=1,
                label="days since the last product usage", noun="day"),
    ]  # fmt: skip
    if not key_event_types:
        feats = [f for f in feats if not f.name.startswith("key_feature_user_share")]
    return feats


def _literal(path: Path) -> str:
    """`path` with DuckDB's glob characters bracketed, so that it names just that file."""
    return re.sub(r"([\[*?])", r"[\1]", str(path))


def _register_source(con: duckdb.DuckDBPyConnection, source: Path | pd.DataFrame) -> str:
    """Register the events source as view `events_src`; paths are bound, never pasted into SQL."""
    if isinstance(source, pd.DataFrame):
        con.register("events_src", source)
        return "events_src"
    path = Path(source)
    files = [_literal(f) for f in source_files(T.USAGE_EVENTS, path)]
    if path.suffix == ".csv":
        rel = con.read_csv(files[0], all_varchar=True, header=True)
    else:
        rel = con.read_parquet(files)
    rel.create_view("events_src", replace=True)
    return "events_src"


def events_relation(con: duckdb.DuckDBPyConnection, source: Path | pd.DataFrame) -> None:
    """Register view `events` over the source, typed per the contract."""
    table = TABLES[T.USAGE_EVENTS]
    # Timestamps are naive UTC (as `features.io` reads them): text with an offset
    # ("...+02:00", "...Z") is converted, not truncated, and TIMESTAMPTZ sources are
    # read in UTC whatever the machine's time zone.
    con.execute("SET TimeZone = 'UTC'")
    src = _register_source(con, source)
    rel = con.sql(f"SELECT * FROM {src} LIMIT 0")
    types = {name: str(t) for name, t in zip(rel.columns, rel.types, strict=True)}
    missing = [c.name for c in table.columns if c.name not in types and c.default is None]
    if missing:
        raise ContractError([Issue(T.USAGE_EVENTS, m, "missing column") for m in missing])
    select, converted = [], []
    for c in table.columns:
        if c.name in types:
            expr = f'TRY_CAST("{c.name}" AS {_SQL_TYPE[c.kind]})'
            if c.kind == Kind.TIMESTAMP and types[c.name] == "VARCHAR":
                expr = f'CAST(TRY_CAST("{c.name}" AS TIMESTAMPTZ) AS TIMESTAMP)'
            if types[c.name] != _SQL_TYPE[c.kind]:
                converted.append((c, expr))
        else:
            expr = f"CAST({c.default!r} AS {_SQL_TYPE[c.kind]})"
        select.append(f'{expr} AS "{c.name}"')
    _check_conversions(con, src, converted)
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT {', '.join(select)} FROM {src}")


@contextlib.contextmanager
def reading_events(source: Path | pd.DataFrame) -> Iterator[None]:
    """Turn DuckDB's failure to read the events files into a ContractError naming the file."""
    try:
        yield
    except (duckdb.BinderException, duckdb.ParserException, duckdb.CatalogException):
        raise  # our SQL, not the data
    except duckdb.Error as err:
        if isinstance(source, pd.DataFrame):
            raise
        path = Path(source)
        raise unreadable(T.USAGE_EVENTS, path, source_files(T.USAGE_EVENTS, path), err) from err


def _rule_conditions(c: Column, bound: dt.datetime | None) -> list[tuple[str, str, list]]:
    """(rule, SQL condition of a violation, parameters) for each value rule of column `c`."""
    q = f'"{c.name}"'
    out: list[tuple[str, str, list]] = []
    if c.must_be_finite:
        out.append((Rule.FINITE, f"NOT isfinite({q})", []))
    if c.identifier:
        out.append((Rule.ID_LENGTH, f"length({q}) > ?", [MAX_ID_LENGTH]))
        out.append((Rule.NO_CONTROL, f"regexp_matches({q}, ?)", [CONTROL_CHARACTERS]))
    if bound is not None and future_checked(c):
        out.append((future_rule(bound), f"{q} > ?", [bound]))
    return out


def events_issues(con: duckdb.DuckDBPyConnection, bound: dt.datetime | None) -> list[Issue]:
    """Value-rule violations in view `events`, in one scan (`bound`: the run date's end)."""
    rules = [(c, *r) for c in TABLES[T.USAGE_EVENTS].columns for r in _rule_conditions(c, bound)]
    counts = ", ".join(["count(*)", *[f"count(*) FILTER (WHERE {sql})" for _, _, sql, _ in rules]])
    params = [p for *_, ps in rules for p in ps]
    total, *failing = con.execute(f"SELECT {counts} FROM events", params).fetchall()[0]
    if not total:
        return [rule_issue(T.USAGE_EVENTS, None, Rule.NOT_EMPTY)]
    issues = []
    for (c, rule, sql, ps), n in zip(rules, failing, strict=True):
        if n:
            sample = f'SELECT "{c.name}" FROM events WHERE {sql} LIMIT {MAX_EXAMPLES}'
            values = [r[0] for r in con.execute(sample, ps).fetchall()]
            issues.append(rule_issue(T.USAGE_EVENTS, c.name, rule, n, values))
    return issues


def _check_conversions(con: duckdb.DuckDBPyConnection, src: str, converted: list) -> None:
    """Values a cast turns into null are contract violations: report, never drop them."""
    # Only columns whose source type differs from the contract's need this extra scan.
    issues = []
    for c, expr in converted:
        bad = f'"{c.name}" IS NOT NULL AND {expr} IS NULL'
        n = con.sql(f"SELECT count(*) FROM {src} WHERE {bad}").fetchall()[0][0]
        if n:
            rows = con.sql(f'SELECT "{c.name}" FROM {src} WHERE {bad} LIMIT {MAX_EXAMPLES}')
            examples = example_values([r[0] for r in rows.fetchall()])
            issues.append(
                Issue(T.USAGE_EVENTS, c.name, f"not coercible to {c.kind.value}", n, examples)
            )
    if issues:
        raise ContractError(issues)


def event_time_range(con: duckdb.DuckDBPyConnection) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """Oldest and newest event time (None when there are no events)."""
    sql = f"SELECT min({Col.EVENT_TIME}), max({Col.EVENT_TIME}) FROM events"
    lo, hi = con.sql(sql).fetchall()[0]
    return None if lo is None else (pd.Timestamp(lo), pd.Timestamp(hi))


def _bucket_map(con: duckdb.DuckDBPyConnection, dates: pd.DatetimeIndex) -> None:
    """Table `bucket_of(day, bucket_end)`: the first as_of after each event day."""
    lo, hi = con.sql(
        f"SELECT min({Col.EVENT_TIME})::DATE, max({Col.EVENT_TIME})::DATE FROM events"
    ).fetchall()[0]
    days = pd.date_range(lo, hi, freq="D")
    ends = np.asarray(dates.values, dtype="datetime64[us]")
    pos = np.searchsorted(ends, days.values.astype("datetime64[us]"), side="right")
    keep = pos < ends.size
    con.register(
        "bucket_src",
        pd.DataFrame({"day": days[keep], "bucket_end": ends[pos[keep]]}),
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE bucket_of AS "
        "SELECT day::DATE AS day, bucket_end::DATE AS bucket_end FROM bucket_src"
    )


_REDUCE_SQL = """
CREATE OR REPLACE TEMP TABLE user_day AS
SELECT account_id, user_id, CAST(event_time AS DATE) AS day,
       count(*) AS n, bool_or(event_type IN (SELECT t FROM key_types)) AS key_used
FROM events WHERE event_time < (SELECT max(as_of) FROM grid)
GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE account_day AS
SELECT account_id, day, sum(n) AS n, count(*) AS users FROM user_day GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE user_bucket AS
SELECT u.account_id, u.user_id, b.bucket_end, max(u.day) AS last_day,
       max(u.day) FILTER (WHERE u.key_used) AS last_key_day
FROM user_day u JOIN bucket_of b USING (day) GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE type_bucket AS
SELECT e.account_id, e.event_type, b.bucket_end, max(CAST(e.event_time AS DATE)) AS last_day
FROM events e JOIN bucket_of b ON b.day = CAST(e.event_time AS DATE) GROUP BY ALL;
"""

_FEATURE_SQL = """
WITH users AS (
  SELECT g.account_id, g.as_of, ub.user_id, max(ub.last_day) AS last_day,
         max(ub.last_key_day) AS last_key_day
  FROM grid g JOIN user_bucket ub
    ON ub.account_id = g.account_id AND ub.bucket_end <= g.as_of
   AND ub.bucket_end > g.as_of - INTERVAL {long} DAY
  GROUP BY ALL
), user_counts AS (
  SELECT account_id, as_of,
    count(*) FILTER (WHERE last_day >= as_of - INTERVAL {short} DAY) AS au_short,
    count(*) FILTER (WHERE last_day >= as_of - INTERVAL {medium} DAY) AS au_medium,
    count(*) FILTER (WHERE last_day >= as_of - INTERVAL {long} DAY) AS au_long,
    count(*) FILTER (WHERE last_key_day >= as_of - INTERVAL {medium} DAY) AS key_medium
  FROM users GROUP BY ALL
), types AS (
  SELECT g.account_id, g.as_of, count(DISTINCT tb.event_type) AS types_medium
  FROM grid g JOIN type_bucket tb
    ON tb.account_id = g.account_id AND tb.bucket_end <= g.as_of
   AND tb.bucket_end > g.as_of - INTERVAL {medium} DAY
  WHERE tb.last_day >= g.as_of - INTERVAL {medium} DAY
  GROUP BY ALL
), days AS (
  SELECT g.account_id, g.as_of,
    coalesce(sum(d.n) FILTER (WHERE d.day >= g.as_of - INTERVAL {medium} DAY), 0) AS ev_medium,
    coalesce(sum(d.n) FILTER (WHERE d.day < g.as_of - INTERVAL {medium} DAY), 0) AS ev_prev,
    coalesce(sum(d.users) FILTER (WHERE d.day >= g.as_of - INTERVAL {medium} DAY), 0) AS ud_medium,
    coalesce(sum(d.users) FILTER (WHERE d.day < g.as_of - INTERVAL {medium} DAY), 0) AS ud_prev,
    count(*) FILTER (WHERE d.day >= g.as_of - INTERVAL {medium} DAY) AS days_medium
  FROM grid g JOIN account_day d
    ON d.account_id = g.account_id AND d.day < g.as_of
   AND d.day >= g.as_of - INTERVAL {medium2} DAY
  GROUP BY ALL
), last_seen AS (
  SELECT g.account_id, g.as_of, d.day AS last_day
  FROM grid g ASOF JOIN account_day d ON d.account_id = g.account_id AND d.day < g.as_of
)
SELECT g.account_id, g.as_of,
  coalesce(uc.au_short, 0) AS au_short, coalesce(uc.au_medium, 0) AS au_medium,
  coalesce(uc.au_long, 0) AS au_long, coalesce(uc.key_medium, 0) AS key_medium,
  coalesce(t.types_medium, 0) AS types_medium,
  coalesce(d.ev_medium, 0) AS ev_medium, coalesce(d.ev_prev, 0) AS ev_prev,
  coalesce(d.ud_medium, 0) AS ud_medium, coalesce(d.ud_prev, 0) AS ud_prev,
  coalesce(d.days_medium, 0) AS days_medium,
  date_diff('day', ls.last_day, g.as_of::DATE) AS days_since
FROM grid g
LEFT JOIN user_counts uc USING (account_id, as_of)
LEFT JOIN types t USING (account_id, as_of)
LEFT JOIN days d USING (account_id, as_of)
LEFT JOIN last_seen ls USING (account_id, as_of)
"""


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num / den.where(den > 0)).astype("float64")


def usage_features(
    source: Path | pd.DataFrame,
    grid: pd.DataFrame,
    windows: Windows,
    key_event_types: tuple[str, ...] = (),
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Usage features for each (account_id, as_of) of `grid`, aligned with its rows.

    `source` is the usage_events Parquet file / folder / CSV, or a DataFrame.
    Only events strictly before each row's `as_of` count.
    """
    con = con or duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    events_relation(con, source)
    g = grid[[Col.ACCOUNT_ID, Col.AS_OF]].copy()
    con.register("grid_src", g)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE grid AS "
        "SELECT account_id, CAST(as_of AS DATE) AS as_of FROM grid_src"
    )
    con.register("key_types", pd.DataFrame({"t": pd.Series(list(key_event_types), dtype="str")}))
    dates = pd.DatetimeIndex(sorted(g[Col.AS_OF].unique()))
    if event_time_range(con) is None:
        raw = g.assign(**{k: 0 for k in ("au_short", "au_medium", "au_long", "key_medium",
                                         "types_medium", "ev_medium", "ev_prev", "ud_medium",
                                         "ud_prev", "days_medium")}, days_since=np.nan)  # fmt: skip
    else:
        _bucket_map(con, dates)
        con.execute(_REDUCE_SQL)
        log.info("usage: events reduced; aggregating %d snapshots", len(g))
        sql = _FEATURE_SQL.format(**windows.model_dump(), medium2=2 * windows.medium)
        raw = con.sql(sql).df()
        raw[Col.AS_OF] = raw[Col.AS_OF].astype("datetime64[us]")
    raw = g.merge(raw, on=[Col.ACCOUNT_ID, Col.AS_OF], how="left", validate="1:1")
    out = _finish(raw, windows).set_index(grid.index)
    return out[[f.name for f in usage_features_meta(windows, key_event_types)]]


def _finish(raw: pd.DataFrame, w: Windows) -> pd.DataFrame:
    s, m, lg = w.short, w.medium, w.long
    out = pd.DataFrame(
        {
            f"active_users_{s}d": raw["au_short"],
            f"active_users_{m}d": raw["au_medium"],
            f"active_users_{lg}d": raw["au_long"],
            f"active_users_ratio_{m}d_{lg}d": _ratio(raw["au_medium"], raw["au_long"]),
            f"events_{m}d": raw["ev_medium"],
            f"events_per_active_user_{m}d": _ratio(raw["ev_medium"], raw["au_medium"]),
            f"active_days_{m}d": raw["days_medium"],
            f"stickiness_dau_mau_{m}d": _ratio(raw["ud_medium"] / m, raw["au_medium"]),
            f"event_types_{m}d": raw["types_medium"],
            f"key_feature_user_share_{m}d": _ratio(raw["key_medium"], raw["au_medium"]),
            f"events_trend_{m}d": _ratio(raw["ev_medium"], raw["ev_prev"]) - 1,
            f"user_days_trend_{m}d": _ratio(raw["ud_medium"], raw["ud_prev"]) - 1,
            "days_since_last_activity": raw["days_since"],
        }
    ).astype("float64")
    return out
