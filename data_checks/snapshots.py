"""The snapshot table's own suite, derived from the feature metadata.

One row per (account_id, as_of); keys and MRR present; every feature within the
bounds its metadata declares; every label of the table (one per target) 0/1,
null wherever the horizon runs past the cutoff, its prevalence within sane bounds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_checks.report import CheckReport, Failure, jsonable
from data_checks.runner import GxRunner, failures_from
from features.contract import Col
from features.io import write_text
from features.labels import MRR_COLUMN, label_observed
from features.snapshots import KEY_COLUMNS, SnapshotTable

log = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"
#: Below this many labelled rows a rare label may legitimately never occur.
MIN_ROWS_FOR_PREVALENCE = 200


def _meta(check: str, column: str | None) -> dict[str, Any]:
    return {"check": check, "column": column}


def _expectations(snaps: SnapshotTable, prevalence: tuple[float, float], labelled: int) -> list:
    import great_expectations.expectations as gxe

    key = list(KEY_COLUMNS)
    out: list = [
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=key, meta=_meta("one row per key", ", ".join(key))
        )
    ]
    for col in (*key, MRR_COLUMN):
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=_meta("not null", col)))
    out.append(
        gxe.ExpectColumnValuesToBeBetween(
            column=MRR_COLUMN, min_value=0, meta=_meta(">= 0", MRR_COLUMN)
        )
    )
    for f in snaps.features:
        if f.min_value is None and f.max_value is None:
            continue
        name = f"between {f.min_value} and {f.max_value}"
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=f.name,
                min_value=f.min_value,
                max_value=f.max_value,
                meta=_meta(name, f.name),
            )
        )
    for label in snaps.labels.values():
        out.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=label, value_set=[0, 1], meta=_meta("0 or 1", label)
            )
        )
        if labelled >= MIN_ROWS_FOR_PREVALENCE:
            lo, hi = prevalence
            out.append(
                gxe.ExpectColumnMeanToBeBetween(
                    column=label, min_value=lo, max_value=hi,
                    meta=_meta(f"prevalence between {lo:.1%} and {hi:.0%}", label),
                )
            )  # fmt: skip
    return out


def check_snapshots(
    snaps: SnapshotTable,
    prevalence: tuple[float, float] = (0.001, 0.5),
    report_file: Path | None = None,
) -> CheckReport:
    """Validate a snapshot table before it is written; full results to `report_file`."""
    import great_expectations.expectations as gxe

    df = snaps.frame
    labels = list(snaps.labels.values())
    # Only the columns the suite reads: GX copies the whole frame for each column check
    # (most of its time at 200 k rows). Labels are float for GX (nullable Int8 is not
    # compared numerically).
    bounded = [f.name for f in snaps.features if (f.min_value, f.max_value) != (None, None)]
    view = df[[*KEY_COLUMNS, MRR_COLUMN, *bounded, *labels]]
    view = view.astype(dict.fromkeys(labels, "float64")).copy()  # copy: one block per dtype
    labelled = int(view[labels[0]].notna().sum())
    gx = GxRunner()
    key = list(KEY_COLUMNS)
    vr = gx.validate(SNAPSHOTS, SNAPSHOTS, view, _expectations(snaps, prevalence, labelled), key)
    failures: list[Failure] = failures_from(vr, SNAPSHOTS, view, key)
    results: dict[str, Any] = {"table": vr.to_json_dict()}
    n = len(vr.results)
    censored = view[~label_observed(view[Col.AS_OF], snaps.cutoff, snaps.horizon_days)]
    if len(censored):
        checks = [
            gxe.ExpectColumnValuesToBeNull(
                column=c, meta=_meta("null where the horizon is censored", c)
            )
            for c in labels
        ]
        vr2 = gx.validate(f"{SNAPSHOTS}.censored", f"{SNAPSHOTS}_censored", censored, checks, key)
        failures += failures_from(vr2, SNAPSHOTS, censored, key)
        results["censored"] = vr2.to_json_dict()
        n += len(vr2.results)
    report = CheckReport(not failures, failures, {SNAPSHOTS: len(df)}, n, jsonable(results))
    if report_file is not None:
        write_text(report.to_json(), Path(report_file))
        log.info("snapshot check results written to %s", report_file)
    return report
