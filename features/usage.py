"""Usage family: aggregated in SQL (DuckDB here) straight from the events source.

All usage SQL lives in this module. Events are never loaded whole into pandas:
the SQL scans the Parquet/CSV source (view `events`), reduces it to one row per
account, user and day, then to one row per account, user and *calendar bucket*
(the days between two consecutive `as_of` dates: a day belongs to the bucket
that ends at the first as_of after it). Because bucket edges are `as_of` dates,
a snapshot only ever sees buckets that end at or before it — records on or after
`as_of` cannot leak in — and distinct-user counts over any window are exact
(a user is active in [as_of - w, as_of) iff its last day in some bucket ending
at or before as_of is >= as_of - w). The same holds per event type, and the last
active day before as_of is the newest day of the buckets ending at or before it
(a day is before as_of iff its bucket ends at or before as_of).

The SQL is a list of (name, SELECT) steps (`usage_steps`) over view `events` and
three small pandas frames (`usage_frames`: the grid, the day -> bucket map and the
key event types). DuckDB runs each step into a temp table; the SELECTs are kept
portable, so that `sqlglot.transpile(sql, read="duckdb", write="spark")` gives
valid Spark SQL for each and Spark can run the same steps as temp views.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

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
from features.engine import DuckDBEngine, Engine, as_engine, spark_events_view
from features.io import (
    MAX_EXAMPLES,
    ContractError,
    Issue,
    arrow_dataset,
    example_values,
    rule_issue,
    source_files,
    unreadable,
)
from features.location import DataLocation, Source, as_source, locate
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


def sql_type(kind: Kind) -> str:
    """The DuckDB type view `events` gives a column of this kind."""
    return _SQL_TYPE[kind]


def _literal(path: Path | str) -> str:
    """`path` with DuckDB's glob characters bracketed, so that it names just that file."""
    return re.sub(r"([\[*?])", r"[\1]", str(path))


def _register_source(con: duckdb.DuckDBPyConnection, source: Source | str | pd.DataFrame) -> str:
    """Register the events source as view `events_src`; paths are bound, never pasted into SQL.

    Local files go to DuckDB's own readers, given the parts Arrow listed. Files in any
    other filesystem (an object store) are registered as an Arrow dataset over it:
    DuckDB scans that lazily, reading only the columns a query needs; nothing is
    loaded into pandas.
    """
    if isinstance(source, pd.DataFrame):
        con.register("events_src", source)
        return "events_src"
    path = as_source(locate(source))
    found = source_files(T.USAGE_EVENTS, path)
    if isinstance(path, DataLocation):
        con.register("events_src", arrow_dataset(path, found))
        return "events_src"
    files = [_literal(f) for f in found]
    if path.suffix == ".csv":
        rel = con.read_csv(files[0], all_varchar=True, header=True)
    else:
        rel = con.read_parquet(files)
    rel.create_view("events_src", replace=True)
    return "events_src"


def _typed_select(
    con: duckdb.DuckDBPyConnection, src: str
) -> tuple[list[str], list[tuple[Column, str]], list[str]]:
    """The contract-typed select list over `src`, the casts that convert, the missing columns.

    A missing column without a default is left out of the select list.
    """
    table = TABLES[T.USAGE_EVENTS]
    rel = con.sql(f"SELECT * FROM {src} LIMIT 0")
    types = {name: str(t) for name, t in zip(rel.columns, rel.types, strict=True)}
    missing = [c.name for c in table.columns if c.name not in types and c.default is None]
    select, converted = [], []
    for c in table.columns:
        if c.name in types:
            expr = f'TRY_CAST("{c.name}" AS {_SQL_TYPE[c.kind]})'
            if c.kind == Kind.TIMESTAMP and types[c.name] == "VARCHAR":
                expr = f'CAST(TRY_CAST("{c.name}" AS TIMESTAMPTZ) AS TIMESTAMP)'
            if types[c.name] != _SQL_TYPE[c.kind]:
                converted.append((c, expr))
        elif c.name in missing:
            continue
        else:
            expr = f"CAST({c.default!r} AS {_SQL_TYPE[c.kind]})"
        select.append(f'{expr} AS "{c.name}"')
    return select, converted, missing


