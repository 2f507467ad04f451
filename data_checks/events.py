"""usage_events checked in DuckDB: the suites' checks, without loading the events into pandas.

The events are the one table too large for pandas (2.4 GB at 13 M rows). DuckDB scans
their source through view `events`, typed per the contract exactly as the feature stage
reads it (`features.usage`). Every check `data_checks.suites` derives from the contract
has an SQL twin here with the same name, meaning and result shape: nulls (NaN included,
as pandas counts them) fail the not-null check and pass every other one. Only counts and
at most MAX_EXAMPLES example rows per failing check come back to Python; examples name
the row (0-based, in file order, parts in path order) as the pandas path did.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from data_checks.report import Failure
from data_checks.runner import examples
from data_checks.suites import NOT_NULL, allowed_name, fk_check, ordering_name, range_name
from features.contract import TABLES, ForeignKey, Kind, Rule, T, Table, future_checked
from features.engine import duckdb_connection
from features.io import MAX_EXAMPLES, Issue, find_source, source_files
from features.location import DataLocation
from features.usage import (
    NO_CONTRACT_COLUMN,
    event_rule_conditions,
    events_relation_reported,
    reading_events,
    sql_type,
)

log = logging.getLogger(__name__)

#: the view the checks read: `events` with float NaN as null (pandas reads NaN as missing)
CHECKED = "events_checked"
_FK_REF = "fk_ref"
#: DuckDB's memory cap here (it spills to a temp folder beyond it): grouping ids of many
#: distinct users stays within it, and the whole check within 4 GB, at any number of events.
MEMORY_LIMIT = "2GB"
_ENGINE = f"duckdb {duckdb.__version__}"
#: the GX expectation each rule of `features.usage` mirrors
_RULE_EXPECTATION = {
    Rule.FINITE: "expect_column_values_to_be_between",
    Rule.ID_LENGTH: "expect_column_value_lengths_to_be_between",
    Rule.NO_CONTROL: "expect_column_values_to_not_match_regex",
}


@dataclass
class EventsTable:
    """The events source opened in DuckDB: view `events_checked`, its rows and issues."""

    con: duckdb.DuckDBPyConnection
    source: Path
    rows: int
    types: dict[str, str]  # contract column present in the view -> its DuckDB type
    issues: list[Issue] = field(default_factory=list)  # missing columns, uncoercible values
    #: the connection's own resources (its spill folder), released on close
    resources: contextlib.ExitStack | None = None
    _values: dict[str, str] = field(default_factory=dict)

    @property
    def table(self) -> Table:
        return TABLES[T.USAGE_EVENTS]

    def values_of(self, column: str) -> str:
        """A temp table of the column's distinct values and their row counts (`_n`)."""
        # Few distinct ids, many rows: a rule on an id (regex, length, membership) is
        # evaluated once per value, and a scan of the events groups them (about 10x faster).
        if column not in self._values:
            name = f"_values_{len(self._values)}"
            self.con.execute(
                f"CREATE TEMP TABLE {name} AS "
                f"SELECT {_q(column)}, count(*) AS _n FROM {CHECKED} GROUP BY ALL"
            )
            self._values[column] = name
        return self._values[column]

    def close(self) -> None:
        if self.resources is not None:
            self.resources.close()  # closes the connection, removes its spill folder
        else:
            self.con.close()


@dataclass(frozen=True)
class _Check:
    """One row-level check: its name, the GX expectation it mirrors, a failing row in SQL."""

    name: str
    column: str | None
    expectation: str
    failing: str  # SQL condition of a failing row of view CHECKED
    params: tuple[Any, ...] = ()
    shown: tuple[str, ...] = ()  # the columns whose values the examples show
    kwargs: dict[str, Any] = field(default_factory=dict)
    last: bool = False  # an ordering: the GX suite runs those after the table-level checks


