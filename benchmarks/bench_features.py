"""Benchmark `cshealth features` (and `cshealth check`) at ~10 M and ~100 M usage events.

Targets on 2 cores: DuckDB engine >= 2 M events/s end to end at 100 M events, peak RSS
<= 4 GB, time growing no faster than linearly in events; `cshealth check` on the same
data <= 60 s and <= 4 GB. The Spark engine (`local[2]`) is timed beside DuckDB at the
`--spark` sizes.

Data: the simulator makes the smallest size (not timed); larger sizes are scaled copies
of it (every table repeated with suffixed ids, the events written as a partitioned
Parquet folder, one part per copy), so 100 M events never sit in memory at once.

Usage: python benchmarks/bench_features.py [--sizes 10,100] [--spark 10] [--months 24]
Writes benchmarks/results/features.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_result

EVENTS_PER_ACCOUNT_MONTH = 349  # what the default simulator preset produces on average
#: id columns made unique per copy (every table's keys and references)
ID_COLUMNS = ("account_id", "user_id", "ticket_id", "response_id", "outcome_id", "csm_id")


def _suffixed(table: pa.Table, suffix: str) -> pa.Table:
    """`table` with every id column's values suffixed (nulls stay null)."""
    for name in ID_COLUMNS:
        if name in table.column_names:
            col = table[name].cast(pa.string())
            i = table.column_names.index(name)
            table = table.set_column(i, name, pc.binary_join_element_wise(col, suffix, ""))
    return table


def scaled_copy(src: Path, dest: Path, copies: int) -> int:
    """`copies` copies of data folder `src` in `dest`; returns the number of events."""
    dest.mkdir(parents=True)
    events = 0
    for path in sorted(src.glob("*.parquet")):
        table = pq.read_table(path)
        if path.stem == "usage_events":
            for i in range(copies):  # one part per copy, written one at a time
                part = dest / "usage_events" / f"copy={i}"
                part.mkdir(parents=True)
                pq.write_table(_suffixed(table, f"-{i}"), part / "events.parquet")
            events = table.num_rows * copies
            continue
        parts = [_suffixed(table, f"-{i}") for i in range(copies)]
        pq.write_table(pa.concat_tables(parts), dest / path.name)
    return events


def _count_events(raw: Path) -> int:
    path = raw / "usage_events.parquet"
    if path.exists():
        return pq.ParquetFile(path).metadata.num_rows
    return sum(pq.ParquetFile(p).metadata.num_rows for p in raw.glob("usage_events/*/*.parquet"))


def _measure(cli: str, raw: Path, out: Path, engine: str, check: bool) -> dict:
    """Features (and check) on one data folder."""
    events = _count_events(raw)
    res = run_measured([cli, "-q", "features", "--data", str(raw), "--out", str(out),
                        "--run-date", "2030-01-01", "--engine", engine])  # fmt: skip
    row = {"engine": engine, "events": events,
           "snapshot_rows": pq.ParquetFile(out).metadata.num_rows, **res,
           "events_per_s": round(events / res["wall_s"])}  # fmt: skip
    if check:
        c = run_measured([cli, "-q", "check", str(raw), "--run-date", "2030-01-01",
                          "--reports", str(out.parent / "checks")])  # fmt: skip
        row["check"] = {**c, "events_per_s": round(events / c["wall_s"])}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10,100", help="millions of events, comma separated")
    ap.add_argument("--spark", default="", help="sizes (millions) also run on Spark local[2]")
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--no-check", action="store_true", help="skip timing `cshealth check`")
    args = ap.parse_args()
    cli = str(Path(sys.executable).with_name("cshealth"))
    sizes = sorted(float(x) for x in args.sizes.split(","))
    spark = {float(x) for x in args.spark.split(",") if x}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        base_raw = Path(tmp) / "base"
        accounts = max(10, round(sizes[0] * 1e6 / EVENTS_PER_ACCOUNT_MONTH / args.months))
        run_measured([cli, "-q", "generate", "--out", str(base_raw), "--accounts", str(accounts),
                      "--months", str(args.months), "--truth", str(Path(tmp) / "t.parquet"),
                      "--truth-samples", "5"])  # fmt: skip
        base_events = _count_events(base_raw)
        for millions in sizes:
            # from the events simulated (their number per account varies with the sample)
            copies = max(1, round(millions * 1e6 / base_events))
            raw = base_raw if copies == 1 else Path(tmp) / f"x{copies}"
            if copies > 1:
                scaled_copy(base_raw, raw, copies)
            for engine in ("duckdb", *(["spark"] if millions in spark else [])):
                out = Path(tmp) / f"{engine}-{copies}" / "snapshots.parquet"
                out.parent.mkdir()
                row = _measure(cli, raw, out, engine, not args.no_check and engine == "duckdb")
                runs.append({"target_millions": millions, "accounts": accounts * copies,
                             "copies": copies, **row})  # fmt: skip
            if raw != base_raw:
                shutil.rmtree(raw)
    duck = [r for r in runs if r["engine"] == "duckdb"]
    for r in duck[1:]:
        # > 1 means slower than linear scaling from the smallest size.
        r["scaling_vs_linear"] = round(
            (r["wall_s"] / duck[0]["wall_s"]) / (r["events"] / duck[0]["events"]), 2
        )
    write_result("features", {
        "months": args.months, "runs": runs,
        "targets": {"duckdb_events_per_s_at_100M": ">= 2,000,000", "peak_rss_mib": "<= 4096",
                    "check_s_at_100M": "<= 60", "check_peak_rss_mib": "<= 4096"},
        "data": "the smallest size simulated; larger ones scaled copies (ids suffixed)",
        "pandas": pd.__version__,
    })  # fmt: skip


if __name__ == "__main__":
    main()
