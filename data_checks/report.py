"""The outcome of a data check run: failures, a summary, and the reports written to disk."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import CONTROL_CHARACTERS, TABLES
from features.io import write_text

log = logging.getLogger(__name__)

CROSS_TABLE = "cross_table"
#: results key: how subscriptions.end_date is read (setting, convention, evidence)
END_DATE_CONVENTION = "end_date_convention"
SUMMARY = "summary"
_MAX_CELL = {"table": 22, "check": 48, "column": 24, "examples": 110}
_CONTROL = re.compile(CONTROL_CHARACTERS)


@dataclass(frozen=True)
class Failure:
    """One failed check: where, what, how many rows, and a few examples."""

    table: str
    check: str
    column: str | None
    failing_rows: int
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        ex = f" e.g. {'; '.join(self.examples)}" if self.examples else ""
        return f"{where}: {self.check} ({self.failing_rows:,} rows){ex}"


@dataclass
class CheckReport:
    """Result of `check_folder`: overall status, failures and the full results."""

    success: bool
    failures: list[Failure]
    tables_checked: dict[str, int]
    expectations_run: int
    results: dict[str, Any] = field(default_factory=dict)

    def summary_line(self) -> str:
        """One line: counts on success, the number of failures otherwise."""
        rows = sum(self.tables_checked.values())
        scope = f"{len(self.tables_checked)} tables, {rows:,} rows"
        if self.success:
            return f"OK: {scope}, {self.expectations_run:,} checks passed"
        tables = ", ".join(dict.fromkeys(f.table for f in self.failures))
        return (
            f"FAILED: {len(self.failures)} of {self.expectations_run:,} checks failed "
            f"({tables}); {scope}"
        )

    def end_date_line(self) -> str | None:
        """How subscriptions.end_date is read, as one line (None when not determined)."""
        found = self.results.get(END_DATE_CONVENTION)
        return f"subscriptions.end_date convention: {found['evidence']}" if found else None

    def failure_table(self) -> str:
        """A short fixed-width table: table | check | column | failing rows | examples."""
        if not self.failures:
            return "no failures"
        header = ("table", "check", "column", "failing rows", "examples")
        rows = [
            (
                _cut(f.table, _MAX_CELL["table"]),
                _cut(f.check, _MAX_CELL["check"]),
                _cut(f.column or "-", _MAX_CELL["column"]),
                f"{f.failing_rows:,}",
                _cut("; ".join(f.examples) or "-", _MAX_CELL["examples"]),
            )
            for f in self.failures
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            padded = [
                c.rjust(w) if i == 3 else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return " | ".join(padded).rstrip()

        rule = "-+-".join("-" * w for w in widths)
        return "\n".join([line(header), rule, *(line(r) for r in rows)])

    def summary_dict(self) -> dict[str, Any]:
        """Overall status and failures, without the per-expectation results."""
        return {
            "success": self.success,
            "summary": self.summary_line(),
            "run_date": self.results.get("run_date"),
            "data_dir": self.results.get("data_dir"),
            END_DATE_CONVENTION: self.results.get(END_DATE_CONVENTION),
            "tables_checked": self.tables_checked,
            "expectations_run": self.expectations_run,
            "failures": [asdict(f) for f in self.failures],
        }

    def to_json(self) -> str:
        """The whole report (summary, failures and full results) as JSON."""
        return _dumps({**self.summary_dict(), "results": self.results})


def write_reports(report: CheckReport, reports_dir: Path) -> None:
    """Replace the reports in `reports_dir`: one JSON per table, cross_table and summary."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    names = [*TABLES, CROSS_TABLE, SUMMARY]
    for name in names:  # stale results of an earlier run must not survive
        (reports_dir / f"{name}.json").unlink(missing_ok=True)
    tables = report.results.get("tables", {})
    for name in TABLES:
        write_text(_dumps(tables.get(name, {"status": "absent"})), reports_dir / f"{name}.json")
    write_text(_dumps(report.results.get(CROSS_TABLE, {})), reports_dir / f"{CROSS_TABLE}.json")
    # Written last: a summary.json always goes with a complete set of results.
    write_text(_dumps(report.summary_dict()), reports_dir / f"{SUMMARY}.json")
    log.info("check results written to %s", reports_dir)


def _cut(text: str, width: int) -> str:
    """`text` on one line, control characters escaped (data may hold any), at most `width`."""
    text = _CONTROL.sub(
        lambda m: m[0].encode("unicode_escape").decode("ascii"), " ".join(text.split())
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: NaN/NaT become null, numpy scalars Python ones, dates ISO text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return jsonable(float(value))
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"
