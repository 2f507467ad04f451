"""Data checks: clean contract-shaped data passes; every kind of corruption fails, named."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from data_checks import CheckReport, Failure, check_folder
from data_checks.runner import GxRunner, failures_from
from data_checks.suites import fk_check, type_expectations, value_expectations
from features.contract import TABLES, Col, T
from features.io import find_source, load_table

RUN_DATE = dt.date(2024, 7, 1)
AFTER_RUN = pd.Timestamp(RUN_DATE) + pd.Timedelta(days=1, hours=10)


@pytest.fixture(params=["handmade_dir", "generated_dir"])
def clean_dir(request: pytest.FixtureRequest) -> Path:
    """A clean data folder (shared fixtures: corrupt only a `work_dir` copy)."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def work_dir(clean_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the clean folder, free to corrupt."""
    return Path(shutil.copytree(clean_dir, tmp_path / "work"))


# -- helpers: edit a table in whatever format it came -------------------------------------


def read(data_dir: Path, name: str) -> pd.DataFrame:
    """The table as the contract types it."""
    lt = load_table(data_dir, name)
    assert lt is not None and not lt.issues, name
    return lt.frame


def write(data_dir: Path, name: str, df: pd.DataFrame, fmt: str | None = None) -> None:
    """Replace the table, as CSV or Parquet (default: the format it had)."""
    source = find_source(data_dir, name)
    assert source is not None, name
    fmt = fmt or ("csv" if source.suffix == ".csv" else "parquet")
    if source.is_dir():
        shutil.rmtree(source)
    else:
        source.unlink()
    if fmt == "csv":
        df.to_csv(data_dir / f"{name}.csv", index=False)
    else:
        df.to_parquet(data_dir / f"{name}.parquet", index=False)


def edit(name: str, change: Callable[[pd.DataFrame], None]) -> Callable[[Path], None]:
    """A corruption that applies `change` to a copy of table `name`."""

    def corrupt(data_dir: Path) -> None:
        df = read(data_dir, name).copy()
        change(df)
        write(data_dir, name, df)

    return corrupt


def set_first(column: str, value: object) -> Callable[[pd.DataFrame], None]:
    def change(df: pd.DataFrame) -> None:
        df.loc[df.index[0], column] = value

    return change


def text_in(column: str) -> Callable[[pd.DataFrame], None]:
    def change(df: pd.DataFrame) -> None:
        df[column] = df[column].astype(str)
        df.loc[df.index[0], column] = "lots"

    return change


def day_before(later: str, earlier: str) -> Callable[[pd.DataFrame], None]:
    def change(df: pd.DataFrame) -> None:
        df.loc[df.index[0], later] = df.loc[df.index[0], earlier] - pd.Timedelta(days=1)

    return change


def duplicate_first(column: str) -> Callable[[pd.DataFrame], None]:
    def change(df: pd.DataFrame) -> None:
        df.loc[df.index[1], column] = df.loc[df.index[0], column]

    return change


def drop_column(name: str, column: str) -> Callable[[Path], None]:
    def change(df: pd.DataFrame) -> None:
        del df[column]

    return edit(name, change)


def delete_table(name: str) -> Callable[[Path], None]:
    def corrupt(data_dir: Path) -> None:
        source = find_source(data_dir, name)
        assert source is not None
        shutil.rmtree(source) if source.is_dir() else source.unlink()

    return corrupt


def as_csv(name: str) -> Callable[[Path], None]:
    def corrupt(data_dir: Path) -> None:
        write(data_dir, name, read(data_dir, name), fmt="csv")

    return corrupt


def bad_csv_time(name: str, column: str) -> Callable[[Path], None]:
    def corrupt(data_dir: Path) -> None:
        as_csv(name)(data_dir)
        df = pd.read_csv(data_dir / f"{name}.csv", dtype=str)
        df.loc[0, column] = "31/02/2024 25:61"
        df.to_csv(data_dir / f"{name}.csv", index=False)

    return corrupt