def events_relation(con: duckdb.DuckDBPyConnection, source: Path | pd.DataFrame) -> None:
    """Register view `events` over the source, typed per the contract."""
    # Timestamps are naive UTC (as `features.io` reads them): text with an offset
    # ("...+02:00", "...Z") is converted, not truncated, and TIMESTAMPTZ sources are
    # read in UTC whatever the machine's time zone.
    con.execute("SET TimeZone = 'UTC'")
    src = _register_source(con, source)
    select, converted, missing = _typed_select(con, src)
    if missing:
        raise ContractError([Issue(T.USAGE_EVENTS, m, "missing column") for m in missing])
    _check_conversions(con, src, converted)
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT {', '.join(select)} FROM {src}")


#: the column view `events` holds when the source has none of the contract's columns
NO_CONTRACT_COLUMN = "_no_contract_column"


def events_relation_reported(
    con: duckdb.DuckDBPyConnection, source: Path | pd.DataFrame
) -> list[Issue]:
    """Register view `events` as `events_relation` does, but report what it would raise.

    For `cshealth check`: a missing column is left out of the view (or, when none is
    present, the view holds just NO_CONTRACT_COLUMN) and a value its cast cannot
    convert is null in it. Returns those issues: missing columns, then values not
    coercible to the contract's type (rows and examples). The source's own rows stay
    in view `events_src`.
    """
    con.execute("SET TimeZone = 'UTC'")
    src = _register_source(con, source)
    select, converted, missing = _typed_select(con, src)
    issues = [Issue(T.USAGE_EVENTS, m, "missing column") for m in missing]
    issues += _conversion_issues(con, src, converted)
    columns = ", ".join(select) or f"NULL AS {NO_CONTRACT_COLUMN}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT {columns} FROM {src}")
    return issues


def event_rule_conditions(c: Column, bound: dt.datetime | None) -> list[tuple[str, str, list]]:
    """(rule, SQL condition of a violation, parameters) per value rule of `check_events`.

    Shared with `cshealth check`, which adds the not-null, allowed-value and range rules.
    """
    return _rule_conditions(c, bound)


@contextlib.contextmanager
def reading_events(source: Source | str | pd.DataFrame) -> Iterator[None]:
    """Turn DuckDB's, Spark's (or, for a remote source, Arrow's) failure to read the events
    files into a ContractError naming the file."""
    try:
        yield
    except (duckdb.BinderException, duckdb.ParserException, duckdb.CatalogException):
        raise  # our SQL, not the data
    except (duckdb.Error, pa.ArrowException) as err:
        if isinstance(source, pd.DataFrame):
            raise
        path = as_source(locate(source))
        if not isinstance(err, duckdb.Error) and not isinstance(path, DataLocation):
            raise  # Arrow reads the files of remote sources only
        raise unreadable(T.USAGE_EVENTS, path, source_files(T.USAGE_EVENTS, path), err) from err
    except Exception as err:
        # Spark failing on the files (a corrupt part) fails the job: name the file.
        if isinstance(source, pd.DataFrame) or not _spark_error(err):
            raise
        path = as_source(locate(source))
        raise unreadable(T.USAGE_EVENTS, path, source_files(T.USAGE_EVENTS, path), err) from err


def _spark_error(err: BaseException) -> bool:
    """Whether `err` comes from Spark (pyspark or its JVM gateway), not from our code."""
    return type(err).__module__.startswith(("pyspark", "py4j"))


def _rule_conditions(c: Column, bound: dt.datetime | None) -> list[tuple[str, str, list]]:
    """(rule, SQL condition of a violation, parameters) for each value rule of column `c`."""
    q = f'"{c.name}"'
    out: list[tuple[str, str, list]] = []
    if c.must_be_finite:
        # portable: Spark has no isfinite
        out.append((Rule.FINITE, f"(isnan({q}) OR abs({q}) = CAST('Infinity' AS DOUBLE))", []))
    if c.identifier:
        out.append((Rule.ID_LENGTH, f"length({q}) > ?", [MAX_ID_LENGTH]))
        out.append((Rule.NO_CONTROL, f"regexp_matches({q}, ?)", [CONTROL_CHARACTERS]))
    if bound is not None and future_checked(c):
        out.append((future_rule(bound), f"{q} > ?", [bound]))
    return out


@dataclass(frozen=True)
class EventsChecked:
    """What `check_events` found: the value-rule violations and the events' time range."""

    issues: list[Issue]
    time_range: tuple[pd.Timestamp, pd.Timestamp] | None  # None: no events