def open_events(data_dir: DataLocation | Path | str) -> EventsTable | None:
    """Open the usage_events source in DuckDB; None when absent.

    `data_dir` is a path, a URI or a DataLocation: local files are read by DuckDB itself,
    files elsewhere through an Arrow dataset over their filesystem. Raises ContractError
    for an ambiguous, empty or unreadable source (naming the file).
    """
    source = find_source(data_dir, T.USAGE_EVENTS)
    if source is None:
        return None
    log.info("reading %s from %s (DuckDB)", T.USAGE_EVENTS, source)
    source_files(T.USAGE_EVENTS, source)  # an empty file or a folder without parts
    resources = contextlib.ExitStack()
    con = resources.enter_context(duckdb_connection(MEMORY_LIMIT))
    try:
        _no_cast_pushdown(con)
        with reading_events(source):
            issues = events_relation_reported(con, source)
            rows = con.sql("SELECT count(*) FROM events_src").fetchall()[0][0]
        rel = con.sql("SELECT * FROM events LIMIT 0")
        types = {c: str(t) for c, t in zip(rel.columns, rel.types, strict=True)}
        types.pop(NO_CONTRACT_COLUMN, None)
        table = TABLES[T.USAGE_EVENTS]
        nan_free = [
            f'CASE WHEN isnan("{c.name}") THEN NULL ELSE "{c.name}" END AS "{c.name}"'
            for c in table.columns
            if c.kind == Kind.FLOAT and c.name in types
        ]
        replace = f" REPLACE ({', '.join(nan_free)})" if nan_free else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW {CHECKED} AS SELECT *{replace} FROM events")
    except BaseException:
        resources.close()
        raise
    return EventsTable(con, source, int(rows), types, issues, resources)


def _no_cast_pushdown(con: duckdb.DuckDBPyConnection) -> None:
    """Keep DuckDB from pushing the view's TRY_CASTs into the CSV reader."""
    # DuckDB 2.0's type_pushdown turns TRY_CAST(col AS DOUBLE) over read_csv into a strict
    # cast in the reader: one uncoercible value ("lots") then fails the whole scan instead
    # of becoming null (and being reported as not coercible). Parquet scans are unaffected.
    names = {r[0] for r in con.sql("SELECT name FROM duckdb_optimizers()").fetchall()}
    if "type_pushdown" in names:
        con.execute("SET disabled_optimizers = 'type_pushdown'")


def _q(column: str) -> str:
    return f'"{column}"'


def _value_checks(table: Table, present: set[str], bound: dt.datetime) -> list[_Check]:
    """The row-level checks of `suites.value_expectations`, as SQL, in the same order."""
    out: list[_Check] = []
    for col in table.columns:
        if col.name not in present:
            continue
        c, q = col.name, _q(col.name)
        if not col.nullable:
            out.append(_Check(NOT_NULL, c, "expect_column_values_to_not_be_null", f"{q} IS NULL"))
        if col.allowed:
            marks = ", ".join("?" for _ in col.allowed)
            out.append(
                _Check(
                    allowed_name(col),
                    c,
                    "expect_column_values_to_be_in_set",
                    f"{q} NOT IN ({marks})",
                    tuple(col.allowed),
                    kwargs={"value_set": list(col.allowed)},
                )
            )
        if col.min_value is not None or col.max_value is not None:
            bounds = [
                (op, v) for op, v in (("<", col.min_value), (">", col.max_value)) if v is not None
            ]
            out.append(
                _Check(
                    range_name(col),
                    c,
                    "expect_column_values_to_be_between",
                    " OR ".join(f"{q} {op} ?" for op, _ in bounds),
                    tuple(v for _, v in bounds),
                    kwargs={"min_value": col.min_value, "max_value": col.max_value},
                )
            )
        # the run-date bound first, then the sanity rules, as the GX suite orders them
        rules = event_rule_conditions(col, bound if future_checked(col) else None)
        rules.sort(key=lambda r: r[0] in _RULE_EXPECTATION)
        for rule, sql, params in rules:
            expectation = _RULE_EXPECTATION.get(rule, "expect_column_values_to_be_between")
            out.append(_Check(rule, c, expectation, sql, tuple(params)))
    for o in table.orderings:
        if o.earlier in present and o.later in present:
            out.append(
                _Check(
                    ordering_name(o),
                    o.later,
                    "expect_column_pair_values_a_to_be_greater_than_b",
                    f"{_q(o.later)} < {_q(o.earlier)}",
                    shown=(o.later, o.earlier),
                    kwargs={"column_A": o.later, "column_B": o.earlier, "or_equal": True},
                    last=True,
                )
            )
    return out


