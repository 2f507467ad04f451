"""Check a folder of raw tables against the contract: structure, per-table suites, foreign keys.

The small tables are loaded into pandas and validated with Great Expectations; the usage
events, too large for pandas, are checked in DuckDB with the same checks
(`data_checks.events`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from data_checks.events import (
    EventsTable,
    check_events,
    check_events_foreign_key,
    open_events,
)
from data_checks.report import (
    CROSS_TABLE,
    END_DATE_CONVENTION,
    CheckReport,
    Failure,
    jsonable,
    write_reports,
)
from data_checks.runner import GxRunner, examples, failures_from, in_set_result
from data_checks.suites import (
    fk_check,
    foreign_key_expectation,
    type_expectations,
    value_expectations,
)
from features.contract import TABLES, Col, ForeignKey, T, Table, future_checked, run_bound
from features.io import ContractError, Issue, describe, load_table
from features.location import DataLocation, locate
from features.subscriptions import EndDateSetting, resolve_end_date_convention

log = logging.getLogger(__name__)

#: Above this many referenced values a foreign key is checked with pandas' isin instead:
#: GX re-serialises a value set about a hundred times per expectation (~85 µs per value),
#: i.e. ~8 s per foreign key on 100 k accounts, against ~0.1 s for isin on 10 M rows.
GX_VALUE_SET_LIMIT = 20_000

_ISSUE_CHECKS = {"missing column": "column present"}
_AMBIGUOUS = "ambiguous source"
_READABLE = "readable"


def check_folder(
    data_dir: Path | str | DataLocation,
    run_date: dt.date | dt.datetime,
    reports_dir: Path | None = None,
    end_date_convention: EndDateSetting = "auto",
) -> CheckReport:
    """Run every contract check on the tables in `data_dir`; write results to `reports_dir`.

    Also reports how subscriptions.end_date is read (`end_date_convention`: "auto"
    detects it) under the results' `end_date_convention` key.
    """
    t0 = time.perf_counter()
    data_dir = locate(data_dir)  # a path or a URI (file://, s3://, ...)
    bound = run_bound(run_date)
    results: dict[str, Any] = {
        "data_dir": str(data_dir),
        "run_date": bound.isoformat(),
        "tables": {},
        CROSS_TABLE: {"foreign_keys": [], "validations": {}},
    }
    failures: list[Failure] = []
    frames: dict[str, pd.DataFrame] = {}
    events: EventsTable | None = None
    rows: dict[str, int] = {}
    structural = gx_run = 0
    try:
        if not data_dir.is_dir():
            failures.append(Failure(str(data_dir), "data folder exists", None, 0, []))
            structural = 1
        else:
            for name, table in TABLES.items():
                entry, found, data = _load(data_dir, table)
                structural += 1 + (2 * len(table.columns) if data is not None else 0)
                entry["failures"] = found
                results["tables"][name] = entry
                failures += found
                if isinstance(data, EventsTable):
                    events, rows[name] = data, data.rows
                elif data is not None:
                    frames[name], rows[name] = data, len(data)
        if rows:
            found, gx_run = _run_checks(frames, events, bound, results)
            failures += found
    finally:
        if events is not None:
            events.close()
    for entry in results["tables"].values():
        entry["failures"] = [asdict(f) for f in entry["failures"]]
    found_convention = _end_date_convention(frames.get(T.SUBSCRIPTIONS), end_date_convention)
    if found_convention is not None:
        results[END_DATE_CONVENTION] = found_convention
    results["success"] = not failures
    results["seconds"] = round(time.perf_counter() - t0, 3)
    report = CheckReport(
        success=not failures,
        failures=failures,
        tables_checked=rows,
        expectations_run=structural + gx_run,
        results=jsonable(results),
    )
    if reports_dir is not None:
        write_reports(report, Path(reports_dir))
    log.info("%s (%.1f s)", report.summary_line(), results["seconds"])
    return report


def _run_checks(
    frames: dict[str, pd.DataFrame],
    events: EventsTable | None,
    bound: dt.datetime,
    results: dict[str, Any],
) -> tuple[list[Failure], int]:
    """Each loaded table's suites (GX; the events in DuckDB), then the foreign keys."""
    failures: list[Failure] = []
    n_run = 0
    gx = GxRunner() if frames else None  # importing GX takes seconds
    for name, entry in results["tables"].items():
        if name in frames:
            assert gx is not None
            found, validations, n = _check_table(gx, TABLES[name], frames[name], bound)
        elif events is not None and name == events.table.name:
            found, validations, n = _check_events(events, bound)
        else:
            continue
        entry["failures"] += found
        entry["validations"] = validations
        failures += found
        n_run += n
    statuses = {name: entry["status"] for name, entry in results["tables"].items()}
    found, n = _check_foreign_keys(gx, frames, events, statuses, results[CROSS_TABLE])
    results[CROSS_TABLE]["failures"] = [asdict(f) for f in found]
    return failures + found, n_run + n


