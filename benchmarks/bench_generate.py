"""Benchmark `cshealth generate` (target: 2,000 accounts x 24 months, >= 10 M
events, <= 60 s on 2 cores) and `cshealth check` on the same folder.

Usage: python benchmarks/bench_generate.py [--accounts 2000] [--months 24]
Writes benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    cli = str(Path(sys.executable).with_name("cshealth"))
    with tempfile.TemporaryDirectory() as tmp:
        out, truth = Path(tmp) / "raw", Path(tmp) / "truth.parquet"
        gen = run_measured([
            cli, "-q", "generate", "--out", str(out), "--truth", str(truth),
            "--accounts", str(args.accounts), "--months", str(args.months),
            "--seed", str(args.seed),
        ])  # fmt: skip
        rows = {p.stem: pq.ParquetFile(p).metadata.num_rows for p in sorted(out.glob("*.parquet"))}
        size = sum(p.stat().st_size for p in out.glob("*.parquet"))
        chk = run_measured([cli, "-q", "check", str(out), "--reports", str(Path(tmp) / "checks")])
    events = rows["usage_events"]
    write_result("generate", {
        "accounts": args.accounts, "months": args.months, "seed": args.seed,
        "generate": {**gen, "events": events, "events_per_s": round(events / gen["wall_s"]),
                     "rows": rows, "parquet_mib": round(size / 2**20, 1),
                     "target": "<= 60 s, >= 10 M events"},
        "check": {**chk, "rows": sum(rows.values())},
    })  # fmt: skip


if __name__ == "__main__":
    main()