def _by_value(table: Table, column: str) -> bool:
    """Whether the column's rules run over its distinct values (ids, allowed values, FKs)."""
    col = table.column(column)
    return (
        col.identifier or bool(col.allowed) or any(fk.column == column for fk in table.foreign_keys)
    )


def _count(ev: EventsTable, checks: list[_Check]) -> list[int]:
    """Failing rows per check: one scan of the events, plus one per column grouped by value."""
    groups: dict[str, list[int]] = {}
    for i, check in enumerate(checks):
        by_value = not check.last and check.column and _by_value(ev.table, check.column)
        groups.setdefault(ev.values_of(check.column) if by_value else CHECKED, []).append(i)
    out = [0] * len(checks)
    for source, idx in groups.items():
        agg = "count(*)" if source == CHECKED else "sum(_n)"
        exprs = [f"coalesce({agg} FILTER (WHERE {checks[i].failing}), 0)" for i in idx]
        params = [p for i in idx for p in checks[i].params]
        counts = ev.con.execute(f"SELECT {', '.join(exprs)} FROM {source}", params).fetchall()[0]
        for i, n in zip(idx, counts, strict=True):
            out[i] = int(n)
    return out


def _key(table: Table, present: set[str]) -> list[str]:
    """The table's key columns when all are present (they label examples)."""
    return list(table.key) if all(k in present for k in table.key) else []


def _first_rows(
    ev: EventsTable, wanted: list[tuple[str, tuple[Any, ...], list[str]]]
) -> list[list[tuple[Any, ...]]]:
    """Per (failing condition, parameters, columns): the first MAX_EXAMPLES failing rows.

    Each row is (row number, values of the columns). One scan for all conditions, whatever
    their number and wherever the failing rows lie; only the examples come back.
    """
    if not wanted:
        return []
    aggs, params = [], []
    for failing, ps, labels in wanted:
        fields = ", ".join(f"_{j} := {_q(c)}" for j, c in enumerate(labels))
        aggs.append(
            f"min_by(struct_pack(_row := _row, {fields}), _row, {MAX_EXAMPLES}) "
            f"FILTER (WHERE {failing})"
        )
        params += ps
    # row_number() OVER () streams in scan order, which DuckDB preserves (parts in order).
    numbered = f"SELECT row_number() OVER () - 1 AS _row, * FROM {CHECKED}"
    got = ev.con.execute(f"SELECT {', '.join(aggs)} FROM ({numbered})", params).fetchall()[0]
    return [sorted(tuple(r.values()) for r in (found or [])) for found in got]


def _example_filter(ev: EventsTable, check: _Check) -> tuple[str, tuple[Any, ...]]:
    """The check's failing condition, cheap to evaluate on every row of the events."""
    # A rule on an id was evaluated once per distinct value: its rows are those holding a
    # failing value (a hash lookup, not a regex per row). Nulls fail only the not-null
    # check, which is cheap anyway.
    column = check.column
    if check.last or check.name == NOT_NULL or not column or not _by_value(ev.table, column):
        return check.failing, check.params
    values = ev.values_of(column)
    return (
        f"{_q(column)} IN (SELECT {_q(column)} FROM {values} WHERE {check.failing})",
        check.params,
    )


def _result(
    ev: EventsTable, shown: list[str], n: int, key: list[str], rows: list[tuple[Any, ...]]
) -> dict[str, Any]:
    """A GX-shaped SUMMARY result: counts and the first failing `rows` (row, *labels)."""
    labels = _labels(shown, key)
    values: list[Any] = []
    index: list[Any] = []
    for row, *vals in rows:
        got = dict(zip(labels, vals, strict=True))
        values.append(got[shown[0]] if len(shown) == 1 else tuple(got[c] for c in shown))
        index.append(got if key else row)
    return {
        "element_count": ev.rows,
        "unexpected_count": n,
        "unexpected_percent": 100.0 * n / ev.rows if ev.rows else 0.0,
        "partial_unexpected_list": values,
        "partial_unexpected_index_list": index,
    }