def _end_date_convention(
    subs: pd.DataFrame | None, setting: EndDateSetting
) -> dict[str, str] | None:
    """The end-date convention the feature stage will use, with its evidence (None: no data)."""
    if subs is None or not {Col.ACCOUNT_ID, Col.START_DATE, Col.END_DATE} <= set(subs.columns):
        return None  # a missing table or column is already a failure
    convention, evidence = resolve_end_date_convention(subs, setting)
    return {"setting": setting, "convention": convention, "evidence": evidence}


def _issue_failure(issue: Issue, rows: int = 0) -> Failure:
    """A loader issue as a failure; a missing column fails on all `rows`."""
    check, examples = _ISSUE_CHECKS.get(issue.check, issue.check), list(issue.examples)
    if issue.check.startswith("not coercible"):
        check = f"type: {issue.check}"
    elif issue.check.startswith(_AMBIGUOUS):  # "ambiguous source: a.csv, a.parquet"
        check, examples = "single source", issue.check.partition(": ")[2].split(", ")
    elif issue.column is None:  # "unreadable file a.csv: not UTF-8 text", "empty file ..."
        check, examples = _READABLE, [issue.check]
    return Failure(issue.table, check, issue.column, issue.rows or rows, examples)


def _load(
    data_dir: Path, table: Table
) -> tuple[dict[str, Any], list[Failure], pd.DataFrame | EventsTable | None]:
    """Locate and read one table (the events: open them in DuckDB); never raises.

    Returns the results entry, what stands in the way, and the coerced frame (the
    opened events) when the table could be read.
    """
    try:
        read = _read(data_dir, table)
    except ContractError as err:  # both NAME.csv and NAME.parquet, or an unreadable file
        found = [_issue_failure(i) for i in err.issues]
        status = "unreadable" if any(f.check == _READABLE for f in found) else "ambiguous"
        return {"status": status}, found, None
    except Exception as err:  # an unreadable file must fail the check, not the program
        msg = describe(err)
        return {"status": "unreadable"}, [Failure(table.name, _READABLE, None, 0, [msg])], None
    if read is None:
        if table.required:
            return (
                {"status": "missing"},
                [Failure(table.name, "required table present", None, 0)],
                None,
            )
        return {"status": "absent (optional)"}, [], None
    source, rows, issues, data = read
    entry = {"status": "loaded", "source": str(source), "rows": rows}
    return entry, [_issue_failure(i, rows) for i in issues], data


def _read(
    data_dir: Path, table: Table
) -> tuple[Path, int, list[Issue], pd.DataFrame | EventsTable] | None:
    """Source, rows, issues and data of one table (None when absent); may raise."""
    if table.name == T.USAGE_EVENTS:  # too large for pandas: opened in DuckDB
        ev = open_events(data_dir)
        return None if ev is None else (ev.source, ev.rows, ev.issues, ev)
    lt = load_table(data_dir, table.name)
    return None if lt is None else (lt.source, len(lt.frame), lt.issues, lt.frame)


def _check_events(
    events: EventsTable, bound: dt.datetime
) -> tuple[list[Failure], dict[str, Any], int]:
    """The events' type and value checks in DuckDB; a read error mid-scan is a failure."""
    try:
        return check_events(events, bound)
    except ContractError as err:  # DuckDB failed on the files while scanning them
        return [_issue_failure(i) for i in err.issues], {}, 0


def _value_view(frame: pd.DataFrame, table: Table) -> pd.DataFrame:
    """The frame with run-date-checked times as datetime64[ns], which GX compares vectorised."""
    # GX 1.24 vectorises only nanosecond datetimes; other units go through a per-value
    # Python function (~2.5 s per million rows). Values outside the nanosecond range
    # (before 1677 or after 2262) keep that slow but exact path.
    cast = {}
    for col in table.columns:
        if not future_checked(col) or col.name not in frame:
            continue
        s = frame[col.name]
        lo, hi = s.min(), s.max()
        if pd.isna(lo) or (pd.Timestamp.min <= lo and hi <= pd.Timestamp.max):
            cast[col.name] = s.astype("datetime64[ns]")
        else:
            log.warning("%s.%s: times outside 1677-2262, slow check", table.name, col.name)
    return frame.assign(**cast) if cast else frame