def both_formats(name: str) -> Callable[[Path], None]:
    def corrupt(data_dir: Path) -> None:
        df = read(data_dir, name)
        source = find_source(data_dir, name)
        assert source is not None
        other = "parquet" if source.suffix == ".csv" else "csv"
        getattr(df, f"to_{other}")(data_dir / f"{name}.{other}", index=False)

    return corrupt


def run(data_dir: Path, reports_dir: Path | None = None) -> CheckReport:
    return check_folder(data_dir, RUN_DATE, reports_dir)


def failures_for(report: CheckReport, table: str, column: str | None) -> list[Failure]:
    return [f for f in report.failures if f.table == table and f.column == column]


# -- clean data -----------------------------------------------------------------------------


def test_clean_data_passes(clean_dir: Path) -> None:
    report = run(clean_dir)
    assert report.success, report.failure_table()
    assert report.failures == []
    assert set(report.tables_checked) == set(TABLES)
    rows = sum(report.tables_checked.values())
    line = report.summary_line()
    assert line.startswith("OK") and f"{rows:,} rows" in line
    assert report.expectations_run > 100
    json.dumps(report.results, allow_nan=False)
    assert json.loads(report.to_json())["success"] is True


def test_type_checks_accept_coerced_dtypes_only(handmade_dir: Path) -> None:
    """GX type names match what the loader yields (pandas 3 str, Int64, ...), not others."""
    table = TABLES[T.SUPPORT_TICKETS]
    frame = read(handmade_dir, table.name)
    runner = GxRunner()
    expectations = type_expectations(table, frame.columns)
    ok = runner.validate("types", table.name, frame, expectations, [])
    assert failures_from(ok, table.name, frame, []) == []
    wrong = frame.astype({Col.CSAT: "float64", Col.ESCALATED: "str", Col.CREATED_AT: "str"})
    bad = runner.validate("types", table.name, wrong, expectations, [])
    failed = {f.column for f in failures_from(bad, table.name, wrong, [])}
    assert failed == {Col.CSAT, Col.ESCALATED, Col.CREATED_AT}


PASSING = {
    "optional table missing": delete_table(T.NPS_RESPONSES),
    "table as CSV": as_csv(T.ACCOUNTS),
    "subscription runs on past run date": edit(
        T.SUBSCRIPTIONS, set_first(Col.END_DATE, AFTER_RUN.normalize())
    ),
    "outcome due after run date": edit(T.OUTCOMES, set_first(Col.DUE_DATE, AFTER_RUN.normalize())),
}


@pytest.mark.parametrize("change", PASSING.values(), ids=PASSING.keys())
def test_legitimate_variations_pass(work_dir: Path, change: Callable[[Path], None]) -> None:
    change(work_dir)
    report = run(work_dir)
    assert report.success, report.failure_table()


# -- corruptions: (change, table, column named by a failure) ---------------------------------

CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str | None]] = {
    "text in mrr": (edit(T.SUBSCRIPTIONS, text_in(Col.MRR)), T.SUBSCRIPTIONS, Col.MRR),
    "missing column": (drop_column(T.SUBSCRIPTIONS, Col.PLAN), T.SUBSCRIPTIONS, Col.PLAN),
    "missing required table": (delete_table(T.USAGE_EVENTS), T.USAGE_EVENTS, None),
    "nps 11": (edit(T.NPS_RESPONSES, set_first(Col.SCORE, 11)), T.NPS_RESPONSES, Col.SCORE),
    "csat 0": (edit(T.SUPPORT_TICKETS, set_first(Col.CSAT, 0)), T.SUPPORT_TICKETS, Col.CSAT),
    "negative mrr": (edit(T.SUBSCRIPTIONS, set_first(Col.MRR, -5.0)), T.SUBSCRIPTIONS, Col.MRR),
    "duplicate ticket_id": (
        edit(T.SUPPORT_TICKETS, duplicate_first(Col.TICKET_ID)),
        T.SUPPORT_TICKETS,
        Col.TICKET_ID,
    ),
    "orphan account in tickets": (
        edit(T.SUPPORT_TICKETS, set_first(Col.ACCOUNT_ID, "NO-SUCH-ACCOUNT")),
        T.SUPPORT_TICKETS,
        Col.ACCOUNT_ID,
    ),
    "orphan account in usage": (
        edit(T.USAGE_EVENTS, set_first(Col.ACCOUNT_ID, "NO-SUCH-ACCOUNT")),
        T.USAGE_EVENTS,
        Col.ACCOUNT_ID,
    ),
    "orphan outcome": (
        edit(T.OUTCOME_MEASUREMENTS, set_first(Col.OUTCOME_ID, "NO-SUCH-OUTCOME")),
        T.OUTCOME_MEASUREMENTS,
        Col.OUTCOME_ID,
    ),
    "resolved before created": (
        edit(T.SUPPORT_TICKETS, day_before(Col.RESOLVED_AT, Col.CREATED_AT)),
        T.SUPPORT_TICKETS,
        Col.RESOLVED_AT,
    ),
    "end before start": (
        edit(T.SUBSCRIPTIONS, day_before(Col.END_DATE, Col.START_DATE)),
        T.SUBSCRIPTIONS,
        Col.END_DATE,
    ),
    "event after run date": (
        edit(T.USAGE_EVENTS, set_first(Col.EVENT_TIME, AFTER_RUN)),
        T.USAGE_EVENTS,
        Col.EVENT_TIME,
    ),
    "unparseable time in CSV": (
        bad_csv_time(T.ACCOUNTS, Col.CREATED_AT),
        T.ACCOUNTS,
        Col.CREATED_AT,
    ),
    "CSV and Parquet both": (both_formats(T.ACCOUNTS), T.ACCOUNTS, None),
    "priority critical": (
        edit(T.SUPPORT_TICKETS, set_first(Col.PRIORITY, "critical")),
        T.SUPPORT_TICKETS,
        Col.PRIORITY,
    ),
}


@pytest.mark.parametrize(("change", "table", "column"), CORRUPTIONS.values(), ids=CORRUPTIONS)
def test_corruption_fails_naming_table_and_column(
    work_dir: Path, change: Callable[[Path], None], table: str, column: str | None
) -> None:
    change(work_dir)
    report = run(work_dir)
    assert not report.success
    found = failures_for(report, table, column)
    assert found, report.failure_table()
    assert report.summary_line().startswith("FAILED")
    assert all(f.failing_rows >= 0 for f in report.failures)


