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
snapshot table as the dataset input `snapshots` (schema, row count; its digest and a
tag are the file's sha256), the git commit, the plots, `metrics.json`, and one model per
declared target, registered as `cshealth-<target>`. Each model is self-contained (see
`training.pyfunc`: the code it imports and its pinned requirements travel with it) and
carries its model card (`model_card`: targets, training window, backtest metrics with
intervals, features, intended use) as `model_card.md`, as the logged model's
description and as the registered version's description.

Promotion (`decide`, per target): with no champion yet, the new version becomes
champion (a user is never left without scores); when it does not beat the best
baseline on the pooled backtest it is promoted as provisional and says so. With a
champion, the challenger replaces it when it is not worse on the same backtest rows:
the paired AUC difference is at least `-tolerance` and its 95 % interval reaches 0.
When the two backtests share no rows, or disagree on more than 1 % of their shared
rows' outcomes (the champion was trained on other data, e.g. another DVC experiment),
beating the best baseline decides. The floors
`min_auc` / `max_ece` only warn. Decisions and warnings are kept as run and
model-version tags. By hand, promotion addresses a training run (`promote_run`): its
versions of every target move together, whatever their numbers.

A run records the process that opened it (tags `cshealth.owner.*`); a later `cshealth
train` or `cshealth models` marks FAILED the runs left RUNNING by a process that is gone.
Credentials in an http(s) tracking URI move to MLflow's `MLFLOW_TRACKING_USERNAME` /
`_PASSWORD`; no message shows a password. A SQLite store and a local artifact root
created here are owner-only (`CSHEALTH_UMASK` opts out).

mlflow is imported inside the functions (it takes about a second): importing
this module is cheap and has no side effects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cshealth.errors import redact
from cshealth.files import file_sha256, private_dirs, private_file, restrict, restrict_tree
from features.targets import TARGET_NAMES
from training import owner

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from cshealth.settings import Settings
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
#: above this share of shared backtest rows with other outcomes, the champion's backtest
#: is from other data and not comparable (a few corrected labels stay comparable)
MAX_OUTCOME_DISAGREEMENT = 0.01
#: the folder name of the HealthModel inside a logged pyfunc's artifacts
MODEL_FOLDER = "health_model"
_REPO = Path(__file__).resolve().parents[1]
_PARAM_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_TAG_LIMIT = 5000  # registry tag values are capped at 5000 characters
#: what the connection check asks a server: needs the same credentials training will
PROBE_PATH = "api/2.0/mlflow/experiments/get-by-name"


class TrackingError(RuntimeError):
    """The tracking store is unreachable or refused an operation (message says what to do)."""


# ----- connection -------------------------------------------------------------------------
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, default `sqlite:///mlflow.db`; relative SQLite paths made absolute.

    Credentials in it (`http://user:password@host`) are first moved to MLflow's own
    variables (see `_adopt_credentials`): the URI returned never holds a password.
    """
    _adopt_credentials()
    uri = _settings().mlflow_uri
    db = _sqlite_path(uri)
    if db is not None and not db.is_absolute():
        uri = f"sqlite:///{db.resolve()}"
    return uri


def display_uri(uri: str | None = None) -> str:
    """`uri` (default: the tracking URI) fit for messages and logs: any password as `***`."""
    return redact(uri if uri is not None else tracking_uri())


def _split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """An http(s) URI without `user:password@`, and the (unquoted) user and password."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri, None, None
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    clean = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    password = unquote(parts.password) if parts.password is not None else None
    return clean, unquote(parts.username or ""), password


def _adopt_credentials() -> None:
    """Move `user:password@` of MLFLOW_TRACKING_URI into MLFLOW_TRACKING_USERNAME / _PASSWORD.

    MLflow 3 would send URL credentials (requests reads them) but also prints the URL,
    password included, in its errors ("API request to http://user:pw@... failed"); the
    two variables are its documented way to authenticate and appear in no message.
    """
    clean, user, password = _split_userinfo(_settings().mlflow_uri)
    if user is None:
        return
    os.environ[USERNAME_ENV] = user
    if password is not None:
        os.environ[PASSWORD_ENV] = password
    os.environ["MLFLOW_TRACKING_URI"] = clean
    log.debug("mlflow: credentials for %s taken from MLFLOW_TRACKING_URI", clean)


def _settings() -> Settings:
    """The environment's settings (`cshealth.settings`): read anew, tests change it."""
    from cshealth.settings import Settings

    return Settings.from_env()


def experiment_name() -> str:
    return _settings().mlflow_experiment


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


def _create_db(db: Path) -> None:
    """Create the SQLite file (and missing folders) owner-only: it holds customer data."""
    if str(db) == ":memory:" or db.exists():
        return
    try:
        private_dirs(db.parent)
        # SQLite gives its journal files the database's permissions
        private_file(db)  # an empty file is an empty SQLite database; MLflow adds the tables
    except OSError as err:
        raise TrackingError(f"cannot create the MLflow database {db}: {err}") from err


def check_connection(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast (TrackingError) when the tracking store cannot be reached; returns the URI.

    A SQLite store is created (owner-only) when absent; a server gets one authenticated
    request, with the credentials of the URI or of MLflow's variables.
    """
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        _create_db(db)
        return uri
    if uri.startswith(("http://", "https://")):
        _probe(uri, timeout)
    return uri


def _auth_header(user: str | None, password: str | None) -> str | None:
    """Basic auth from `user`/`password`, else MLflow's variables; else a bearer token."""
    import base64

    if user is None:
        settings = _settings()
        user = settings.mlflow_username
        password = _secret(settings.mlflow_password)
    if user:
        return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    token = _secret(_settings().mlflow_token)
    return f"Bearer {token}" if token else None


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _probe(uri: str, timeout: float) -> None:
    """GET a cheap authenticated endpoint: unreachable, or credentials refused -> TrackingError."""
    import urllib.error
    import urllib.parse
    import urllib.request

    clean, user, password = _split_userinfo(uri)
    query = urllib.parse.urlencode({"experiment_name": experiment_name()})
    req = urllib.request.Request(f"{clean.rstrip('/')}/{PROBE_PATH}?{query}")
    auth = _auth_header(user, password)
    if auth:
        req.add_header("Authorization", auth)
    shown = display_uri(uri)
    try:
        urllib.request.urlopen(req, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code not in (401, 403):
            return  # it answers (404: no such experiment yet): MLflow takes it from here
        what = ("rejected the credentials" if auth else "requires credentials") \
            if err.code == 401 else "refused access"  # fmt: skip
        raise TrackingError(
            f"the MLflow tracking server {shown} {what} (HTTP {err.code}): set the user and "
            f"password in {USERNAME_ENV} / {PASSWORD_ENV} (or as http://USER:PASSWORD@host in "
            "MLFLOW_TRACKING_URI)"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = redact(str(getattr(err, "reason", err)))
        raise TrackingError(
            f"the MLflow tracking server {shown} is unreachable ({reason}); start it, or "
            f"set MLFLOW_TRACKING_URI (unset, it defaults to {DEFAULT_URI})"
        ) from None


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow / store errors into TrackingError with a word on what was being done."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise TrackingError(
            f"MLflow ({display_uri()}) failed while {what}: {redact(str(err.message))}"
        ) from err
    except OSError as err:
        raise TrackingError(
            f"MLflow ({display_uri()}) failed while {what}: {redact(str(err))}"
        ) from err


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
        location = None
        if db is not None:
            root = db.parent / "mlartifacts"
            if not root.exists():
                root.mkdir(parents=True, exist_ok=True)
                restrict(root)  # models and backtests hold customer data
            location = root.as_uri()
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
    run_id: str | None = None  # the training run that registered the version

    def line(self) -> str:
        return f"{self.target}: {self.reason}"

    def promote_command(self) -> str:
        """The exact command that makes this version (of this target only) champion by hand."""
        return f"cshealth promote {self.version} --model {self.target}"

    def run_command(self) -> str | None:
        """The command that makes every model of this version's training run champion."""
        return f"cshealth promote {self.run_id}" if self.run_id else None


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
    old = old[[*keys, *(["y"] if "y" in old else []), "lightgbm"]]
    both = new[[*keys, "y", "lightgbm"]].astype({Col.AS_OF: "datetime64[us]"}).merge(
        old.astype({Col.AS_OF: "datetime64[us]"}), on=keys, suffixes=("", "_champion"),
        validate="1:1",
    )  # fmt: skip
    both = both.dropna(subset=["lightgbm", "lightgbm_champion"])
    if "y_champion" in both and len(both):
        # Same ids and dates but other outcomes: another data set (an experiment on other
        # data, a re-keyed source), so the pairing would compare unrelated accounts.
        differ = float((both["y"] != both["y_champion"]).mean())
        if differ > MAX_OUTCOME_DISAGREEMENT:
            return None, (f"the two backtests disagree on the outcome of {differ:.0%} of "
                          f"their {len(both):,} shared rows: trained on other data")  # fmt: skip
    y = both["y"].to_numpy(dtype=int)
    if len(set(y.tolist())) < 2:
        return None, f"the two backtests share {len(both):,} rows, too few with both outcomes"
    delta, lo, hi = paired_auc_difference(
        y, both["lightgbm"].to_numpy(), both["lightgbm_champion"].to_numpy(),
        both[Col.ACCOUNT_ID].to_numpy(), PAIRED_RESAMPLES, seed,
    )  # fmt: skip
    return Comparison(len(both), int(y.sum()), delta, lo, hi), None


def gate_new_versions(
    c: MlflowClient,
    result: TrainResult,
    versions: dict[str, int],
    gates: Gates,
    seed: int = 0,
    run_id: str | None = None,
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
        d = dataclasses.replace(d, run_id=run_id)
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


# ----- runs left open by a killed process -------------------------------------------------
#: run tags naming the process that opened a run (see `training.owner`)
OWNER_TAGS = {k: f"cshealth.owner.{k}" for k in (owner.PID, owner.HOST, owner.NAMESPACE,
                                                  owner.STARTED)}  # fmt: skip
ABANDONED_TAG = "cshealth.abandoned"


def _owner_tags() -> dict[str, str]:
    return {OWNER_TAGS[k]: v for k, v in owner.identity().items()}


def _run_owner(tags: dict[str, str]) -> dict[str, str]:
    return {k: tags[tag] for k, tag in OWNER_TAGS.items() if tag in tags}


def fail_abandoned_runs(c: MlflowClient | None = None) -> list[str]:
    """Mark FAILED the experiment's runs left RUNNING by a process that is gone; their ids.

    Only runs opened on this machine can be judged (pid, namespace and start time
    recorded as tags when the run opened); a live concurrent run is left alone.
    """
    c = c or client()
    with _mlflow_errors("looking for training runs left open"):
        exp = c.get_experiment_by_name(experiment_name())
        if exp is None:
            return []
        runs = c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'",
                             max_results=1000)  # fmt: skip
    failed = []
    for run in runs:
        who = _run_owner(run.data.tags)
        if owner.alive(who) is not False:
            continue
        run_id = run.info.run_id
        with _mlflow_errors(f"marking the abandoned run {run_id} FAILED"):
            why = (f"process {who[owner.PID]} on {who[owner.HOST]} ended without closing the "
                   f"run; marked FAILED by process {os.getpid()}")  # fmt: skip
            c.set_tag(run_id, ABANDONED_TAG, why)
            c.set_terminated(run_id, "FAILED")
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)
        log.warning("mlflow: run %s (started %s by process %s, which is gone) was left "
                    "RUNNING: marked FAILED", run_id, started.isoformat(timespec="seconds"),
                    who[owner.PID])  # fmt: skip
        failed.append(run_id)
    if failed:  # a killed run never reached its own permission pass: do it for it
        with _mlflow_errors("restricting the artifact permissions"):
            root = _local(exp.artifact_location)
            if root is not None:
                restrict_tree(root)
    return failed


def _local(uri: str | None) -> Path | None:
    """The folder of a `file:` artifact URI; None for remote stores."""
    from urllib.parse import unquote, urlsplit

    return Path(unquote(urlsplit(uri).path)) if uri and uri.startswith("file:") else None


def _restrict_artifacts(c: MlflowClient, exp_id: str, run_id: str, model_ids: list[str]) -> None:
    """Owner-only local artifacts of a run and its models (MLflow copies source modes)."""
    root = _local(c.get_experiment(exp_id).artifact_location)
    uris = [c.get_run(run_id).info.artifact_uri]
    uris += [c.get_logged_model(m).artifact_location for m in model_ids]
    for path in filter(None, map(_local, uris)):
        restrict_tree(path.parent)  # .../<run or model id>/artifacts -> the id's folder
        for folder in path.parent.parents:
            if root is None or not folder.is_relative_to(root):
                break
            restrict(folder)


# ----- one training run -------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    run_id: str
    experiment_id: str
    uri: str
    versions: dict[str, int]
    decisions: dict[str, Decision]


def _log_model(target: str, model: HealthModel, examples: Any, card: str) -> tuple[int, str]:
    """Log one HealthModel as a self-contained registered pyfunc; (version, model_id).

    Shipped with it: the modules the pyfunc imports (`code/`), its pinned requirements
    and `card` as `model_card.md` beside `MLmodel` (also the logged model's description).
    """
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
            code_paths=pyfunc.stage_code(Path(tmp) / "code"),
            signature=pyfunc.signature(model),
            input_example=pyfunc.input_example(model, examples),
            pip_requirements=pyfunc.pip_requirements(),
            registered_model_name=registered_name(target),
            await_registration_for=60,
        )
        card_file = Path(tmp) / MODEL_CARD
        card_file.write_text(card, encoding="utf-8")
        c = mlflow.MlflowClient()
        c.log_model_artifact(info.model_id, str(card_file))
        c.set_logged_model_tags(info.model_id, {NOTE_TAG: card[:_NOTE_LIMIT]})
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


#: the model card's file name inside a logged model (beside `MLmodel`)
MODEL_CARD = "model_card.md"
#: the tag MLflow shows as a description
NOTE_TAG = "mlflow.note.content"
_NOTE_LIMIT = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_DESCRIPTION_LIMIT = 5000  # a registered version's description column (SQL stores)
INTENDED_USE = (
    "Rank and explain accounts for Customer Success follow-up; not for automated decisions "
    "about a customer without a person reviewing them. Scores are only as current as the "
    "snapshot they are computed on, and assume the features of `cshealth features` "
    "(point in time, same definitions)."
)


def training_window(snaps: SnapshotTable, target: str) -> tuple[str, str]:
    """The first and last snapshot `as_of` with a label of `target` (the rows trained on)."""
    import pandas as pd

    from features.contract import Col

    frame = snaps.frame
    as_of = frame.loc[frame[snaps.labels[target]].notna(), Col.AS_OF]
    if as_of.empty:
        return "none", "none"
    return tuple(pd.Timestamp(t).date().isoformat() for t in (as_of.min(), as_of.max()))


def _card_metrics(tr: TargetResult) -> list[str]:
    """The backtest table: LightGBM with 95 % intervals, and the best baseline."""
    from training.metrics import METRIC_NAMES

    base, _ = tr.best_baseline()
    m, iv = tr.metrics["lightgbm"], tr.backtest.intervals.get("lightgbm", {})
    b = tr.metrics.get(base, {})
    lines = [f"| metric | LightGBM | 95 % interval | {base} (best baseline) |",
             "|---|---|---|---|"]  # fmt: skip
    for k in METRIC_NAMES:
        lo, hi = iv.get(k, (math.nan, math.nan))
        lines.append(f"| {k} | {_fmt(m.get(k))} | {_fmt(lo)}..{_fmt(hi)} | {_fmt(b.get(k))} |")
    return lines


def _card_features(model: HealthModel) -> list[str]:
    """The feature names per family, categoricals marked."""
    families: dict[str, list[str]] = {}
    for f in model.features:
        name = f"{f.name} (categorical)" if f.categorical else f.name
        families.setdefault(str(f.family), []).append(name)
    return [f"- {fam} ({len(names)}): {', '.join(names)}" for fam, names in families.items()]


def model_card(tr: TargetResult, window: tuple[str, str] | None = None) -> str:
    """The model card (Markdown): what it predicts, on which data, how well, for what.

    `window`: the first and last snapshot `as_of` trained on (`training_window`); without
    it the card gives the last only. It is the registered version's description and the
    logged model's `model_card.md`.
    """
    info = tr.model.info
    first, last = window or ("?", info.get("trained_through_as_of", "?"))
    origins = info["backtest_origins"]
    span = f"{origins[0]}..{origins[-1]}" if origins else "none"
    lines = [
        f"# {REGISTERED_MODELS.get(tr.target.name, tr.target.name)}", "",
        f"Predicts {tr.target.name} within {info['horizon_days']} days ({info['label']}): "
        f"{tr.target.description}",
        f"Output: `probability`, the calibrated probability of {tr.target.name} for each "
        "account snapshot (a row of feature values), never a label.", "",
        "## Training data",
        f"- Snapshots as of {first}..{last}: {info['train_rows']:,} labelled snapshots, "
        f"{info['train_positives']:,} positives.",
        f"- Labels observed up to {info['labels_up_to']}"
        + (f"; data cut off at {info['data_cutoff']}." if info.get("data_cutoff") else "."),
        "",
        "## Backtest",
        f"Walk-forward, out of time: {len(origins)} monthly origins {span}, "
        f"{len(tr.backtest.predictions):,} predictions, {tr.backtest.positives} positives; "
        "95 % intervals resample accounts.", "",
        *_card_metrics(tr), "",
        "## Model",
        f"LightGBM, {info['trees']} trees, {info['calibrator']} calibration, monotone "
        f"constraints {'on' if info.get('monotone_constraints') else 'off'}.", "",
        f"## Features ({len(tr.model.features)}; any may be missing)",
        *_card_features(tr.model), "",
        "## Intended use",
        INTENDED_USE,
    ]  # fmt: skip
    if tr.warnings:
        lines += ["", "## Warnings", *[f"- {w}" for w in tr.warnings]]
    return "\n".join(lines) + "\n"


def _description(card: str) -> str:
    """`card` cut to what a registered version's description holds on every SQL store."""
    if len(card) <= _DESCRIPTION_LIMIT:
        return card
    note = f"\n\n(cut: the whole card is {MODEL_CARD} in the model's files)\n"
    return card[: _DESCRIPTION_LIMIT - len(note)] + note


def _log_backtest(tr: TargetResult, target: str) -> None:
    """The target's out-of-time predictions, the evidence later challengers are paired with."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="cshealth-backtest-") as tmp:
        path = Path(tmp) / f"{target}.parquet"
        tr.backtest.predictions.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(BACKTEST_ARTIFACT.format(target=target)).parent))


#: the run's dataset input: the snapshot table trained on
SNAPSHOTS_DATASET = "snapshots"
#: rows MLflow infers the snapshot schema on (besides one missing value per column)
_SCHEMA_ROWS = 1000


def _schema_sample(frame: pd.DataFrame) -> pd.DataFrame:
    """The first rows, plus for each column with a missing value one row holding it.

    MLflow infers a column's type from its dtype and makes it optional when any value is
    missing: this sample gives the same schema as the whole table.
    """
    import numpy as np

    na = frame.isna().to_numpy()
    rows = np.union1d(np.arange(min(len(frame), _SCHEMA_ROWS)), na.argmax(axis=0)[na.any(axis=0)])
    return frame.iloc[rows]


def _log_snapshots(c: MlflowClient, run_id: str, snaps: SnapshotTable, snapshot_file: Path,
                   sha: str) -> None:  # fmt: skip
    """The snapshot table as the run's `snapshots` dataset input (context `training`).

    Kept cheap on big tables: MLflow infers a schema value by value (1.8 s on 50k rows), so
    it reads `_schema_sample`, and the digest is the file's sha256 (cut to MLflow's 36
    characters; its own hashes only the first 10,000 rows); the profile counts every row.
    """
    import warnings

    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    frame = snaps.frame
    with warnings.catch_warnings():
        # MLflow registers two identical local sources and hints about integer columns
        warnings.simplefilter("ignore", UserWarning)
        d = mlflow.data.from_pandas(_schema_sample(frame), name=SNAPSHOTS_DATASET,
                                    source=str(Path(snapshot_file).resolve()),
                                    digest=sha[:36]).to_dict()  # fmt: skip
    profile = json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)})
    ds = Dataset(d["name"], d["digest"], d["source_type"], d["source"], d["schema"], profile)
    c.log_inputs(run_id, [DatasetInput(ds, [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])


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
    """One MLflow run: params, metrics, data set, commit, plots, models and cards; then gate."""
    import mlflow

    from features.contract import Col
    from features.meta import to_dict

    t0 = time.perf_counter()
    c = client()
    exp_id = ensure_experiment(c)
    fail_abandoned_runs(c)
    commit, dirty = git_commit()
    sha = file_sha256(Path(snapshot_file))
    run_name = f"train-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    versions: dict[str, int] = {}
    model_ids: list[str] = []
    newest = snaps.frame[snaps.frame[Col.AS_OF] == snaps.frame[Col.AS_OF].max()]
    # The owner tags come with the run itself: a run killed at any moment can be judged.
    with (
        _mlflow_errors("logging the training run"),
        mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=_owner_tags()) as run,
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
        _log_snapshots(c, run.info.run_id, snaps, snapshot_file, sha)
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
            card = model_card(tr, training_window(snaps, target))
            version, model_id = _log_model(target, tr.model, newest, card)
            versions[target] = version
            model_ids.append(model_id)
            lgbm = {f"backtest_{k}": v for k, v in tr.metrics["lightgbm"].items()
                    if isinstance(v, float) and math.isfinite(v)}  # fmt: skip
            mlflow.log_metrics(lgbm, model_id=model_id)
            for k, v in _version_tags(tr).items():
                c.set_model_version_tag(registered_name(target), str(version), k, v)
            c.update_model_version(registered_name(target), str(version),
                                   description=_description(card))  # fmt: skip
            log.info("mlflow: registered %s v%d", registered_name(target), version)
        decisions = gate_new_versions(c, result, versions, gates, seed, run.info.run_id)
        for target, d in decisions.items():
            mlflow.set_tags({
                f"promotion.{target}": "champion" if d.promoted else "rejected",
                f"promotion.{target}.version": str(d.version),
                f"promotion.{target}.reason": d.reason[:_TAG_LIMIT],
            })  # fmt: skip
    with _mlflow_errors("restricting the artifact permissions"):
        _restrict_artifacts(c, exp_id, run.info.run_id, model_ids)
    log.info("mlflow: done in %.1f s", time.perf_counter() - t0)
    return RunRecord(run.info.run_id, exp_id, display_uri(), versions, decisions)


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


def champions() -> dict[str, dict[str, Any]]:
    """Per target: its registered model, champion version and that version's run (or None).

    Only what identifies the champions (no times): the `champion` DVC stage writes it,
    and `score` reruns exactly when it changes (a gate or `cshealth promote` moved one).
    """
    c = client()
    out: dict[str, dict[str, Any]] = {}
    for target, name in REGISTERED_MODELS.items():
        with _mlflow_errors(f"reading the {name} champion"):
            version = _champion_version(c, name)
            run_id = c.get_model_version(name, str(version)).run_id if version else None
        out[target] = {"model": name, "version": version, "run_id": run_id or None}
    return out


def passed_over(target: str, champion: int) -> list[tuple[int, str]]:
    """The versions of `target` newer than its champion, each with why it is not champion."""
    c = client()
    name = registered_name(target)
    with _mlflow_errors(f"listing {name} versions"):
        newer = sorted((v for v in _versions(c, name) if int(v.version) > champion),
                       key=lambda v: int(v.version))  # fmt: skip
    out = []
    for v in newer:
        tags = v.tags or {}
        if tags.get("promotion") == "rejected":
            why = tags.get("promotion_reason", "rejected by the promotion gate")
        elif tags.get("promotion") == "champion":
            why = f"v{v.version} was champion until {CHAMPION} was moved by hand"
        else:  # its training run ended before the gate
            why = f"v{v.version} never went through the promotion gate"
        out.append((int(v.version), why))
    return out


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
    runs: dict[str, Any] = {}  # run id -> run, read once per run

    def run_of(run_id: str) -> Any:
        if run_id not in runs:
            runs[run_id] = c.get_run(run_id)
        return runs[run_id]

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
                        run_metrics = run_of(mv.run_id).data.metrics
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
                    "run_status": run_of(mv.run_id).info.status if mv.run_id else "",
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
                f"MLflow failed while reading {name} v{version}: {redact(str(err.message))}"
            ) from err
        with _mlflow_errors(f"listing {name} versions"):
            have = sorted(int(v.version) for v in _versions(c, name))
        known = ", ".join(map(str, have)) if have else "none"
        raise ValueError(f"{name} has no version {version} (versions: {known})") from None


def _move_aliases(c: MlflowClient, versions: dict[str, int]) -> dict[str, int | None]:
    """Point each target's `champion` at its version; put back those moved if one fails."""
    before: dict[str, int | None] = {}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        for target, version in versions.items():
            name = registered_name(target)
            with _mlflow_errors(f"moving the {name} {CHAMPION} alias"):
                before[target] = _champion_version(c, name)
                c.set_registered_model_alias(name, CHAMPION, str(int(version)))
                c.set_model_version_tag(name, str(int(version)), "promoted_by_hand", now)
    except TrackingError:
        for target, old in before.items():  # best effort: the error below says what failed
            with contextlib.suppress(Exception):
                name = registered_name(target)
                if old is None:
                    c.delete_registered_model_alias(name, CHAMPION)
                else:
                    c.set_registered_model_alias(name, CHAMPION, str(old))
        raise
    return before


