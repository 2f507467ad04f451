"""The `cshealth` console command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cshealth.config import DEFAULT_PARAMS, Config, ConfigError, load_config
from cshealth.errors import UserError, one_line
from cshealth.files import withhold
from cshealth.settings import Settings
from features.contract import Col
from features.targets import CHURN, EXPANSION, TARGET_NAMES
from simulator import END_DATE_CONVENTIONS, preset_names

if TYPE_CHECKING:
    import pandas as pd

    from features.engine import SparkEngine
    from features.location import DataLocation
    from features.meta import Feature
    from features.snapshots import SnapshotTable
    from serving.drift import DriftReport
    from serving.predictor import Scorer
    from serving.store import ScoreStore

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


def _store(args: argparse.Namespace, cfg: Config, create: bool = True) -> ScoreStore:
    """The score store of the settings (`CSHEALTH_DB_URL`), default `serving.db_file`."""
    from serving.store import ScoreStore, db_url

    settings: Settings = args.settings
    url = db_url(cfg.serving.db_file, settings.db_url_value())
    return ScoreStore(url, create=create, timeout_s=settings.db_timeout_s)


def cmd_generate(args: argparse.Namespace, cfg: Config) -> int:
    """Simulate a sample data set and its ground truth."""
    from features.location import is_remote, locate
    from simulator import generate, get_preset, write_dataset

    sim = cfg.simulator
    preset = get_preset(args.preset or sim.preset)
    accounts = args.accounts or sim.accounts
    # A preset's own history length (short_*) beats params.yaml; --months beats both.
    months = args.months or preset.months or sim.months
    seed = sim.seed if args.seed is None else args.seed
    out_dir = args.out or cfg.data.raw_dir
    if is_remote(out_dir):  # never a local folder named "s3:"
        raise UserError(f"{out_dir}: generate writes a local folder; copy it to the store "
                        "afterwards")  # fmt: skip
    out = Path(locate(out_dir).path)
    truth = Path(args.truth or cfg.data.truth_file)
    start = args.start or sim.start
    log.info(
        "simulating %d accounts x %d months from %s (seed %d, preset %s)",
        accounts, months, start, seed, preset.name,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = generate(
        accounts, months, seed, start, args.truth_samples or sim.truth_samples, preset=preset,
        horizon_days=cfg.features.horizon_days,
        expansion_threshold=cfg.features.expansion_threshold,
        end_date_convention=args.end_date_convention or sim.end_date_convention,
    )  # fmt: skip
    t1 = time.perf_counter()
    rows = write_dataset(result, out, truth)
    t2 = time.perf_counter()
    for name, n in rows.items():
        print(f"  {name:<22} {n:>12,} rows")
    print(
        f"wrote {out}/ and {truth} ({len(result.truth):,} truth rows, preset {preset.name}) "
        f"in {t2 - t0:.1f} s (simulate {t1 - t0:.1f} s, write {t2 - t1:.1f} s)"
    )
    return 0


def _data_folder(args: argparse.Namespace, cfg: Config) -> DataLocation:
    """The data folder: `--data` (a path or a URI: file://, s3://, gs://, ...) or data.raw_dir.

    An unsupported scheme is a one-line error (a ValueError) naming it.
    """
    from features.location import locate

    return locate(args.data or cfg.data.raw_dir)


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    """Validate a data folder against the contract; exit 1 when a check fails."""
    from data_checks import check_folder

    data_dir = _data_folder(args, cfg)
    reports = Path(args.reports or cfg.checks.reports_dir)
    run_date = args.run_date or dt.datetime.now(dt.UTC).date()
    report = check_folder(data_dir, run_date=run_date, reports_dir=reports,
                          end_date_convention=cfg.features.end_date_convention)  # fmt: skip
    if report.success:
        print(report.summary_line())
    else:
        print(f"FAILED: {len(report.failures)} checks failed for {data_dir}", file=sys.stderr)
        print(report.failure_table(), file=sys.stderr)
        print(f"full results: {reports}/", file=sys.stderr)
    if report.end_date_line():  # how `cshealth features` will read subscription end dates
        print(report.end_date_line())
    return 0 if report.success else 1


def _spark(args: argparse.Namespace) -> SparkEngine:
    """The Spark engine on `CSHEALTH_SPARK_MASTER` (or the active session); one-line errors."""
    try:
        from features.engine import SparkEngine

        return SparkEngine.start(args.settings.spark_master)
    except ImportError as err:
        raise UserError(f"the Spark engine is not available ({err}): pip install "
                        "'cshealth[spark]' (and Java 17+)") from None  # fmt: skip
    except RuntimeError as err:
        raise UserError(f"the Spark engine is not available: {err}") from None


def cmd_features(args: argparse.Namespace, cfg: Config) -> int:
    """Build the point-in-time snapshot table (features + labels)."""
    from data_checks import check_snapshots
    from features.pipeline import build_snapshots

    data_dir = _data_folder(args, cfg)
    out = Path(args.out or cfg.features.out)
    # Taken here, not in the pipeline: feature functions get explicit dates, never now().
    run_date = args.run_date or dt.datetime.now(dt.UTC).date()
    t0 = time.perf_counter()
    if args.engine == "spark":
        engine = _spark(args)
        try:
            snaps = build_snapshots(data_dir, cfg.features, run_date=run_date, engine=engine)
        finally:
            engine.close()
    else:
        snaps = build_snapshots(data_dir, cfg.features, run_date=run_date)
    print(f"subscriptions.end_date convention: {snaps.end_date_evidence}")
    report = check_snapshots(
        snaps,
        prevalence=cfg.checks.label_prevalence,
        report_file=Path(cfg.checks.snapshot_report),
    )
    if not report.success:
        print(f"FAILED: the snapshot table fails {len(report.failures)} checks", file=sys.stderr)
        print(report.failure_table(), file=sys.stderr)
        print(f"nothing written; full results: {cfg.checks.snapshot_report}", file=sys.stderr)
        return 1
    snaps.write(out)
    df = snaps.frame
    labels = list(snaps.labels.values())
    rates = ", ".join(f"{label} {df[label].mean():.1%}" for label in labels)
    print(
        f"wrote {out}: {len(df):,} snapshots x {len(snaps.features)} features, "
        f"{df[Col.AS_OF].nunique()} as_of dates {df[Col.AS_OF].min():%Y-%m-%d}.."
        f"{df[Col.AS_OF].max():%Y-%m-%d}, cutoff {snaps.cutoff}; "
        f"{rates} ({df[labels[0]].notna().sum():,} labelled) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


_METRIC_COLUMNS = (
    ("roc_auc", "roc_auc"), ("pr_auc", "pr_auc"), ("brier", "brier"), ("ece", "ece"),
    ("top_decile_lift", "lift@10%"), ("top_decile_recall", "recall@10%"),
    ("top_decile_arr_share", "arr@10%"),
)  # fmt: skip


def _metrics_table(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """One block per target, one row per contender: the metrics and the AUC's 95 % interval."""
    head = "".join(f"{label:>11}" for _, label in _METRIC_COLUMNS)
    lines = []
    nan = float("nan")
    for target, contenders in metrics.items():
        lines.append(f"{target:<12}{head}   roc_auc 95% interval  positives")
        for name, v in contenders.items():
            cells = "".join(f"{_num(v.get(key)):>11.3f}" for key, _ in _METRIC_COLUMNS)
            ci = f"[{_num(v.get('roc_auc_lo', nan)):.3f}, {_num(v.get('roc_auc_hi', nan)):.3f}]"
            lines.append(f"  {name:<10}{cells}   {ci:<20}  {int(v.get('positives', 0)):>9,}")
    return "\n".join(lines)


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    """Walk-forward backtest of every target, fit the champions on all known labels, gate."""
    import json

    from features.io import write_text
    from features.snapshots import SnapshotTable
    from training import reports as report_set
    from training import tracking
    from training.train import nan_to_none, read_truth, train

    t0 = time.perf_counter()
    features = Path(args.features or cfg.features.out)
    reports = Path(args.reports or cfg.train.reports_dir)
    snaps = SnapshotTable.read(features)
    truth = read_truth(args.truth) if args.truth else None
    uri = tracking.display_uri(tracking.check_connection())  # fail before training, not after
    report_set.recover(reports)  # a set a killed run left half renamed: finish it now
    log.info("training on %s (%d rows, %d features); tracking at %s", features,
             len(snaps.frame), len(snaps.features), uri)  # fmt: skip
    result = train(snaps, cfg.train, list(cfg.rules), truth)
    # The reports are built aside and replace the old set only once the MLflow run has
    # finished: a killed run leaves the previous run's complete set (training.reports).
    staging = report_set.stage(reports)
    try:
        write_text(json.dumps(nan_to_none(result.report()), indent=2) + "\n",
                   staging / report_set.METRICS)  # fmt: skip
        from training.plots import write_plot_data, write_plots

        plots = write_plots(result, snaps, staging / report_set.PLOTS)
        # the data behind the curves (dvc.yaml's plots), logged with the pictures
        plots += write_plot_data(result, staging / report_set.PLOTS)
        log.info("logging the run to MLflow (%s)", uri)
        params_file = args.params or (DEFAULT_PARAMS if DEFAULT_PARAMS.exists() else None)
        record = tracking.log_training(
            result, snaps, features, config=cfg.model_dump(mode="json"), gates=cfg.train.gates,
            metrics_file=staging / report_set.METRICS, plots=plots, params_file=params_file,
            seed=cfg.train.seed,
        )  # fmt: skip
        report_set.publish(staging, reports, record.run_id)
    except BaseException:
        report_set.discard(staging)
        raise
    metrics_file = reports / report_set.METRICS
    first = next(iter(result.targets.values())).backtest.origins
    span = f"{first[0].date()}..{first[-1].date()}" if first else "none"
    print(f"walk-forward backtest, {len(first)} monthly origins {span} (pooled out-of-time):")
    print(_metrics_table(result.metrics()))
    for name, r in result.targets.items():
        info = r.model.info
        print(f"{name}: champion candidate trained on {info['train_rows']:,} rows with labels up "
              f"to {info['labels_up_to']} ({info['trees']} trees, {info['calibrator']} "
              "calibration)")  # fmt: skip
        for w in r.warnings:
            print(f"{name}: warning: {w}")
    for decision in record.decisions.values():
        print(decision.line())
        if not decision.promoted:
            print(f"  to make it champion anyway: {decision.promote_command()}")
    if not all(d.promoted for d in record.decisions.values()):
        print(f"  every model of this run: cshealth promote {record.run_id}")
    print(
        f"wrote {metrics_file} and {len(plots)} plots to {reports / 'plots'}/; MLflow run "
        f"{record.run_id} at {record.uri} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_models(args: argparse.Namespace, cfg: Config) -> int:
    """List the registered versions of every model, their aliases, backtest metrics and run."""
    from training import tracking

    if args.champions_json:
        return _write_champions(args.champions_json)
    tracking.fail_abandoned_runs()  # runs of killed trainings show as FAILED, not RUNNING
    rows = tracking.list_models()
    if not rows:
        print(f"no registered models at {tracking.display_uri()}: run `cshealth train` first")
        return 0
    print(f"{'model':<20}{'version':>8}  {'aliases':<10}{'roc_auc':>8}{'ece':>8}  "
          f"{'created (UTC)':<26}{'run':<34}run status")  # fmt: skip
    for r in rows:
        aliases = ",".join(r["aliases"]) or "-"
        print(f"{r['name']:<20}{r['version']:>8}  {aliases:<10}{r['roc_auc']:>8.3f}"
              f"{r['ece']:>8.3f}  {r['created']:<26}{r['run_id'] or '-':<34}"
              f"{r['run_status'] or '-'}")  # fmt: skip
    print("promote every model of a finished run: cshealth promote RUN_ID; one model: "
          "cshealth promote VERSION --model TARGET")  # fmt: skip
    return 0


def _write_champions(path: Path) -> int:
    """Write the registry's champions (target -> model, version, run id) as JSON, atomically.

    The `champion` DVC stage: the content is stable while no champion moves, so `score`
    reruns after a promotion (by the gate or by hand) and only then.
    """
    import json

    from features.io import write_text
    from training import tracking

    champions = tracking.champions()
    write_text(json.dumps(champions, indent=2, sort_keys=True) + "\n", Path(path))
    shown = ", ".join(f"{t} v{c['version']}" if c["version"] else f"{t} none"
                      for t, c in champions.items())  # fmt: skip
    print(f"wrote {path}: {tracking.CHAMPION} {shown} ({tracking.display_uri()})")
    return 0


def cmd_promote(args: argparse.Namespace, cfg: Config) -> int:
    """Move the champion alias by hand: every model of a training run, or one version."""
    from training import tracking

    if args.run and args.ref:
        raise UserError("give either RUN_ID / VERSION or --run, not both")
    ref = (args.run or args.ref or "").strip()
    if not ref:
        raise UserError("say what to promote: `cshealth promote RUN_ID` (every model of a "
                        "training run) or `cshealth promote VERSION --model TARGET`; run ids "
                        "and versions: `cshealth models`")  # fmt: skip
    targets = [args.model] if args.model else None
    origin = ""
    if args.run or not ref.isdigit():
        rv, moved = tracking.promote_run(ref, targets)
        versions, origin = rv.versions, f" (run {rv.run_id})"
    elif args.model:
        versions = {args.model: int(ref)}
        moved = {args.model: tracking.promote(args.model, int(ref))}
    else:  # VERSION of the first model names its training run: every model of that run
        rv = tracking.pair_of_version(int(ref))
        rv, moved = tracking.promote_run(rv.run_id)
        versions, origin = rv.versions, f" (run {rv.run_id})"
    for target, before in moved.items():
        was = f"v{before}" if before is not None else "none"
        print(f"{tracking.registered_name(target)}: {tracking.CHAMPION} {was} -> "
              f"v{versions[target]}{origin}")  # fmt: skip
    return 0


def _score_on(
    args: argparse.Namespace, frame: pd.DataFrame, scorer: Scorer, store: ScoreStore
) -> dict[str, Any]:
    """`score_latest` with the probabilities computed here or on Spark (`args.engine`)."""
    from serving.batch import score_latest

    if args.engine == "local":
        return score_latest(frame, scorer, store, as_of=args.as_of)
    from serving.spark_scoring import spark_probabilities

    engine = _spark(args)
    log.info("score: probabilities on Spark (%s), explanations in this process",
             engine.spark.sparkContext.master)  # fmt: skip
    on_spark = functools.partial(spark_probabilities, engine.spark, models=scorer.models)
    try:
        return score_latest(frame, scorer, store, as_of=args.as_of, probabilities=on_spark)
    finally:
        engine.close()  # stops the session only if it started it


def cmd_score(args: argparse.Namespace, cfg: Config) -> int:
    """Score every account at the newest as_of with the champions; append to the store."""
    from features.snapshots import SnapshotTable
    from serving.predictor import ModelPair, Scorer
    from training import tracking

    # webhooks and the store first: wrong settings fail before minutes of loading and scoring
    webhooks = _webhooks(args)
    store = _store(args, cfg)
    alerts = None
    try:
        features = Path(args.features or cfg.features.out)
        snaps = SnapshotTable.read(features)
        churn, v_churn = tracking.load_champion(CHURN.name)
        expansion, v_exp = tracking.load_champion(EXPANSION.name)
        _say_passed_over({CHURN.name: v_churn, EXPANSION.name: v_exp})
        scorer = Scorer(
            ModelPair(churn, expansion, str(v_churn), str(v_exp)), cfg.health, cfg.explanations
        )
        try:  # scored_at: at commit
            summary = _score_on(args, snaps.frame, scorer, store)
        except ValueError as err:
            raise UserError(f"{features}: {err}") from None
        if webhooks and not summary["backfill"]:
            alerts = _alert_line(store, summary["run_id"], webhooks, args, cfg)
    finally:
        store.close()
    bands = ", ".join(f"{k} {v}" for k, v in sorted(summary["bands"].items()))
    print(
        f"scored {summary['accounts']:,} accounts at as_of {summary['as_of']} with churn "
        f"v{v_churn} / expansion v{v_exp}: {bands}; mean health {summary['mean_health']}; "
        f"run {summary['run_id']} in {store!r} ({summary['seconds']} s, {args.engine} engine)"
    )
    if summary["backfill"]:
        print("a backfill run (as_of before the served run's): kept as history for realised "
              "accuracy (`cshealth monitor`); not served, no alerts")  # fmt: skip
    if alerts:
        print(alerts)
    return 0  # alert delivery never fails the run: it is in the line above and the store


def _webhooks(args: argparse.Namespace) -> list[str]:
    """The alert webhook URLs (checked: http(s), a secret set); [] when alerts are off."""
    from serving.alerts import check_webhooks

    settings: Settings = args.settings
    urls = settings.webhook_urls()
    secret = settings.alert_secret.get_secret_value() if settings.alert_secret else None
    check_webhooks(urls, secret)
    return urls


def _alert_line(
    store: ScoreStore, run_id: str, urls: list[str], args: argparse.Namespace, cfg: Config
) -> str:
    """Send a scored run's alerts; the summary line (a failure is reported, never raised)."""
    from serving.alerts import alert_run

    secret = args.settings.alert_secret.get_secret_value()
    try:
        return alert_run(store, run_id, urls, secret, cfg.alerts).line()
    except UserError as err:
        return f"alerts: not sent: {one_line(str(err), 300)}"
    except Exception as err:  # the run is committed: a bug here must not fail it
        log.exception("alerts: sending failed")
        return f"alerts: not sent: {type(err).__name__} (see the log above)"


def cmd_alerts(args: argparse.Namespace, cfg: Config) -> int:
    """(Re)send a scoring run's alerts; those delivered before are skipped (idempotent).

    Exit 1 when a delivery failed (unlike `score`, sending is this command's job).
    """
    from serving.alerts import alert_run

    urls = _webhooks(args)
    if not urls:
        raise UserError("no webhooks: set CSHEALTH_ALERT_WEBHOOKS (and CSHEALTH_ALERT_SECRET)")
    store = _store(args, cfg, create=False)
    try:
        run_id = args.run or (store.latest_run() or {}).get("run_id")
        if not run_id:
            raise UserError(f"no scoring run in {store!r}: run `cshealth score` first")
        if any(r["run_id"] == run_id and r.get("backfill") for r in store.all_runs()):
            raise UserError(f"run {run_id} is a backfill run (history, scored after a later "
                            "date): it sends no alerts")  # fmt: skip
        secret = args.settings.alert_secret.get_secret_value()
        summary = alert_run(store, run_id, urls, secret, cfg.alerts)
    finally:
        store.close()
    print(f"run {run_id}: {summary.line()}")
    return 1 if summary.failed or summary.not_recorded else 0


def _say_passed_over(champions: dict[str, int]) -> None:
    """Say when newer versions exist than the champion scoring uses (a gate kept the old one)."""
    from training import tracking

    for target, version in champions.items():
        newer = tracking.passed_over(target, version)
        if not newer:
            continue
        last, why = newer[-1]  # "vN not promoted: ...": the newest tells the story
        print(f"{target}: scoring with {tracking.CHAMPION} v{version}; {why}; to use v{last} "
              f"anyway: cshealth promote {last} --model {target}")  # fmt: skip


def _wait_ready(url: str, proc: object, instance: str | None = None,
                timeout: float = 90.0) -> bool:  # fmt: skip
    """Poll GET url until the server we started answers 200, it exits, or `timeout` passes.

    With `instance`, only an answer carrying ``X-CSHealth-Instance: <instance>`` counts:
    a 200 from anything else on the port (an orphaned old worker) fails at once.
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # type: ignore[attr-defined]
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    seen = resp.headers.get("X-CSHealth-Instance")
                    if instance is None or seen == instance:
                        return True
                    seen = one_line(str(seen), 40)
                    raise UserError(f"{url} is answered by another server (instance "
                                    f"{seen!r}), not the one just started")  # fmt: skip
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def _example_account(args: argparse.Namespace, cfg: Config) -> str | None:
    """A real account id from the store's newest run (a red one when there is one)."""
    try:
        store = _store(args, cfg, create=False)
        runs = store.recent_runs(1)
        if not runs:
            return None
        scores = store.run_scores(runs[0]["run_id"])
    except Exception:  # the banner is a convenience; the service reports store errors itself
        return None
    red = [s for s in scores if s["band"] == "red"]
    return (red or scores or [{"account_id": None}])[0]["account_id"]


def _serve_env(args: argparse.Namespace, instance: str) -> dict[str, str]:
    """The server's environment: only --no-auth (never an inherited variable) disables auth.

    The server inherits this process's environment (stores, MLflow) with the auth
    variables decided here; a blank key was refused when the settings were read.
    """
    from serving.auth import API_KEY_ENV, INSTANCE_ENV, NO_AUTH_ENV, no_auth_marker

    settings: Settings = args.settings
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true",
           INSTANCE_ENV: instance}  # fmt: skip
    env.pop(NO_AUTH_ENV, None)
    env.pop(API_KEY_ENV, None)
    if settings.no_auth is not None:
        log.warning("ignoring the inherited %s: only `cshealth serve --no-auth` disables "
                    "authentication", NO_AUTH_ENV)  # fmt: skip
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    if args.no_auth:
        if key:
            log.warning("--no-auth given: ignoring %s", API_KEY_ENV)
        env[NO_AUTH_ENV] = no_auth_marker(instance)
    elif not key:
        raise UserError(f"{API_KEY_ENV} is not set. Set it (clients send 'Authorization: "
                        "Bearer <key>'), or pass --no-auth to run without authentication "
                        "on purpose.")  # fmt: skip
    else:
        env[API_KEY_ENV] = key
    return env


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    """Start the HTTP scoring service (BentoML) over the champions and the score store."""
    import secrets
    import signal
    import subprocess

    from cshealth.errors import redact
    from serving.process import die_with_parent, port_in_use

    instance = secrets.token_hex(8)
    env = _serve_env(args, instance)
    env["CSHEALTH_PARAMS"] = str(Path(args.params or DEFAULT_PARAMS).resolve())
    key = env.get("CSHEALTH_API_KEY", "").strip()
    port = args.port or cfg.serving.port
    if port_in_use(args.host, port):
        raise UserError(f"port {port} on {args.host} is already in use (another cshealth "
                        "serve, or a leftover server?): stop it or pass --port")  # fmt: skip
    if args.no_auth:
        print("WARNING: authentication is OFF (--no-auth): anyone who can reach the port "
              "can score", file=sys.stderr, flush=True)  # fmt: skip
    bentoml = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml), "serve", "serving.service:HealthService", "--host", args.host,
           "--port", str(port)]  # fmt: skip
    base = f"http://{args.host}:{port}"
    print(f"starting the service on {base} ...", flush=True)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and a plain `kill` both stop the server cleanly (SIGINT may be ignored when
    # started in the background, so handle it explicitly). A SIGKILL of this process
    # reaches the server through die_with_parent (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
    try:
        if not _wait_ready(f"{base}/readyz", proc, instance):
            print("error: the service did not become ready (see its log above)", file=sys.stderr)
            proc.terminate()
            return proc.wait() or 1
        account = _example_account(args, cfg) or "ACCOUNT_ID"
        shown = key if args.show_key else "$CSHEALTH_API_KEY"
        auth = "" if args.no_auth else f"-H 'Authorization: Bearer {shown}' "
        mlflow_uri = redact(args.settings.mlflow_uri)
        print(
            f"\nready: {base}  (health {base}/readyz, metrics {base}/metrics, API docs {base}/)\n"
            + ("WARNING: authentication is OFF (--no-auth)\n" if args.no_auth else "")
            + (f"API key: {key}\n" if args.show_key and key else "")
            + f"try:   curl -s -X POST {base}/score {auth}-H 'Content-Type: application/json' "
            f'-d \'{{"account_ids": ["{account}"]}}\'\n'
            f"MLflow: mlflow ui --backend-store-uri {mlflow_uri}\n"
            f"report: {Path(cfg.report.out).resolve()}\n"
            "Ctrl-C stops the service.",
            flush=True,
        )
        return proc.wait()
    except (KeyboardInterrupt, UserError) as err:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if isinstance(err, UserError):
            raise
        return 0


def cmd_report(args: argparse.Namespace, cfg: Config) -> int:
    """Write the leadership risk report (one self-contained HTML file)."""
    from cshealth.report import collect, render
    from features.io import write_text
    from features.snapshots import SnapshotTable

    out = Path(args.out or cfg.report.out)
    snaps = SnapshotTable.read(Path(args.features or cfg.features.out))
    # Names, segments and CSMs come from the store (recorded with the scoring run).
    data = collect(
        _store(args, cfg), snaps.frame, cfg.train.reports_dir,
        cfg.checks.reports_dir, cfg.checks.snapshot_report, cfg.features.expansion_threshold,
        monitor_file=cfg.monitor.out,
    )  # fmt: skip
    page = render(data)
    write_text(page, out)
    print(f"wrote {out} ({len(page) / 1024:,.0f} KiB, {len(data.scores):,} accounts)")
    return 0


def cmd_monitor(args: argparse.Namespace, cfg: Config) -> int:
    """Drift of the newest scoring run vs the champion's training data or the previous run."""
    import json

    from features.io import write_text
    from features.snapshots import SnapshotTable
    from serving.drift import drift_report, sample

    params = cfg.monitor.drift
    if args.reference:
        params = params.model_copy(update={"reference": args.reference})
    out = Path(args.out or cfg.monitor.out)
    features = Path(args.features or cfg.features.out)
    snaps = SnapshotTable.read(features)
    store = _store(args, cfg)
    try:
        runs = store.recent_runs(2)
        if not runs:
            raise UserError(f"no scoring run in {store!r}: run `cshealth score` first")
        current = _run_rows(store, runs[0], snaps.frame, features)
        if params.reference == "previous":
            if len(runs) < 2:
                raise UserError(f"only one scoring run in {store!r}: nothing to compare it "
                                "with; use --reference training")  # fmt: skip
            ref = _run_rows(store, runs[1], snaps.frame, features)
            ref_sample, names = sample("previous", ref, runs[1]["run_id"]), snaps.features
    finally:
        store.close()
    if params.reference == "training":
        ref, names = _training_reference(snaps, features, runs[0])
        ref_sample = sample("training", ref)
    cur_sample = sample("current", current, runs[0]["run_id"])
    report = drift_report(ref, current, names, params, (ref_sample, cur_sample))
    realised = _realised_or_why(args, cfg, snaps)
    write_text(json.dumps({**report.to_dict(), "realised": realised}, indent=2) + "\n", out)
    print(_drift_table(report))
    print(_realised_table(realised))
    print(f"wrote {out}")
    print(report.summary_line())
    return 1 if report.crossed else 0


def _subscriptions(data: Path, snaps: SnapshotTable) -> pd.DataFrame:
    """The data folder's subscriptions, end dates read as the snapshot table read them."""
    from features.contract import T
    from features.io import ContractError, load_table
    from features.subscriptions import to_inclusive

    loaded = load_table(data, T.SUBSCRIPTIONS)
    if loaded is None:
        raise UserError(f"{data}: no {T.SUBSCRIPTIONS} table: point --data at the data folder")
    if loaded.issues:
        raise ContractError(loaded.issues)
    return to_inclusive(loaded.frame, snaps.end_date_convention)  # type: ignore[arg-type]


def _realised(args: argparse.Namespace, cfg: Config, snaps: SnapshotTable) -> dict:
    """Realised accuracy of every stored run whose outcome window the data now cover."""
    from serving.realised import realised

    subs = _subscriptions(_data_folder(args, cfg), snaps)
    label_params = cfg.features.model_copy(
        update={
            "horizon_days": snaps.horizon_days,
            "expansion_threshold": snaps.expansion_threshold,
        }
    )
    store = _store(args, cfg, create=False)
    try:
        return realised(store.all_runs(), store.predictions, subs, snaps.cutoff, label_params,
                        cfg.monitor.realised)  # fmt: skip
    finally:
        store.close()


def _realised_or_why(args: argparse.Namespace, cfg: Config, snaps: SnapshotTable) -> dict:
    """`_realised`, or why it could not be measured (drift is still reported)."""
    from features.io import ContractError

    try:
        return _realised(args, cfg, snaps)
    except (UserError, ContractError, OSError) as err:
        log.warning("realised accuracy not measured: %s", one_line(str(err), 300))
        return {"error": one_line(str(err), 300)}


def _realised_table(report: dict) -> str:
    """Per past run: status, accounts with an outcome, churn figures; then the pooled line."""
    from serving.realised import summary_line

    if "error" in report:
        return f"realised accuracy: not measured: {report['error']}"
    lines = [f"{'as_of':<11}{'run':<10}{'models':<26}{'known':>6}{'churned':>8}{'AUC':>7}"
             f"{'lift':>6}{'ECE':>7}{'flagged':>8}  status"]  # fmt: skip
    for r in report["runs"]:
        m = r["metrics"] or {}
        churn, expansion = r["models"]["churn"], r["models"]["expansion"]
        models = churn if churn == expansion else f"{churn}/{expansion}"
        lines.append(
            f"{r['as_of']:<11}{r['run_id'][:8]:<10}{models[:25]:<26}{r['known']:>6}"
            f"{m.get('churned', '-'):>8}{_cell(m.get('roc_auc')):>7}"
            f"{_cell(m.get('top_decile_lift'), 1):>6}{_cell(m.get('ece')):>7}"
            f"{_cell(m.get('flagged_churned_arr_share'), pct=True):>8}  {r['status']}"
        )
    return "\n".join([*lines, summary_line(report)]) if report["runs"] else summary_line(report)


def _cell(x: float | None, digits: int = 3, pct: bool = False) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.0%}" if pct else f"{x:.{digits}f}"


