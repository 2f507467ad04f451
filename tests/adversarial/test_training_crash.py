"""Adversarial: `cshealth train` killed mid-run, credentials in the tracking URI, file modes.

Real processes throughout: `cshealth train` runs as a subprocess on a small snapshot
table against a SQLite MLflow store in a temp folder and is SIGKILLed at moments picked
by polling the reports folder or the MLflow database (bounded waits, no timing
assertions). Credentials are checked against a tiny basic-auth HTTP server on 127.0.0.1.
The crash tests build on each other in file order (one store per module).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from cshealth.cli import main
from features.pipeline import build_snapshots
from features.settings import FeatureParams
from simulator import generate, write_dataset
from training import reports as report_set
from training import tracking

pytestmark = pytest.mark.slow

_SCRIPT = Path(sys.executable).with_name("cshealth")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cshealth.cli"]
#: small and fast: two backtest origins, few trees, few resamples
FAST = {"backtest": {"origins": 2, "bootstrap": 20},
        "lightgbm": {"n_estimators": 60, "min_rounds": 20, "default_rounds": 40}}  # fmt: skip
#: a different model (so its reports differ from the first run's byte for byte)
OTHER = {**FAST, "lightgbm": {**FAST["lightgbm"], "num_leaves": 4}}
WAIT_S = 300  # bound on every wait for a subprocess to reach a state


@dataclass
class Store:
    root: Path
    snapshots: Path
    params: Path
    other: Path
    reports: Path
    env: dict[str, str]
    runs: dict[str, str] = field(default_factory=dict)  # role -> MLflow run id
    first_set: dict[str, bytes] = field(default_factory=dict)  # reports after the first run


def _params(path: Path, train: dict) -> Path:
    path.write_text(yaml.safe_dump({"train": train}))
    path.chmod(0o644)  # as a user's params.yaml usually is: MLflow copies the mode
    return path


def _files(folder: Path) -> dict[str, bytes]:
    """Every visible report file (metrics.json, plots/*) by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = p.read_bytes()
    return out


def _inodes(folder: Path) -> dict[Path, int]:
    """path -> inode of everything under `folder` (files come and go while we look)."""
    out = {}
    for p in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            out[p] = p.stat().st_ino
    return out


def _train_cmd(store: Store, params: Path) -> list[str]:
    return [*CLI, "--params", str(params), "train", "--features", str(store.snapshots),
            "--reports", str(store.reports)]  # fmt: skip


def _start(store: Store, params: Path) -> subprocess.Popen:
    # the parent shell's usual umask: cshealth must make its files private by itself
    return subprocess.Popen(_train_cmd(store, params), cwd=store.root, env=store.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            umask=0o022)  # fmt: skip


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out, err


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)  # reaped: the pid is gone, not a zombie


def _db(store: Store) -> sqlite3.Connection:
    return sqlite3.connect(store.root / "mlflow.db", timeout=30)


def _runs(store: Store) -> dict[str, str]:
    """run id -> status of every MLflow run in the store."""
    if not (store.root / "mlflow.db").exists():
        return {}
    with contextlib.closing(_db(store)) as con:
        try:
            return dict(con.execute("select run_uuid, status from runs").fetchall())
        except sqlite3.OperationalError:  # tables not created yet
            return {}


def _versions(store: Store) -> list[tuple[str, int, str]]:
    """(registered model, version, run id) of every registered version."""
    with contextlib.closing(_db(store)) as con:
        try:
            rows = con.execute("select name, version, run_id from model_versions").fetchall()
        except sqlite3.OperationalError:
            return []
    return sorted((n, int(v), r) for n, v, r in rows)


def _wait_for(what: str, check, proc: subprocess.Popen, poll: float = 0.02):
    """Poll `check()` until it returns something truthy (bounded; fails if the process ends)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"`cshealth train` ended (rc {proc.returncode}) before {what}:\n{err}")
        time.sleep(poll)
    proc.kill()
    pytest.fail(f"no {what} within {WAIT_S} s")


def _cli(store: Store, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`cshealth ARGV` in this process, against the module's store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, store.env[tracking.EXPERIMENT_ENV])
    monkeypatch.chdir(store.root)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("crash")
    sim = generate(accounts=120, months=15, seed=5, start=dt.date(2023, 1, 1), truth_samples=5)
    write_dataset(sim, root / "raw", root / "truth.parquet")
    snapshots = root / "snapshots.parquet"
    build_snapshots(root / "raw", FeatureParams()).write(snapshots)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CSHEALTH_"))}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            tracking.EXPERIMENT_ENV: "crash-test", "PYTHONPATH": str(Path.cwd())}  # fmt: skip
    return Store(root, snapshots, _params(root / "params.yaml", FAST),
                 _params(root / "other.yaml", OTHER), root / "reports", env)  # fmt: skip


# ----- item 10: file permissions ----------------------------------------------------------
def _loose(root: Path) -> list[str]:
    """Paths under `root` (itself included) readable, writable or searchable by others."""
    paths = [root, *root.rglob("*")]
    return [f"{p} {stat.filemode(p.stat().st_mode)}" for p in paths
            if not p.is_symlink() and p.stat().st_mode & 0o077]  # fmt: skip


def test_first_train_with_umask_022_keeps_the_store_private(store: Store) -> None:
    rc, _, err = _finish(_start(store, store.params))
    assert rc == 0, err
    (run_id,) = _runs(store)
    store.runs["first"] = run_id
    store.first_set = _files(store.reports)
    assert "metrics.json" in store.first_set and len(store.first_set) > 5
    assert stat.S_IMODE((store.root / "mlflow.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((store.root / "mlartifacts").stat().st_mode) == 0o700
    assert _loose(store.root / "mlartifacts") == []  # params.yaml was copied with mode 0644


def test_library_use_creates_a_private_store_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not through the CLI (no umask 077 set by `main`): the DB and artifact root are private."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'lib' / 'mlflow.db'}")
    monkeypatch.delenv("CSHEALTH_UMASK", raising=False)
    old = os.umask(0o022)
    try:
        tracking.ensure_experiment(tracking.client())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "lib" / "mlflow.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "lib").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "lib" / "mlartifacts").stat().st_mode) == 0o700


# ----- item 9: crash consistency --------------------------------------------------------------
def test_kill_while_writing_reports_keeps_the_previous_complete_set(store: Store) -> None:
    assert store.first_set, "needs the first run"
    before = _inodes(store.reports)

    def report_written() -> bool:
        # a new or replaced metrics.json anywhere under the reports, staging folders included
        now = _inodes(store.reports)
        return any(p.name == "metrics.json" and before.get(p) != i for p, i in now.items())

    proc = _start(store, store.other)
    _wait_for("a new metrics.json", report_written, proc)
    _kill(proc)
    assert _files(store.reports) == store.first_set  # not the new metrics beside old plots


def test_kill_with_the_mlflow_run_open_between_the_two_registrations(store: Store) -> None:
    known = set(_runs(store))
    proc = _start(store, store.other)

    def churn_registered() -> str | None:
        new = {r for r, s in _runs(store).items() if r not in known and s == "RUNNING"}
        names = {n for n, _, r in _versions(store) if r in new}
        return next(iter(new)) if names == {"cshealth-churn"} else None

    run_id = _wait_for("the churn model registered in an open run", churn_registered, proc)
    # Hold the database so the run cannot move on while it is killed.
    with contextlib.closing(_db(store)) as con:
        con.execute("begin immediate")
        _kill(proc)
        con.rollback()
    store.runs["killed"] = run_id
    assert _runs(store)[run_id] == "RUNNING"
    assert [(n, v) for n, v, r in _versions(store) if r == run_id] == [("cshealth-churn", 2)]
    assert _files(store.reports) == store.first_set


def test_models_marks_the_dead_run_failed_and_shows_run_ids(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a copy of the store (the next test lets `cshealth train` find the run instead)."""
    killed = store.runs["killed"]
    shutil.copy(store.root / "mlflow.db", tmp_path / "mlflow.db")
    copy = Store(**{**store.__dict__, "root": tmp_path})
    copy.env = {**store.env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    rc, out, err = _cli(copy, ["models"], monkeypatch)
    assert rc == 0, err
    assert _runs(copy)[killed] == "FAILED"
    said = [r.getMessage() for r in caplog.records if "marked FAILED" in r.getMessage()]
    assert len(said) == 1 and f"run {killed}" in said[0]
    rows = [x.split() for x in out.splitlines() if x.startswith("cshealth-")]
    assert [(r[0], r[1], r[-2], r[-1]) for r in rows] == [
        ("cshealth-churn", "1", store.runs["first"], "FINISHED"),
        ("cshealth-churn", "2", killed, "FAILED"),
        ("cshealth-expansion", "1", store.runs["first"], "FINISHED"),
    ]
    assert "cshealth promote RUN_ID" in out


def test_next_train_fails_the_dead_run_and_publishes_one_complete_set(store: Store) -> None:
    killed = store.runs["killed"]
    rc, _, err = _finish(_start(store, store.other))
    assert rc == 0, err
    runs = _runs(store)
    assert runs[killed] == "FAILED"
    assert sum(f"run {killed}" in line and "marked FAILED" in line
               for line in err.splitlines()) == 1  # fmt: skip
    (new,) = set(runs) - {store.runs["first"], killed}
    assert runs[new] == "FINISHED"
    store.runs["second"] = new
    assert [(n, v) for n, v, r in _versions(store) if r == new] == [
        ("cshealth-churn", 3), ("cshealth-expansion", 2)]  # fmt: skip
    # One set, from the run that just finished, and nothing left of the killed ones.
    marker = report_set.read_marker(store.reports)
    assert marker is not None and marker["run_id"] == new
    assert report_set.consistent(store.reports)
    files = _files(store.reports)
    assert set(files) - {report_set.MARKER} == set(store.first_set) - {report_set.MARKER}
    assert files["metrics.json"] != store.first_set["metrics.json"]
    with contextlib.closing(_db(store)) as con:
        (uri,) = con.execute("select artifact_uri from runs where run_uuid = ?", (new,)).fetchone()
    artifacts = Path(uri.removeprefix("file://"))
    assert (artifacts / "metrics.json").read_bytes() == files["metrics.json"]
    for name in (p for p in files if p.startswith("plots/")):
        assert (artifacts / name).read_bytes() == files[name], name
    assert not list(store.reports.glob(".train-staging-*"))
    assert _loose(store.root / "mlartifacts") == []


def test_promote_addresses_a_training_run_when_version_numbers_differ(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, killed, second = store.runs["first"], store.runs["killed"], store.runs["second"]
    # `promote 3`: churn v3 comes from the second run, which registered expansion v2.
    rc, out, err = _cli(store, ["promote", "3"], monkeypatch)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("cshealth-churn: champion v") and \
        lines[0].endswith(f"-> v3 (run {second})")  # fmt: skip
    assert lines[1].startswith("cshealth-expansion: champion v") and \
        lines[1].endswith(f"-> v2 (run {second})")  # fmt: skip
    assert tracking.load_champion("expansion")[1] == 2 and tracking.load_champion("churn")[1] == 3
    # By run id (the first run, shortened as a user would copy it): v1 and v1.
    rc, out, err = _cli(store, ["promote", first[:10]], monkeypatch)
    assert rc == 0, err
    assert "cshealth-churn: champion v3 -> v1" in out
    assert "cshealth-expansion: champion v2 -> v1" in out
    rc, out, err = _cli(store, ["promote", "--run", second], monkeypatch)
    assert rc == 0 and f"cshealth-expansion: champion v1 -> v2 (run {second})" in out, err
    # The killed run's churn v2 has no partner: refused, naming the commands that work.
    for argv in (["promote", "2"], ["promote", killed]):
        rc, out, err = _cli(store, argv, monkeypatch)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "did not finish (status FAILED" in err
        assert "cshealth promote 2 --model churn" in err or "--model TARGET" in err
    assert "cshealth promote RUN_ID" in _cli(store, ["promote", "2"], monkeypatch)[2]
    assert tracking.load_champion("churn")[1] == 3
    # One model still works by version.
    rc, out, err = _cli(store, ["promote", "2", "--model", "churn"], monkeypatch)
    assert rc == 0 and "cshealth-churn: champion v3 -> v2" in out, err


# ----- item 8 (and 7): credentials in the tracking URI, unreachable servers ----------------------
USER, PASSWORD = "alice", "s3cret-Pa55"


class _AuthHandler(BaseHTTPRequestHandler):
    """Basic auth for every path; an MLflow-like 404 for an unknown experiment."""

    seen: ClassVar[list[tuple[str, str, str]]] = []  # (path, user agent, authorization)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen.append((self.path, self.headers.get("User-Agent", ""), auth))
        good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if auth != good:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()
            return
        body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST",
                           "message": "no such experiment"}).encode()  # fmt: skip
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AuthHandler)
    _AuthHandler.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_connection_authenticates_with_the_uri_credentials(auth_server: str) -> None:
    assert tracking.check_connection(f"http://{USER}:{PASSWORD}@{auth_server}")
    assert _AuthHandler.seen and _AuthHandler.seen[-1][2].startswith("Basic ")
    with pytest.raises(tracking.TrackingError) as bad:
        tracking.check_connection(f"http://{USER}:wrong-{PASSWORD}@{auth_server}")
    message = str(bad.value)
    assert "rejected the credentials" in message and auth_server in message
    assert PASSWORD not in message and "MLFLOW_TRACKING_PASSWORD" in message
    with pytest.raises(tracking.TrackingError, match="requires credentials"):
        tracking.check_connection(f"http://{auth_server}")


def test_mlflow_itself_uses_the_uri_credentials_and_the_uri_loses_them(
    auth_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")  # recorded, so the values set below are undone
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{PASSWORD}@{auth_server}")
    assert tracking.tracking_uri() == f"http://{auth_server}"
    c = tracking.client()
    assert c.get_experiment_by_name("nope") is None  # an authenticated 404, not a 401
    by_mlflow = [s for s in _AuthHandler.seen if "urllib" not in s[1]]
    assert by_mlflow and all(s[2].startswith("Basic ") for s in by_mlflow)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("command", ["train", "models"])
def test_unreachable_or_refusing_server_is_one_line_without_the_password(
    store: Store, auth_server: str, command: str
) -> None:
    argv = {"train": ["train", "--features", str(store.snapshots)], "models": ["models"]}
    port = _closed_port()
    for uri, says, where in (
        (f"http://{USER}:{PASSWORD}@127.0.0.1:{port}", "unreachable", f"127.0.0.1:{port}"),
        (f"http://{USER}:x{PASSWORD}@{auth_server}", "rejected the credentials", auth_server),
        (f"http://127.0.0.1:{port}", "unreachable", f"127.0.0.1:{port}"),  # item 7
    ):
        env = {**store.env, "MLFLOW_TRACKING_URI": uri}
        proc = subprocess.run([*CLI, *argv[command]], cwd=store.root, env=env,
                              capture_output=True, text=True, timeout=WAIT_S)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        line = _one_error_line(proc.stderr)
        assert says in line and where in line and "MLFLOW_TRACKING_" in line
        assert PASSWORD not in proc.stdout + proc.stderr