def check_events(
    con: Engine | duckdb.DuckDBPyConnection, bound: dt.datetime | None
) -> EventsChecked:
    """Value-rule violations in view `events` (`bound`: the run date's end), time range.

    One scan groups the events by their identifier columns: a rule on an id (length,
    control characters) is then evaluated once per distinct value, not once per event
    (a regex over 100 M events costs more than the whole scan); another counts the
    other rules. Runs on either engine (`con`).
    """
    engine = as_engine(con)
    table = TABLES[T.USAGE_EVENTS]
    rules = [(c, rule, _inline(sql, ps)) for c in table.columns
             for rule, sql, ps in _rule_conditions(c, bound)]  # fmt: skip
    ids = ", ".join(c.name for c in table.columns if c.identifier)
    # Two scans: grouped by id (no per-row predicate there: FILTERs slow a grouping down),
    # and one row of counts for the other rules.
    engine.view(_EVENT_IDS, f"SELECT {ids}, count(*) AS _n FROM events GROUP BY {ids}")
    counts = [f"min({Col.EVENT_TIME})", f"max({Col.EVENT_TIME})", "count(*)",
              *[f"count(*) FILTER (WHERE {sql})" if not c.identifier else "0"
                for c, _, sql in rules]]  # fmt: skip
    lo, hi, total, *failing = engine.rows(f"SELECT {', '.join(counts)} FROM events")[0]
    if not total:
        _drop(engine, _EVENT_IDS)
        return EventsChecked([rule_issue(T.USAGE_EVENTS, None, Rule.NOT_EMPTY)], None)
    issues = []
    for (c, rule, sql), rows in zip(rules, failing, strict=True):
        if c.identifier:
            n = f"SELECT sum(_n) FILTER (WHERE {sql}) FROM {_EVENT_IDS}"
            rows = engine.rows(n)[0][0]
            sample = f"SELECT DISTINCT {c.name} FROM {_EVENT_IDS} WHERE {sql} LIMIT {MAX_EXAMPLES}"
        else:
            sample = f"SELECT {c.name} FROM events WHERE {sql} LIMIT {MAX_EXAMPLES}"
        if rows:
            values = [r[0] for r in engine.rows(sample)]
            issues.append(rule_issue(T.USAGE_EVENTS, c.name, rule, rows, values))
    _drop(engine, _EVENT_IDS)
    return EventsChecked(issues, None if lo is None else (pd.Timestamp(lo), pd.Timestamp(hi)))


def _drop(engine: Engine, name: str) -> None:
    """Free a table made by `engine.view` (DuckDB: a temp table; Spark: a cached view)."""
    if isinstance(engine, DuckDBEngine):
        engine.con.execute(f"DROP TABLE IF EXISTS {name}")
    else:
        engine.unregister(name)


#: the table of distinct event ids (and their rows) `check_events` builds
_EVENT_IDS = "_event_ids"


def _inline(sql: str, params: list) -> str:
    """`sql` with each `?` replaced by its parameter as an SQL literal (either engine)."""
    parts = sql.split("?")
    if len(parts) != len(params) + 1:
        raise ValueError(f"{len(params)} parameters for {sql!r}")
    out = [parts[0]]
    for value, rest in zip(params, parts[1:], strict=True):
        out += [_literal_sql(value), rest]
    return "".join(out)


def _literal_sql(value: object) -> str:
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"no SQL literal for {value!r}")
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _conversion_issues(con: duckdb.DuckDBPyConnection, src: str, converted: list) -> list[Issue]:
    """Values a cast turns into null, per converted column (rows and examples)."""
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
    return issues


def _check_conversions(con: duckdb.DuckDBPyConnection, src: str, converted: list) -> None:
    """Values a cast turns into null are contract violations: report, never drop them."""
    issues = _conversion_issues(con, src, converted)
    if issues:
        raise ContractError(issues)


def event_time_range(
    con: Engine | duckdb.DuckDBPyConnection,
) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """Oldest and newest event time in view `events` (None when there are no events)."""
    sql = f"SELECT min({Col.EVENT_TIME}), max({Col.EVENT_TIME}) FROM events"
    lo, hi = as_engine(con).rows(sql)[0]
    return None if lo is None else (pd.Timestamp(lo), pd.Timestamp(hi))


#: the pandas frames the usage SQL reads besides view `events` (see `usage_frames`)
GRID_SRC, BUCKET_SRC, KEY_TYPES = "grid_src", "bucket_src", "key_types"
#: the last step of `usage_steps`: RAW_COUNTS and days_since per row of the grid
USAGE_RAW = "usage_raw"
#: the counts USAGE_RAW holds besides account_id, as_of and days_since (NULL: no activity yet)
RAW_COUNTS = ("au_short", "au_medium", "au_long", "key_medium", "types_medium",
              "ev_medium", "ev_prev", "ud_medium", "ud_prev", "days_medium")  # fmt: skip