def test_foreign_keys_same_verdict_above_gx_value_set_limit(
    work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orphans are found, with readable examples, by GX and by the large-set pandas path."""
    edit(T.SUPPORT_TICKETS, set_first(Col.ACCOUNT_ID, "NO-SUCH-ACCOUNT"))(work_dir)
    edit(T.USAGE_EVENTS, set_first(Col.ACCOUNT_ID, "NO-SUCH-ACCOUNT"))(work_dir)
    ticket = read(work_dir, T.SUPPORT_TICKETS)[Col.TICKET_ID].iloc[0]
    with_gx = run(work_dir)
    monkeypatch.setattr("data_checks.checks.GX_VALUE_SET_LIMIT", 0)
    with_pandas = run(work_dir)
    assert with_pandas.failures == with_gx.failures
    (tickets,) = failures_for(with_gx, T.SUPPORT_TICKETS, Col.ACCOUNT_ID)
    assert (tickets.failing_rows, tickets.examples) == (
        1,
        [f"{Col.TICKET_ID}={ticket} {Col.ACCOUNT_ID}=NO-SUCH-ACCOUNT"],
    )
    (usage,) = failures_for(with_gx, T.USAGE_EVENTS, Col.ACCOUNT_ID)
    assert (usage.failing_rows, usage.examples) == (1, [f"row 0: {Col.ACCOUNT_ID}=NO-SUCH-ACCOUNT"])
    assert {f.table for f in with_gx.failures} == {T.SUPPORT_TICKETS, T.USAGE_EVENTS}


def test_reports_written_and_stale_ones_replaced(work_dir: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    for stale in ("summary.json", f"{T.SUPPORT_TICKETS}.json", "cross_table.json"):
        (reports / stale).write_text('{"stale": true}')
    edit(T.SUPPORT_TICKETS, set_first(Col.PRIORITY, "critical"))(work_dir)
    ticket = read(work_dir, T.SUPPORT_TICKETS)[Col.TICKET_ID].iloc[0]
    report = run(work_dir, reports)
    (failure,) = report.failures
    assert failure.examples == [f"{Col.TICKET_ID}={ticket} {Col.PRIORITY}=critical"]
    expected = {f"{name}.json" for name in [*TABLES, "cross_table", "summary"]}
    assert {p.name for p in reports.iterdir()} == expected
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["success"] is False
    assert {(f["table"], f["column"]) for f in summary["failures"]} == {
        (T.SUPPORT_TICKETS, Col.PRIORITY)
    }
    tickets = json.loads((reports / f"{T.SUPPORT_TICKETS}.json").read_text())
    assert "stale" not in tickets and tickets["validations"]["values"]["success"] is False
    cross = json.loads((reports / "cross_table.json").read_text())
    assert "stale" not in cross and cross["foreign_keys"]
    table = report.failure_table()
    assert T.SUPPORT_TICKETS in table and Col.PRIORITY in table and "critical" in table


# -- subscription end-date convention --------------------------------------------------------


def end_dates_exclusive(df: pd.DataFrame) -> None:
    df[Col.END_DATE] = df[Col.END_DATE] + pd.Timedelta(days=1)


def test_end_date_convention_is_reported(handmade_dir: Path, tmp_path: Path) -> None:
    """handmade: 101 renews on 2024-01-01 after a term ending 2023-12-31 (inclusive)."""
    report = run(handmade_dir)
    assert report.results["end_date_convention"] == {
        "setting": "auto",
        "convention": "inclusive",
        "evidence": "inclusive: 1 of 1 consecutive terms start the day after the previous end",
    }
    assert report.end_date_line() == (
        "subscriptions.end_date convention: inclusive: 1 of 1 consecutive terms start the day "
        "after the previous end"
    )
    # The same folder written the exclusive way (end = the next term's start).
    work = Path(shutil.copytree(handmade_dir, tmp_path / "exclusive"))
    edit(T.SUBSCRIPTIONS, end_dates_exclusive)(work)
    reports = tmp_path / "reports"
    report = check_folder(work, run_date=RUN_DATE, reports_dir=reports)
    assert report.success, report.failure_table()
    found = json.loads((reports / "summary.json").read_text())["end_date_convention"]
    assert found["convention"] == "exclusive"
    assert found["evidence"] == "exclusive: 1 of 1 consecutive terms touch (end = next start)"
    told = check_folder(work, run_date=RUN_DATE, end_date_convention="inclusive")
    assert told.results["end_date_convention"]["evidence"] == (
        "inclusive: set in params.yaml (features.end_date_convention)"
    )


def test_end_date_convention_absent_without_subscriptions(work_dir: Path) -> None:
    delete_table(T.SUBSCRIPTIONS)(work_dir)
    report = run(work_dir)
    assert not report.success
    assert "end_date_convention" not in report.results and report.end_date_line() is None


# -- usage events: checked in DuckDB, never loaded into pandas -------------------------------

#: Every check `cshealth check` makes on usage_events: (check, column), per part of the report.
EVENT_CHECKS = {
    "types": [
        ("type str", Col.ACCOUNT_ID),
        ("type str", Col.USER_ID),
        ("type datetime64[us]", Col.EVENT_TIME),
        ("type str", Col.EVENT_TYPE),
        ("type float64", Col.QUANTITY),
    ],
    "values": [
        ("not null", Col.ACCOUNT_ID),
        ("at most 128 characters", Col.ACCOUNT_ID),
        ("no control characters", Col.ACCOUNT_ID),
        ("not null", Col.USER_ID),
        ("at most 128 characters", Col.USER_ID),
        ("no control characters", Col.USER_ID),
        ("not null", Col.EVENT_TIME),
        ("not after run date 2024-07-01 23:59:59", Col.EVENT_TIME),
        ("not null", Col.EVENT_TYPE),
        ("not null", Col.QUANTITY),
        (">= 0", Col.QUANTITY),
        ("finite", Col.QUANTITY),
        ("not empty", None),
    ],
    "cross_table": [("foreign key -> accounts.account_id", Col.ACCOUNT_ID)],
}
#: ... and before those, on reading: required table present, single source, readable
#: files, each required column present, each value coercible to its column's type.


def _checks_in(validation: dict) -> list[tuple[str, str | None]]:
    return [
        (r["expectation_config"]["meta"]["check"], r["expectation_config"]["meta"]["column"])
        for r in validation["results"]
    ]


def test_event_checks_listed_and_as_the_suites_derive_them(handmade_dir: Path) -> None:
    """The DuckDB checks are the GX suites' checks for the events, one for one."""
    report = run(handmade_dir)
    assert report.success, report.failure_table()
    entry = report.results["tables"][T.USAGE_EVENTS]
    found = {part: _checks_in(entry["validations"][part]) for part in ("types", "values")}
    (fk,) = [
        r for r in report.results["cross_table"]["foreign_keys"] if r["table"] == T.USAGE_EVENTS
    ]
    assert fk["status"] == "checked with duckdb: 3 referenced values"
    assert fk["result"]["unexpected_count"] == 0
    assert found == {k: v for k, v in EVENT_CHECKS.items() if k != "cross_table"}
    table = TABLES[T.USAGE_EVENTS]
    bound = dt.datetime.combine(RUN_DATE, dt.time.max)
    suites = type_expectations(table, table.column_names) + value_expectations(
        table, table.column_names, bound
    )
    assert [(e.meta["check"], e.meta["column"]) for e in suites] == [
        *EVENT_CHECKS["types"],
        *EVENT_CHECKS["values"],
    ]
    assert [fk_check(f) for f in table.foreign_keys] == [c for c, _ in EVENT_CHECKS["cross_table"]]
    assert entry["rows"] == report.tables_checked[T.USAGE_EVENTS] == 6


def bad_events() -> pd.DataFrame:
    """Events over the handmade accounts, with one fault per row from row 1 on."""
    t = pd.Timestamp
    rows = [
        ("101", "u1", t("2024-05-01 10:00"), "login", 1.0),
        (None, "u1", t("2024-05-02 11:00"), "report", 1.0),  # no account
        ("102", "u7", t("2024-05-03 12:00"), "login", -1.0),  # negative quantity
        ("103", "u9", AFTER_RUN, "export", 2.0),  # after the run date
        ("NO-SUCH-ACCOUNT", "u9", t("2024-06-01 09:00"), "export", 1.0),  # unknown account
        ("103", "u\x07", t("2024-06-01 09:00"), "export", 1.0),  # control character
        ("103", "u" * 200, t("2024-06-01 09:00"), "export", 1.0),  # over-long id
        ("101", "u1", t("2024-06-02 08:00"), "login", 1.0),
    ]
    columns = [Col.ACCOUNT_ID, Col.USER_ID, Col.EVENT_TIME, Col.EVENT_TYPE, Col.QUANTITY]
    return pd.DataFrame(rows, columns=columns).astype({Col.EVENT_TIME: "datetime64[us]"})


BAD_EVENT_FAILURES = [
    ("not null", Col.ACCOUNT_ID, 1, ["row 1: account_id=null"]),
    ("at most 128 characters", Col.USER_ID, 1, [f"row 6: user_id={'u' * 200}"]),
    ("no control characters", Col.USER_ID, 1, ["row 5: user_id=u\x07"]),
    ("not after run date 2024-07-01 23:59:59", Col.EVENT_TIME, 1, [
        "row 3: event_time=2024-07-02 10:00:00"
    ]),
    (">= 0", Col.QUANTITY, 1, ["row 2: quantity=-1.0"]),
    ("foreign key -> accounts.account_id", Col.ACCOUNT_ID, 1, [
        "row 4: account_id=NO-SUCH-ACCOUNT"
    ]),
]  # fmt: skip


def write_events(data_dir: Path, df: pd.DataFrame, layout: str) -> None:
    """Replace usage_events by `df`: one Parquet file, a folder of parts, or a CSV."""
    delete_table(T.USAGE_EVENTS)(data_dir)
    if layout == "parquet":
        df.to_parquet(data_dir / "usage_events.parquet", index=False)
    elif layout == "csv":
        df.to_csv(data_dir / "usage_events.csv", index=False)
    else:  # rows 0-2, 3-5, 6-7 in part=0, part=1, part=2
        for i, start in enumerate(range(0, len(df), 3)):
            part = data_dir / T.USAGE_EVENTS / f"part={i}"
            part.mkdir(parents=True)
            df.iloc[start : start + 3].to_parquet(part / "x.parquet", index=False)


@pytest.fixture
def no_pandas_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to read usage_events into pandas."""
    import features.io

    def guard(reader: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
        def read(path: object, *args: object, **kwargs: object) -> pd.DataFrame:
            if T.USAGE_EVENTS in str(path):
                raise AssertionError(f"usage_events read into pandas: {path}")
            return reader(path, *args, **kwargs)

        return read

    monkeypatch.setattr(features.io, "read_source", guard(features.io.read_source))
    monkeypatch.setattr(pd, "read_parquet", guard(pd.read_parquet))
    monkeypatch.setattr(pd, "read_csv", guard(pd.read_csv))


@pytest.mark.parametrize("layout", ["parquet", "parts", "csv"])
def test_bad_events_fail_with_rows_and_examples(
    handmade_dir: Path, tmp_path: Path, layout: str, no_pandas_events: None
) -> None:
    write_events(handmade_dir, bad_events(), layout)
    reports = tmp_path / "reports"
    report = run(handmade_dir, reports)
    found = [
        (f.check, f.column, f.failing_rows, f.examples)
        for f in report.failures
        if f.table == T.USAGE_EVENTS
    ]
    assert found == BAD_EVENT_FAILURES, report.failure_table()
    assert {f.table for f in report.failures} == {T.USAGE_EVENTS}
    assert report.tables_checked[T.USAGE_EVENTS] == 8
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["tables_checked"][T.USAGE_EVENTS] == 8
    assert [(f["check"], f["column"], f["failing_rows"]) for f in summary["failures"]] == [
        (c, col, n) for c, col, n, _ in BAD_EVENT_FAILURES
    ]
    events = json.loads((reports / f"{T.USAGE_EVENTS}.json").read_text())
    assert events["rows"] == 8 and events["validations"]["values"]["success"] is False
    assert _checks_in(events["validations"]["values"]) == EVENT_CHECKS["values"]
    cross = json.loads((reports / "cross_table.json").read_text())
    (fk,) = [r for r in cross["foreign_keys"] if r["table"] == T.USAGE_EVENTS]
    assert fk["result"]["unexpected_count"] == 1
    assert fk["result"]["partial_unexpected_index_list"] == [4]
    table = report.failure_table()
    assert "usage_events" in table and "row 4: account_id=NO-SUCH-ACCOUNT" in table


def test_events_never_read_into_pandas(work_dir: Path, no_pandas_events: None) -> None:
    """check_folder counts and checks the events in DuckDB (a guard fails any pandas read)."""
    import pyarrow.parquet as pq

    report = run(work_dir)
    assert report.success, report.failure_table()
    source = find_source(work_dir, T.USAGE_EVENTS)
    assert source is not None and source.suffix == ".parquet"
    assert report.tables_checked[T.USAGE_EVENTS] == pq.read_metadata(source).num_rows


def test_uncoercible_csv_events_reported_not_unreadable(handmade_dir: Path) -> None:
    """A value a CSV column cannot be cast to is reported and is null, not a read error."""
    df = bad_events().astype(str)
    df.loc[0, Col.QUANTITY] = "lots"
    df.loc[7, Col.EVENT_TIME] = "31/02/2024 25:61"
    write_events(handmade_dir, df.iloc[[0, 7]], "csv")
    report = run(handmade_dir)
    found = [(f.check, f.column, f.failing_rows, f.examples) for f in report.failures]
    assert found == [
        ("type: not coercible to timestamp", Col.EVENT_TIME, 1, ["31/02/2024 25:61"]),
        ("type: not coercible to float", Col.QUANTITY, 1, ["lots"]),
        ("not null", Col.EVENT_TIME, 1, ["row 1: event_time=null"]),
        ("not null", Col.QUANTITY, 1, ["row 0: quantity=null"]),
    ]


def test_event_checks_agree_with_gx(handmade_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB and GX give the same failures, also for rules the events' contract lacks."""
    import dataclasses

    from data_checks import checks
    from data_checks.events import check_events, check_events_foreign_key, open_events
    from features.contract import Column, Kind, Ordering

    table = TABLES[T.USAGE_EVENTS]
    columns = [
        dataclasses.replace(c, allowed=("login", "export")) if c.name == Col.EVENT_TYPE
        else dataclasses.replace(c, max_value=1.5) if c.name == Col.QUANTITY
        else c
        for c in table.columns
    ]  # fmt: skip
    seen = Column("seen_at", Kind.TIMESTAMP, "When logged.", nullable=True, future_ok=True)
    richer = dataclasses.replace(
        table,
        columns=(*columns, seen),
        key=(Col.USER_ID, Col.EVENT_TIME),
        orderings=(Ordering(Col.EVENT_TIME, "seen_at"),),
    )
    monkeypatch.setitem(TABLES, T.USAGE_EVENTS, richer)
    df = bad_events()
    df["seen_at"] = df[Col.EVENT_TIME] + pd.Timedelta(minutes=5)
    df.loc[7, "seen_at"] = df.loc[7, Col.EVENT_TIME] - pd.Timedelta(days=1)
    df.loc[0, Col.QUANTITY] = float("nan")
    df.loc[7, Col.QUANTITY] = float("inf")
    df.loc[6, Col.EVENT_TIME] = df.loc[5, Col.EVENT_TIME]  # same time, different user
    df.loc[5, Col.USER_ID] = df.loc[6, Col.USER_ID]  # ... now the same key twice
    write_events(handmade_dir, df, "parquet")
    bound = dt.datetime.combine(RUN_DATE, dt.time.max)

    frame = read_raw_events(handmade_dir)
    gx = GxRunner()
    gx_failures, _, gx_n = checks._check_table(gx, richer, frame, bound)
    accounts = read(handmade_dir, T.ACCOUNTS)[Col.ACCOUNT_ID]
    (fk,) = richer.foreign_keys
    res = checks.in_set_result(frame, fk.column, accounts.tolist(), list(richer.key))

    ev = open_events(handmade_dir)
    assert ev is not None
    try:
        db_failures, _, db_n = check_events(ev, bound)
        db_res, db_fk, _ = check_events_foreign_key(ev, fk, accounts)
    finally:
        ev.close()
    assert db_n == gx_n
    assert db_failures == gx_failures
    assert len(gx_failures) >= 9
    assert db_res["unexpected_count"] == res["unexpected_count"] == 1
    assert db_fk is not None and db_fk.examples == checks.examples(
        res, [fk.column], list(richer.key)
    )


def read_raw_events(data_dir: Path) -> pd.DataFrame:
    """The events as the pandas loader types them (for comparison only)."""
    lt = load_table(data_dir, T.USAGE_EVENTS)
    assert lt is not None and not lt.issues
    return lt.frame
