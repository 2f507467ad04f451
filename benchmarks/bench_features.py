"""Benchmark the whole `cshealth features` stage at 1 M, 10 M (and 30 M) usage events.

Targets on 2 cores: >= 1 M events/s end to end at 10 M events, peak RSS
<= 3 GB, time growing no faster than linearly in events.

Usage: python benchmarks/bench_features.py [--sizes 1,10,30] [--months 24]
Data is simulated first (not timed); writes benchmarks/results/features.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_result

EVENTS_PER_ACCOUNT_MONTH = 270  # what the simulator produces on average


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1,10", help="millions of events, comma separated")
    ap.add_argument("--months", type=int, default=24)
    args = ap.parse_args()
    cli = str(Path(sys.executable).with_name("cshealth"))
    runs = []
    for millions in (float(x) for x in args.sizes.split(",")):
        accounts = max(10, round(millions * 1e6 / EVENTS_PER_ACCOUNT_MONTH / args.months))
        with tempfile.TemporaryDirectory() as tmp:
            raw, out = Path(tmp) / "raw", Path(tmp) / "snapshots.parquet"
            run_measured([cli, "-q", "generate", "--out", str(raw), "--accounts", str(accounts),
                          "--months", str(args.months), "--truth", str(Path(tmp) / "t.parquet"),
                          "--truth-samples", "5"])  # fmt: skip
            events = pq.ParquetFile(raw / "usage_events.parquet").metadata.num_rows
            res = run_measured([cli, "-q", "features", "--data", str(raw), "--out", str(out)])
            rows = pq.ParquetFile(out).metadata.num_rows
        runs.append({"target_millions": millions, "accounts": accounts, "events": events,
                     "snapshot_rows": rows, **res,
                     "events_per_s": round(events / res["wall_s"])})  # fmt: skip
        print(runs[-1], flush=True)
    base = runs[0]
    for r in runs[1:]:
        # > 1 means slower than linear scaling from the smallest size.
        r["scaling_vs_linear"] = round(
            (r["wall_s"] / base["wall_s"]) / (r["events"] / base["events"]), 2
        )
    write_result("features", {"months": args.months, "runs": runs,
                              "targets": {"events_per_s_at_10M": ">= 1,000,000",
                                          "peak_rss_mib": "<= 3072"}})  # fmt: skip


if __name__ == "__main__":
    main()