#: the longest bucket in days: a bucket's active days are the bits of one signed BIGINT
MAX_BUCKET_DAYS = 62


def usage_frames(
    grid: pd.DataFrame,
    key_event_types: tuple[str, ...],
    event_range: tuple[pd.Timestamp, pd.Timestamp],
) -> dict[str, pd.DataFrame]:
    """The small frames the usage steps read, by name: the grid, the bucket map, the key types.

    BUCKET_SRC maps each day from the first to the last event day (`event_range`, as
    `event_time_range` gives it) to its bucket: `bucket_end`, the first as_of of the grid
    after it, or an earlier edge that cuts a longer gap into buckets of at most
    MAX_BUCKET_DAYS days (`end_day`: the same as days since 1970-01-01); and `bit`,
    2 ** (days from the day to the bucket's last day).
    Days on or after the last as_of have no bucket and are left out.
    """
    g = grid[[Col.ACCOUNT_ID, Col.AS_OF]]
    ends = np.asarray(sorted(g[Col.AS_OF].unique()), dtype="datetime64[D]")
    days = pd.date_range(event_range[0].normalize(), event_range[1].normalize(), freq="D")
    day = days.values.astype("datetime64[D]")
    pos = np.searchsorted(ends, day, side="right")
    keep = pos < ends.size
    day, end = day[keep], ends[pos[keep]]
    # A day `gap` days before its as_of lies in the piece ending (gap // MAX) * MAX earlier.
    gap = (end - day).astype("int64") - 1
    end = end - (gap // MAX_BUCKET_DAYS) * MAX_BUCKET_DAYS
    offset = (end - day).astype("int64") - 1
    buckets = pd.DataFrame({"day": day.astype("datetime64[us]"),
                            "bucket_end": end.astype("datetime64[us]"),
                            "end_day": end.astype("int64"),  # days since 1970-01-01
                            "bit": np.left_shift(np.int64(1), offset)})  # fmt: skip
    return {
        GRID_SRC: g,
        BUCKET_SRC: buckets,
        KEY_TYPES: pd.DataFrame({"t": pd.Series(list(key_event_types), dtype="str")}),
    }


def _days_from(start_day: str, mask: str, end_day: str) -> str:
    """SQL: how many active days of bucket `mask` (ending at `end_day`) are >= `start_day`.

    Bit k of a mask is the day k days before the bucket's last day, so the days on or
    after `start_day` are its lowest `end_day - start_day` bits. Days are integers (days
    since 1970-01-01): integer arithmetic on tens of millions of rows, not date_diff.
    """
    width = f"least(greatest({end_day} - ({start_day}), 0), {MAX_BUCKET_DAYS})"
    return f"bit_count({mask} & ((CAST(1 AS BIGINT) << {width}) - 1))"


# Portable SQL: every step is one SELECT that sqlglot transpiles from DuckDB to Spark
# (`sqlglot.transpile(sql, read="duckdb", write="spark")`): no ASOF join, GROUP BY ALL,
# `::` cast or USING join; FILTER clauses, bit_or, bit_count, `<<` (Spark: shiftleft) and
# an uncorrelated IN subquery are valid in both. Dates move by whole days as
# DATE - INTEGER (a DATE in both engines, where DATE - INTERVAL is a TIMESTAMP in DuckDB);
# days between two dates are date_diff('day', start, end) (Spark: DATEDIFF(DAY, start,
# end)). Spark must run in UTC, as here, for CAST(event_time AS DATE) to give the same days.
#
# Cost: the events are scanned three times, each into a small table: per account, user
# and bucket (the bits of the days active in it), per account and day (events) and per
# account, event type and bucket. No table is per user *and* day: on product analytics
# data that is nearly as many rows as there are events.
_STEPS: tuple[tuple[str, str], ...] = (
    (
        "grid",
        "SELECT account_id, CAST(as_of AS DATE) AS as_of, "
        f"date_diff('day', DATE '1970-01-01', CAST(as_of AS DATE)) AS as_of_day FROM {GRID_SRC}",
    ),
    (
        "bucket_of",
        "SELECT CAST(day AS DATE) AS day, CAST(bucket_end AS DATE) AS bucket_end, "
        f"CAST(end_day AS BIGINT) AS end_day, CAST(bit AS BIGINT) AS bit FROM {BUCKET_SRC}",
    ),
    (
        "user_bucket",
        f"""
SELECT e.account_id, e.user_id, b.bucket_end, max(b.end_day) AS end_day,
       max(b.day) AS last_day,
       max(b.day) FILTER (WHERE e.event_type IN (SELECT t FROM {KEY_TYPES})) AS last_key_day,
       bit_or(b.bit) AS days
FROM events e JOIN bucket_of b ON b.day = CAST(e.event_time AS DATE)
GROUP BY e.account_id, e.user_id, b.bucket_end""",
    ),
    (
        "account_day",
        """
SELECT account_id, CAST(event_time AS DATE) AS day, count(*) AS n
FROM events WHERE event_time < (SELECT CAST(max(as_of) AS TIMESTAMP) FROM grid)
GROUP BY account_id, CAST(event_time AS DATE)""",
    ),
    (
        "type_bucket",
        """
SELECT e.account_id, e.event_type, b.bucket_end, max(b.day) AS last_day
FROM events e JOIN bucket_of b ON b.day = CAST(e.event_time AS DATE)
GROUP BY e.account_id, e.event_type, b.bucket_end""",
    ),
    (
        "account_bucket",
        """
SELECT account_id, bucket_end, max(last_day) AS last_day
FROM user_bucket GROUP BY account_id, bucket_end""",
    ),
    # Which as_of sees which bucket / day: a few hundred rows. The windows join through
    # them on equality (bucket, then account and as_of) instead of a range condition,
    # which would pair every bucket with every as_of of its account before filtering.
    (
        "as_of_bucket",
        """
SELECT b.bucket_end, b.end_day, a.as_of, a.as_of_day
FROM (SELECT DISTINCT bucket_end, end_day FROM bucket_of) b
JOIN (SELECT DISTINCT as_of, as_of_day FROM grid) a ON b.bucket_end <= a.as_of""",
    ),
    (
        "as_of_day",
        """
SELECT b.day, a.as_of
FROM (SELECT DISTINCT day FROM bucket_of) b
JOIN (SELECT DISTINCT as_of FROM grid) a ON b.day < a.as_of AND b.day >= a.as_of - {medium2}""",
    ),
    (
        USAGE_RAW,
        """
WITH users AS (
  SELECT g.account_id, g.as_of, ub.user_id, max(ub.last_day) AS last_day,
         max(ub.last_key_day) AS last_key_day
  FROM user_bucket ub
  JOIN as_of_bucket w ON w.bucket_end = ub.bucket_end AND w.bucket_end > w.as_of - {long}
  JOIN grid g ON g.account_id = ub.account_id AND g.as_of = w.as_of
  GROUP BY g.account_id, g.as_of, ub.user_id
), user_counts AS (
  SELECT account_id, as_of,
    count(*) FILTER (WHERE last_day >= as_of - {short}) AS au_short,
    count(*) FILTER (WHERE last_day >= as_of - {medium}) AS au_medium,
    count(*) FILTER (WHERE last_day >= as_of - {long}) AS au_long,
    count(*) FILTER (WHERE last_key_day >= as_of - {medium}) AS key_medium
  FROM users GROUP BY account_id, as_of
), user_days AS (
  SELECT g.account_id, g.as_of, sum({ud_medium}) AS ud_medium,
         sum({ud_medium2}) - sum({ud_medium}) AS ud_prev
  FROM user_bucket ub
  JOIN as_of_bucket w ON w.bucket_end = ub.bucket_end AND w.bucket_end > w.as_of - {medium2}
  JOIN grid g ON g.account_id = ub.account_id AND g.as_of = w.as_of
  GROUP BY g.account_id, g.as_of
), types AS (
  SELECT g.account_id, g.as_of, count(DISTINCT tb.event_type) AS types_medium
  FROM type_bucket tb
  JOIN as_of_bucket w ON w.bucket_end = tb.bucket_end AND w.bucket_end > w.as_of - {medium}
  JOIN grid g ON g.account_id = tb.account_id AND g.as_of = w.as_of
  WHERE tb.last_day >= g.as_of - {medium}
  GROUP BY g.account_id, g.as_of
), days AS (
  SELECT g.account_id, g.as_of,
    coalesce(sum(d.n) FILTER (WHERE d.day >= g.as_of - {medium}), 0) AS ev_medium,
    coalesce(sum(d.n) FILTER (WHERE d.day < g.as_of - {medium}), 0) AS ev_prev,
    count(*) FILTER (WHERE d.day >= g.as_of - {medium}) AS days_medium
  FROM account_day d
  JOIN as_of_day w ON w.day = d.day
  JOIN grid g ON g.account_id = d.account_id AND g.as_of = w.as_of
  GROUP BY g.account_id, g.as_of
), last_seen AS (
  SELECT g.account_id, g.as_of, max(ab.last_day) AS last_day
  FROM account_bucket ab
  JOIN as_of_bucket w ON w.bucket_end = ab.bucket_end
  JOIN grid g ON g.account_id = ab.account_id AND g.as_of = w.as_of
  GROUP BY g.account_id, g.as_of
)
SELECT g.account_id, g.as_of,
  coalesce(uc.au_short, 0) AS au_short, coalesce(uc.au_medium, 0) AS au_medium,
  coalesce(uc.au_long, 0) AS au_long, coalesce(uc.key_medium, 0) AS key_medium,
  coalesce(t.types_medium, 0) AS types_medium,
  coalesce(d.ev_medium, 0) AS ev_medium, coalesce(d.ev_prev, 0) AS ev_prev,
  coalesce(ud.ud_medium, 0) AS ud_medium, coalesce(ud.ud_prev, 0) AS ud_prev,
  coalesce(d.days_medium, 0) AS days_medium,
  date_diff('day', ls.last_day, g.as_of) AS days_since
FROM grid g
LEFT JOIN user_counts uc ON uc.account_id = g.account_id AND uc.as_of = g.as_of
LEFT JOIN user_days ud ON ud.account_id = g.account_id AND ud.as_of = g.as_of
LEFT JOIN types t ON t.account_id = g.account_id AND t.as_of = g.as_of
LEFT JOIN days d ON d.account_id = g.account_id AND d.as_of = g.as_of
LEFT JOIN last_seen ls ON ls.account_id = g.account_id AND ls.as_of = g.as_of""",
    ),
)


def usage_steps(w: Windows) -> list[tuple[str, str]]:
    """The usage SQL as (table name, SELECT) steps, in order, for windows `w`.

    Each SELECT reads view `events`, the frames of `usage_frames` and earlier steps;
    the last one is USAGE_RAW. DuckDB materialises each as a temp table
    (`_materialise`); Spark can run the same SELECTs, transpiled, as cached temp views.
    """
    m = w.medium
    sizes = {
        **w.model_dump(), "medium2": 2 * m,
        "ud_medium": _days_from(f"w.as_of_day - {m}", "ub.days", "ub.end_day"),
        "ud_medium2": _days_from(f"w.as_of_day - {2 * m}", "ub.days", "ub.end_day"),
    }  # fmt: skip
    return [(name, sql.format(**sizes)) for name, sql in _STEPS]


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num / den.where(den > 0)).astype("float64")


