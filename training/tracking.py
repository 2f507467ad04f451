"""MLflow tracking and the model registry: one run per `cshealth train`, a gated `champion`.

Where: the tracking URI comes from `MLFLOW_TRACKING_URI`, default `sqlite:///mlflow.db`
(a relative SQLite path is resolved against the current directory); a new experiment
on a SQLite store keeps its artifacts in `mlartifacts/` beside the database. The
experiment is `cshealth` unless `CSHEALTH_MLFLOW_EXPERIMENT` names another.

What a run holds: the whole configuration flattened to dotted params (and the
params file as an artifact), every pooled backtest metric as
`<target>.<contender>.<metric>` (with `_lo` / `_hi` interval bounds; NaN skipped),
the feature list (`features.json`), each target's out-of-time backtest predictions
(`backtest/<target>.parquet`: the evidence later challengers are compared on), the
snapshot table's sha256, the git commit, the plots, `metrics.json`, and one model per
declared target, registered as `cshealth-<target>` (see `training.pyfunc`).

Promotion (`decide`, per target): with no champion yet, the new version becomes
champion (a user is never left without scores); when it does not beat the best
baseline on the pooled backtest it is promoted as provisional and says so. With a
champion, the challenger replaces it when it is not worse on the same backtest rows:
the paired AUC difference is at least `-tolerance` and its 95 % interval reaches 0.
When the two backtests share no rows, beating the best baseline decides. The floors
`min_auc` / `max_ece` only warn. Decisions and warnings are kept as run and
model-version tags.

mlflow is imported inside the functions (it takes about a second): importing
this module is cheap and has no side effects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.targets import TARGET_NAMES

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from features.snapshots import SnapshotTable
    from training.model import HealthModel
    from training.settings import Gates
    from training.train import TargetResult, TrainResult

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "cshealth"
EXPERIMENT_ENV = "CSHEALTH_MLFLOW_EXPERIMENT"
CHAMPION = "champion"
#: registered model name per declared target
REGISTERED_MODELS = {t: f"cshealth-{t}" for t in TARGET_NAMES}
#: where a run keeps a target's out-of-time backtest predictions
BACKTEST_ARTIFACT = "backtest/{target}.parquet"
#: resamples behind the paired challenger-vs-champion interval
PAIRED_RESAMPLES = 300
#: the folder name of the HealthModel inside a logged pyfunc's artifacts
MODEL_FOLDER = "health_model"
_REPO = Path(__file__).resolve().parents[1]
_PARAM_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_TAG_LIMIT = 5000  # registry tag values are capped at 5000 characters


class TrackingError(RuntimeError):
    """The tracking store is unreachable or refused an operation (message says what to do)."""


# ----- connection -------------------------------------------------------------------------
def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, default `sqlite:///mlflow.db`; relative SQLite paths made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    db = _sqlite_path(uri)
    if db is not None and not db.is_absolute():
        uri = f"sqlite:///{db.resolve()}"
    return uri


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT


def registered_name(target: str) -> str:
    try:
        return REGISTERED_MODELS[target]
    except KeyError:
        raise ValueError(
            f"unknown model {target!r}: expected one of {', '.join(REGISTERED_MODELS)}"
        ) from None


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


def check_connection(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast (TrackingError) when the tracking store cannot be reached; returns the URI."""
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(
                f"cannot create the MLflow database folder {db.parent}: {err}"
            ) from err
        return uri
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # something answers: let MLflow report what it thinks of it
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(
                f"the MLflow tracking server {uri} is unreachable ({reason}); start it, or "
                f"set MLFLOW_TRACKING_URI (unset, it defaults to {DEFAULT_URI})"
            ) from err
    return uri


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow / store errors into TrackingError with a word on what was being done."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise TrackingError(
            f"MLflow ({tracking_uri()}) failed while {what}: {err.message}"
        ) from err
    except OSError as err:
        raise TrackingError(f"MLflow ({tracking_uri()}) failed while {what}: {err}") from err