def _labels(shown: list[str], key: list[str]) -> list[str]:
    """The columns an example row carries: the key (when complete), then those shown."""
    return list(dict.fromkeys([*key, *shown]))


def _entry(
    check: str, column: str | None, expectation: str, kwargs: dict[str, Any], result: dict
) -> dict[str, Any]:
    """One GX-shaped expectation result."""
    success = not result.get("unexpected_count") and result.get("success", True)
    result = {k: v for k, v in result.items() if k != "success"}
    return {
        "success": bool(success),
        "expectation_config": {
            "type": expectation,
            "kwargs": {"column": column, **kwargs} if column else kwargs,
            "meta": {"check": check, "column": column},
            "severity": "critical",
        },
        "result": result,
        "meta": {},
        "exception_info": {"raised_exception": False},
    }


def _suite(name: str, entries: list[dict[str, Any]], source: Path) -> dict[str, Any]:
    """A GX-shaped suite result."""
    ok = sum(e["success"] for e in entries)
    return {
        "success": ok == len(entries),
        "results": entries,
        "suite_name": name,
        "suite_parameters": {},
        "statistics": {
            "evaluated_expectations": len(entries),
            "successful_expectations": ok,
            "unsuccessful_expectations": len(entries) - ok,
            "success_percent": 100.0 * ok / len(entries) if entries else None,
        },
        "meta": {"engine": _ENGINE, "source": str(source)},
        "id": None,
    }


def _type_part(ev: EventsTable) -> tuple[list[Failure], list[dict[str, Any]]]:
    """Each present column holds the contract's type (`suites.type_expectations`)."""
    failures, entries = [], []
    for col in ev.table.columns:
        if col.name not in ev.types:
            continue
        seen, want = ev.types[col.name], sql_type(col.kind)
        check = f"type {col.dtype}"
        if seen != want:
            failures.append(Failure(ev.table.name, check, col.name, ev.rows, [f"observed {seen}"]))
        result = {"observed_value": seen, "success": seen == want}
        entries.append(_entry(check, col.name, "expect_column_type", {"type_": want}, result))
    return failures, entries


def check_events(ev: EventsTable, bound: dt.datetime) -> tuple[list[Failure], dict[str, Any], int]:
    """Run the type and value checks; return failures, GX-shaped results and the count.

    Raises ContractError naming the file when DuckDB fails to read the source.
    """
    with reading_events(ev.source):
        return _check_events(ev, bound)


def _check_events(ev: EventsTable, bound: dt.datetime) -> tuple[list[Failure], dict[str, Any], int]:
    """Counts in one scan (plus one per id column), then examples in one more if any fail."""
    t0 = time.perf_counter()
    table, present = ev.table, set(ev.types)
    key = _key(table, present)
    failures, type_entries = _type_part(ev)
    checks = _value_checks(table, present, bound)
    failing = _count(ev, checks)
    shown_of = [list(c.shown or (c.column,)) for c in checks]
    wanted = [i for i, n in enumerate(failing) if n]
    filters = [(*_example_filter(ev, checks[i]), _labels(shown_of[i], key)) for i in wanted]
    firsts = dict(zip(wanted, _first_rows(ev, filters), strict=True))
    entries, ordered = [], []
    for i, (check, n) in enumerate(zip(checks, failing, strict=True)):
        shown = shown_of[i]
        res = _result(ev, shown, n, key, firsts.get(i, []))
        entry = _entry(check.name, check.column, check.expectation, check.kwargs, res)
        found = []
        if n:
            found = [
                Failure(table.name, check.name, check.column, int(n), examples(res, shown, key))
            ]
        (ordered if check.last else entries).append((entry, found))
    if table.required:
        result = {"observed_value": ev.rows, "success": ev.rows >= 1}
        entry = _entry(
            Rule.NOT_EMPTY, None, "expect_table_row_count_to_be_between", {"min_value": 1}, result
        )
        empty = Failure(table.name, Rule.NOT_EMPTY, None, 0, ["observed 0"])
        entries.append((entry, [] if ev.rows else [empty]))
    if key:
        entries.append(_unique_entry(ev, key))
    value_entries = []
    for entry, found in [*entries, *ordered]:
        value_entries.append(entry)
        failures += found
    out = {
        "types": _suite(f"{table.name}.types", type_entries, ev.source),
        "values": _suite(f"{table.name}.values", value_entries, ev.source),
    }
    n_run = len(type_entries) + len(value_entries)
    log.info(
        "%s: %d rows, %d checks in DuckDB, %.2f s",
        table.name, ev.rows, n_run, time.perf_counter() - t0,
    )  # fmt: skip
    return failures, out, n_run


