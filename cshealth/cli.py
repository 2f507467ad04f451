"""The `cshealth` console command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cshealth.config import Config, ConfigError, load_config
from features.contract import Col

log = logging.getLogger("cshealth")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from err


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def cmd_generate(args: argparse.Namespace, cfg: Config) -> int:
    """Simulate a sample data set and its ground truth."""
    from cshealth.simulator import generate, write_dataset

    sim = cfg.simulator
    accounts = args.accounts or sim.accounts
    months = args.months or sim.months
    seed = sim.seed if args.seed is None else args.seed
    out = Path(args.out or cfg.data.raw_dir)
    truth = Path(args.truth or cfg.data.truth_file)
    start = args.start or sim.start
    log.info("simulating %d accounts x %d months from %s (seed %d)", accounts, months, start, seed)
    t0 = time.perf_counter()
    result = generate(accounts, months, seed, start, args.truth_samples or sim.truth_samples)
    t1 = time.perf_counter()
    rows = write_dataset(result, out, truth)
    t2 = time.perf_counter()
    for name, n in rows.items():
        print(f"  {name:<22} {n:>12,} rows")
    print(
        f"wrote {out}/ and {truth} ({len(result.truth):,} truth rows) "
        f"in {t2 - t0:.1f} s (simulate {t1 - t0:.1f} s, write {t2 - t1:.1f} s)"
    )
    return 0


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    """Validate a data folder against the contract; exit 1 when a check fails."""
    from data_checks import check_folder

    data_dir = Path(args.data or cfg.data.raw_dir)
    reports = Path(args.reports or cfg.checks.reports_dir)
    run_date = args.run_date or dt.datetime.now(dt.UTC).date()
    report = check_folder(data_dir, run_date=run_date, reports_dir=reports)
    if report.success:
        print(report.summary_line())
        return 0
    print(f"FAILED: {len(report.failures)} checks failed for {data_dir}", file=sys.stderr)
    print(report.failure_table(), file=sys.stderr)
    print(f"full results: {reports}/", file=sys.stderr)
    return 1


def cmd_features(args: argparse.Namespace, cfg: Config) -> int:
    """Build the point-in-time snapshot table (features + labels)."""
    from data_checks import check_snapshots
    from features.pipeline import build_snapshots, write_snapshots

    data_dir = Path(args.data or cfg.data.raw_dir)
    out = Path(args.out or cfg.features.out)
    t0 = time.perf_counter()
    snaps = build_snapshots(data_dir, cfg.features)
    report = check_snapshots(
        snaps,
        horizon_days=cfg.features.horizon_days,
        prevalence=cfg.checks.label_prevalence,
        reports_dir=Path(cfg.checks.reports_dir),
    )
    if not report.success:
        print(f"FAILED: the snapshot table fails {len(report.failures)} checks", file=sys.stderr)
        print(report.failure_table(), file=sys.stderr)
        print(f"nothing written; full results: {cfg.checks.reports_dir}/", file=sys.stderr)
        return 1
    write_snapshots(snaps, out)
    df = snaps.frame
    churn, expansion = snaps.label_columns
    print(
        f"wrote {out}: {len(df):,} snapshots x {len(snaps.features)} features, "
        f"{df[Col.AS_OF].nunique()} as_of dates {df[Col.AS_OF].min():%Y-%m-%d}.."
        f"{df[Col.AS_OF].max():%Y-%m-%d}, cutoff {snaps.cutoff}; "
        f"{churn} {df[churn].mean():.1%}, {expansion} {df[expansion].mean():.1%} "
        f"({df[churn].notna().sum():,} labelled) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="cshealth", description=__doc__)
    p.add_argument("--params", type=Path, help="params file (default: ./params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help=cmd_generate.__doc__)
    g.add_argument("--out", type=Path, help="output folder (default: data.raw_dir)")
    g.add_argument("--accounts", type=_positive, help="number of accounts")
    g.add_argument("--months", type=_positive, help="months of history")
    g.add_argument("--seed", type=int, help="random seed")
    g.add_argument("--start", type=_date, help="first month of data (YYYY-MM-DD)")
    g.add_argument("--truth", type=Path, help="ground-truth file (default: data.truth_file)")
    g.add_argument("--truth-samples", type=_positive, help="Monte Carlo paths for the truth")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help=cmd_check.__doc__)
    c.add_argument("data", nargs="?", type=Path, help="data folder (default: data.raw_dir)")
    c.add_argument("--run-date", type=_date, help="no timestamp may be later (default: today)")
    c.add_argument(
        "--reports", type=Path, help="where full results go (default: checks.reports_dir)"
    )
    c.set_defaults(func=cmd_check)

    f = sub.add_parser("features", help=cmd_features.__doc__)
    f.add_argument("--data", type=Path, help="data folder (default: data.raw_dir)")
    f.add_argument("--out", type=Path, help="snapshot Parquet file (default: features.out)")
    f.set_defaults(func=cmd_features)
    return p


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "numexpr", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cshealth` command."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        cfg = load_config(args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace, Config], int] = args.func
    from features.io import ContractError

    try:
        return func(args, cfg)
    except ContractError as err:
        print("error: the data does not meet the contract:", file=sys.stderr)
        for issue in err.issues:
            print(f"  - {issue}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