def client() -> MlflowClient:
    """An MlflowClient on `tracking_uri()` (also set as the process-wide tracking URI)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = check_connection()
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(c: MlflowClient) -> str:
    """The experiment's id; created (artifacts in `mlartifacts/` beside a SQLite db) if absent."""
    name = experiment_name()
    with _mlflow_errors(f"opening experiment {name!r}"):
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"experiment {name!r} is deleted: restore it or set {EXPERIMENT_ENV}"
                )
            return exp.experiment_id
        db = _sqlite_path(tracking_uri())
        location = (db.parent / "mlartifacts").as_uri() if db is not None else None
        return c.create_experiment(name, artifact_location=location)


# ----- run contents -----------------------------------------------------------------------
def flatten_params(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts (and lists of dicts) to dotted keys; other values as text, truncated."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out |= flatten_params(v, f"{prefix}{k}.")
        return out
    if isinstance(tree, list | tuple) and tree and all(isinstance(v, dict) for v in tree):
        for i, v in enumerate(tree):
            out |= flatten_params(v, f"{prefix}{i}.")
        return out
    text = tree if isinstance(tree, str) else json.dumps(tree, default=str)
    out[prefix.rstrip(".")] = text[:_PARAM_LIMIT]
    return out


def flatten_metrics(metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """`{"churn": {"lightgbm": {"roc_auc": ..}}}` -> `{"churn.lightgbm.roc_auc": ..}`, no NaN."""
    out = {}
    for target, contenders in metrics.items():
        for name, values in contenders.items():
            for metric, value in values.items():
                if value is not None and math.isfinite(float(value)):
                    out[f"{target}.{name}.{metric}"] = float(value)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(repo: Path = _REPO) -> tuple[str, bool | None]:
    """HEAD of the repository holding this code ("unknown" outside git) and whether it is dirty."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10)  # fmt: skip
        if head.returncode != 0:
            return "unknown", None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=repo, capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip(), dirty


# ----- promotion --------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """The challenger against the champion on the backtest rows both predicted."""

    rows: int
    positives: int
    delta: float  # AUC(challenger) - AUC(champion)
    lo: float
    hi: float

    def text(self, champion: int) -> str:
        return (f"AUC {self.delta:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}] vs champion v{champion} "
                f"on {self.rows:,} shared backtest rows ({self.positives} positives)")  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """Whether a new version became champion, and why (one line for the console)."""

    target: str
    version: int
    promoted: bool
    reason: str
    champion_before: int | None = None
    warnings: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.target}: {self.reason}"

    def promote_command(self) -> str:
        """The exact command that makes this version champion by hand."""
        return f"cshealth promote {self.version} --model {self.target}"


def _fmt(x: float | None) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.3f}"


def decide(
    target: str,
    version: int,
    auc: float,
    baseline: tuple[str, float],
    gates: Gates,
    champion: int | None,
    comparison: Comparison | None,
    incomparable: str | None = None,
    warnings: tuple[str, ...] = (),
) -> Decision:
    """The promotion decision for one target (pure; see the module docstring)."""
    base_name, base_auc = baseline
    beats = math.isnan(base_auc) or (not math.isnan(auc) and auc > base_auc)
    vs_base = f"backtest AUC {_fmt(auc)} vs {base_name} {_fmt(base_auc)}"
    if champion is None:
        if beats:
            reason = f"v{version} promoted to {CHAMPION} (first champion; {vs_base})"
        else:
            reason = (f"v{version} promoted to {CHAMPION} as a provisional first model: "
                      f"{vs_base} does not beat the baseline, but scoring needs a "
                      "champion")  # fmt: skip
        return Decision(target, version, True, reason, None, warnings)
    if comparison is not None:
        ok = comparison.delta >= -gates.tolerance and comparison.hi >= 0
        what = comparison.text(champion)
        if ok:
            reason = f"v{version} promoted to {CHAMPION} (not worse: {what})"
        else:
            reason = (f"v{version} not promoted: worse than the champion ({what}; tolerance "
                      f"{gates.tolerance:g}); champion stays v{champion}")  # fmt: skip
        return Decision(target, version, ok, reason, champion, warnings)
    why = f"champion v{champion} not comparable: {incomparable}"
    if beats:
        reason = f"v{version} promoted to {CHAMPION} ({why}; {vs_base})"
    else:
        reason = f"v{version} not promoted ({why}; {vs_base}); champion stays v{champion}"
    return Decision(target, version, beats, reason, champion, warnings)


def _champion_version(c: MlflowClient, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(c.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _backtest_of(c: MlflowClient, target: str, version: int) -> pd.DataFrame:
    """The out-of-time backtest predictions logged by the run that made `version`."""
    import mlflow
    import pandas as pd

    run_id = c.get_model_version(registered_name(target), str(version)).run_id
    with tempfile.TemporaryDirectory(prefix="cshealth-backtest-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=BACKTEST_ARTIFACT.format(target=target), dst_path=tmp,
            tracking_uri=tracking_uri(),
        )  # fmt: skip
        return pd.read_parquet(local)


def compare_with_champion(
    c: MlflowClient, target: str, champion: int, new: pd.DataFrame, seed: int = 0
) -> tuple[Comparison | None, str | None]:
    """Paired AUC of the new backtest vs the champion's on their shared rows (new labels)."""
    from features.contract import Col
    from training.metrics import paired_auc_difference

    try:
        old = _backtest_of(c, target, champion)
    except Exception as err:  # any failure to fetch evidence means "not comparable", said why
        return None, f"its backtest predictions could not be read ({type(err).__name__}: {err})"
    keys = [Col.ACCOUNT_ID, Col.AS_OF]
    old = old[[*keys, "lightgbm"]].astype({Col.AS_OF: "datetime64[us]"})
    both = new[[*keys, "y", "lightgbm"]].astype({Col.AS_OF: "datetime64[us]"}).merge(
        old, on=keys, suffixes=("", "_champion"), validate="1:1"
    )
    both = both.dropna(subset=["lightgbm", "lightgbm_champion"])
    y = both["y"].to_numpy(dtype=int)
    if len(set(y.tolist())) < 2:
        return None, f"the two backtests share {len(both):,} rows, too few with both outcomes"
    delta, lo, hi = paired_auc_difference(
        y, both["lightgbm"].to_numpy(), both["lightgbm_champion"].to_numpy(),
        both[Col.ACCOUNT_ID].to_numpy(), PAIRED_RESAMPLES, seed,
    )  # fmt: skip
    return Comparison(len(both), int(y.sum()), delta, lo, hi), None


def gate_new_versions(
    c: MlflowClient, result: TrainResult, versions: dict[str, int], gates: Gates, seed: int = 0
) -> dict[str, Decision]:
    """Decide per target, move the alias for the winners, tag versions with the decision."""
    decisions = {}
    for target, version in versions.items():
        name = registered_name(target)
        tr = result.targets[target]
        with _mlflow_errors(f"reading the {name} champion"):
            champion = _champion_version(c, name)
        comparison, incomparable = None, None
        if champion is not None:
            comparison, incomparable = compare_with_champion(
                c, target, champion, tr.backtest.predictions, seed
            )
            if incomparable:
                log.warning("%s: champion v%d is not comparable: %s", target, champion,
                            incomparable)  # fmt: skip
        d = decide(target, version, tr.metrics["lightgbm"].get("roc_auc", math.nan),
                   tr.best_baseline(), gates, champion, comparison, incomparable,
                   tuple(tr.warnings))  # fmt: skip
        with _mlflow_errors(f"recording the {name} promotion decision"):
            if d.promoted:
                c.set_registered_model_alias(name, CHAMPION, str(version))
            tags = {
                "promotion": "champion" if d.promoted else "rejected",
                "promotion_reason": d.reason[:_TAG_LIMIT],
                "champion_before": str(champion) if champion is not None else "none",
            }
            if comparison is not None:
                tags["champion_auc_delta"] = f"{comparison.delta:.6f}"
            for k, v in tags.items():
                c.set_model_version_tag(name, str(version), k, v)
        decisions[target] = d
        log.debug("%s", d.line())  # the CLI prints the decision
    return decisions


# ----- one training run -------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    run_id: str
    experiment_id: str
    uri: str
    versions: dict[str, int]
    decisions: dict[str, Decision]


def _log_model(target: str, model: HealthModel, examples: Any) -> tuple[int, str]:
    """Log one HealthModel as a registered pyfunc; (version, model_id)."""
    import mlflow

    from training import pyfunc

    entry = Path(pyfunc.__file__).with_name("pyfunc_entry.py")
    with tempfile.TemporaryDirectory(prefix="cshealth-model-") as tmp:
        folder = Path(tmp) / MODEL_FOLDER
        model.save(folder)
        info = mlflow.pyfunc.log_model(
            name=f"{target}_model",
            python_model=str(entry),
            artifacts={pyfunc.ARTIFACT_KEY: str(folder)},
            signature=pyfunc.signature(model),
            input_example=pyfunc.input_example(model, examples),
            pip_requirements=pyfunc.pip_requirements(),
            registered_model_name=registered_name(target),
            await_registration_for=60,
        )
    return int(info.registered_model_version), info.model_id


def _version_tags(tr: TargetResult) -> dict[str, str]:
    """What `cshealth models` and a reader of the registry need to know about a version."""
    m = tr.metrics["lightgbm"]
    lo, hi = tr.backtest.intervals["lightgbm"].get("roc_auc", (math.nan, math.nan))
    tags = {
        "backtest_roc_auc": _fmt(m.get("roc_auc", math.nan)),
        "backtest_roc_auc_interval": f"{_fmt(lo)}..{_fmt(hi)}",
        "backtest_ece": _fmt(m.get("ece", math.nan)),
        "backtest_positives": str(tr.backtest.positives),
        "backtest_origins": ",".join(tr.model.info["backtest_origins"]),
        "labels_up_to": tr.model.info["labels_up_to"],
        "warnings": "; ".join(tr.warnings)[:_TAG_LIMIT] or "none",
    }
    return tags


def model_card(tr: TargetResult) -> str:
    """The registered version's description: what it predicts, on what, how well."""
    info, m = tr.model.info, tr.metrics["lightgbm"]
    lo, hi = tr.backtest.intervals["lightgbm"].get("roc_auc", (math.nan, math.nan))
    origins = info["backtest_origins"]
    span = f"{origins[0]}..{origins[-1]}" if origins else "none"
    lines = [
        f"Predicts {tr.target.name} within {info['horizon_days']} days ({info['label']}): "
        f"{tr.target.description}",
        f"Trained on labels up to {info['labels_up_to']} ({info['train_rows']:,} snapshots, "
        f"{info['train_positives']:,} positives, {len(tr.model.features)} features, "
        f"{info['trees']} trees, {info['calibrator']} calibration).",
        f"Walk-forward backtest, {len(origins)} monthly origins {span}: ROC AUC "
        f"{_fmt(m.get('roc_auc'))} [{_fmt(lo)}, {_fmt(hi)}], ECE {_fmt(m.get('ece'))}, "
        f"{tr.backtest.positives} positives.",
        "Intended use: rank and explain accounts for Customer Success follow-up; not for "
        "automated decisions about a customer without a person reviewing them.",
    ]
    lines += [f"Warning: {w}" for w in tr.warnings]
    return "\n".join(lines)


def _log_backtest(tr: TargetResult, target: str) -> None:
    """The target's out-of-time predictions, the evidence later challengers are paired with."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="cshealth-backtest-") as tmp:
        path = Path(tmp) / f"{target}.parquet"
        tr.backtest.predictions.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(BACKTEST_ARTIFACT.format(target=target)).parent))


def log_training(
    result: TrainResult,
    snaps: SnapshotTable,
    snapshot_file: Path,
    *,
    config: dict,
    gates: Gates,
    metrics_file: Path | None = None,
    plots: list[Path] | None = None,
    params_file: Path | None = None,
    seed: int = 0,
) -> RunRecord:
    """One MLflow run: params, metrics, data fingerprint, commit, plots, models; then gate."""
    import mlflow

    from features.contract import Col
    from features.meta import to_dict

    t0 = time.perf_counter()
    c = client()
    exp_id = ensure_experiment(c)
    commit, dirty = git_commit()
    sha = file_sha256(Path(snapshot_file))
    run_name = f"train-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    versions: dict[str, int] = {}
    newest = snaps.frame[snaps.frame[Col.AS_OF] == snaps.frame[Col.AS_OF].max()]
    with (
        _mlflow_errors("logging the training run"),
        mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run,
    ):
        mlflow.set_tags({
            "git_commit": commit,
            "git_dirty": str(dirty).lower() if dirty is not None else "unknown",
            "mlflow.source.git.commit": commit,
            "snapshot_sha256": sha,
            "snapshot_file": str(snapshot_file),
            "snapshot_rows": str(len(snaps.frame)),
            "evaluation": "walk-forward backtest",
        })  # fmt: skip
        params = flatten_params(config)
        params["snapshot_sha256"] = sha
        for target, tr in result.targets.items():
            params |= flatten_params(
                {"backtest": {target: {"origins": tr.model.info["backtest_origins"],
                                       "rows": len(tr.backtest.predictions)}},
                 "model": {target: {"trees": tr.model.info["trees"],
                                    "calibrator": tr.model.calibrator.kind,
                                    "labels_up_to": tr.model.info["labels_up_to"]}}}
            )  # fmt: skip
        mlflow.log_params(params)
        mlflow.log_metrics(flatten_metrics(result.metrics()))
        features = next(iter(result.targets.values())).model.features
        mlflow.log_dict({"features": [to_dict(f) for f in features]}, "features.json")
        meta = Path(snapshot_file).with_suffix(".meta.json")
        if meta.exists():
            mlflow.log_artifact(str(meta), "data")
        if params_file is not None and Path(params_file).exists():
            mlflow.log_artifact(str(params_file))
        if metrics_file is not None and Path(metrics_file).exists():
            mlflow.log_artifact(str(metrics_file))
        for p in plots or []:
            mlflow.log_artifact(str(p), "plots")
        log.info("mlflow: run %s logged (%.1f s); logging models", run.info.run_id,
                 time.perf_counter() - t0)  # fmt: skip
        for target, tr in result.targets.items():
            _log_backtest(tr, target)
            version, model_id = _log_model(target, tr.model, newest)
            versions[target] = version
            lgbm = {f"backtest_{k}": v for k, v in tr.metrics["lightgbm"].items()
                    if isinstance(v, float) and math.isfinite(v)}  # fmt: skip
            mlflow.log_metrics(lgbm, model_id=model_id)
            for k, v in _version_tags(tr).items():
                c.set_model_version_tag(registered_name(target), str(version), k, v)
            c.update_model_version(registered_name(target), str(version),
                                   description=model_card(tr))  # fmt: skip
            log.info("mlflow: registered %s v%d", registered_name(target), version)
        decisions = gate_new_versions(c, result, versions, gates, seed)
        for target, d in decisions.items():
            mlflow.set_tags({
                f"promotion.{target}": "champion" if d.promoted else "rejected",
                f"promotion.{target}.version": str(d.version),
                f"promotion.{target}.reason": d.reason[:_TAG_LIMIT],
            })  # fmt: skip
    log.info("mlflow: done in %.1f s", time.perf_counter() - t0)
    return RunRecord(run.info.run_id, exp_id, tracking_uri(), versions, decisions)


# ----- loading ------------------------------------------------------------------------------
def _load(c: MlflowClient, target: str, version: int) -> HealthModel:
    """Download a registered version's artifacts and load the plain HealthModel in them."""
    import mlflow
    from mlflow.models import Model

    from training.model import HealthModel
    from training.pyfunc import ARTIFACT_KEY

    name = registered_name(target)
    with (
        tempfile.TemporaryDirectory(prefix="cshealth-load-") as tmp,
        _mlflow_errors(f"downloading {name} v{version}"),
    ):
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=tmp,
            tracking_uri=tracking_uri(), registry_uri=tracking_uri(),
        ))  # fmt: skip
        flavor = Model.load(str(local / "MLmodel")).flavors["python_function"]
        folder = local / flavor["artifacts"][ARTIFACT_KEY]["path"]
        return HealthModel.load(folder)