def cmd_replay(args: argparse.Namespace, cfg: Config) -> int:
    """Score past months out of time, as a model deployed then would have (realised accuracy).

    Trains models on the snapshot rows and labels known before the first replayed as_of
    (in memory, not registered), scores that date and the later ones whose outcome the
    data show, each stored as a backfill run (history, never served); then prints their
    realised accuracy, as `cshealth monitor` does.
    """
    from features.snapshots import SnapshotTable
    from serving.batch import score_latest
    from serving.predictor import ModelPair, Scorer
    from serving.realised import replay_dates
    from training.train import train

    t0 = time.perf_counter()
    features = Path(args.features or cfg.features.out)
    snaps = SnapshotTable.read(features)
    label = snaps.labels[CHURN.name]
    labelled = snaps.frame.loc[snaps.frame[label].notna(), Col.AS_OF].unique()
    try:
        dates = replay_dates(snaps.frame[Col.AS_OF].unique(), labelled,
                             args.runs or cfg.monitor.realised.replay_runs, args.start)  # fmt: skip
    except ValueError as err:
        raise UserError(f"{features}: {err}") from None
    if not dates:
        raise UserError(f"{features}: no as_of date with a known outcome yet: the data must "
                        f"reach an as_of + {snaps.horizon_days} days")  # fmt: skip
    result = None
    while result is None:
        known = snaps.known_at(dates[0])
        rows = int(known.frame[label].notna().sum())
        print(f"replay: training on the {rows:,} rows with outcomes known before "
              f"{dates[0].date()} (not registered)", flush=True)  # fmt: skip
        try:
            result = train(known, cfg.train, list(cfg.rules))
        except ValueError as err:
            if args.start is not None or len(dates) == 1:
                raise UserError(f"replay from {dates[0].date()}: {one_line(str(err), 400)}; "
                                "replay a later date (--start) or fewer (--runs)") from None
            # the default start is the user's first try too: a later one leaves more history
            print(f"replay: too little history before {dates[0].date()}; starting at the next date",
                  flush=True)  # fmt: skip
            dates = dates[1:]
    version = f"replay-{dates[0].date()}"
    models = ModelPair(result.targets[CHURN.name].model, result.targets[EXPANSION.name].model,
                       version, version)  # fmt: skip
    scorer = Scorer(models, cfg.health, cfg.explanations)
    store = _store(args, cfg)
    try:
        for d in dates:
            summary = score_latest(snaps.frame, scorer, store, as_of=d.date(), backfill=True)
            bands = ", ".join(f"{k} {v}" for k, v in sorted(summary["bands"].items()))
            print(f"replay: scored {summary['accounts']:,} accounts at as_of {summary['as_of']} "
                  f"(backfill run {summary['run_id'][:8]}): {bands}", flush=True)  # fmt: skip
    finally:
        store.close()
    print(_realised_table(_realised_or_why(args, cfg, snaps)))
    print(f"replay done in {time.perf_counter() - t0:.1f} s; `cshealth monitor` adds these runs' "
          "realised accuracy to monitor.json and the report")  # fmt: skip
    return 0