def usage_features(
    source: Path | pd.DataFrame,
    grid: pd.DataFrame,
    windows: Windows,
    key_event_types: tuple[str, ...] = (),
    con: Engine | duckdb.DuckDBPyConnection | None = None,
    event_range: tuple[pd.Timestamp, pd.Timestamp] | None = None,
) -> pd.DataFrame:
    """Usage features for each (account_id, as_of) of `grid`, aligned with its rows.

    `source` is the usage_events Parquet file / folder / CSV, or a DataFrame. Only
    events strictly before each row's `as_of` count. Runs on `con`: a DuckDB
    connection or an engine (`features.engine`; None: a private DuckDB connection).
    `event_range`: what `check_events` found on the same engine: its view `events` is
    then reused as it is (registering it again would repeat the conversion checks' scans).
    """
    engine = as_engine(con)
    if event_range is None:
        if isinstance(engine, DuckDBEngine):
            events_relation(engine.con, source)
        else:
            spark_events_view(engine, source)  # type: ignore[arg-type]
        event_range = event_time_range(engine)
    g = grid[[Col.ACCOUNT_ID, Col.AS_OF]].copy()
    if event_range is None:
        raw = g.assign(**dict.fromkeys(RAW_COUNTS, 0), days_since=np.nan)
    else:
        for name, frame in usage_frames(g, key_event_types, event_range).items():
            engine.register(name, frame)
        steps = usage_steps(windows)
        for i, (name, select) in enumerate(steps):
            if i == len(steps) - 1:
                log.info("usage: events reduced; aggregating %d snapshots", len(g))
            engine.view(name, select)
            log.debug("usage: step %s done", name)
        raw = engine.frame(f"SELECT * FROM {USAGE_RAW}")
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