def _check_table(
    gx: GxRunner, table: Table, frame: pd.DataFrame, bound: dt.datetime
) -> tuple[list[Failure], dict[str, Any], int]:
    """Run the table's type and value suites; return failures, JSON results and the count."""
    t0 = time.perf_counter()
    present = set(frame.columns)
    key = _key(table, frame)
    runs = {
        "types": (frame, type_expectations(table, present)),
        "values": (_value_view(frame, table), value_expectations(table, present, bound)),
    }
    failures: list[Failure] = []
    out: dict[str, Any] = {}
    n = 0
    for part, (data, expectations) in runs.items():
        vr = gx.validate(f"{table.name}.{part}", table.name, data, expectations, key)
        failures += failures_from(vr, table.name, data, key)
        out[part] = vr.to_json_dict()
        n += len(vr.results)
    log.info(
        "%s: %d rows, %d expectations, %.2f s", table.name, len(frame), n, time.perf_counter() - t0
    )
    return failures, out, n


def _check_foreign_keys(
    gx: GxRunner | None,
    frames: dict[str, pd.DataFrame],
    events: EventsTable | None,
    statuses: dict[str, str],
    entry: dict[str, Any],
) -> tuple[list[Failure], int]:
    """Validate every declared foreign key whose tables are present."""
    # A key into a table that is not loaded is skipped: a missing required (or unreadable,
    # or ambiguous) table is already a failure; an optional one may be absent.
    failures: list[Failure] = []
    n = 0
    for name, table in TABLES.items():
        frame = frames.get(name)
        if frame is not None:
            columns: Collection[str] = frame.columns
        elif events is not None and name == events.table.name:
            columns = events.types
        else:
            continue
        key = _key(table, frame) if frame is not None else []
        expectations = []
        for fk in table.foreign_keys:
            ref = frames.get(fk.ref_table)
            record: dict[str, Any] = {
                "table": name,
                "column": fk.column,
                "references": f"{fk.ref_table}.{fk.ref_column}",
            }
            entry["foreign_keys"].append(record)
            if fk.column not in columns:
                record["status"] = "skipped: column missing (reported)"
            elif ref is None:
                record["status"] = f"skipped: {fk.ref_table} {statuses[fk.ref_table]}"
            elif fk.ref_column not in ref:
                record["status"] = "skipped: referenced column missing (reported)"
            elif frame is None:  # the events, in DuckDB
                assert events is not None
                found, count = _events_foreign_key(events, fk, ref[fk.ref_column], record)
                failures += found
                n += count
            else:
                values = _value_set(frame[fk.column], ref[fk.ref_column])
                if len(values) <= GX_VALUE_SET_LIMIT:
                    record["status"] = "checked with great_expectations"
                    expectations.append(foreign_key_expectation(fk, values))
                    continue
                record["status"] = f"checked with pandas: {len(values):,} referenced values"
                record["result"] = res = in_set_result(frame, fk.column, values, key)
                n += 1
                if res["unexpected_count"]:
                    shown = examples(res, [fk.column], key)
                    failures.append(
                        Failure(name, fk_check(fk), fk.column, res["unexpected_count"], shown)
                    )
        if expectations:
            assert gx is not None and frame is not None
            vr = gx.validate(f"{CROSS_TABLE}.{name}", name, frame, expectations, key)
            failures += failures_from(vr, name, frame, key)
            entry["validations"][name] = _drop_value_sets(vr.to_json_dict())
            n += len(vr.results)
    return failures, n


def _events_foreign_key(
    events: EventsTable, fk: ForeignKey, referenced: pd.Series, record: dict[str, Any]
) -> tuple[list[Failure], int]:
    """One foreign key of the events, checked in DuckDB; `record` gets status and result."""
    try:
        res, failure, n_ref = check_events_foreign_key(events, fk, referenced)
    except ContractError as err:  # DuckDB failed on the files while scanning them
        record["status"] = "could not run: events unreadable (reported)"
        return [_issue_failure(i) for i in err.issues], 0
    record["status"] = f"checked with duckdb: {n_ref:,} referenced values"
    record["result"] = res
    return ([] if failure is None else [failure]), 1


def _key(table: Table, frame: pd.DataFrame) -> list[str]:
    """The table's key columns when all are present (they label examples)."""
    return list(table.key) if all(k in frame for k in table.key) else []


def _value_set(child: pd.Series, parent: pd.Series) -> list[Any]:
    """The referenced values that occur in `child`: same verdict, smaller GX value set."""
    # A child value is in the referenced column iff it is in this intersection; GX
    # re-serialises a value set many times per expectation, so smaller is faster.
    used = pd.Index(child.dropna().unique())
    return used.intersection(pd.Index(parent.dropna().unique())).tolist()


def _drop_value_sets(result: dict[str, Any]) -> dict[str, Any]:
    """Replace foreign-key value sets (one entry per referenced row) by their size."""
    for r in result.get("results", []):
        cfg = r.get("expectation_config", {})
        kwargs = cfg.get("kwargs", {})
        if "reference" in (cfg.get("meta") or {}) and isinstance(kwargs.get("value_set"), list):
            n, ref = len(kwargs["value_set"]), cfg["meta"]["reference"]
            kwargs["value_set"] = f"{n} values of {ref} (those the column uses)"
    return result