def _unique_entry(ev: EventsTable, key: list[str]) -> tuple[dict[str, Any], list[Failure]]:
    """The key-uniqueness check of `suites.value_expectations`: its result and failure."""
    cols = ", ".join(_q(k) for k in key)
    some = " OR ".join(f"{_q(k)} IS NOT NULL" for k in key)
    n = ev.con.sql(
        f"SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {CHECKED} "
        f"WHERE {some} GROUP BY {cols} HAVING count(*) > 1)"
    ).fetchall()[0][0]
    column = key[0] if len(key) == 1 else ", ".join(key)
    values: list[Any] = []
    index: list[Any] = []
    if n:
        numbered = f"SELECT row_number() OVER () AS _row, {cols} FROM {CHECKED}"
        sql = (
            f"SELECT {cols} FROM (SELECT *, count(*) OVER (PARTITION BY {cols}) AS _n "
            f"FROM ({numbered})) WHERE _n > 1 AND ({some}) ORDER BY _row LIMIT {MAX_EXAMPLES}"
        )
        for vals in ev.con.sql(sql).fetchall():
            got = dict(zip(key, vals, strict=True))
            values.append(vals[0] if len(key) == 1 else got)
            index.append(got)
    res = {
        "element_count": ev.rows,
        "unexpected_count": int(n),
        "partial_unexpected_list": values,
        "partial_unexpected_index_list": index,
    }
    found = []
    if n:
        found = [Failure(ev.table.name, Rule.UNIQUE_KEY, column, int(n), examples(res, key, key))]
    if len(key) == 1:
        return _entry(Rule.UNIQUE_KEY, column, "expect_column_values_to_be_unique", {}, res), found
    kwargs = {"column_list": key}
    entry = _entry(Rule.UNIQUE_KEY, column, "expect_compound_columns_to_be_unique", kwargs, res)
    return entry, found


def check_events_foreign_key(
    ev: EventsTable, fk: ForeignKey, referenced: pd.Series
) -> tuple[dict[str, Any], Failure | None, int]:
    """Events whose `fk.column` is not among the `referenced` values (nulls pass).

    Returns the GX-shaped result, the failure (None when all match) and the number of
    distinct referenced values; only those values travel to DuckDB. Raises ContractError
    naming the file when DuckDB fails to read the source.
    """
    with reading_events(ev.source):
        return _events_foreign_key(ev, fk, referenced)


def _events_foreign_key(
    ev: EventsTable, fk: ForeignKey, referenced: pd.Series
) -> tuple[dict[str, Any], Failure | None, int]:
    values = pd.DataFrame({"v": pd.Series(referenced.dropna().unique(), dtype=referenced.dtype)})
    ev.con.register(_FK_REF, values)
    try:
        q = _q(fk.column)
        want = ev.types[fk.column]
        failing = f"{q} NOT IN (SELECT CAST(v AS {want}) FROM {_FK_REF})"
        grouped = ev.values_of(fk.column)
        sql = f"SELECT coalesce(sum(_n), 0) FROM {grouped} WHERE {failing}"
        n = ev.con.sql(sql).fetchall()[0][0]
        key = _key(ev.table, set(ev.types))
        rows = []
        if n:
            by_value = f"{q} IN (SELECT {q} FROM {grouped} WHERE {failing})"
            (rows,) = _first_rows(ev, [(by_value, (), _labels([fk.column], key))])
        res = _result(ev, [fk.column], int(n), key, rows)
    finally:
        ev.con.unregister(_FK_REF)
    failure = None
    if n:
        shown = examples(res, [fk.column], key)
        failure = Failure(ev.table.name, fk_check(fk), fk.column, int(n), shown)
    return res, failure, len(values)