def promote(target: str, version: int) -> int | None:
    """Move `champion` of `target` to `version` by hand; returns the previous champion."""
    c = client()
    _require_version(c, target, version)
    return _move_aliases(c, {target: int(version)})[target]


#: a training run's id as `cshealth models` shows it, or its first 8+ characters
RUN_REF = re.compile(r"[0-9a-f]{8,32}")


@dataclass(frozen=True)
class RunVersions:
    """The versions one training run registered, per target, and how the run ended."""

    run_id: str
    status: str
    versions: dict[str, int]

    def problem(self, targets: list[str]) -> str | None:
        """Why these versions must not be promoted as a set (None: they may)."""
        have = ", ".join(f"{t} v{v}" for t, v in self.versions.items()) or "no model"
        if self.status != "FINISHED":
            return f"did not finish (status {self.status}; it registered {have})"
        missing = [t for t in targets if t not in self.versions]
        if missing:
            return f"registered no {' or '.join(missing)} model (only {have})"
        return None


def run_versions(c: MlflowClient, ref: str) -> RunVersions:
    """The versions registered by the run `ref` (its id, or a unique prefix of 8+ characters)."""
    ref = ref.strip().lower()
    if not RUN_REF.fullmatch(ref):
        raise ValueError(f"{ref!r} is not a training run id (32 hexadecimal characters, or "
                         "the first 8 or more; see `cshealth models`)")  # fmt: skip
    found: dict[str, dict[str, int]] = {}
    with _mlflow_errors("listing registered versions"):
        for target, name in REGISTERED_MODELS.items():
            for mv in _versions(c, name):
                if mv.run_id and mv.run_id.startswith(ref):
                    found.setdefault(mv.run_id, {})[target] = int(mv.version)
    if not found:
        raise ValueError(f"no registered model version comes from run {ref} "
                         "(see `cshealth models`)")  # fmt: skip
    if len(found) > 1:
        raise ValueError(f"{ref} starts several run ids ({', '.join(sorted(found))}): "
                         "give more characters")  # fmt: skip
    run_id, versions = next(iter(found.items()))
    with _mlflow_errors(f"reading run {run_id}"):
        status = c.get_run(run_id).info.status
    ordered = {t: versions[t] for t in REGISTERED_MODELS if t in versions}
    return RunVersions(run_id, status, ordered)