def cmd_weekly(args: argparse.Namespace, cfg: Config) -> int:
    """The scheduled job on new data, no retraining: check, features, score (+ alerts), monitor.

    Stops at the first failing step (bad data is never scored); drift found by the
    monitor is its exit code 1 after every step ran, so a scheduler can act on it.
    """
    steps: list[tuple[str, Callable[[argparse.Namespace, Config], int], dict]] = [
        ("check", cmd_check, {"reports": None}),
        ("features", cmd_features, {"out": args.features, "engine": "duckdb"}),
        ("score", cmd_score, {"as_of": None, "engine": "local"}),
        ("monitor", cmd_monitor, {"reference": None, "out": None}),
    ]
    t0 = time.perf_counter()
    for i, (name, func, extra) in enumerate(steps, 1):
        print(f">> weekly {i}/{len(steps)}: {name}", flush=True)
        code = func(argparse.Namespace(**{**vars(args), **extra}), cfg)
        if code != 0 and name != "monitor":
            print(f"error: weekly job stopped at {name} (exit {code}); later steps did not run",
                  file=sys.stderr)  # fmt: skip
            return code
    print(f"weekly job done in {time.perf_counter() - t0:.1f} s"
          + ("; drift found (see above)" if code else ""))  # fmt: skip
    return code