def load_version(target: str, version: int) -> HealthModel:
    """The HealthModel of `cshealth-<target>` version `version`."""
    c = client()
    _require_version(c, target, version)
    return _load(c, target, int(version))


def load_champion(target: str) -> tuple[HealthModel, int]:
    """The current champion of `target` as a plain HealthModel, with its version number."""
    c = client()
    name = registered_name(target)
    with _mlflow_errors(f"reading the {name} champion"):
        version = _champion_version(c, name)
    if version is None:
        with _mlflow_errors(f"listing {name} versions"):
            found = sorted(_versions(c, name), key=lambda v: int(v.version))
        if not found:
            raise TrackingError(f"{name} has no {CHAMPION} version yet: run `cshealth train`")
        # Suggest the newest version a gate once promoted; else the newest one.
        was = [v for v in found if (v.tags or {}).get("promotion") == "champion"]
        pick = int((was or found)[-1].version)
        have = ", ".join(str(v.version) for v in found)
        raise TrackingError(
            f"{name} has versions {have} but no {CHAMPION}: make one champion with "
            f"`cshealth promote {pick} --model {target}` (see `cshealth models`), or run "
            "`cshealth train`"
        )
    return _load(c, target, version), version


# ----- registry listing and manual promotion ----------------------------------------------
def _versions(c: MlflowClient, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return list(c.search_model_versions(f"name = '{name}'"))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise


def list_models() -> list[dict]:
    """Every version of every target's model: name, version, aliases, run, backtest metrics."""
    c = client()
    rows = []
    with _mlflow_errors("listing registered models"):
        for target, name in REGISTERED_MODELS.items():
            versions = sorted(_versions(c, name), key=lambda v: int(v.version))
            # search results carry no aliases: take them from the registered model
            aliases: dict[int, list[str]] = {}
            if versions:
                for alias, v in (c.get_registered_model(name).aliases or {}).items():
                    aliases.setdefault(int(v), []).append(alias)
            for mv in versions:
                tags = mv.tags or {}
                metrics: dict[str, float] = {}
                for k in ("roc_auc", "ece"):
                    text = tags.get(f"backtest_{k}")
                    if text is None and mv.run_id:
                        run_metrics = c.get_run(mv.run_id).data.metrics
                        value = run_metrics.get(f"{target}.lightgbm.{k}", math.nan)
                    else:
                        value = float(text) if text not in (None, "nan") else math.nan
                    metrics[k] = value
                created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC)
                rows.append({
                    "target": target,
                    "name": name,
                    "version": int(mv.version),
                    "aliases": sorted(aliases.get(int(mv.version), [])),
                    "run_id": mv.run_id,
                    "created": created.isoformat(timespec="seconds"),
                    "roc_auc": metrics["roc_auc"],
                    "ece": metrics["ece"],
                    "promotion": tags.get("promotion", ""),
                })  # fmt: skip
    return rows