def promote_run(ref: str, targets: list[str] | None = None) -> tuple[RunVersions, dict]:
    """Make the versions a finished training run registered champion, for every target.

    Returns the run's versions and the previous champion per target moved.
    """
    c = client()
    fail_abandoned_runs(c)
    rv = run_versions(c, ref)
    wanted = list(targets or REGISTERED_MODELS)
    problem = rv.problem(wanted)
    if problem:
        raise ValueError(f"run {rv.run_id} {problem}: its models are not a set to promote; "
                         "promote one version with `cshealth promote VERSION --model "
                         "TARGET` (see `cshealth models`)")  # fmt: skip
    return rv, _move_aliases(c, {t: rv.versions[t] for t in wanted})


def pair_of_version(version: int) -> RunVersions:
    """The training run behind version `version` of the first target, with all its versions.

    `cshealth promote N` means that run: the other targets' numbers need not be N
    (a run that died after registering one model put the numbering out of step).
    """
    c = client()
    fail_abandoned_runs(c)
    first = next(iter(REGISTERED_MODELS))
    mv = _require_version(c, first, version)
    name = registered_name(first)
    if not mv.run_id:
        raise ValueError(f"{name} v{version} comes from no training run: promote it alone "
                         f"with `cshealth promote {version} --model {first}`")  # fmt: skip
    rv = run_versions(c, mv.run_id)
    problem = rv.problem(list(REGISTERED_MODELS))
    if problem:
        raise ValueError(
            f"{name} v{version} comes from run {rv.run_id}, which {problem}: promote it alone "
            f"with `cshealth promote {version} --model {first}`, or every model of a finished "
            "run with `cshealth promote RUN_ID` (run ids: `cshealth models`)"
        )
    return rv


def promote_pair(version: int) -> dict[str, int | None]:
    """Promote every model of the run that registered `version` of the first target."""
    rv = pair_of_version(version)
    return promote_run(rv.run_id)[1]