def _run_rows(store: ScoreStore, run: dict, frame: pd.DataFrame, features: Path) -> pd.DataFrame:
    """The snapshot rows a stored run scored, with its stored probabilities."""
    from serving.drift import rows_at, with_scores

    scores = store.run_scores(run["run_id"])
    rows = with_scores(rows_at(frame, run["as_of"]), scores)
    if rows.empty:
        raise UserError(f"{features} holds none of the {len(scores):,} accounts of run "
                        f"{run['run_id']} at as_of {run['as_of']}: point --features at the "
                        "snapshot table that run scored")  # fmt: skip
    if len(rows) < len(scores):
        log.warning("%d of the %d accounts of run %s are not in %s at as_of %s",
                    len(scores) - len(rows), len(scores), run["run_id"], features,
                    run["as_of"])  # fmt: skip
    return rows


def _training_reference(
    snaps: SnapshotTable, features: Path, run: dict
) -> tuple[pd.DataFrame, list[Feature]]:
    """The champions' training rows (scored by them) and the features the models read."""
    from serving.drift import PROBABILITIES, training_rows
    from training import tracking

    models = {t.name: tracking.load_champion(t.name) for t in (CHURN, EXPANSION)}
    churn, version = models[CHURN.name]
    for name, (_, v) in models.items():
        if str(v) != str(run[f"{name}_model_version"]):
            log.warning("run %s scored with %s v%s; the champion is now v%s", run["run_id"],
                        name, run[f"{name}_model_version"], v)  # fmt: skip
    rows = training_rows(snaps.frame, churn.info, snaps.labels.get(CHURN.name))
    if rows.empty:
        raise UserError(f"{features} holds none of the rows {CHURN.name} v{version} was "
                        "trained on: point --features at its training table, or use "
                        "--reference previous")  # fmt: skip
    columns = dict(PROBABILITIES)
    rows = rows.assign(**{columns[t]: m.predict_proba(rows) for t, (m, _) in models.items()})
    names = {f.name: f for m, _ in models.values() for f in m.features}
    return rows, list(names.values())


