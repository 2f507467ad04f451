"""Benchmark training every target: walk-forward backtest, champion refit, plots (SHAP too).

Target on 2 cores: `train(...)` (per target: 6 backtest origins, each with its
validation curve, LightGBM refit, logistic and rule baselines; pooled metrics with
bootstrap intervals; calibration; the champion refit on every labelled row) plus
`write_plots(...)` (ROC, PR, calibration, lift, SHAP summaries) on ~100 k snapshot
rows in <= 60 s, peak RSS <= 2 GB.

Usage: python benchmarks/bench_training.py [--accounts 7400] [--months 24]
Data is simulated and its features built first (not part of the target); the timed
part runs in a fresh process (interpreter start and imports included in `wall_s`,
the two steps timed inside it as well). Writes benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_result

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT_ROWS_PER_ACCOUNT = 13.5  # at 24 months: ~7,400 accounts give ~100 k rows


def child(snapshots: Path, truth: Path, out: Path) -> None:
    """The timed part: train both targets, write every plot, dump timings and metrics."""
    t0 = time.perf_counter()
    from cshealth.config import load_config
    from features.snapshots import SnapshotTable
    from training.plots import write_plots
    from training.train import nan_to_none, read_truth, train

    cfg = load_config(REPO / "params.yaml")
    snaps = SnapshotTable.read(snapshots)
    truth_df = read_truth(truth)
    t1 = time.perf_counter()
    result = train(snaps, cfg.train, list(cfg.rules), truth_df)
    t2 = time.perf_counter()
    plots = write_plots(result, snaps, out.parent / "plots")
    t3 = time.perf_counter()
    out.write_text(json.dumps({
        "imports_and_read_s": round(t1 - t0, 2),
        "train_s": round(t2 - t1, 2),
        "plots_s": round(t3 - t2, 2),
        "train_plus_plots_s": round(t3 - t1, 2),
        "plots": len(plots),
        "per_target": {t: {"seconds": round(r.seconds, 2),
                           "origins": [o.date().isoformat() for o in r.backtest.origins],
                           "backtest_rows": len(r.backtest.predictions),
                           "backtest_positives": r.backtest.positives,
                           "trees_per_origin": r.backtest.rounds,
                           "champion_rows": r.model.info["train_rows"],
                           "champion_trees": r.model.info["trees"],
                           "calibrator": r.model.calibrator.kind}
                       for t, r in result.targets.items()},
        "metrics": nan_to_none(result.metrics()),
    }, indent=2))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=7400)
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--child", nargs=3, metavar=("SNAPSHOTS", "TRUTH", "OUT"),
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args()
    if args.child:
        child(*(Path(p) for p in args.child))
        return
    cli = str(Path(sys.executable).with_name("cshealth"))
    with tempfile.TemporaryDirectory() as tmp:
        raw, snaps = Path(tmp) / "raw", Path(tmp) / "snapshots.parquet"
        truth, out = Path(tmp) / "truth.parquet", Path(tmp) / "child.json"
        gen = run_measured([cli, "-q", "generate", "--out", str(raw), "--accounts",
                            str(args.accounts), "--months", str(args.months), "--truth",
                            str(truth), "--truth-samples", "5"])  # fmt: skip
        print("generated", gen, flush=True)
        events = pq.ParquetFile(raw / "usage_events.parquet").metadata.num_rows
        feats = run_measured([cli, "-q", "features", "--data", str(raw), "--out", str(snaps)])
        rows = pq.ParquetFile(snaps).metadata.num_rows
        print("features", feats, rows, "rows", flush=True)
        res = run_measured([sys.executable, __file__, "--child", str(snaps), str(truth), str(out)])
        inner = json.loads(out.read_text())
    churn = inner["metrics"]["churn"]
    write_result("training", {
        "accounts": args.accounts, "months": args.months, "events": events,
        "snapshot_rows": rows,
        "prepare": {"generate": gen, "features": feats},
        "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
        **{k: v for k, v in inner.items() if k != "metrics"},
        "churn_lightgbm_auc_minus_logistic": round(churn["lightgbm"]["roc_auc"]
                                                   - churn["logistic"]["roc_auc"], 4),
        "churn_lightgbm_auc_minus_rules": round(churn["lightgbm"]["roc_auc"]
                                                - churn["rules"]["roc_auc"], 4),
        "metrics": inner["metrics"],
        "targets": {"train_plus_plots_s_at_100k_rows": "<= 60 (2 cores)",
                    "peak_rss_mib": "<= 2048"},
    })  # fmt: skip


if __name__ == "__main__":
    main()