def _require_version(c: MlflowClient, target: str, version: int) -> Any:
    from mlflow.exceptions import MlflowException

    name = registered_name(target)
    try:
        return c.get_model_version(name, str(int(version)))
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(
                f"MLflow failed while reading {name} v{version}: {err.message}"
            ) from err
        with _mlflow_errors(f"listing {name} versions"):
            have = sorted(int(v.version) for v in _versions(c, name))
        known = ", ".join(map(str, have)) if have else "none"
        raise ValueError(f"{name} has no version {version} (versions: {known})") from None


def promote(target: str, version: int) -> int | None:
    """Move `champion` of `target` to `version` by hand; returns the previous champion."""
    c = client()
    name = registered_name(target)
    _require_version(c, target, version)
    with _mlflow_errors(f"moving the {name} {CHAMPION} alias"):
        before = _champion_version(c, name)
        c.set_registered_model_alias(name, CHAMPION, str(int(version)))
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        c.set_model_version_tag(name, str(int(version)), "promoted_by_hand", now)
    return before


def promote_pair(version: int) -> dict[str, int | None]:
    """Promote `version` of both models; they must come from the same training run."""
    c = client()
    runs = {t: _require_version(c, t, version).run_id for t in REGISTERED_MODELS}
    if len(set(runs.values())) != 1:
        raise ValueError(
            f"version {version} of {' and '.join(REGISTERED_MODELS.values())} come from "
            "different training runs: promote them one at a time with --model"
        )
    return {t: promote(t, version) for t in REGISTERED_MODELS}