def _drift_table(report: DriftReport) -> str:
    """The probabilities and the worst features: PSI, missing shares, new categories."""
    lines = [f"{'input':<34}{'PSI':>7}  {'missing ref -> now':<20}{'new cats':>9}  level"]
    top = report.features[: report.params.top_features]
    for d in [*report.probabilities, *top]:
        psi = f"{d.psi:7.3f}" if d.psi == d.psi else f"{'-':>7}"
        missing = f"{d.missing_reference:.0%} -> {d.missing_current:.0%}"
        new = f"{d.new_category_share:.0%}" if d.categorical else "-"
        lines.append(f"{d.name[:33]:<34}{psi}  {missing:<20}{new:>9}  {d.level}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="cshealth", description=__doc__)
    p.add_argument("--params", type=Path, help="params file (default: ./params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help=cmd_generate.__doc__)
    g.add_argument("--out", help="output folder (default: data.raw_dir)")
    g.add_argument("--accounts", type=_positive, help="number of accounts")
    g.add_argument("--months", type=_positive, help="months of history")
    g.add_argument("--seed", type=int, help="random seed")
    g.add_argument("--start", type=_date, help="first month of data (YYYY-MM-DD)")
    g.add_argument("--truth", type=Path, help="ground-truth file (default: data.truth_file)")
    g.add_argument("--truth-samples", type=_positive, help="Monte Carlo paths for the truth")
    g.add_argument(
        "--preset", choices=preset_names(), metavar="NAME",
        help=f"dynamics preset, one of: {', '.join(preset_names())} (default: simulator.preset)",
    )  # fmt: skip
    g.add_argument(
        "--end-date-convention", choices=END_DATE_CONVENTIONS,
        help="subscription end_date: last day of service (inclusive) or the next term's start "
        "(exclusive) (default: simulator.end_date_convention)",
    )  # fmt: skip
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help=cmd_check.__doc__)
    c.add_argument("data", nargs="?", help="data folder: a path or a URI (default: data.raw_dir)")
    c.add_argument("--run-date", type=_date, help="no timestamp may be later (default: today)")
    c.add_argument(
        "--reports", type=Path, help="where full results go (default: checks.reports_dir)"
    )
    c.set_defaults(func=cmd_check)

    f = sub.add_parser("features", help=cmd_features.__doc__)
    f.add_argument("--data", help="data folder: a path or a URI (default: data.raw_dir)")
    f.add_argument("--out", type=Path, help="snapshot Parquet file (default: features.out)")
    f.add_argument(
        "--run-date", type=_date, help="no timestamp may be later, as in `check` (default: today)"
    )
    f.add_argument(
        "--engine", choices=("duckdb", "spark"), default="duckdb",
        help="where the feature SQL runs: embedded DuckDB (default) or Apache Spark on "
        "CSHEALTH_SPARK_MASTER (default local[2]; needs the `spark` extra and Java 17+)",
    )  # fmt: skip
    f.set_defaults(func=cmd_features)

    t = sub.add_parser("train", help=cmd_train.__doc__)
    t.add_argument("--features", type=Path, help="snapshot Parquet file (default: features.out)")
    t.add_argument("--truth", type=Path, help="simulator truth file: adds the `oracle` metrics")
    t.add_argument(
        "--reports", type=Path, help="metrics.json and plots/ (default: train.reports_dir)"
    )
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help=cmd_score.__doc__)
    s.add_argument("--features", type=Path, help="snapshot table (default: features.out)")
    s.add_argument(
        "--as-of", type=_date, metavar="DATE",
        help="score the snapshot at this as_of (default: the newest); a date before the "
        "served run's is stored as a backfill run: history for realised accuracy, not served",
    )  # fmt: skip
    s.add_argument(
        "--engine", choices=("local", "spark"), default="local",
        help="where the probabilities are computed: in this process (default) or on Apache "
        "Spark through mlflow.pyfunc.spark_udf over the champions' registered versions, on "
        "CSHEALTH_SPARK_MASTER (default local[2]; needs the `spark` extra and Java 17+); "
        "explanations are computed in this process either way",
    )  # fmt: skip
    s.set_defaults(func=cmd_score)

    al = sub.add_parser("alerts", help=cmd_alerts.__doc__)
    al.add_argument("--run", metavar="RUN_ID", help="scoring run (default: the newest)")
    al.set_defaults(func=cmd_alerts)

    sv = sub.add_parser("serve", help=cmd_serve.__doc__)
    sv.add_argument("--port", type=int, help="port (default: serving.port)")
    sv.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    sv.add_argument("--no-auth", action="store_true", help="run without API-key auth")
    sv.add_argument("--show-key", action="store_true", help="print the API key in the banner")
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("report", help=cmd_report.__doc__)
    rp.add_argument("--out", type=Path, help="HTML file (default: report.out)")
    rp.add_argument("--features", type=Path, help="snapshot table (default: features.out)")
    rp.set_defaults(func=cmd_report)

    wk = sub.add_parser("weekly", help=cmd_weekly.__doc__)
    wk.add_argument("--data", help="data folder: a path or a URI (default: data.raw_dir)")
    wk.add_argument("--features", type=Path, help="snapshot table (default: features.out)")
    wk.add_argument("--run-date", type=_date, help="no timestamp may be later (default: today)")
    wk.set_defaults(func=cmd_weekly)

    mo = sub.add_parser("monitor", help=cmd_monitor.__doc__)
    mo.add_argument(
        "--reference", choices=("training", "previous"),
        help="compare with the champion's training snapshots or the previous run "
        "(default: monitor.drift.reference); exit 1 when a drift threshold is crossed",
    )  # fmt: skip
    mo.add_argument("--features", type=Path, help="snapshot table (default: features.out)")
    mo.add_argument(
        "--data",
        help="data folder whose subscriptions say what happened: a path or a URI "
        "(default: data.raw_dir)",
    )  # fmt: skip
    mo.add_argument("--out", type=Path, help="JSON results (default: monitor.out)")
    mo.set_defaults(func=cmd_monitor)

    rl = sub.add_parser("replay", help=cmd_replay.__doc__.splitlines()[0])
    rl.add_argument("--features", type=Path, help="snapshot table (default: features.out)")
    rl.add_argument("--data", help="data folder: a path or a URI (default: data.raw_dir)")
    rl.add_argument(
        "--runs", type=_positive,
        help="how many as_of dates to score (default: monitor.realised.replay_runs)",
    )  # fmt: skip
    rl.add_argument(
        "--start", type=_date, metavar="DATE",
        help="first as_of to score; the models see only data before it (default: the "
        "--runs-th newest as_of with a known outcome)",
    )  # fmt: skip
    rl.set_defaults(func=cmd_replay)

    m = sub.add_parser("models", help=cmd_models.__doc__)
    m.add_argument(
        "--champions-json", type=Path, metavar="FILE",
        help="write only the champions (target -> model, version, run id) to FILE as JSON "
        "(the `champion` stage of dvc.yaml: `score` depends on it)",
    )  # fmt: skip
    m.set_defaults(func=cmd_models)

    pr = sub.add_parser("promote", help=cmd_promote.__doc__)
    pr.add_argument(
        "ref", nargs="?", metavar="RUN_ID|VERSION",
        help="a training run id (or its first 8+ characters): every model it registered; or a "
        "version number: with --model that model's version, without it the run that "
        f"registered that {TARGET_NAMES[0]} version (see `cshealth models`)",
    )  # fmt: skip
    pr.add_argument("--run", metavar="RUN_ID", help="the training run whose models to promote")
    pr.add_argument(
        "--model", choices=TARGET_NAMES,
        help="promote this model only (default: every model of the run)",
    )  # fmt: skip
    pr.set_defaults(func=cmd_promote)
    return p


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "numexpr", "urllib3", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # mlflow (imported later, lazily) resets its logger's level from this variable
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(max(level, logging.WARNING)))


def _fail(message: object, code: int) -> int:
    """Print one `error:` line (control characters escaped, secrets redacted); return `code`."""
    print(f"error: {one_line(str(message), limit=2000)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cshealth` command."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        settings = Settings.from_env()  # every environment variable, read once
        cfg = load_config(args.params)
    except (ConfigError, UserError) as err:
        return _fail(err, 2)
    args.settings = settings
    previous, withheld = os.umask(settings.umask), withhold(settings.umask)
    try:
        return _run(args, cfg)
    finally:
        # main() is also called in-process (tests, notebooks)
        os.umask(previous)
        withhold(withheld)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    """Run the chosen subcommand; problems the user can act on become one `error:` line."""
    func: Callable[[argparse.Namespace, Config], int] = args.func
    from features.io import ContractError
    from training.tracking import TrackingError

    try:
        return func(args, cfg)
    except UserError as err:
        return _fail(err, err.exit_code)
    except TrackingError as err:
        return _fail(err, 2)
    except ContractError as err:
        print("error: the data does not meet the contract:", file=sys.stderr)
        for issue in err.issues:
            print(f"  - {one_line(str(issue), limit=2000)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        return _fail(err, 2)


if __name__ == "__main__":
    sys.exit(main())
